//! `cairn-init`: PID 1 of Cairn. In the initramfs (where `/etc/initrd-release` exists) it is
//! stage 1 and switches root into the real system; there it is stage 2.

mod console;
mod disks;
mod dm;
mod modules;
mod mounts;
mod power;
mod stage1;
mod stage2;

use std::time::Duration;

pub const MODULES_LOAD: &str = "etc/cairn/modules.load";
/// Stage 2's path inside the booted system.
pub const STAGE2_PATH: &str = "/usr/sbin/cairn-init";
/// How long the boot-failed message stays on screen before the reboot that costs a try.
const FAILURE_DELAY: Duration = Duration::from_secs(5);

fn main() {
    if std::process::id() != 1 {
        eprintln!("cairn-init is the init process of Cairn hosts; it runs as PID 1 only");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| fail(&format!("panic: {info}"))));
    let in_initramfs = std::path::Path::new("/etc/initrd-release").exists();
    let result = if in_initramfs { stage1::run() } else { stage2::run() };
    let Err(reason) = result;
    fail(&reason);
}

/// A boot that cannot go on reboots, so systemd-boot counts the failed try.
fn fail(reason: &str) -> ! {
    say!("boot failed: {reason}");
    std::thread::sleep(FAILURE_DELAY);
    power::finish(power::Action::Reboot)
}

//! `cairn-init`: PID 1 of Cairn, and its control client.
//!
//! As PID 1 in the initramfs (where `/etc/initrd-release` exists) it is stage 1 and switches
//! root into the real system; there it is stage 2. Invoked as `cairnctl`, `reboot` or
//! `poweroff` it talks to the running PID 1 over its control socket; as `pause`, it is the
//! process of a container's sandbox.

mod cloudconfig;
mod console;
mod control;
mod disks;
mod dm;
mod firstboot;
mod modules;
mod mounts;
mod power;
mod service;
mod stage1;
mod stage2;
mod system;
mod sysusers;

use std::time::Duration;

pub const MODULES_LOAD: &str = "etc/cairn/modules.load";
/// Stage 2's path inside the booted system.
pub const STAGE2_PATH: &str = "/usr/sbin/cairn-init";
/// How long the boot-failed message stays on screen before the reboot that costs a try.
const FAILURE_DELAY: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let program = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid1 = std::process::id() == 1;
    match program.as_str() {
        power::FINAL_NAME if pid1 => power::final_step(power::Action::from_arg(args.get(1).map_or("", |s| s))),
        "cairnctl" | "reboot" | "poweroff" | "halt" => std::process::exit(control::cli(&program, &args[1..])),
        _ if !pid1 => std::process::exit(control::cli("cairnctl", &args[1..])),
        _ => {}
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

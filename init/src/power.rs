//! Orderly shutdown: stop services in reverse start order (SIGTERM, their deadline, SIGKILL),
//! then every other process, then re-execute init from a copy in /run so `/usr` is no longer
//! in use: unmount it, remove its verity device, remount ROOT read-only, sync, power off or
//! reboot.

use crate::say;
use crate::service::supervisor::{ExitHow, Supervisor, signal_group};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub enum Action {
    PowerOff,
    Reboot,
}

impl Action {
    fn arg(self) -> &'static str {
        match self {
            Action::PowerOff => "poweroff",
            Action::Reboot => "reboot",
        }
    }

    pub fn from_arg(a: &str) -> Action {
        if a == "poweroff" { Action::PowerOff } else { Action::Reboot }
    }
}

/// The name init runs under for the last step, from its copy in /run.
pub const FINAL_NAME: &str = "cairn-shutdown";
const FINAL_COPY: &str = "/run/cairn/cairn-shutdown";
const LAST_DEADLINE: Duration = Duration::from_secs(5);

pub fn shutdown(sup: &mut Supervisor, action: Action) -> ! {
    say!("stopping services");
    sup.hold_all();
    for i in sup.stop_order() {
        let Some(pid) = sup.services[i].pid else { continue };
        let name = sup.services[i].spec.name.clone();
        let timeout = sup.services[i].spec.stop_timeout;
        if sup.services[i].spec.tty.is_some() {
            signal_group(pid, Signal::SIGHUP);
        }
        signal_group(pid, Signal::SIGTERM);
        if !wait_for(sup, pid, timeout) {
            say!("{name} did not stop within {} s: killing it", timeout.as_secs());
            signal_group(pid, Signal::SIGKILL);
            wait_for(sup, pid, Duration::from_secs(5));
        }
    }
    // Whatever is left (processes that left their service's group).
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + LAST_DEADLINE;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::ECHILD) => break,
            Ok(WaitStatus::StillAlive) if Instant::now() >= deadline => {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                while waitpid(None, None).is_ok() {}
                break;
            }
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
    finish(action)
}

/// Waits for `pid` to exit, reaping (and recording) any child. True if it exited.
fn wait_for(sup: &mut Supervisor, pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) => {
                sup.on_exit(p, ExitHow::Code(code), Instant::now());
                if p == pid {
                    return true;
                }
            }
            Ok(WaitStatus::Signaled(p, sig, _)) => {
                sup.on_exit(p, ExitHow::Signal(sig as i32), Instant::now());
                if p == pid {
                    return true;
                }
            }
            Err(nix::errno::Errno::ECHILD) => return true,
            _ => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// After every process is gone: continue from a copy of init in /run so `/usr` can go.
pub fn finish(action: Action) -> ! {
    nix::unistd::sync();
    if usr_mounted() {
        let _ = std::fs::create_dir_all("/run/cairn");
        if std::fs::copy("/proc/self/exe", FINAL_COPY).is_ok() {
            let path = std::ffi::CString::new(FINAL_COPY).expect("no NUL");
            let argv = [
                std::ffi::CString::new(FINAL_NAME).expect("no NUL"),
                std::ffi::CString::new(action.arg()).expect("no NUL"),
            ];
            let e = nix::unistd::execv(&path, &argv);
            say!("running the final step from /run: {e:?}");
        }
    }
    final_step(action)
}

fn usr_mounted() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata("/"), std::fs::metadata("/usr")) {
        (Ok(root), Ok(usr)) => root.dev() != usr.dev(),
        _ => false,
    }
}

/// The last step, running from /run: nothing uses `/usr` any more.
pub fn final_step(action: Action) -> ! {
    nix::unistd::sync();
    if usr_mounted() {
        if let Err(e) = umount2("/usr", MntFlags::empty()) {
            say!("unmounting /usr: {e}; detaching it");
            let _ = umount2("/usr", MntFlags::MNT_DETACH);
        }
        if let Err(e) = crate::dm::remove("usr") {
            say!("removing the /usr verity device: {e}");
        }
    }
    for m in ["/sys/fs/cgroup", "/dev/pts", "/dev/shm", "/tmp"] {
        let _ = umount2(m, MntFlags::MNT_DETACH);
    }
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>) {
        say!("remounting / read-only: {e}");
    }
    nix::unistd::sync();
    say!(
        "{}",
        match action {
            Action::PowerOff => "powering off",
            Action::Reboot => "rebooting",
        }
    );
    let mode = match action {
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let _ = reboot(mode);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

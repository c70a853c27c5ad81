//! Orderly shutdown: stop every process (SIGTERM, a deadline, SIGKILL), sync, unmount `/usr`
//! and remount ROOT read-only, then power off or reboot.

use crate::say;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub enum Action {
    PowerOff,
    Reboot,
}

const STOP_DEADLINE: Duration = Duration::from_secs(10);

pub fn shutdown(action: Action) -> ! {
    say!("stopping all processes");
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::ECHILD) => break,
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                if Instant::now() >= deadline {
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(None, None);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {}
        }
    }
    finish(action)
}

/// Syncs and unmounts, then the final reboot call. Also the end of a failed boot.
pub fn finish(action: Action) -> ! {
    nix::unistd::sync();
    let _ = umount2("/usr", MntFlags::MNT_DETACH);
    let ro = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>);
    if let Err(e) = ro {
        say!("remounting / read-only: {e}");
    }
    nix::unistd::sync();
    match action {
        Action::PowerOff => say!("powering off"),
        Action::Reboot => say!("rebooting"),
    }
    let mode = match action {
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let _ = reboot(mode);
    // reboot(2) does not return on success.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

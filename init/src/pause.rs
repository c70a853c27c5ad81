//! The process of a container sandbox (containerd's CRI "pause" container), when cairn-init is
//! run as `pause`: it holds the sandbox's namespaces open, reaps any orphans reparented to it,
//! and exits when told to stop. `cairn-cloud-config` builds the sandbox image from this binary
//! (`cairn_config::container::pause`), so no host needs to reach a public registry for it.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Waits for a stop, reaping children; never returns.
pub fn run() -> ! {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    // Blocked, then waited for: no handler runs at an awkward moment.
    if let Err(e) = set.thread_block() {
        eprintln!("pause: blocking signals: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    if s.pid().is_none() {
                        break;
                    }
                }
            }
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("pause: waiting for a signal: {e}");
                std::process::exit(1);
            }
        }
    }
}

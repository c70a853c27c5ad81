//! A VM run by a person at a terminal (`cairn run`): what is typed goes to the serial console,
//! Ctrl-C or SIGTERM powers the guest off cleanly instead of killing QEMU.

use crate::{ConsoleWriter, Vm};
use anyhow::{Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long the guest has to power off after the power button.
const POWER_OFF: Duration = Duration::from_secs(30);

/// Runs `vm` until it exits or is interrupted. With `exit_on_ready`, powers it off once it
/// reports ready (failing after `timeout`).
pub fn run(vm: &mut Vm, exit_on_ready: bool, timeout: Duration) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    flag_on_signals(&interrupted)?;
    forward_stdin(vm.console_writer());
    if exit_on_ready {
        let line = vm.wait_for_line("cairn: ready", 0, timeout)?;
        eprintln!("cairn run: host ready after {:.1} s: {line}", vm.uptime().as_secs_f64());
        if !vm.shutdown(POWER_OFF)? {
            bail!("the guest did not power off within 30 s of the power button; QEMU was stopped");
        }
        eprintln!("cairn run: guest powered off after {:.1} s", vm.uptime().as_secs_f64());
        return Ok(());
    }
    loop {
        if interrupted.load(Ordering::SeqCst) {
            eprintln!("\ncairn run: powering off");
            if !vm.shutdown(POWER_OFF)? {
                eprintln!("cairn run: the guest did not power off in 30 s; stopped QEMU");
            }
            return Ok(());
        }
        if vm.wait_exit(Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
    }
}

/// Copies what is typed to the VM's serial console (line by line: the terminal stays cooked,
/// so Ctrl-C still reaches us).
fn forward_stdin(console: ConsoleWriter) {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || console.send(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

/// Sets `flag` on SIGINT and SIGTERM instead of dying, so the VM can be powered off cleanly.
fn flag_on_signals(flag: &Arc<AtomicBool>) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let flag = flag.clone();
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    Ok(())
}

//! The boot's cloud-config step: `cairn-cloud-config boot` (a program of its own, so PID 1
//! stays small and a crash there is not a crash of PID 1), run to completion before any
//! service starts, since it writes their files, the hostname and the update agent's settings.
//! Its console lines go straight to the console.

use crate::say;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const PROGRAM: &str = "/usr/sbin/cairn-cloud-config";
/// Its sources have deadlines of their own; this bounds the step whatever happens (the boot
/// deadline is extended by the time it took).
const DEADLINE: Duration = Duration::from_secs(90);

pub fn run() {
    if !Path::new(PROGRAM).exists() {
        return;
    }
    let mut child = match Command::new(PROGRAM).arg("boot").spawn() {
        Ok(c) => c,
        Err(e) => return say!("cloud-config: starting {PROGRAM}: {e}"),
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => return say!("cloud-config: {PROGRAM} {status}"),
            Ok(None) if start.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return say!("cloud-config: stopped after {} s; booting on", DEADLINE.as_secs());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return say!("cloud-config: waiting for {PROGRAM}: {e}"),
        }
    }
}

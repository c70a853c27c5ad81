//! The packet filter's tools, as the container runner calls them: `iptables-restore` with
//! `--noflush --wait` (each table committed whole, beside what is there, after any other
//! holder of the xtables lock) and single `iptables` commands. Errors carry what was being done
//! and what the tool said.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};

const RESTORE: &str = "/usr/sbin/iptables-restore";
const IPTABLES: &str = "/usr/sbin/iptables";

/// An `iptables-restore` under way: [`Restore::wait`] tells how it ended.
pub struct Restore {
    child: Child,
    /// What it is doing, for its errors ("loading the bridge's rules").
    doing: String,
}

/// Starts `iptables-restore` on `input`, a file of rules or a pipe [`restore`] writes.
pub fn start_restore(input: impl Into<Stdio>, doing: impl Into<String>) -> Result<Restore, String> {
    let child = Command::new(RESTORE)
        .args(["--noflush", "--wait"])
        .stdin(input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {RESTORE}: {e}"))?;
    Ok(Restore { child, doing: doing.into() })
}

impl Restore {
    /// Waits for it; an error names what it was doing and quotes iptables-restore.
    pub fn wait(self) -> Result<(), String> {
        let out = self.child.wait_with_output().map_err(|e| format!("running {RESTORE}: {e}"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{} ({RESTORE} {}): {}", self.doing, out.status, said.trim()));
        }
        Ok(())
    }
}

/// Commits `input`, in iptables-restore's format, and waits for it.
pub fn restore(input: &str, doing: &str) -> Result<(), String> {
    let mut running = start_restore(Stdio::piped(), doing)?;
    let written = running.child.stdin.take().expect("piped").write_all(input.as_bytes());
    running.wait()?;
    written.map_err(|e| format!("{doing}: writing to {RESTORE}: {e}"))
}

/// Runs `iptables --wait ARGS`; an error names what it was doing and quotes iptables.
pub fn iptables(args: &[&str], doing: &str) -> Result<(), String> {
    let out =
        Command::new(IPTABLES).arg("--wait").args(args).output().map_err(|e| format!("running {IPTABLES}: {e}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{doing} ({IPTABLES} {}): {}", out.status, said.trim()));
    }
    Ok(())
}

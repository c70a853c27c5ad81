//! ssh from the test machine into a VM through a forwarded port, with keys made for the test.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// An ed25519 key pair made by ssh-keygen: (private key file, public key line).
pub fn key(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let path = dir.join(name);
    let ok =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&path).status()?;
    if !ok.success() {
        bail!("ssh-keygen failed");
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))?.trim().to_string();
    Ok((path, public))
}

/// An ssh client for the forwarded `port` (options only; the caller adds its own, then
/// `user@127.0.0.1` and the command): no host key checks, never prompts.
pub fn ssh_client(port: u16) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-p", &port.to_string(), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]).args([
        "-o",
        "ConnectTimeout=60",
        "-o",
        "BatchMode=yes",
    ]);
    c
}

/// Runs `remote` over ssh as `user` with `key`; (success, stdout, stderr).
pub fn ssh(port: u16, user: &str, key: &Path, remote: &str) -> Result<(bool, String, String)> {
    let out = ssh_client(port)
        .args(["-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(key)
        .arg(format!("{user}@127.0.0.1"))
        .arg(remote)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

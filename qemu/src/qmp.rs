//! A minimal QMP client: one connection per command, enough for power control.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub fn execute(sock: &Path, command: &str) -> Result<()> {
    let stream = UnixStream::connect(sock).with_context(|| format!("connecting to QMP at {}", sock.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the QMP greeting")?;
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{}", serde_json::json!({ "execute": cmd }))?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                // `quit` closes the connection without a reply.
                return if cmd == "quit" { Ok(()) } else { bail!("QMP closed during {cmd}") };
            }
            let v: serde_json::Value = serde_json::from_str(&line).context("parsing QMP reply")?;
            if v.get("return").is_some() {
                break;
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {e}");
            }
            // Asynchronous events: keep reading.
        }
    }
    Ok(())
}

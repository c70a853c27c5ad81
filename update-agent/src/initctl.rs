//! cairn-init's control socket, as the agent uses it: is the host healthy (every required
//! service running), and reboot. One JSON request and one JSON response per connection
//! (docs/services.md).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const SOCKET: &str = "/run/cairn/control.sock";

fn call(socket: &Path, request: &str) -> Result<serde_json::Value, String> {
    let stream =
        UnixStream::connect(socket).map_err(|e| format!("connecting to cairn-init at {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    (&stream).write_all(format!("{request}\n").as_bytes()).map_err(|e| format!("sending to cairn-init: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(|e| format!("reading cairn-init's answer: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("cairn-init answered {line:?}: {e}"))?;
    if v["ok"] != true {
        return Err(format!("cairn-init refused: {}", v["error"].as_str().unwrap_or("no reason given")));
    }
    Ok(v)
}

/// Healthy: every service marked required is running (what the ready line waits for).
pub fn healthy(socket: &Path) -> Result<bool, String> {
    let v = call(socket, r#"{"cmd":"status"}"#)?;
    let services = v["services"].as_array().ok_or("cairn-init's status lists no services")?;
    Ok(services.iter().filter(|s| s["required"] == true).all(|s| s["state"] == "running"))
}

pub fn reboot(socket: &Path) -> Result<(), String> {
    call(socket, r#"{"cmd":"reboot"}"#).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in for cairn-init answering one connection with `answer`.
    fn serve_once(dir: &Path, answer: &'static str) -> std::path::PathBuf {
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
        });
        path
    }

    #[test]
    fn health_is_every_required_service_running() {
        let t = tempfile::tempdir().unwrap();
        let ok = r#"{"ok":true,"services":[{"name":"a","state":"running","required":true},{"name":"b","state":"backoff","required":false}]}
"#;
        assert_eq!(healthy(&serve_once(t.path(), ok)), Ok(true));
        let bad = r#"{"ok":true,"services":[{"name":"a","state":"starting","required":true}]}
"#;
        assert_eq!(healthy(&serve_once(t.path(), bad)), Ok(false));
        let refused = "{\"ok\":false,\"error\":\"shutting down\"}\n";
        assert!(reboot(&serve_once(t.path(), refused)).unwrap_err().contains("shutting down"));
        assert!(healthy(&t.path().join("none.sock")).unwrap_err().contains("connecting"));
    }
}

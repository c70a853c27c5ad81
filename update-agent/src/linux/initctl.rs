//! cairn-init's control socket, as the agent uses it: is the host healthy (every required
//! service running), and reboot (cairn_release::control).

use crate::ports::HostError;
use cairn_release::control::{Request, Response, call};
use std::path::Path;

fn ok(socket: &Path, req: &Request) -> Result<Response, HostError> {
    let r = call(socket, req)?;
    if !r.ok {
        return Err(HostError::Init(format!("refused: {}", r.error.as_deref().unwrap_or("no reason given"))));
    }
    Ok(r)
}

/// Healthy: every service marked required is running (what the ready line waits for).
pub fn healthy(socket: &Path) -> Result<bool, HostError> {
    let r = ok(socket, &Request::Status)?;
    let services = (r.services.as_ref().and_then(|s| s.as_array()))
        .ok_or_else(|| HostError::Init("its status lists no services".into()))?;
    Ok(services.iter().filter(|s| s["required"] == true).all(|s| s["state"] == "running"))
}

pub fn reboot(socket: &Path) -> Result<(), HostError> {
    ok(socket, &Request::Reboot).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
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
        assert!(healthy(&serve_once(t.path(), ok)).unwrap());
        let bad = r#"{"ok":true,"services":[{"name":"a","state":"starting","required":true}]}
"#;
        assert!(!healthy(&serve_once(t.path(), bad)).unwrap());
        let refused = "{\"ok\":false,\"error\":\"shutting down\"}\n";
        assert!(reboot(&serve_once(t.path(), refused)).unwrap_err().to_string().contains("shutting down"));
        assert!(healthy(&t.path().join("none.sock")).unwrap_err().to_string().contains("connecting"));
    }
}

//! cairn-init's control interface: a unix socket in /run (root only) speaking one JSON request
//! and one JSON response per line and connection. cairn-init serves it; `cairnctl` and the
//! update agent are its clients.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const SOCKET: &str = "/run/cairn/control.sock";

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Start { service: String },
    Stop { service: String },
    Restart { service: String },
    Log { service: String, lines: usize },
    Reboot,
    Poweroff,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl Response {
    pub fn ok() -> Response {
        Response { ok: true, error: None, services: None, log: None }
    }
    pub fn err(e: impl Into<String>) -> Response {
        Response { ok: false, error: Some(e.into()), services: None, log: None }
    }
}

/// Sends `req` to cairn-init at `socket` and reads its response (a refusal is `Ok` with
/// `ok: false`; an error is a failure to talk at all).
pub fn call(socket: &Path, req: &Request) -> Result<Response, CallError> {
    let stream = UnixStream::connect(socket)
        .map_err(|source| CallError::Connect { socket: socket.display().to_string(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(CallError::Send)?;
    let mut text = serde_json::to_string(req).expect("a request serializes");
    text.push('\n');
    (&stream).write_all(text.as_bytes()).map_err(CallError::Send)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(CallError::Receive)?;
    serde_json::from_str(&line).map_err(|source| CallError::BadResponse { line, source })
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connecting to cairn-init at {socket}: {source}")]
    Connect { socket: String, source: std::io::Error },
    #[error("sending request: {0}")]
    Send(std::io::Error),
    #[error("reading response: {0}")]
    Receive(std::io::Error),
    #[error("bad response {line:?}: {source}")]
    BadResponse { line: String, source: serde_json::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r: Request = serde_json::from_str(r#"{"cmd":"log","service":"sshd","lines":5}"#).unwrap();
        assert_eq!(r, Request::Log { service: "sshd".into(), lines: 5 });
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
    }
}

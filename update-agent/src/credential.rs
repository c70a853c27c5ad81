//! The host's credential on its rollout server. The first check-in trades the group's
//! enrollment token for a credential of the host's own, kept root-only on ROOT
//! (`/var/lib/cairn/agent/credential.json`) and sent as a bearer token with every check-in,
//! event and lock request. Moving to another group enrolls again, presenting the credential
//! held; a credential the server no longer knows (the host was forgotten) is dropped and the
//! host enrolls afresh at its next check-in.

use crate::http::network;
use crate::ports::{FetchError, SourceError};
use cairn_release::checkin::{ENROLL_PATH, EnrollReply, EnrollRequest, FORMAT};
use cairn_release::update_config::Secret;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

pub const CREDENTIAL_FILE: &str = "/var/lib/cairn/agent/credential.json";

/// What is kept: the credential, and what it was issued for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    server: String,
    instance_id: String,
    group: String,
    credential: Secret,
}

pub struct Credentials {
    path: PathBuf,
    server: String,
    instance_id: String,
    group: String,
    enrollment_token: Option<Secret>,
    client: reqwest::blocking::Client,
    held: Mutex<Option<Stored>>,
}

impl Credentials {
    /// The host's credential for `server` as kept in `path` (none yet if there is none or it
    /// is unreadable: the host enrolls).
    pub fn load(
        path: PathBuf,
        server: &str,
        instance_id: &str,
        group: &str,
        enrollment_token: Option<Secret>,
        client: reqwest::blocking::Client,
    ) -> Credentials {
        let held = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Stored>(&b).ok());
        Credentials {
            path,
            server: server.trim_end_matches('/').to_string(),
            instance_id: instance_id.to_string(),
            group: group.to_string(),
            enrollment_token,
            client,
            held: Mutex::new(held),
        }
    }

    /// The credential to send, enrolling first when the host has none for this server, id and
    /// group.
    pub fn bearer(&self) -> Result<Secret, SourceError> {
        let mut held = self.held.lock().expect("credential lock");
        let ours = |s: &Stored| s.server == self.server && s.instance_id == self.instance_id;
        if let Some(s) = held.as_ref().filter(|s| ours(s) && s.group == self.group) {
            return Ok(s.credential.clone());
        }
        let fail = SourceError::fetch(ENROLL_PATH);
        let Some(token) = &self.enrollment_token else {
            return Err(fail(FetchError::Malformed(format!(
                "this host is not enrolled in group {:?} on {} and has no enrollment_token to enroll with",
                self.group, self.server
            ))));
        };
        let req = EnrollRequest {
            format: FORMAT,
            instance_id: self.instance_id.clone(),
            group: self.group.clone(),
            token: token.0.clone(),
            current: held.as_ref().filter(|s| ours(s)).map(|s| s.credential.0.clone()),
        };
        let resp = self
            .client
            .post(format!("{}{ENROLL_PATH}", self.server))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&req).expect("serializable"))
            .send()
            .map_err(|e| fail(network(e)))?;
        let status = resp.status();
        let mut text = Vec::new();
        resp.take(64 << 10).read_to_end(&mut text).map_err(|e| fail(e.into()))?;
        if !status.is_success() {
            return Err(fail(FetchError::Answer { status: status.as_u16(), detail: error_detail(&text) }));
        }
        let reply: EnrollReply = serde_json::from_slice(&text)
            .map_err(|e| fail(FetchError::Malformed(format!("the server's enrollment reply: {e}"))))?;
        let stored = Stored {
            server: self.server.clone(),
            instance_id: self.instance_id.clone(),
            group: self.group.clone(),
            credential: Secret(reply.credential),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.into()))?;
        }
        let bytes = serde_json::to_vec(&stored).expect("serializable");
        cairn_release::durable::write_atomic(&self.path, &bytes, 0o600).map_err(|e| fail(e.into()))?;
        eprintln!("cairn-agent: enrolled in group {} on {}", self.group, self.server);
        let credential = stored.credential.clone();
        *held = Some(stored);
        Ok(credential)
    }

    /// The server refused the credential (401): forget it, so the next request enrolls again.
    pub fn refused(&self) {
        *self.held.lock().expect("credential lock") = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `error` of a JSON error body, or the body.
pub fn error_detail(text: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(text).into_owned())
}

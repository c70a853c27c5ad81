//! The FleetLock client (the protocol Zincati speaks): `POST /v1/pre-reboot` takes a reboot slot
//! in the host's group, `POST /v1/steady-state` gives it back. Both are idempotent on the server,
//! so the agent simply asks again later when a request fails.

use crate::credential::Credentials;
use crate::ports::{LockError, RebootLock};
use cairn_release::update_config::Secret;
use std::io::Read;
use std::sync::Arc;

/// How the client proves its right to the group's lock.
pub enum LockAuth {
    /// Nothing: a group open to anyone.
    None,
    /// The group's token.
    Token(Secret),
    /// The host's own credential on the rollout server that serves the lock.
    Host(Arc<Credentials>),
}

pub struct FleetLockClient {
    base: String,
    id: String,
    group: String,
    client: reqwest::blocking::Client,
    auth: LockAuth,
}

impl FleetLockClient {
    pub fn new(
        base: &str,
        id: &str,
        group: &str,
        client: reqwest::blocking::Client,
        auth: LockAuth,
    ) -> FleetLockClient {
        FleetLockClient { base: base.trim_end_matches('/').into(), id: id.into(), group: group.into(), client, auth }
    }

    fn post(&self, op: &'static str) -> Result<(), LockError> {
        let body = serde_json::json!({"client_params": {"id": self.id, "group": self.group}});
        let mut req = self.client.post(format!("{}/v1/{op}", self.base));
        match &self.auth {
            LockAuth::None => {}
            LockAuth::Token(token) => req = req.bearer_auth(&token.0),
            LockAuth::Host(credentials) => {
                let credential = credentials
                    .bearer()
                    .map_err(|e| LockError::Unreachable { op, message: format!("enrolling: {e}") })?;
                req = req.bearer_auth(&credential.0);
            }
        }
        let resp = req
            .header("fleet-lock-protocol", "true")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("JSON"))
            .send()
            .map_err(|e| LockError::Unreachable { op, message: crate::http::network(e).to_string() })?;
        let status = resp.status();
        if status.as_u16() == 200 {
            return Ok(());
        }
        if let (401, LockAuth::Host(credentials)) = (status.as_u16(), &self.auth) {
            credentials.refused();
        }
        let mut text = Vec::new();
        let _ = resp.take(64 * 1024).read_to_end(&mut text);
        let reply: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        match (reply["kind"].as_str(), reply["value"].as_str()) {
            (Some(kind), Some(value)) => Err(LockError::Refused { op, kind: kind.into(), value: value.into() }),
            _ => Err(LockError::Status { op, status: status.as_u16() }),
        }
    }
}

impl RebootLock for FleetLockClient {
    fn lock(&self) -> Result<(), LockError> {
        self.post("pre-reboot")
    }

    fn unlock(&self) -> Result<(), LockError> {
        self.post("steady-state")
    }
}

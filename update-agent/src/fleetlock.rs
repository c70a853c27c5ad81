//! The FleetLock client (the protocol Zincati speaks): `POST /v1/pre-reboot` takes a reboot slot
//! in the host's group, `POST /v1/steady-state` gives it back. Both are idempotent on the server,
//! so the agent simply asks again later when a request fails.

use std::io::Read;
use std::time::Duration;

/// A cluster-wide reboot semaphore.
pub trait RebootLock: Send + Sync {
    /// Takes a slot (`Err` says why not, e.g. all slots are held).
    fn lock(&self) -> Result<(), String>;
    /// Gives the slot back (succeeds if none was held).
    fn unlock(&self) -> Result<(), String>;
}

pub struct FleetLockClient {
    base: String,
    id: String,
    group: String,
    client: reqwest::blocking::Client,
}

impl FleetLockClient {
    pub fn new(base: &str, id: &str, group: &str, timeout: Duration) -> Result<FleetLockClient, String> {
        let client = crate::http::client(timeout).map_err(|e| e.to_string())?;
        Ok(FleetLockClient { base: base.trim_end_matches('/').into(), id: id.into(), group: group.into(), client })
    }

    fn post(&self, op: &str) -> Result<(), String> {
        let body = serde_json::json!({"client_params": {"id": self.id, "group": self.group}});
        let resp = self
            .client
            .post(format!("{}/v1/{op}", self.base))
            .header("fleet-lock-protocol", "true")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("JSON"))
            .send()
            .map_err(|e| format!("{op}: {e}"))?;
        let status = resp.status();
        if status.as_u16() == 200 {
            return Ok(());
        }
        let mut text = Vec::new();
        let _ = resp.take(64 * 1024).read_to_end(&mut text);
        let reply: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        match (reply["kind"].as_str(), reply["value"].as_str()) {
            (Some(kind), Some(value)) => Err(format!("{op}: {kind}: {value}")),
            _ => Err(format!("{op}: HTTP {}", status.as_u16())),
        }
    }
}

impl RebootLock for FleetLockClient {
    fn lock(&self) -> Result<(), String> {
        self.post("pre-reboot")
    }

    fn unlock(&self) -> Result<(), String> {
        self.post("steady-state")
    }
}

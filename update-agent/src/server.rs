//! The rollout server's agent API over HTTP(S): check-ins and event reports as JSON
//! (`cairn_release::checkin`). Downloads go through `HttpTransport` like any feed.

use crate::http::network;
use crate::ports::{FetchError, SourceError};
use std::io::Read;
use std::time::Duration;

/// A rollout server over HTTP(S): `POST /v1/checkin` and `POST /v1/events` with JSON.
pub struct HttpRolloutServer {
    base: String,
    client: reqwest::blocking::Client,
}

impl HttpRolloutServer {
    pub fn new(base: &str, timeout: Duration) -> Result<HttpRolloutServer, SourceError> {
        let client = crate::http::client(timeout).map_err(|e| SourceError::fetch(base)(network(e)))?;
        Ok(HttpRolloutServer { base: base.trim_end_matches('/').to_string(), client })
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, SourceError> {
        let fail = SourceError::fetch(path);
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map_err(|e| fail(network(e)))?;
        let status = resp.status();
        let mut text = Vec::new();
        resp.take(1 << 20).read_to_end(&mut text).map_err(|e| fail(e.into()))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
            return Err(fail(FetchError::Answer { status: status.as_u16(), detail }));
        }
        Ok(text)
    }
}

impl crate::ports::RolloutServer for HttpRolloutServer {
    fn check_in(
        &self,
        checkin: &cairn_release::checkin::CheckIn,
    ) -> Result<cairn_release::checkin::CheckInReply, SourceError> {
        let body = serde_json::to_vec(checkin).expect("serializable");
        let reply = self.post(cairn_release::checkin::CHECKIN_PATH, body)?;
        serde_json::from_slice(&reply).map_err(|e| {
            SourceError::fetch(cairn_release::checkin::CHECKIN_PATH)(FetchError::Malformed(format!(
                "the server's reply: {e}"
            )))
        })
    }

    fn report(&self, event: &cairn_release::checkin::Event) -> Result<(), SourceError> {
        self.post(cairn_release::checkin::EVENTS_PATH, serde_json::to_vec(event).expect("serializable")).map(drop)
    }
}

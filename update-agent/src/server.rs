//! The rollout server's agent API over HTTP(S): check-ins and event reports as JSON
//! (`cairn_release::checkin`), each with the host's credential. Downloads go through
//! `HttpTransport` like any feed.

use crate::credential::{Credentials, error_detail};
use crate::http::network;
use crate::ports::{FetchError, SourceError};
use std::io::Read;
use std::sync::Arc;

/// A rollout server over HTTP(S): `POST /v1/checkin` and `POST /v1/events` with JSON.
pub struct HttpRolloutServer {
    base: String,
    client: reqwest::blocking::Client,
    credentials: Arc<Credentials>,
}

impl HttpRolloutServer {
    pub fn new(base: &str, client: reqwest::blocking::Client, credentials: Arc<Credentials>) -> HttpRolloutServer {
        HttpRolloutServer { base: base.trim_end_matches('/').to_string(), client, credentials }
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, SourceError> {
        let fail = SourceError::fetch(path);
        let credential = self.credentials.bearer()?;
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&credential.0)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map_err(|e| fail(network(e)))?;
        let status = resp.status();
        let mut text = Vec::new();
        resp.take(1 << 20).read_to_end(&mut text).map_err(|e| fail(e.into()))?;
        if status.as_u16() == 401 {
            self.credentials.refused();
        }
        if !status.is_success() {
            return Err(fail(FetchError::Answer { status: status.as_u16(), detail: error_detail(&text) }));
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

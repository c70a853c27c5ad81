//! EC2's instance metadata service: IMDSv2 (`PUT /latest/api/token` with a TTL header, then
//! every GET with the token), IMDSv1 (GETs without a token) when the PUT is refused with
//! 403/404/405. User data at `latest/user-data`; the hostname at `meta-data/hostname` and the
//! launch keys at `meta-data/public-keys/N/openssh-key`. One token for the whole session.

use super::http::Client;
use super::{Datasource, DatasourceError, Found, network_found};
use crate::instance::{self, InstanceMetadata};
use std::time::Instant;

const TOKEN_TTL: &str = "21600";

pub struct Ec2 {
    /// `http://169.254.169.254`, or a loopback service in tests.
    pub base: String,
}

impl Datasource for Ec2 {
    fn name(&self) -> &'static str {
        "ec2"
    }

    fn needs_network(&self) -> bool {
        true
    }

    fn fetch(&self, until: Instant) -> Result<Option<Found>, DatasourceError> {
        let c = Client::new(until)?;
        let base = self.base.trim_end_matches('/');
        let token = token(&c, base)?;
        let session = Session { c: &c, base, token: token.as_deref() };
        let user_data = session.text_or_bytes("latest/user-data")?;
        Ok(network_found(format!("ec2 {base}"), user_data, session.instance()))
    }
}

/// An IMDSv2 session token; `None` where only IMDSv1 answers (the PUT refused).
fn token(c: &Client, base: &str) -> Result<Option<String>, DatasourceError> {
    let what = "EC2 IMDSv2 token";
    let put = c.http.put(format!("{base}/latest/api/token")).header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL);
    let resp = c.send(put, what)?;
    match resp.status().as_u16() {
        200 => Ok(Some(
            resp.text()
                .map_err(|e| DatasourceError::Malformed { what: what.into(), message: e.to_string() })?
                .trim()
                .into(),
        )),
        // IMDSv1 only (or v2 disabled for PUT): ask without a token.
        403..=405 => Ok(None),
        status => Err(DatasourceError::Status { what: what.into(), status }),
    }
}

struct Session<'a> {
    c: &'a Client,
    base: &'a str,
    token: Option<&'a str>,
}

impl Session<'_> {
    fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        let get = self.c.http.get(format!("{}/{path}", self.base));
        match self.token {
            Some(t) => get.header("X-aws-ec2-metadata-token", t),
            None => get,
        }
    }

    fn text_or_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
        let what = format!("EC2 {path}");
        let resp = self.c.send(self.get(path), &what)?;
        self.c.body(resp, &what)
    }

    fn text(&self, path: &str) -> Result<Option<String>, DatasourceError> {
        self.c.text(self.get(path), &format!("EC2 {path}"))
    }

    fn instance(&self) -> Result<InstanceMetadata, DatasourceError> {
        let hostname = self.text("latest/meta-data/hostname")?;
        let mut keys = Vec::new();
        // "0=my-key-pair" per line.
        for line in self.text("latest/meta-data/public-keys/")?.unwrap_or_default().lines() {
            let index = line.split('=').next().unwrap_or("").trim().trim_end_matches('/');
            if !index.is_empty() && index.chars().all(|ch| ch.is_ascii_digit()) {
                keys.extend(self.text(&format!("latest/meta-data/public-keys/{index}/openssh-key"))?);
            }
        }
        Ok(instance::from_parts(hostname.as_deref(), &keys))
    }
}

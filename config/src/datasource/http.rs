//! The HTTP client of the network datasources: every request bounded by the source's deadline,
//! never through a proxy, bodies capped.

use super::DatasourceError;
use reqwest::blocking::{RequestBuilder, Response};
use std::time::{Duration, Instant};

/// User data larger than this is refused while it downloads.
const MAX_USER_DATA: u64 = crate::document::MAX_SIZE;

pub struct Client {
    pub http: reqwest::blocking::Client,
    deadline: Instant,
}

impl Client {
    pub fn new(deadline: Instant) -> Result<Client, DatasourceError> {
        let http = reqwest::blocking::Client::builder()
            // Metadata services are plain HTTP on a link-local address; never go through a proxy.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| DatasourceError::Unreachable { what: "HTTP client".into(), message: e.to_string() })?;
        Ok(Client { http, deadline })
    }

    fn left(&self, what: &str) -> Result<Duration, DatasourceError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DatasourceError::Deadline { what: what.into() });
        }
        Ok(left)
    }

    pub fn send(&self, req: RequestBuilder, what: &str) -> Result<Response, DatasourceError> {
        req.timeout(self.left(what)?).send().map_err(|e| match e.is_timeout() {
            true => DatasourceError::Deadline { what: what.into() },
            false => DatasourceError::Unreachable { what: what.into(), message: e.to_string() },
        })
    }

    /// A text attribute: `None` for a 404.
    pub fn text(&self, req: RequestBuilder, what: &str) -> Result<Option<String>, DatasourceError> {
        let resp = self.send(req, what)?;
        Ok(self.body(resp, what)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The body of a 200, `None` for a 404, an error otherwise.
    pub fn body(&self, resp: Response, what: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
        use std::io::Read;
        match resp.status().as_u16() {
            200 => {
                let mut body = Vec::new();
                resp.take(MAX_USER_DATA + 1)
                    .read_to_end(&mut body)
                    .map_err(|source| DatasourceError::Io { what: what.into(), source })?;
                if body.len() as u64 > MAX_USER_DATA {
                    return Err(DatasourceError::TooLarge { what: what.into(), max: MAX_USER_DATA });
                }
                Ok(Some(body))
            }
            404 => Ok(None),
            status => Err(DatasourceError::Status { what: what.into(), status }),
        }
    }

    /// GET `url`'s body (`None` for a 404).
    pub fn get(&self, url: &str, what: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
        let resp = self.send(self.http.get(url), what)?;
        self.body(resp, what)
    }
}

//! User data from a cloud's metadata service or a URL, each request bounded by a deadline so
//! a missing service costs no more than that. `Ok(None)`: the service answered that this
//! instance has no user data (404), which is not an error.
//!
//! - EC2: IMDSv2 (`PUT /latest/api/token` with a TTL header, then `GET /latest/user-data` with
//!   the token); IMDSv1 (the GET without a token) when the PUT is refused with 403/404/405.
//! - GCE: `GET /computeMetadata/v1/instance/attributes/user-data` with `Metadata-Flavor: Google`.
//! - OpenStack: `GET /openstack/latest/user_data`.
//! - A URL (`cairn.config_url=` on the kernel command line): `GET` it.

use crate::instance::{self, InstanceMetadata};
use std::time::{Duration, Instant};

/// Where the link-local metadata services listen.
pub const LINK_LOCAL: &str = "http://169.254.169.254";

const TOKEN_TTL: &str = "21600";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Ec2,
    Gce,
    OpenStack,
    Url,
}

#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// User data larger than this is refused while it downloads.
const MAX_USER_DATA: u64 = crate::document::MAX_SIZE;

struct Client {
    http: reqwest::blocking::Client,
    deadline: Instant,
}

impl Client {
    fn new(deadline: Instant) -> Result<Client, Error> {
        let http = reqwest::blocking::Client::builder()
            // Metadata services are plain HTTP on a link-local address; never go through a proxy.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| Error(format!("HTTP client: {e}")))?;
        Ok(Client { http, deadline })
    }

    fn left(&self) -> Result<Duration, Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error("deadline passed".into()));
        }
        Ok(left)
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder, what: &str) -> Result<reqwest::blocking::Response, Error> {
        req.timeout(self.left()?).send().map_err(|e| {
            let why = if e.is_timeout() { "no answer before the deadline".to_string() } else { e.to_string() };
            Error(format!("{what}: {why}"))
        })
    }

    /// An IMDSv2 session token; `None` where only IMDSv1 answers (the PUT refused).
    fn ec2_token(&self, base: &str) -> Result<Option<String>, Error> {
        let what = "EC2 IMDSv2 token";
        let put =
            self.http.put(format!("{base}/latest/api/token")).header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL);
        let resp = self.send(put, what)?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp.text().map_err(|e| Error(format!("{what}: {e}")))?.trim().to_string())),
            // IMDSv1 only (or v2 disabled for PUT): ask without a token.
            403..=405 => Ok(None),
            status => Err(Error(format!("{what}: HTTP {status}"))),
        }
    }

    fn ec2_get(&self, base: &str, token: Option<&str>, path: &str) -> reqwest::blocking::RequestBuilder {
        let get = self.http.get(format!("{base}/{path}"));
        match token {
            Some(t) => get.header("X-aws-ec2-metadata-token", t),
            None => get,
        }
    }

    /// GCE's metadata server wants its flavour header on every request.
    fn gce_get(&self, base: &str, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http.get(format!("{base}/computeMetadata/v1/{path}")).header("Metadata-Flavor", "Google")
    }

    /// A text attribute: `None` for a 404.
    fn text(&self, req: reqwest::blocking::RequestBuilder, what: &str) -> Result<Option<String>, Error> {
        let resp = self.send(req, what)?;
        Ok(self.body(resp, what)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The body of a 200, `None` for a 404, an error otherwise.
    fn body(&self, resp: reqwest::blocking::Response, what: &str) -> Result<Option<Vec<u8>>, Error> {
        use std::io::Read;
        match resp.status().as_u16() {
            200 => {
                let mut body = Vec::new();
                resp.take(MAX_USER_DATA + 1).read_to_end(&mut body).map_err(|e| Error(format!("{what}: {e}")))?;
                if body.len() as u64 > MAX_USER_DATA {
                    return Err(Error(format!("{what}: user data over {} MiB", MAX_USER_DATA >> 20)));
                }
                Ok(Some(body))
            }
            404 => Ok(None),
            status => Err(Error(format!("{what}: HTTP {status}"))),
        }
    }
}

/// What a metadata service (or the URL) said: its user data (`None`: it has none, a 404) and
/// the instance's hostname and launch keys. A failure of the second is kept apart: the user
/// data is used regardless.
#[derive(Debug)]
pub struct Fetched {
    pub user_data: Option<Vec<u8>>,
    pub instance: Result<InstanceMetadata, Error>,
}

/// Fetches from `service` at `base` (`LINK_LOCAL`, or the URL itself for `Service::Url`)
/// before `deadline`: the user data, then the instance metadata, in one session (one EC2 token).
pub fn fetch(service: Service, base: &str, deadline: Instant) -> Result<Fetched, Error> {
    let c = Client::new(deadline)?;
    let base = base.trim_end_matches('/');
    let token = match service {
        Service::Ec2 => c.ec2_token(base)?,
        _ => None,
    };
    let user_data = user_data(&c, service, base, token.as_deref())?;
    Ok(Fetched { user_data, instance: instance(&c, service, base, token.as_deref()) })
}

fn user_data(c: &Client, service: Service, base: &str, token: Option<&str>) -> Result<Option<Vec<u8>>, Error> {
    let (req, what) = match service {
        Service::Ec2 => (c.ec2_get(base, token, "latest/user-data"), "EC2 user-data".to_string()),
        Service::Gce => (c.gce_get(base, "instance/attributes/user-data"), "GCE user-data".to_string()),
        Service::OpenStack => {
            (c.http.get(format!("{base}/openstack/latest/user_data")), "OpenStack user_data".to_string())
        }
        Service::Url => (c.http.get(base), format!("config URL {base}")),
    };
    let resp = c.send(req, &what)?;
    c.body(resp, &what)
}

/// The instance's hostname and launch SSH keys (`Service::Url` has none): EC2
/// `meta-data/hostname` and `meta-data/public-keys/N/openssh-key`; GCE `instance/hostname` and
/// the instance's and project's `ssh-keys` (unless the instance blocks project keys);
/// OpenStack `meta_data.json`.
fn instance(c: &Client, service: Service, base: &str, token: Option<&str>) -> Result<InstanceMetadata, Error> {
    match service {
        Service::Ec2 => {
            let get = |path: &str| c.text(c.ec2_get(base, token, path), &format!("EC2 {path}"));
            let hostname = get("latest/meta-data/hostname")?;
            let mut keys = Vec::new();
            // "0=my-key-pair" per line.
            for line in get("latest/meta-data/public-keys/")?.unwrap_or_default().lines() {
                let index = line.split('=').next().unwrap_or("").trim().trim_end_matches('/');
                if !index.is_empty() && index.chars().all(|ch| ch.is_ascii_digit()) {
                    keys.extend(get(&format!("latest/meta-data/public-keys/{index}/openssh-key"))?);
                }
            }
            Ok(instance::from_parts(hostname.as_deref(), &keys))
        }
        Service::Gce => {
            let get = |path: &str| c.text(c.gce_get(base, path), &format!("GCE {path}"));
            let hostname = get("instance/hostname")?;
            let mut keys = instance::gce_keys(&get("instance/attributes/ssh-keys")?.unwrap_or_default());
            if get("instance/attributes/block-project-ssh-keys")?.is_none_or(|b| b.trim() != "true") {
                keys.extend(instance::gce_keys(&get("project/attributes/ssh-keys")?.unwrap_or_default()));
            }
            Ok(instance::from_parts(hostname.as_deref(), &keys))
        }
        Service::OpenStack => {
            let what = "OpenStack meta_data.json";
            let resp = c.send(c.http.get(format!("{base}/openstack/latest/meta_data.json")), what)?;
            match c.body(resp, what)? {
                Some(json) => instance::from_openstack_json(&json).map_err(Error),
                None => Ok(InstanceMetadata::default()),
            }
        }
        Service::Url => Ok(InstanceMetadata::default()),
    }
}

//! The `cairn:` section's `services` (for cairn-init, as `/etc/cairn/services/NAME.toml`) and
//! `containers` (for containerd).

use crate::container::options::{Health, Network, Port, User, Volume};
use crate::walk::{Fields, Value, Walker};
use cairn_release::service_file::{Ready, Restart, ServiceFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const KEYS: &[&str] = &["update", "services", "containers", "registries", "ntp", "network"];

/// The keys of a `cairn.services` entry: its name, and the fields of cairn-init's service files
/// (`cairn_release::service_file`) but `tty` (a development image's console shell, not for
/// documents).
pub fn service_keys() -> Vec<&'static str> {
    let fields = cairn_release::service_file::FIELDS.iter().copied().filter(|k| *k != "tty");
    std::iter::once("name").chain(fields).collect()
}

pub const CONTAINER_KEYS: &[&str] = &[
    "name",
    "image",
    "sha256",
    "command",
    "environment",
    "restart",
    "network",
    "ports",
    "volumes",
    "user",
    "working_dir",
    "stop_timeout",
    "health",
];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    /// The service file, as cairn-init reads it.
    pub file: ServiceFile,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    /// A registry reference (`nginx`, `registry:5000/app:1`, `app@sha256:...`), or an OCI
    /// archive: an absolute path on the host, or an http(s) URL to fetch it from.
    pub image: String,
    /// The archive's SHA-256, checked after a fetch: needed for a plain-http URL, which anyone
    /// on the path could otherwise answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub restart: String,
    /// Left out of the spec file when it is the default, so a spec written before networks
    /// existed keeps its digest (and its pinned image).
    #[serde(default, skip_serializing_if = "Network::is_bridge")]
    pub network: Network,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// How long the container has after SIGTERM before it is killed (a duration, `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// The name of the init service that runs container `name`.
pub fn container_service(name: &str) -> String {
    format!("container-{name}")
}

/// A service or container name: it becomes a file name and a containerd id.
fn name(w: &mut Walker, f: &Fields, item: Value, item_path: &str) -> Option<String> {
    let Some((v, p)) = f.get("name") else {
        w.error(item.at, item_path, "needs a name");
        return None;
    };
    let n = w.text(v, &p)?;
    let ok = n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        w.error(v.at, &p, format!("{n:?}: letters, digits, '-', '_' and '.', starting with a letter or digit"));
        return None;
    }
    Some(n)
}

fn restart(w: &mut Walker, v: Value, path: &str) -> Option<String> {
    let r = w.text(v, path)?.replace('_', "-");
    if Restart::parse(&r).is_some() {
        return Some(r);
    }
    w.error(v.at, path, format!("{r:?} is not one of {}", Restart::NAMES.join(", ")));
    None
}

fn command(w: &mut Walker, v: Value, path: &str) -> Option<Vec<String>> {
    let c = w.strings(v, path)?;
    if c.first().is_none_or(|p| !p.starts_with('/')) {
        w.error(v.at, path, "the first word must be the program's absolute path");
        return None;
    }
    Some(c)
}

pub fn service(w: &mut Walker, f: &Fields, item: Value, item_path: &str) -> Option<Service> {
    let before = w.diagnostics.len();
    let name = name(w, f, item, item_path);
    let mut file = ServiceFile::default();
    match f.get("command") {
        Some((v, p)) => file.command = command(w, v, &p).unwrap_or_default(),
        None => w.error(item.at, item_path, "needs a command"),
    }
    let text = |w: &mut Walker, key: &str| f.get(key).and_then(|(v, p)| w.text(v, &p));
    file.description = text(w, "description");
    file.user = text(w, "user");
    file.working_directory = f.get("working_directory").and_then(|(v, p)| w.absolute_path(v, &p)).map(Into::into);
    file.environment = f.get("environment").and_then(|(v, p)| w.string_map(v, &p)).unwrap_or_default();
    file.restart = f.get("restart").and_then(|(v, p)| restart(w, v, &p)).and_then(|r| Restart::parse(&r));
    let duration = |w: &mut Walker, key: &str| f.get(key).and_then(|(v, p)| w.duration(v, &p));
    file.restart_delay = duration(w, "restart_delay");
    file.restart_delay_max = duration(w, "restart_delay_max");
    file.stop_timeout = duration(w, "stop_timeout");
    file.after = f.get("after").and_then(|(v, p)| w.strings(v, &p)).unwrap_or_default();
    file.required = f.get("required").and_then(|(v, p)| w.bool(v, &p));
    file.enabled = f.get("enabled").and_then(|(v, p)| w.bool(v, &p));
    file.log_max_bytes = f.get("log_max_bytes").and_then(|(v, p)| w.u32(v, &p)).map(u64::from);
    if let Some((v, p)) = f.get("ready") {
        // "process", {unix_socket: PATH} or {tcp_port: N}, as in service files.
        match v.node {
            marked_yaml::Node::Scalar(s) if s.as_str() == "process" => file.ready = Some(Ready::Process),
            marked_yaml::Node::Mapping(_) => {
                if let Some(r) = w.mapping(v, &p, &["unix_socket", "tcp_port"]) {
                    if let Some((v, p)) = r.get("unix_socket")
                        && let Some(s) = w.text(v, &p)
                    {
                        file.ready = Some(Ready::UnixSocket(s.into()));
                    } else if let Some((v, p)) = r.get("tcp_port")
                        && let Some(n) = w.u32(v, &p)
                    {
                        match u16::try_from(n) {
                            Ok(port) if port > 0 => file.ready = Some(Ready::TcpPort(port)),
                            _ => w.error(v.at, &p, "must be 1-65535"),
                        }
                    }
                }
            }
            _ => w.error(v.at, &p, "expected \"process\", {unix_socket: PATH} or {tcp_port: N}"),
        }
    }
    let clean = !crate::diag::has_errors(&w.diagnostics[before..]);
    Some(Service { name: name?, file }).filter(|_| clean)
}

pub fn container(w: &mut Walker, f: &Fields, item: Value, item_path: &str) -> Option<Container> {
    let before = w.diagnostics.len();
    let name = name(w, f, item, item_path);
    let image = match f.get("image") {
        Some((v, p)) => w.text(v, &p).filter(|i| match crate::container::check_image(i) {
            Ok(_) => true,
            Err(e) => {
                w.error(v.at, &p, e);
                false
            }
        }),
        None => {
            w.error(item.at, item_path, "needs an image (a registry reference, or an OCI archive's path or URL)");
            None
        }
    };
    let sha256 = f.get("sha256").and_then(|(v, p)| {
        let digest = w.text(v, &p)?.to_ascii_lowercase();
        let digest = digest.strip_prefix("sha256:").unwrap_or(&digest).to_string();
        if digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(digest);
        }
        w.error(v.at, &p, "not a SHA-256 digest (64 hexadecimal digits)");
        None
    });
    if let Some(i) = &image
        && i.starts_with("http://")
        && sha256.is_none()
        && f.get("sha256").is_none()
        && let Some((v, p)) = f.get("image")
    {
        w.error(v.at, &p, "a plain-http URL needs the archive's sha256 beside it (or use https)");
    }
    let command = f.get("command").and_then(|(v, p)| w.strings(v, &p)).unwrap_or_default();
    let environment = f.get("environment").and_then(|(v, p)| w.string_map(v, &p)).unwrap_or_default();
    let restart = f.get("restart").map_or(Some("always".to_string()), |(v, p)| restart(w, v, &p));
    let network = f.get("network").map_or(Some(Network::default()), |(v, p)| {
        let n = w.text(v, &p)?;
        let network = Network::parse(&n);
        if network.is_none() {
            w.error(v.at, &p, format!("{n:?} is not one of {}", Network::NAMES.join(", ")));
        }
        network
    });
    let ports: Vec<Port> = f.get("ports").and_then(|(v, p)| parsed_list(w, v, &p)).unwrap_or_default();
    if !ports.is_empty()
        && network.is_some_and(|n| !n.is_bridge())
        && let Some((v, p)) = f.get("ports")
    {
        w.error(v.at, &p, "ports are published from the bridge network only (network: bridge)");
    }
    let volumes = f.get("volumes").and_then(|(v, p)| parsed_list(w, v, &p)).unwrap_or_default();
    let user = f.get("user").and_then(|(v, p)| parsed(w, v, &p));
    let working_dir = f.get("working_dir").and_then(|(v, p)| w.absolute_path(v, &p));
    let stop_timeout = f.get("stop_timeout").and_then(|(v, p)| w.duration(v, &p));
    let health = f.get("health").and_then(|(v, p)| health(w, v, &p));
    let clean = !crate::diag::has_errors(&w.diagnostics[before..]);
    if !clean {
        return None;
    }
    Some(Container {
        name: name?,
        image: image?,
        sha256,
        command,
        environment,
        restart: restart?,
        network: network?,
        ports,
        volumes,
        user,
        working_dir,
        stop_timeout,
        health,
    })
}

fn health(w: &mut Walker, v: Value, path: &str) -> Option<Health> {
    let f = w.mapping(v, path, Health::KEYS)?;
    let before = w.diagnostics.len();
    let command = match f.get("command") {
        Some((v, p)) => w.strings(v, &p).filter(|c| {
            if c.is_empty() {
                w.error(v.at, &p, "needs at least the program");
            }
            !c.is_empty()
        }),
        None => {
            w.error(v.at, path, "needs a command");
            None
        }
    };
    let interval = f.get("interval").and_then(|(v, p)| w.duration(v, &p));
    let timeout = f.get("timeout").and_then(|(v, p)| w.duration(v, &p));
    let retries = f.get("retries").and_then(|(v, p)| {
        let n = w.u32(v, &p)?;
        if n == 0 {
            w.error(v.at, &p, "must be at least 1");
            return None;
        }
        Some(n)
    });
    if crate::diag::has_errors(&w.diagnostics[before..]) {
        return None;
    }
    Some(Health { command: command?, interval, timeout, retries })
}

/// A text value read by its type's `FromStr`, whose message says what is wrong.
fn parsed<T: std::str::FromStr<Err = String>>(w: &mut Walker, v: Value, path: &str) -> Option<T> {
    let s = w.text(v, path)?;
    s.parse().map_err(|e: String| w.error(v.at, path, e)).ok()
}

/// A list of text values, each read by its type's `FromStr`.
fn parsed_list<T: std::str::FromStr<Err = String>>(w: &mut Walker, v: Value, path: &str) -> Option<Vec<T>> {
    let items = w.list(v, path)?;
    let all: Vec<Option<T>> = items.into_iter().map(|(item, p)| parsed(w, item, &p)).collect();
    all.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cloud-config accepts exactly the service file's fields (but the console-only `tty`).
    #[test]
    fn service_keys_are_the_service_files_fields() {
        let keys = service_keys();
        assert_eq!(keys[0], "name");
        assert!(!keys.contains(&"tty"));
        for field in cairn_release::service_file::FIELDS.iter().filter(|f| **f != "tty") {
            assert!(keys.contains(field), "{field}");
        }
        assert_eq!(keys.len(), cairn_release::service_file::FIELDS.len());
    }
}

//! The `cairn:` section's `services` (for cairn-init, as `/etc/cairn/services/NAME.toml`) and
//! `containers` (for containerd).

use crate::walk::{Fields, Value, Walker};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const KEYS: &[&str] = &["update", "services", "containers"];

/// The fields of cairn-init's service files (docs/services.md), plus the name.
pub const SERVICE_KEYS: &[&str] = &[
    "name",
    "description",
    "command",
    "environment",
    "working_directory",
    "user",
    "restart",
    "restart_delay",
    "restart_delay_max",
    "after",
    "ready",
    "required",
    "stop_timeout",
    "log_max_bytes",
    "enabled",
];

pub const CONTAINER_KEYS: &[&str] = &["name", "image", "command", "environment", "restart"];

const RESTARTS: &[&str] = &["always", "on-failure", "never"];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    /// The service file, as cairn-init reads it.
    pub file: toml::Table,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    /// An OCI archive: an absolute path on the host, or an http(s) URL to fetch it from.
    pub image: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub restart: String,
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
    if RESTARTS.contains(&r.as_str()) {
        return Some(r);
    }
    w.error(v.at, path, format!("{r:?} is not one of always, on-failure, never"));
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
    let mut file = toml::Table::new();
    let mut put = |key: &str, value: toml::Value| {
        file.insert(key.to_string(), value);
    };
    match f.get("command") {
        Some((v, p)) => {
            if let Some(c) = command(w, v, &p) {
                put("command", c.into());
            }
        }
        None => w.error(item.at, item_path, "needs a command"),
    }
    for key in ["description", "user"] {
        if let Some((v, p)) = f.get(key)
            && let Some(s) = w.text(v, &p)
        {
            put(key, s.into());
        }
    }
    if let Some((v, p)) = f.get("working_directory")
        && let Some(d) = w.absolute_path(v, &p)
    {
        put("working_directory", d.into());
    }
    if let Some((v, p)) = f.get("environment")
        && let Some(env) = w.string_map(v, &p)
    {
        put("environment", toml::Value::Table(env.into_iter().map(|(k, v)| (k, v.into())).collect()));
    }
    if let Some((v, p)) = f.get("restart")
        && let Some(r) = restart(w, v, &p)
    {
        put("restart", r.into());
    }
    for key in ["restart_delay", "restart_delay_max", "stop_timeout"] {
        if let Some((v, p)) = f.get(key)
            && let Some(d) = w.duration(v, &p)
        {
            put(key, d.into());
        }
    }
    if let Some((v, p)) = f.get("after")
        && let Some(a) = w.strings(v, &p)
    {
        put("after", a.into());
    }
    for key in ["required", "enabled"] {
        if let Some((v, p)) = f.get(key)
            && let Some(b) = w.bool(v, &p)
        {
            put(key, b.into());
        }
    }
    if let Some((v, p)) = f.get("log_max_bytes")
        && let Some(n) = w.u32(v, &p)
    {
        put("log_max_bytes", i64::from(n).into());
    }
    if let Some((v, p)) = f.get("ready") {
        // "process", {unix_socket: PATH} or {tcp_port: N}, as in service files.
        match v.node {
            marked_yaml::Node::Scalar(s) if s.as_str() == "process" => put("ready", "process".into()),
            marked_yaml::Node::Mapping(_) => {
                if let Some(r) = w.mapping(v, &p, &["unix_socket", "tcp_port"]) {
                    if let Some((v, p)) = r.get("unix_socket")
                        && let Some(s) = w.text(v, &p)
                    {
                        put("ready", toml::Value::Table([("unix_socket".to_string(), s.into())].into_iter().collect()));
                    } else if let Some((v, p)) = r.get("tcp_port")
                        && let Some(n) = w.u32(v, &p)
                    {
                        if (1..=65535).contains(&n) {
                            let port = toml::Value::Integer(i64::from(n));
                            put("ready", toml::Value::Table([("tcp_port".to_string(), port)].into_iter().collect()));
                        } else {
                            w.error(v.at, &p, "must be 1-65535");
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
        Some((v, p)) => w.text(v, &p).filter(|i| {
            let ok = i.starts_with('/') || i.starts_with("http://") || i.starts_with("https://");
            if !ok {
                w.error(v.at, &p, format!("{i:?}: an OCI archive's absolute path or http(s) URL"));
            }
            ok
        }),
        None => {
            w.error(item.at, item_path, "needs an image (an OCI archive's path or URL)");
            None
        }
    };
    let command = f.get("command").and_then(|(v, p)| w.strings(v, &p)).unwrap_or_default();
    let environment = f.get("environment").and_then(|(v, p)| w.string_map(v, &p)).unwrap_or_default();
    let restart = f.get("restart").map_or(Some("always".to_string()), |(v, p)| restart(w, v, &p));
    let clean = !crate::diag::has_errors(&w.diagnostics[before..]);
    if !clean {
        return None;
    }
    Some(Container { name: name?, image: image?, command, environment, restart: restart? })
}

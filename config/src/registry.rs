//! `cairn.registries`: how containerd reaches each registry, in containerd's own terms. Each
//! registry gets a `hosts.toml` under `/etc/containerd/certs.d/HOST/` (its mirrors, tried first;
//! plain HTTP or a CA of its own only where the config says so for that registry). Credentials
//! are kept root-only in `/etc/cairn/registry-auth.toml`; the container runner hands them to
//! containerd with each pull over its socket, never in an argument or a log line.

use crate::walk::{Fields, Value, Walker};
use cairn_release::update_config::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const REGISTRY_KEYS: &[&str] = &["mirrors", "insecure", "ca", "username", "password"];

/// containerd's registry host directory (`config_path` of its CRI plugin).
pub const HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// The credentials of registries that have them: root's alone.
pub const AUTH_FILE: &str = "/etc/cairn/registry-auth.toml";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// As images name it: `docker.io`, `registry.example.com`, `10.0.2.2:5000`.
    pub host: String,
    /// Base URLs tried before the registry itself, in order.
    pub mirrors: Vec<String>,
    /// Plain HTTP (and no certificate check) for this registry and its mirrors.
    pub insecure: bool,
    /// A CA certificate (PEM) for this registry and its mirrors.
    pub ca: Option<String>,
    pub credentials: Option<Credentials>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// The file of credentials, by registry host.
pub type AuthFile = BTreeMap<String, Credentials>;

/// A registry host as image references name it: a domain or an address, and a port.
fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.contains(':') => (n, Some(p)),
        _ => (h, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    name_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

/// `cairn.registries`: a mapping of registry host to its settings.
pub fn registries(w: &mut Walker, v: Value, path: &str) -> Vec<Registry> {
    let mut out = Vec::new();
    let Some(entries) = w.entries(v, path) else { return out };
    for (host, value, p) in entries {
        if !valid_host(&host) {
            w.error(value.at, &p, format!("{host:?} is not a registry host (a domain or an address, and a port)"));
            continue;
        }
        if let Some(f) = w.mapping(value, &p, REGISTRY_KEYS)
            && let Some(r) = registry(w, &f, host, value, &p)
        {
            out.push(r);
        }
    }
    out
}

fn registry(w: &mut Walker, f: &Fields, host: String, item: Value, path: &str) -> Option<Registry> {
    let before = w.diagnostics.len();
    let insecure = f.get("insecure").and_then(|(v, p)| w.bool(v, &p)).unwrap_or(false);
    let mut mirrors = Vec::new();
    if let Some((v, p)) = f.get("mirrors") {
        for (m, mp) in w.list(v, &p).unwrap_or_default() {
            let Some(url) = w.text(m, &mp) else { continue };
            let base = url.trim_end_matches('/');
            let plain = base.strip_prefix("http://");
            let rest = plain.or_else(|| base.strip_prefix("https://"));
            match rest {
                Some(r) if valid_host(r.split('/').next().unwrap_or_default()) => {
                    if plain.is_some() && !insecure {
                        w.error(m.at, &mp, format!("{url:?} is plain HTTP: only with `insecure: true` for {host:?}"));
                    } else {
                        mirrors.push(base.to_string());
                    }
                }
                _ => w.error(m.at, &mp, format!("{url:?}: a mirror is an http(s) URL")),
            }
        }
    }
    let ca = f.get("ca").and_then(|(v, p)| {
        let pem = w.text(v, &p)?;
        if pem.contains("-----BEGIN CERTIFICATE-----") {
            return Some(pem);
        }
        w.error(v.at, &p, "not a PEM certificate (-----BEGIN CERTIFICATE-----)");
        None
    });
    let username = f.get("username").and_then(|(v, p)| w.text(v, &p));
    let password = f.get("password").and_then(|(v, p)| w.text(v, &p));
    let credentials = match (username, password) {
        (Some(username), Some(password)) => Some(Credentials { username, password: Secret(password) }),
        (None, None) => None,
        _ => {
            w.error(item.at, path, "username and password go together");
            None
        }
    };
    if crate::diag::has_errors(&w.diagnostics[before..]) {
        return None;
    }
    Some(Registry { host, mirrors, insecure, ca, credentials })
}

/// Where the registry itself is: Docker Hub's API is not at `docker.io`.
pub fn server_url(r: &Registry) -> String {
    let scheme = if r.insecure { "http" } else { "https" };
    match r.host.as_str() {
        "docker.io" => "https://registry-1.docker.io".to_string(),
        host => format!("{scheme}://{host}"),
    }
}

/// The path of the registry's CA certificate, when it has one.
pub fn ca_path(r: &Registry) -> String {
    format!("{HOSTS_DIR}/{}/ca.crt", r.host)
}

/// containerd's `hosts.toml` for `r` (containerd's docs/hosts.md): the mirrors first, for
/// pulling and resolving, then the registry itself (`server`).
pub fn hosts_toml(r: &Registry, mark: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = format!("{mark}server = {}\n", quote(&server_url(r)));
    let mut hosts: Vec<String> = r.mirrors.clone();
    if r.insecure || r.ca.is_some() {
        // The registry itself over plain HTTP, or with its own CA, needs its own entry too.
        hosts.push(server_url(r));
    }
    for h in hosts {
        out.push_str(&format!("\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n", quote(&h)));
        if r.ca.is_some() {
            out.push_str(&format!("  ca = {}\n", quote(&ca_path(r))));
        }
        if r.insecure {
            out.push_str("  skip_verify = true\n");
        }
    }
    out
}

/// The credentials file's content, or `None` when no registry has credentials.
pub fn auth_file(registries: &[Registry], mark: &str) -> Option<String> {
    let auth: AuthFile = registries.iter().filter_map(|r| Some((r.host.clone(), r.credentials.clone()?))).collect();
    (!auth.is_empty()).then(|| format!("{mark}{}", toml::to_string(&auth).expect("credentials serialize")))
}

/// Reads the credentials file (root's); a missing file is no credentials.
pub fn read_auth(path: &std::path::Path) -> Result<AuthFile, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(host: &str) -> Registry {
        Registry { host: host.into(), mirrors: vec![], insecure: false, ca: None, credentials: None }
    }

    #[test]
    fn hosts_are_domains_or_addresses_with_a_port() {
        for ok in ["docker.io", "registry.example.com", "10.0.2.2:5000", "localhost:5000", "quay.io"] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in ["", "../etc", "a b", "host:0", "host:99999", "-x.com", "x/y", "host:port"] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_toml_tries_mirrors_first_and_plain_http_only_when_insecure() {
        let hub = Registry { mirrors: vec!["https://mirror.internal:5000".into()], ..reg("docker.io") };
        let text = hosts_toml(&hub, "# mark\n");
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://registry-1.docker.io"));
        let mirror = &doc["host"]["https://mirror.internal:5000"];
        assert_eq!(mirror["capabilities"].as_array().unwrap().len(), 2);
        assert!(mirror.get("skip_verify").is_none());
        let local = Registry { insecure: true, ..reg("10.0.2.2:5000") };
        let doc: toml::Table = toml::from_str(&hosts_toml(&local, "")).unwrap();
        assert_eq!(doc["server"].as_str(), Some("http://10.0.2.2:5000"));
        assert_eq!(doc["host"]["http://10.0.2.2:5000"]["skip_verify"].as_bool(), Some(true));
        let private = Registry { ca: Some("-----BEGIN CERTIFICATE-----".into()), ..reg("r.example.com") };
        let doc: toml::Table = toml::from_str(&hosts_toml(&private, "")).unwrap();
        assert_eq!(
            doc["host"]["https://r.example.com"]["ca"].as_str(),
            Some("/etc/containerd/certs.d/r.example.com/ca.crt")
        );
    }

    #[test]
    fn only_registries_with_credentials_are_in_the_auth_file_and_debug_hides_passwords() {
        let with = Registry {
            credentials: Some(Credentials { username: "bot".into(), password: Secret("hunter2".into()) }),
            ..reg("r.example.com")
        };
        assert_eq!(auth_file(&[reg("docker.io")], ""), None);
        let text = auth_file(&[reg("docker.io"), with.clone()], "").unwrap();
        let back: AuthFile = toml::from_str(&text).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), ["r.example.com"]);
        assert_eq!(back["r.example.com"].password.0, "hunter2");
        assert!(!format!("{with:?}").contains("hunter2"));
    }
}

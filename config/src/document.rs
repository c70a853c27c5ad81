//! A user-data document: recognised (`#cloud-config`, gzip), parsed as YAML with positions,
//! read into a `CloudConfig` with every problem reported at once.

use crate::cairn::{self, Container, Service};
use crate::diag::{self, Diagnostic};
use crate::files::{self, WriteFile};
use crate::update;
use crate::users::{self, User};
use crate::walk::{At, Value, Walker, at};
use cairn_release::update_config::UpdateSettings;
use marked_yaml::{LoadError, LoaderOptions, Node};
use serde::Serialize;
use std::io::Read;

pub const HEADER: &str = "#cloud-config";

/// User data larger than this is refused (and, gzip-compressed, once decompressed).
pub const MAX_SIZE: u64 = 16 << 20;
/// Lists and mappings nested deeper than this are refused before the tree is built: a deep
/// tree would overflow the stack, and no real cloud-config comes near it.
pub const MAX_DEPTH: usize = 64;

pub const KEYS: &[&str] =
    &["hostname", "ssh_authorized_keys", "users", "write_files", "manage_etc_hosts", "coreos", "cairn"];
pub const COREOS_KEYS: &[&str] = &["update", "locksmith", "units", "etcd", "etcd2", "fleet", "flannel", "oem"];
pub const UNIT_KEYS: &[&str] = &["name", "content", "enable", "mask", "runtime", "command", "drop_ins"];

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CloudConfig {
    pub hostname: Option<String>,
    /// Keys for the default user (`core`).
    pub ssh_authorized_keys: Vec<String>,
    pub users: Vec<User>,
    pub write_files: Vec<WriteFile>,
    /// Write `/etc/hosts` with the hostname on localhost.
    pub manage_etc_hosts: bool,
    /// The update agent's settings (`/etc/cairn/update.toml`), if any were given.
    pub update: Option<UpdateSettings>,
    pub services: Vec<Service>,
    pub containers: Vec<Container>,
    /// How containerd reaches registries (`cairn.registries`).
    pub registries: Vec<crate::registry::Registry>,
    /// chronyd's time sources (`cairn.ntp`); without it, the platform's.
    pub ntp: Option<crate::ntp::Ntp>,
    /// The interfaces' configuration (`cairn.network`, or the datasource's network file).
    pub network: Option<crate::network::NetworkConfig>,
}

/// What a document turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A cloud-config, with its warnings.
    Config(Box<CloudConfig>, Vec<Diagnostic>),
    /// Empty user data: nothing to apply.
    Empty,
    /// Refused whole: at least one error (and any warnings).
    Invalid(Vec<Diagnostic>),
}

/// A problem with the document as a whole (reported at its start).
impl Parsed {
    /// Whether a host would apply nothing from the document.
    pub fn is_refused(&self) -> bool {
        matches!(self, Parsed::Invalid(_))
    }

    /// The errors and warnings, in document order.
    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        match self {
            Parsed::Config(_, d) | Parsed::Invalid(d) => d,
            Parsed::Empty => Vec::new(),
        }
    }
}

fn whole(message: impl Into<String>) -> Parsed {
    Parsed::Invalid(vec![Diagnostic {
        severity: diag::Severity::Error,
        line: 1,
        column: 1,
        path: String::new(),
        message: message.into(),
    }])
}

/// Gunzips user data that starts with gzip's magic; other data is returned as it is.
fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    if !data.starts_with(&[0x1f, 0x8b]) {
        return Ok(data.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_SIZE + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip-compressed user data that does not decompress: {e}"))?;
    if out.len() as u64 > MAX_SIZE {
        return Err(format!("user data over {} MiB once decompressed", MAX_SIZE >> 20));
    }
    Ok(out)
}

fn load_error(e: &LoadError) -> Diagnostic {
    let (marker, message) = match e {
        LoadError::TopLevelMustBeMapping(m) => (Some(*m), "the document must be a mapping of keys".to_string()),
        LoadError::TopLevelMustBeSequence(m) => (Some(*m), "unexpected top level".to_string()),
        LoadError::UnexpectedAnchor(m) => (Some(*m), "YAML anchors and aliases are not supported".to_string()),
        LoadError::MappingKeyMustBeScalar(m) => (Some(*m), "a key must be a plain string".to_string()),
        LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags (!!...) are not supported".to_string()),
        LoadError::ScanError(m, scan) => (Some(*m), format!("YAML: {}", scan.info())),
        LoadError::DuplicateKey(inner) => {
            let first = inner.prev_key.span().start().map(|m| m.line()).unwrap_or_default();
            (
                inner.key.span().start().copied(),
                format!("key {:?} appears twice (first on line {first})", inner.key.as_str()),
            )
        }
    };
    Diagnostic {
        severity: diag::Severity::Error,
        line: marker.map_or(0, |m| m.line()),
        column: marker.map_or(0, |m| m.column()),
        path: String::new(),
        message,
    }
}

/// The first list or mapping nested deeper than `MAX_DEPTH`, found by the YAML parser's
/// events (a loop, no recursion) before anything builds the tree. Syntax errors are left to
/// the loader, which reports them.
fn too_deep(text: &str) -> Option<Diagnostic> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        match parser.next_token() {
            Ok((Event::SequenceStart(..) | Event::MappingStart(..), mark)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(Diagnostic {
                        severity: diag::Severity::Error,
                        line: mark.line(),
                        column: mark.col() + 1,
                        path: String::new(),
                        message: format!("lists and mappings nested more than {MAX_DEPTH} deep"),
                    });
                }
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => depth = depth.saturating_sub(1),
            Ok((Event::StreamEnd, _)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Keeps a position inside the document: the parser reports an error at its very end one
/// line past the last, where no editor can go.
fn within(mut d: Diagnostic, text: &str) -> Diagnostic {
    let lines: Vec<&str> = text.lines().collect();
    if d.line > lines.len()
        && let Some(last) = lines.last()
    {
        d.line = lines.len();
        d.column = last.chars().count() + 1;
    }
    d
}

/// A YAML document that is not user data (a NoCloud `network-config`) as a marked tree, with
/// the same limits: no deeper than `MAX_DEPTH`, no duplicate keys.
pub fn load_yaml(text: &str) -> Result<Node, Diagnostic> {
    if let Some(too_deep) = too_deep(text) {
        return Err(too_deep);
    }
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| within(load_error(&e), text))
}

/// Reads user data: `#cloud-config` on the first line (gzip-compressed or not).
pub fn parse(data: &[u8]) -> Parsed {
    let data = match gunzip(data) {
        Ok(d) => d,
        Err(e) => return whole(e),
    };
    if data.len() as u64 > MAX_SIZE {
        return whole(format!("user data over {} MiB", MAX_SIZE >> 20));
    }
    let Ok(text) = std::str::from_utf8(&data) else { return whole("user data is not UTF-8 text") };
    if text.trim().is_empty() {
        return Parsed::Empty;
    }
    let first = text.lines().next().unwrap_or_default().trim_end();
    if first != HEADER {
        if first.starts_with("#!") {
            return whole("a script, not a #cloud-config document: Cairn runs no user-data scripts");
        }
        return whole(format!(
            "the first line must be {HEADER:?}, found {:?}",
            first.chars().take(40).collect::<String>()
        ));
    }
    let (text, binary_lines) = strip_binary_tags(text);
    let text = text.as_str();
    if let Some(too_deep) = too_deep(text) {
        return Parsed::Invalid(vec![too_deep]);
    }
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(root) => root,
        // Only the header: a valid, empty configuration.
        Err(LoadError::TopLevelMustBeMapping(_))
            if text.lines().skip(1).all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) =>
        {
            return Parsed::Config(Box::default(), Vec::new());
        }
        Err(e) => return Parsed::Invalid(vec![within(load_error(&e), text)]),
    };
    let mut w = Walker { binary_lines, ..Walker::default() };
    let config = read(&mut w, &root);
    let mut diagnostics = w.diagnostics;
    diag::sort(&mut diagnostics);
    if diag::has_errors(&diagnostics) {
        Parsed::Invalid(diagnostics)
    } else {
        Parsed::Config(Box::new(config), diagnostics)
    }
}

/// CoreOS's examples write `content: !!binary |` (base64 bytes). The YAML loader takes no tags,
/// so `!!binary` is blanked out (positions stay the same) and its lines remembered.
fn strip_binary_tags(text: &str) -> (String, std::collections::BTreeSet<usize>) {
    let mut lines = std::collections::BTreeSet::new();
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        match line.find("!!binary") {
            Some(pos) if line[..pos].trim_end().ends_with(':') || line[..pos].trim_end().ends_with('-') => {
                lines.insert(i + 1);
                out.push_str(&line[..pos]);
                out.push_str("        ");
                out.push_str(&line[pos + "!!binary".len()..]);
            }
            _ => out.push_str(line),
        }
    }
    (out, lines)
}

/// Letters, digits and '-', dot-separated labels, at most 64 (the kernel's limit).
pub fn is_hostname(h: &str) -> bool {
    h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn hostname(w: &mut Walker, v: Value, path: &str) -> Option<String> {
    let h = w.text(v, path)?;
    if is_hostname(&h) {
        return Some(h);
    }
    w.error(v.at, path, format!("{h:?} is not a hostname (letters, digits and '-', dot-separated, at most 64)"));
    None
}

fn read(w: &mut Walker, root: &Node) -> CloudConfig {
    let mut c = CloudConfig::default();
    let top = Value { node: root, at: at(root, At { line: 1, column: 1 }) };
    let Some(f) = w.mapping(top, "", KEYS) else { return c };
    if let Some((v, p)) = f.get("hostname") {
        c.hostname = hostname(w, v, &p);
    }
    if let Some((v, p)) = f.get("ssh_authorized_keys") {
        c.ssh_authorized_keys = users::keys(w, v, &p).unwrap_or_default();
    }
    if let Some((v, p)) = f.get("users") {
        for (item, item_path) in w.list(v, &p).unwrap_or_default() {
            // cloud-init's "default" entry: the default user, who exists anyway.
            if matches!(item.node, Node::Scalar(s) if s.as_str() == "default") {
                continue;
            }
            if let Some(uf) = w.mapping(item, &item_path, users::KEYS)
                && let Some(u) = users::user(w, &uf, item, &item_path)
            {
                c.users.push(u);
            }
        }
    }
    if let Some((v, p)) = f.get("write_files") {
        c.write_files = w.records(v, &p, files::KEYS, files::write_file);
    }
    if let Some((v, p)) = f.get("manage_etc_hosts") {
        match w.string(v, &p).as_deref() {
            Some("localhost") => c.manage_etc_hosts = true,
            Some("false") => {}
            Some(other) => w.error(v.at, &p, format!("{other:?}: only \"localhost\" is supported")),
            None => {}
        }
    }
    let mut settings = UpdateSettings::default();
    let mut update_at: Option<(At, String)> = None;
    if let Some((v, p)) = f.get("coreos")
        && let Some(cf) = w.mapping(v, &p, COREOS_KEYS)
    {
        if let Some((v, p)) = cf.get("update")
            && let Some(uf) = w.mapping(v, &p, update::COREOS_UPDATE_KEYS)
        {
            update::coreos_update(w, &uf, &mut settings);
            update_at.get_or_insert((v.at, p));
        }
        if let Some((v, p)) = cf.get("locksmith")
            && let Some(lf) = w.mapping(v, &p, update::LOCKSMITH_KEYS)
        {
            update::locksmith(w, &lf, &mut settings);
            update_at.get_or_insert((v.at, p));
        }
        if let Some((v, p)) = cf.get("units") {
            w.records(v, &p, UNIT_KEYS, |w, uf, item, item_path| {
                let name = uf.get("name").and_then(|(v, p)| w.string(v, &p)).unwrap_or_default();
                let message = format!(
                    "systemd unit {name:?} ignored: Cairn has no systemd; run it with cairn.services or cairn.containers"
                );
                w.warn(item.at, item_path, message);
                None::<()>
            });
        }
        for key in ["etcd", "etcd2", "fleet", "flannel", "oem"] {
            if let Some((v, p)) = cf.get(key) {
                w.warn(v.at, &p, format!("coreos.{key} is not part of Cairn; ignored"));
            }
        }
    }
    if let Some((v, p)) = f.get("cairn")
        && let Some(cf) = w.mapping(v, &p, cairn::KEYS)
    {
        if let Some((v, p)) = cf.get("update")
            && let Some(uf) = w.mapping(v, &p, update::CAIRN_UPDATE_KEYS)
        {
            update::cairn_update(w, &uf, &mut settings);
            update_at = Some((v.at, p));
        }
        if let Some((v, p)) = cf.get("services") {
            c.services = w.records(v, &p, &cairn::service_keys(), cairn::service);
        }
        if let Some((v, p)) = cf.get("containers") {
            c.containers = w.records(v, &p, cairn::CONTAINER_KEYS, cairn::container);
        }
        if let Some((v, p)) = cf.get("registries") {
            c.registries = crate::registry::registries(w, v, &p);
        }
        if let Some((v, p)) = cf.get("ntp") {
            c.ntp = crate::ntp::ntp(w, v, &p);
        }
        if let Some((v, p)) = cf.get("network") {
            c.network = crate::network::cairn::network(w, v, &p);
        }
        unique(w, c.services.iter().map(|s| s.name.as_str()), v, &p, "services");
        unique(w, c.containers.iter().map(|k| k.name.as_str()), v, &p, "containers");
        published_once(w, &c.containers, v, &p);
        let containers: Vec<String> = c.containers.iter().map(|k| cairn::container_service(&k.name)).collect();
        unique(
            w,
            c.services.iter().map(|s| s.name.as_str()).chain(containers.iter().map(String::as_str)),
            v,
            &p,
            "services and containers' services",
        );
    }
    if let Some((at, path)) = update_at {
        update::check(w, &settings, at, &path);
        c.update = Some(settings);
    }
    c
}

/// A host port (and protocol) is published by one container only: the second could not bind it.
fn published_once(w: &mut Walker, containers: &[cairn::Container], v: Value, path: &str) {
    let mut seen = std::collections::BTreeMap::new();
    for k in containers {
        for port in &k.ports {
            let key = (port.host_port, port.protocol == crate::container::options::Protocol::Udp);
            if let Some(first) = seen.insert(key, k.name.as_str()) {
                let message = format!("host port {port} of container {:?} is already published by {first:?}", k.name);
                w.error(v.at, &crate::walk::child(path, "containers"), message);
            }
        }
    }
}

fn unique<'a>(w: &mut Walker, names: impl Iterator<Item = &'a str>, v: Value, path: &str, what: &str) {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            w.error(v.at, &crate::walk::child(path, what), format!("two {what} are named {n:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn config(data: &[u8]) -> CloudConfig {
        match parse(data) {
            Parsed::Config(c, _) => *c,
            other => panic!("not used: {other:?}"),
        }
    }

    #[test]
    fn gzip_compressed_user_data_is_read() {
        let text = "#cloud-config\nhostname: zipped\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        assert_eq!(config(&gz.finish().unwrap()).hostname.as_deref(), Some("zipped"));
    }

    #[test]
    fn empty_scripts_and_header_only() {
        assert!(matches!(parse(b""), Parsed::Empty));
        assert!(matches!(parse(b"  \n"), Parsed::Empty));
        assert_eq!(config(b"#cloud-config\n"), CloudConfig::default());
        assert_eq!(config(b"#cloud-config   \n# nothing yet\n"), CloudConfig::default());
        let Parsed::Invalid(d) = parse(b"#!/bin/sh\necho hi\n") else { panic!() };
        assert!(d[0].message.contains("script"), "{d:?}");
        let Parsed::Invalid(d) = parse(&[0xff, 0xfe]) else { panic!() };
        assert!(d[0].message.contains("UTF-8"), "{d:?}");
    }

    #[test]
    fn every_encoding_of_coreos_write_files_example_decodes() {
        let doc = std::fs::read(format!(
            "{}/tests/corpus/coreos-doc-write-files.yaml",
            std::env::var("CARGO_MANIFEST_DIR").unwrap()
        ))
        .unwrap();
        let files = config(&doc).write_files;
        let content: Vec<(&str, String, u32)> = files
            .iter()
            .map(|f| (f.path.as_str(), String::from_utf8(f.content.clone()).unwrap(), f.permissions))
            .collect();
        assert_eq!(
            content,
            [
                ("/etc/resolv.conf", "nameserver 8.8.8.8\n".to_string(), 0o644),
                ("/etc/motd", "Good news, everyone!\n".to_string(), 0o644),
                ("/tmp/like_this", "Pack my box with five dozen liquor jugs".to_string(), 0o644),
                ("/tmp/or_like_this", "Pack my box with five dozen liquor jugs".to_string(), 0o644),
                ("/tmp/todolist", "Pack my box with five dozen liquor jugs".to_string(), 0o644),
            ]
        );
    }

    #[test]
    fn a_thousand_line_document_parses_whole() {
        // How fast is a figure of cairn-bench-config (target: validate + apply under 50 ms).
        let mut doc = String::from("#cloud-config\nwrite_files:\n");
        for i in 0..250 {
            doc.push_str(&format!("  - path: /etc/f{i}\n    permissions: \"0600\"\n    content: |\n      line {i}\n"));
        }
        assert_eq!(config(doc.as_bytes()).write_files.len(), 250);
    }
}

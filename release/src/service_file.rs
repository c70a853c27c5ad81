//! The service-file format (docs/services.md), defined once: cairn-init reads it from
//! `/usr/lib/cairn/services/*.toml` and `/etc/cairn/services/*.toml`, cloud-config writes it
//! from `cairn.services`. Defaults are applied by the reader (init), so a file written from a
//! document says only what the document said.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub const NAMES: &[&str] = &["always", "on-failure", "never"];

    pub fn parse(name: &str) -> Option<Restart> {
        match name {
            "always" => Some(Restart::Always),
            "on-failure" => Some(Restart::OnFailure),
            "never" => Some(Restart::Never),
            _ => None,
        }
    }
}

/// When a started service counts as ready.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Ready {
    /// As soon as the process runs.
    Process,
    /// When a connection to this unix socket succeeds.
    UnixSocket(PathBuf),
    /// When a connection to 127.0.0.1:port succeeds.
    TcpPort(u16),
}

/// One service file. Durations are text (`10s`, `2m`), checked by the reader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The program (an absolute path) and its arguments.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A terminal to run on (the console shell of development images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_delay_max: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Ready>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Every field of a service file, as written.
pub const FIELDS: &[&str] = &[
    "description",
    "command",
    "environment",
    "working_directory",
    "user",
    "tty",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `FIELDS` is the struct's own list: a file with every field set names exactly these.
    #[test]
    fn fields_are_the_structs_fields() {
        let full = ServiceFile {
            description: Some("d".into()),
            command: vec!["/bin/true".into()],
            environment: [("A".to_string(), "1".to_string())].into(),
            working_directory: Some("/".into()),
            user: Some("root".into()),
            tty: Some("/dev/console".into()),
            restart: Some(Restart::Always),
            restart_delay: Some("1s".into()),
            restart_delay_max: Some("2s".into()),
            after: vec!["x".into()],
            ready: Some(Ready::TcpPort(80)),
            required: Some(true),
            stop_timeout: Some("3s".into()),
            log_max_bytes: Some(4096),
            enabled: Some(false),
        };
        let json = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut fields = FIELDS.to_vec();
        keys.sort();
        fields.sort();
        assert_eq!(keys, fields);
        let back: ServiceFile = serde_json::from_value(json).unwrap();
        assert_eq!(back, full);
        assert!(serde_json::from_str::<ServiceFile>(r#"{"command":["/x"],"bogus":1}"#).is_err());
        for name in Restart::NAMES {
            assert!(Restart::parse(name).is_some());
        }
    }
}

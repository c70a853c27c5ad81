//! The update agent's settings, one format in three places: the image spec's `[update]` table,
//! `/usr/lib/cairn/update.toml` (what the image was built with) and `/etc/cairn/update.toml`
//! (the host's own, written by cloud-config's `cairn: {update: ...}`), whose keys win.

use crate::duration;
use crate::maintenance::{Maintenance, MaintenanceSettings};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

pub const IMAGE_FILE: &str = "/usr/lib/cairn/update.toml";
pub const HOST_FILE: &str = "/etc/cairn/update.toml";

/// When a staged release is booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Reboot as soon as the release is staged.
    Immediate,
    /// Stage, then wait for `updatectl reboot` (or the D-Bus `Reboot` method).
    Off,
    /// Stage, then reboot once the FleetLock server (`lock_server`) grants a reboot slot; give
    /// the slot back once the new release is blessed.
    #[serde(rename = "fleetlock")]
    FleetLock,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Immediate => "immediate",
            Strategy::Off => "off",
            Strategy::FleetLock => "fleetlock",
        }
    }
}

/// A secret setting (a token): serialized as it is, never shown by `Debug`, so it stays out of
/// logs and error messages.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The keys as written; every key is optional so a host file can change one of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// The feed: `http://`, `https://` or a local directory (`file://` or a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The channel followed in a TUF feed (`stable` if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Time between checks (plus up to 10% jitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long a new release must run healthy before its boot entry is blessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bless_after: Option<String>,
    /// A rollout server (`cairn-server`, http(s)://): the agent checks in there and installs
    /// what it grants, instead of reading `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The host's group on the rollout server (`default` if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The FleetLock server of strategy `fleetlock` (default: `server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_server: Option<String>,
    /// The host's FleetLock group (`default` if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_group: Option<String>,
    /// How long to wait before asking again for a reboot slot (or to give one back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_retry: Option<String>,
    /// The rollout server group's enrollment token: the host trades it once for a credential
    /// of its own (kept root-only under /var/lib/cairn/agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<Secret>,
    /// The FleetLock group's token, for a lock server that is not the rollout server (with
    /// the rollout server, the host's own credential is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_token: Option<Secret>,
    /// Allow plain `http://` for the server, feed and lock server: credentials and what is
    /// offered cross the network in the clear. For labs and tests only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Certificate authorities (a PEM file) trusted for https:// besides the system's, for
    /// a private PKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// The longest one download (a release's artifact) may take, however it trickles in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_timeout: Option<String>,
    /// When a staged update may reboot the host (strategies `immediate` and `fleetlock`);
    /// unset: at any time. Last: a TOML table follows the plain keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceSettings>,
}

/// The settings in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateConfig {
    pub source: Option<String>,
    pub strategy: Strategy,
    pub channel: String,
    pub interval: Duration,
    pub bless_after: Duration,
    pub server: Option<String>,
    pub group: String,
    pub lock_server: Option<String>,
    pub lock_group: String,
    pub lock_retry: Duration,
    pub maintenance: Option<Maintenance>,
    pub enrollment_token: Option<Secret>,
    pub lock_token: Option<Secret>,
    pub insecure: bool,
    pub ca_bundle: Option<PathBuf>,
    pub download_timeout: Duration,
}

pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

pub const DEFAULT_LOCK_RETRY: Duration = Duration::from_secs(300);

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_BLESS_AFTER: Duration = Duration::from_secs(120);

impl UpdateSettings {
    /// `self` with `over`'s keys on top.
    pub fn overlay(&self, over: &UpdateSettings) -> UpdateSettings {
        UpdateSettings {
            source: over.source.clone().or_else(|| self.source.clone()),
            strategy: over.strategy.or(self.strategy),
            channel: over.channel.clone().or_else(|| self.channel.clone()),
            interval: over.interval.clone().or_else(|| self.interval.clone()),
            bless_after: over.bless_after.clone().or_else(|| self.bless_after.clone()),
            server: over.server.clone().or_else(|| self.server.clone()),
            group: over.group.clone().or_else(|| self.group.clone()),
            lock_server: over.lock_server.clone().or_else(|| self.lock_server.clone()),
            lock_group: over.lock_group.clone().or_else(|| self.lock_group.clone()),
            lock_retry: over.lock_retry.clone().or_else(|| self.lock_retry.clone()),
            enrollment_token: over.enrollment_token.clone().or_else(|| self.enrollment_token.clone()),
            lock_token: over.lock_token.clone().or_else(|| self.lock_token.clone()),
            insecure: over.insecure.or(self.insecure),
            ca_bundle: over.ca_bundle.clone().or_else(|| self.ca_bundle.clone()),
            download_timeout: over.download_timeout.clone().or_else(|| self.download_timeout.clone()),
            maintenance: over.maintenance.clone().or_else(|| self.maintenance.clone()),
        }
    }

    /// Checks every value; errors name the key.
    pub fn resolve(&self) -> Result<UpdateConfig, SettingsError> {
        let bad = |key: &'static str, message: String| SettingsError::Key { key, message };
        let dur = |key: &'static str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => duration::parse(s).map_err(|e| bad(key, e.to_string())),
        };
        let interval = dur("interval", &self.interval, DEFAULT_INTERVAL)?;
        if interval < Duration::from_secs(1) {
            return Err(bad("interval", "must be at least 1s".into()));
        }
        if let Some(s) = &self.source {
            let ok = ["http://", "https://", "file://", "/"].iter().any(|p| s.starts_with(p));
            if !ok {
                return Err(bad("source", format!("{s:?} is not an http(s):// URL or an absolute path")));
            }
        }
        let server = self.server.clone().filter(|s| !s.is_empty());
        if let Some(s) = &server
            && !(s.starts_with("http://") || s.starts_with("https://"))
        {
            return Err(bad("server", format!("{s:?} is not an http(s):// URL")));
        }
        let group = self.group.clone().unwrap_or_else(|| "default".into());
        crate::checkin::validate_name("group", &group, 64).map_err(|e| SettingsError::Group(e.0))?;
        let channel = self.channel.clone().unwrap_or_else(|| "stable".into());
        crate::checkin::validate_name("channel", &channel, 64).map_err(|e| bad("channel", e.0))?;
        let strategy = self.strategy.unwrap_or(Strategy::Immediate);
        let lock_server = self.lock_server.clone().filter(|s| !s.is_empty()).or_else(|| server.clone());
        if let Some(s) = &lock_server
            && !(s.starts_with("http://") || s.starts_with("https://"))
        {
            return Err(bad("lock_server", format!("{s:?} is not an http(s):// URL")));
        }
        if strategy == Strategy::FleetLock && lock_server.is_none() {
            return Err(bad("strategy", "fleetlock needs lock_server (or server)".into()));
        }
        let lock_group = self.lock_group.clone().unwrap_or_else(|| "default".into());
        let fleetlock_group = !lock_group.is_empty()
            && lock_group.len() <= 128
            && lock_group.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !fleetlock_group {
            return Err(SettingsError::Group(format!("lock_group {lock_group:?}: must match ^[a-zA-Z0-9.-]+$")));
        }
        let insecure = self.insecure.unwrap_or(false);
        for (key, url) in [("source", &self.source), ("server", &server), ("lock_server", &lock_server)] {
            if let Some(url) = url
                && url.starts_with("http://")
                && !insecure
            {
                return Err(bad(
                    key,
                    format!("{url:?} is plain http: use https://, or insecure = true where nobody can listen in"),
                ));
            }
        }
        if let Some(path) = &self.ca_bundle
            && !path.starts_with('/')
        {
            return Err(bad("ca_bundle", format!("{path:?} is not an absolute path")));
        }
        let download_timeout = dur("download_timeout", &self.download_timeout, DEFAULT_DOWNLOAD_TIMEOUT)?;
        if download_timeout < Duration::from_secs(1) {
            return Err(bad("download_timeout", "must be at least 1s".into()));
        }
        let lock_retry = dur("lock_retry", &self.lock_retry, DEFAULT_LOCK_RETRY)?;
        if lock_retry < Duration::from_secs(1) {
            return Err(bad("lock_retry", "must be at least 1s".into()));
        }
        Ok(UpdateConfig {
            source: self.source.clone().filter(|s| !s.is_empty()),
            strategy,
            channel,
            interval,
            bless_after: dur("bless_after", &self.bless_after, DEFAULT_BLESS_AFTER)?,
            server,
            group,
            lock_server,
            lock_group,
            lock_retry,
            maintenance: self.maintenance.as_ref().map(MaintenanceSettings::resolve).transpose()?,
            enrollment_token: self.enrollment_token.clone().filter(|t| !t.0.is_empty()),
            lock_token: self.lock_token.clone().filter(|t| !t.0.is_empty()),
            insecure,
            ca_bundle: self.ca_bundle.clone().map(PathBuf::from),
            download_timeout,
        })
    }
}

/// A bad update setting, naming its key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{key}: {message}")]
    Key { key: &'static str, message: String },
    /// A group name (the message names which).
    #[error("{0}")]
    Group(String),
    #[error(transparent)]
    Maintenance(#[from] crate::maintenance::KeyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_win_and_values_are_checked() {
        let image = UpdateSettings { interval: Some("1h".into()), strategy: Some(Strategy::Off), ..Default::default() };
        let host =
            UpdateSettings { source: Some("http://10.0.2.2:8080/".into()), insecure: Some(true), ..Default::default() };
        let c = image.overlay(&host).resolve().unwrap();
        assert_eq!(c.source.as_deref(), Some("http://10.0.2.2:8080/"));
        assert_eq!(c.strategy, Strategy::Off);
        assert_eq!(c.interval, Duration::from_secs(3600));
        assert_eq!(c.bless_after, DEFAULT_BLESS_AFTER);
        let bad = UpdateSettings { interval: Some("soon".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("interval:"));
        let bad = UpdateSettings { source: Some("ftp://x".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("source:"));
        assert_eq!(c.group, "default");
        let server = UpdateSettings {
            server: Some("http://10.0.2.2:8270".into()),
            group: Some("canary".into()),
            insecure: Some(true),
            ..Default::default()
        };
        let c = image.overlay(&server).resolve().unwrap();
        assert_eq!((c.server.as_deref(), c.group.as_str()), (Some("http://10.0.2.2:8270"), "canary"));
        let bad = UpdateSettings { group: Some("Canary Hosts".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("group"));
        let bad = UpdateSettings { server: Some("10.0.2.2:8270".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("server:"));
        // FleetLock: the lock server defaults to the rollout server; without either, refused.
        let c =
            image.overlay(&UpdateSettings { strategy: Some(Strategy::FleetLock), ..server.clone() }).resolve().unwrap();
        assert_eq!(c.lock_server.as_deref(), Some("http://10.0.2.2:8270"));
        assert_eq!((c.lock_group.as_str(), c.lock_retry), ("default", DEFAULT_LOCK_RETRY));
        let bad = UpdateSettings { strategy: Some(Strategy::FleetLock), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().contains("fleetlock needs lock_server"));
        let bad = UpdateSettings { lock_group: Some("a_b".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("lock_group"));
        let parsed: UpdateSettings =
            serde_json::from_str(r#"{"strategy": "fleetlock", "lock_server": "https://x", "lock_retry": "2s"}"#)
                .unwrap();
        assert_eq!(parsed.resolve().unwrap().lock_retry, Duration::from_secs(2));
    }

    #[test]
    fn plain_http_needs_insecure_and_secrets_stay_out_of_debug_output() {
        for key in ["source", "server", "lock_server"] {
            let mut s = UpdateSettings::default();
            let url = Some("http://10.0.2.2:8270".to_string());
            match key {
                "source" => s.source = url,
                "server" => s.server = url,
                _ => s.lock_server = url,
            }
            let err = s.resolve().unwrap_err().to_string();
            assert!(err.starts_with(key) && err.contains("plain http"), "{err}");
            s.insecure = Some(true);
            assert!(s.resolve().is_ok(), "{key} with insecure");
        }
        let s = UpdateSettings {
            server: Some("https://updates.example.com".into()),
            enrollment_token: Some(Secret("cairn_0123456789abcdef".into())),
            ..Default::default()
        };
        let resolved = s.resolve().unwrap();
        assert_eq!(resolved.enrollment_token, Some(Secret("cairn_0123456789abcdef".into())));
        assert!(!format!("{s:?}{resolved:?}").contains("0123456789abcdef"), "a token in debug output");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""enrollment_token":"cairn_0123456789abcdef""#), "{json}");
        let bad = UpdateSettings { ca_bundle: Some("certs.pem".into()), ..Default::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("ca_bundle"));
    }
}

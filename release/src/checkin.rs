//! The check-in protocol between `cairn-agent` and `cairn-server`: JSON over HTTP.
//!
//! - `POST /v1/checkin` with a [`CheckIn`]: the host says who and where it is; the server answers
//!   a [`CheckInReply`], offering a release to install (by the path of its directory under the
//!   server's feed) or none, by the group's rollout policy.
//! - `POST /v1/events` with an [`Event`]: a state change worth recording (an update staged,
//!   booted, blessed, rolled back, failed).
//!
//! - `POST /v1/enroll` with an [`EnrollRequest`]: a host presents its group's enrollment token
//!   once and gets a credential of its own ([`EnrollReply`]); every check-in and event after
//!   carries it as `Authorization: Bearer CREDENTIAL`, and is refused without it.
//!
//! Documents carry `format`; unknown fields are refused, so a typo is an error, not a silent
//! default. Every identifier is checked with [`CheckIn::validate`] before it is used.

use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 1;
pub const CHECKIN_PATH: &str = "/v1/checkin";
pub const EVENTS_PATH: &str = "/v1/events";
pub const ENROLL_PATH: &str = "/v1/enroll";

/// A host asking for a credential of its own.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub format: u32,
    pub instance_id: String,
    pub group: String,
    /// The group's enrollment token.
    pub token: String,
    /// The credential the host holds now, when it moves to another group: an instance that is
    /// enrolled already is let in again only by its own credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

/// Secrets stay out of debug output (and so out of logs).
impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest").field("instance_id", &self.instance_id).field("group", &self.group).finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollReply {
    pub format: u32,
    /// The host's credential: shown once, kept by the server only as a hash.
    pub credential: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    pub format: u32,
    /// The host's identity: its machine-id (32 hex digits) or another stable name.
    pub instance_id: String,
    pub group: String,
    pub os_id: String,
    /// The running release.
    pub version: String,
    /// `a` or `b`.
    pub slot: String,
    /// The agent's state (docs/updates.md), e.g. `idle`, `assessing`.
    pub state: String,
    /// Versions that failed to boot on this host; never offered again.
    #[serde(default)]
    pub rolled_back: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInReply {
    pub format: u32,
    pub update: Option<Offer>,
    /// Why there is no update (paused, rate limit, up to date...), for the host's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A release to install: the agent fetches `path/release.json` (and its signature) from the
/// server's feed and verifies it exactly as from a static feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub version: String,
    pub path: String,
    pub manifest_sha256: String,
}

/// What happened on a host, reported as it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Written to the other slot, waiting for its reboot.
    Staged,
    /// Booted and healthy long enough: the rollout counts it as a success.
    Blessed,
    /// The loader fell back: a failure.
    RolledBack,
    /// Downloading or verifying failed: a failure.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub format: u32,
    pub instance_id: String,
    pub kind: EventKind,
    /// The release the event is about.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `staged`: what writing the release's `/usr` moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// What installing a release's `/usr` moved, in bytes: the image written, what was downloaded
/// for it, and what was taken from the host's own disks instead (delta updates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub image: u64,
    pub downloaded: u64,
    pub reused: u64,
}

impl Transfer {
    /// `4.1 MB downloaded, 150.3 MB reused, for a 160.2 MB image`.
    pub fn summary(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        format!(
            "{:.1} MB downloaded, {:.1} MB reused, for a {:.1} MB image",
            mb(self.downloaded),
            mb(self.reused),
            mb(self.image)
        )
    }
}

/// A field of a check-in or an event that breaks the protocol; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// `[a-z0-9]`, then `[a-z0-9._-]`, at most `max` long: names that are safe in URLs, paths and logs.
pub fn validate_name(what: &str, name: &str, max: usize) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!("{what} {name:?}: 1 to {max} of a-z, 0-9, '.', '_', '-', starting with a letter or digit")))
    }
}

fn check_format(format: u32) -> Result<(), Invalid> {
    if format == FORMAT { Ok(()) } else { Err(Invalid(format!("format {format} (this server speaks {FORMAT})"))) }
}

impl CheckIn {
    /// Every field checked; the error names the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_format(self.format)?;
        validate_name("instance_id", &self.instance_id, 64)?;
        validate_name("group", &self.group, 64)?;
        validate_name("os_id", &self.os_id, 64)?;
        crate::version::validate(&self.version).map_err(|e| Invalid(format!("version: {e}")))?;
        if self.slot != "a" && self.slot != "b" {
            return Err(Invalid(format!("slot {:?}: must be \"a\" or \"b\"", self.slot)));
        }
        validate_name("state", &self.state, 32)?;
        if self.rolled_back.len() > 100 {
            return Err(Invalid("rolled_back: more than 100 versions".into()));
        }
        for v in &self.rolled_back {
            crate::version::validate(v).map_err(|e| Invalid(format!("rolled_back: {e}")))?;
        }
        Ok(())
    }
}

impl EnrollRequest {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_format(self.format)?;
        validate_name("instance_id", &self.instance_id, 64)?;
        validate_name("group", &self.group, 64)?;
        if self.token.is_empty() || self.token.len() > 256 {
            return Err(Invalid("token: 1 to 256 characters".into()));
        }
        Ok(())
    }
}

impl Event {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_format(self.format)?;
        validate_name("instance_id", &self.instance_id, 64)?;
        crate::version::validate(&self.version).map_err(|e| Invalid(format!("version: {e}")))?;
        if self.error.as_ref().is_some_and(|e| e.len() > 4096) {
            return Err(Invalid("error: longer than 4096 bytes".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkin() -> CheckIn {
        CheckIn {
            format: FORMAT,
            instance_id: "0123456789abcdef0123456789abcdef".into(),
            group: "default".into(),
            os_id: "cairn".into(),
            version: "1.2.0".into(),
            slot: "a".into(),
            state: "idle".into(),
            rolled_back: vec![],
        }
    }

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let c = checkin();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<CheckIn>(&json).unwrap(), c);
        let typo = json.replace("\"slot\"", "\"slott\"");
        assert!(serde_json::from_str::<CheckIn>(&typo).unwrap_err().to_string().contains("slott"));
        let reply = CheckInReply {
            format: FORMAT,
            update: Some(Offer { version: "2".into(), path: "releases/2".into(), manifest_sha256: "ab".repeat(32) }),
            reason: None,
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<CheckInReply>(&json).unwrap(), reply);
        let e: Event = serde_json::from_str(
            r#"{"format":1,"instance_id":"h1","kind":"rolled-back","version":"3","error":"did not boot"}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::RolledBack);
        assert!(e.validate().is_ok());
    }

    #[test]
    fn every_field_is_checked_and_named() {
        assert!(checkin().validate().is_ok());
        let bad = |f: fn(&mut CheckIn)| {
            let mut c = checkin();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.instance_id = "../etc/passwd".into()).starts_with("instance_id"));
        assert!(bad(|c| c.group = "Prod Canary".into()).starts_with("group"));
        assert!(bad(|c| c.version = "1.0+3".into()).starts_with("version"));
        assert!(bad(|c| c.slot = "c".into()).starts_with("slot"));
        assert!(bad(|c| c.format = 2).starts_with("format"));
        assert!(bad(|c| c.rolled_back = vec!["x".into()]).starts_with("rolled_back"));
        assert!(bad(|c| c.instance_id = "a".repeat(65)).starts_with("instance_id"));
    }
}

//! The rollout server's admin API (`/v1/admin/...`, docs/server.md): the documents it takes
//! and answers with, defined once for `cairn-server` and `updatectl`.

use serde::{Deserialize, Serialize};

// ---- channels ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub name: String,
    pub version: Option<String>,
    pub updated_at: i64,
}

/// A release in the server's TUF repository (`GET /v1/admin/packages`): what a channel or a pin
/// may name. Releases are published into the repository offline (`cairn release publish`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub version: String,
    /// The TUF channels it was published on.
    pub channels: Vec<String>,
    /// Its release.json target, and that target's sha256 (what a check-in offers).
    pub manifest: String,
    pub manifest_sha256: String,
    /// Bytes of all its targets.
    pub size: u64,
}

/// `POST /v1/admin/channels`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `PUT /v1/admin/channels/NAME`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelVersion {
    pub version: String,
}

// ---- groups, hosts, events ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// `false`: paused; nobody gets a new grant (outstanding ones may still finish).
    pub updates_enabled: bool,
    pub max_per_period: u32,
    pub period_s: u64,
    /// Only one host until the first success.
    pub safe_mode: bool,
    /// Halt after this many failures or rollbacks in the rollout (0: never).
    pub halt_after: u32,
    /// Only this share of the group's hosts (chosen stably by instance id) gets the release.
    pub percentage: u8,
    /// Install this version instead of the channel's.
    pub pinned_version: Option<String>,
    /// A grant with no report after this long counts as failed.
    pub grant_timeout_s: u64,
}

impl Default for GroupPolicy {
    fn default() -> Self {
        GroupPolicy {
            updates_enabled: true,
            max_per_period: 10,
            period_s: 3600,
            safe_mode: false,
            halt_after: 3,
            percentage: 100,
            pinned_version: None,
            grant_timeout_s: 3600,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub channel: String,
    /// The channel's current version.
    pub channel_version: Option<String>,
    #[serde(flatten)]
    pub policy: GroupPolicy,
    pub halted: bool,
    pub halted_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub group: String,
    pub os_id: String,
    pub version: String,
    pub slot: String,
    pub state: String,
    pub rolled_back: Vec<String>,
    pub last_error: Option<String>,
    pub first_seen: i64,
    pub last_checkin: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub at: i64,
    pub instance_id: String,
    pub group: Option<String>,
    pub kind: String,
    pub version: String,
    pub error: Option<String>,
}

/// `POST /v1/admin/groups` (with a name) and `PATCH /v1/admin/groups/NAME`: the fields to set.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updates_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_period: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A version, or "" to follow the channel again.
    pub pinned_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_timeout_s: Option<u64>,
    /// Only `false`: resume a halted rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<bool>,
}

// ---- the rollout ----

#[derive(Debug, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub group: String,
    pub channel: String,
    /// The version the group installs (pinned or the channel's).
    pub target_version: Option<String>,
    pub paused: bool,
    pub halted: bool,
    pub halted_reason: Option<String>,
    pub hosts: i64,
    /// Hosts per version.
    pub versions: Vec<(String, i64)>,
    /// Hosts per agent state.
    pub states: Vec<(String, i64)>,
    /// The rollout of the target version: grants in the current period, still in progress,
    /// succeeded, failed (including grants that timed out).
    pub granted_in_period: u32,
    pub in_progress: u32,
    pub succeeded: u32,
    pub failed: u32,
}

// ---- reboot locks ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub id: String,
    /// Unix milliseconds (0: unknown, for a slot airlock granted).
    pub since: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockGroup {
    pub group: String,
    pub slots: i64,
    pub holders: Vec<Holder>,
    /// Whether the group has a token (which lets any client in).
    pub token_required: bool,
    /// Whether clients that cannot authenticate may lock and release (Zincati without a
    /// token); otherwise a host's own credential or the group's token is needed.
    #[serde(default)]
    pub anonymous: bool,
}

/// `PUT /v1/admin/locks/GROUP/anonymous`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockAnonymous {
    pub anonymous: bool,
}

/// An admin token as `cairn-server token list` shows it (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminToken {
    pub name: String,
    /// The first characters of the token's sha256: enough to tell tokens of one name apart.
    pub id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// `PUT /v1/admin/locks/GROUP`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSlots {
    pub slots: i64,
}

/// `POST /v1/admin/locks/GROUP/release`: frees a host's slot.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRelease {
    pub id: String,
}

//! What this boot made of its cloud-config: written by `cairn-cloud-config boot` to `/run`,
//! read by the update agent (for `updatectl status`) and by people.

use serde::{Deserialize, Serialize};

/// Where the report of this boot is (tmpfs: one boot's news).
pub const PATH: &str = "/run/cairn/cloud-config.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The document found this boot was applied.
    Applied,
    /// No source had user data (or it was empty): nothing applied this boot.
    None,
    /// The document found had errors: nothing from it applied; the last good one was.
    Refused,
    /// Applying failed (an I/O error, an owner the host lacks): nothing from the document was
    /// committed; the host keeps what it has. See `errors`.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub outcome: Outcome,
    /// Where the document came from (`fw_cfg opt/cairn/user-data`, `config-2 /dev/vdb`, ...).
    pub source: String,
    /// Why the document was refused (`line:column: error: path: message`, in document order),
    /// or why applying it failed.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Warnings about the document (unknown keys, ...) and about the instance metadata.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// What is in effect instead when the document was refused: the last good one's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<String>,
    /// Time spent finding and applying, in milliseconds.
    pub find_ms: u64,
    pub apply_ms: u64,
}

impl ConfigStatus {
    /// One line for `updatectl status`.
    pub fn summary(&self) -> String {
        match self.outcome {
            Outcome::Applied => format!("applied from {}", self.source),
            Outcome::None => "none found".to_string(),
            Outcome::Refused => format!(
                "refused from {} ({}); in effect: {}",
                self.source,
                self.errors.join("; "),
                self.last_good.as_deref().unwrap_or("nothing (no earlier good config)")
            ),
            Outcome::Failed => format!("failed to apply from {}: {}", self.source, self.errors.join("; ")),
        }
    }

    pub fn read() -> Option<ConfigStatus> {
        serde_json::from_slice(&std::fs::read(PATH).ok()?).ok()
    }
}

//! What users see (`updatectl status`, D-Bus properties), derived from the core each time:
//! nothing here is stored beside the phase.

use super::state::Phase;
use super::{Core, Note};

/// What the API shows; replaced as a whole on every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub state: String,
    pub current_version: String,
    pub slot: String,
    pub staged_version: String,
    pub available_version: String,
    /// 0.0 to 1.0 while downloading.
    pub progress: f64,
    pub last_check: u64,
    pub last_check_result: String,
    pub last_error: String,
    pub rolled_back: Vec<String>,
    /// What the last install moved: `2: 4.1 MB downloaded, 150.3 MB reused, for a 160.2 MB
    /// image`; empty before the first.
    pub last_download: String,
    pub strategy: String,
    pub source: String,
}

/// The line a note is logged as when it changes (`None`: not logged).
pub fn note_text(note: &Note) -> Option<String> {
    match note {
        Note::None => None,
        Note::NoSource => Some("no update source configured".into()),
        Note::Nothing(reason) => Some(reason.clone()),
        Note::Available(version) => Some(format!("{version} available")),
        Note::WaitingForWindow { version, opens } => {
            Some(format!("{version} is staged; waiting for the maintenance window at {opens}"))
        }
        Note::WaitingForSlot { version, why } => {
            Some(format!("{version} is staged; waiting for a reboot slot ({why})"))
        }
        Note::Busy(version) => Some(format!("assessing {version}; updates wait until it is blessed")),
    }
}

impl Core {
    /// The status now; `download` is the fraction of `/usr` downloaded, while the driver knows it.
    pub fn status(&self, download: Option<f64>) -> Status {
        let s = &self.state;
        let staged = s.phase.staged().map(str::to_string);
        Status {
            state: s.phase.name().to_string(),
            current_version: self.running.version.clone(),
            slot: self.running.slot.letter().to_string(),
            progress: match (&s.phase, &staged) {
                (Phase::Downloading { .. }, _) => download.unwrap_or(0.0),
                (_, Some(_)) => 1.0,
                _ => 0.0,
            },
            staged_version: staged.unwrap_or_default(),
            available_version: self.available.clone().unwrap_or_default(),
            last_check: s.last_check.unwrap_or(0),
            last_check_result: note_text(&self.note).unwrap_or_default(),
            last_error: [&self.storage_error, &self.bless_error, &s.last_error]
                .into_iter()
                .find_map(|e| e.clone())
                .unwrap_or_default(),
            rolled_back: s.rolled_back.clone(),
            last_download: s
                .last_transfer
                .as_ref()
                .map(|t| format!("{}: {}", t.version, t.transfer.summary()))
                .unwrap_or_default(),
            strategy: self.config.strategy.as_str().to_string(),
            source: match &self.config.server {
                Some(url) => format!("{url} (group {})", self.config.group),
                None => self.config.source.clone().unwrap_or_default(),
            },
        }
    }
}

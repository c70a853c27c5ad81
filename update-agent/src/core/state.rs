//! The persisted part of the agent: the phase (each variant carries its data), the versions
//! rolled back here, the backoff counter, the outbox and a held reboot slot. Transitions check
//! their allowed predecessors in one table; time is passed in (Unix seconds), never read here.
//! `crate::store` writes it to disk.

use super::outbox::Outbox;
use crate::entries::Assessment;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Phase {
    Idle,
    Checking,
    Downloading {
        version: String,
    },
    Verifying {
        version: String,
    },
    Staged {
        version: String,
    },
    WaitingToReboot {
        version: String,
    },
    /// Rebooting from `from` into `version`.
    Rebooting {
        version: String,
        from: String,
    },
    /// Booted `version`; blessed once healthy long enough.
    Assessing {
        version: String,
        since: u64,
    },
    Blessed {
        version: String,
    },
    /// `version` failed to boot; the host is back on the previous release.
    RolledBack {
        version: String,
    },
    Error {
        message: String,
        attempts: u32,
        retry_at: u64,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Checking => "checking",
            Phase::Downloading { .. } => "downloading",
            Phase::Verifying { .. } => "verifying",
            Phase::Staged { .. } => "staged",
            Phase::WaitingToReboot { .. } => "waiting-to-reboot",
            Phase::Rebooting { .. } => "rebooting",
            Phase::Assessing { .. } => "assessing",
            Phase::Blessed { .. } => "blessed",
            Phase::RolledBack { .. } => "rolled-back",
            Phase::Error { .. } => "error",
        }
    }

    /// The version this phase is in the middle of installing or booting, if any.
    pub fn in_flight(&self) -> Option<&str> {
        match self {
            Phase::Downloading { version }
            | Phase::Verifying { version }
            | Phase::Staged { version }
            | Phase::WaitingToReboot { version }
            | Phase::Rebooting { version, .. }
            | Phase::Assessing { version, .. } => Some(version),
            _ => None,
        }
    }

    /// A release is staged: its entry is on the ESP, waiting for (or past) the reboot.
    pub fn staged(&self) -> Option<&str> {
        match self {
            Phase::Staged { version } | Phase::WaitingToReboot { version } | Phase::Rebooting { version, .. } => {
                Some(version)
            }
            _ => None,
        }
    }

    /// Nothing in flight: the host runs what it will keep running.
    pub fn settled(&self) -> bool {
        matches!(self, Phase::Idle | Phase::Blessed { .. } | Phase::RolledBack { .. } | Phase::Error { .. })
    }

    /// The phase and the version it is about, for logs.
    pub fn describe(&self) -> String {
        match self {
            Phase::Blessed { version } | Phase::RolledBack { version } => format!("{} {version}", self.name()),
            _ => match self.in_flight() {
                Some(v) => format!("{} {v}", self.name()),
                None => self.name().to_string(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("cannot go from {from} to {to}")]
    Transition { from: &'static str, to: &'static str },
    #[error("{candidate} is not newer than the running {current}")]
    NotNewer { candidate: String, current: String },
    #[error("{0} was rolled back on this host and is not installed again")]
    RolledBack(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    pub format: u32,
    pub phase: Phase,
    /// Versions that failed to boot here; never retried (a newer one is fine).
    pub rolled_back: Vec<String>,
    pub last_check: Option<u64>,
    pub last_error: Option<String>,
    /// Failed attempts in a row, for the backoff; reset by a check or an install that succeeds.
    #[serde(default)]
    pub failures: u32,
    /// Events for the rollout server not yet acknowledged by it, oldest first; sent again at
    /// the next check-in so that a network blip does not turn a success into a timeout.
    #[serde(default, skip_serializing_if = "Outbox::is_empty")]
    pub unreported: Outbox,
    /// The host may hold a FleetLock reboot slot it must give back once it is steady.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lock_to_release: bool,
    /// What the last install that wrote `/usr` moved (shown by `updatectl status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transfer: Option<LastTransfer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastTransfer {
    pub version: String,
    pub transfer: cairn_release::checkin::Transfer,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            format: 1,
            phase: Phase::Idle,
            rolled_back: vec![],
            last_check: None,
            last_error: None,
            failures: 0,
            unreported: Outbox::default(),
            lock_to_release: false,
            last_transfer: None,
        }
    }
}

impl AgentState {
    /// Moves to `to` if the current state allows it.
    pub fn transition(&mut self, to: Phase) -> Result<(), StateError> {
        use Phase::*;
        let ok = match (&self.phase, &to) {
            (_, Error { .. }) => true,
            (Idle | Error { .. } | Blessed { .. } | RolledBack { .. }, Checking) => true,
            (Checking, Idle | Downloading { .. }) => true,
            (Downloading { version: a }, Verifying { version: b }) => a == b,
            (Verifying { version: a }, Staged { version: b }) => a == b,
            (Staged { version: a }, WaitingToReboot { version: b } | Rebooting { version: b, .. }) => a == b,
            (WaitingToReboot { version: a }, Rebooting { version: b, .. }) => a == b,
            (Rebooting { version: a, .. }, Assessing { version: b, .. } | RolledBack { version: b }) => a == b,
            (Assessing { version: a, .. }, Blessed { version: b } | RolledBack { version: b }) => a == b,
            _ => false,
        };
        if !ok {
            return Err(StateError::Transition { from: self.phase.name(), to: to.name() });
        }
        if let RolledBack { version } = &to
            && !self.rolled_back.contains(version)
        {
            self.rolled_back.push(version.clone());
        }
        if !matches!(to, Error { .. } | Checking) {
            self.last_error = None;
        }
        if matches!(to, Idle | Staged { .. }) {
            self.failures = 0;
        }
        self.phase = to;
        Ok(())
    }

    /// Records a failure; the next attempt waits longer each time.
    pub fn fail(&mut self, message: String, now: u64) {
        let attempts = self.failures;
        let retry_at = now + super::schedule::backoff_secs(attempts);
        self.transition(Phase::Error { message: message.clone(), attempts, retry_at }).expect("every phase may fail");
        self.failures += 1;
        self.last_error = Some(message);
    }

    /// At the agent's start (after a boot, or a crash of the agent): where an update left off.
    /// `running` is the booted release; `entry` the loader's verdict on the entry of the version
    /// the state names. Work cut short before its entry existed starts over; a release that
    /// booted is assessed; one the loader gave up on is recorded as rolled back.
    pub fn resume(&mut self, running: &str, entry: Option<Assessment>, now: u64) {
        use Phase::*;
        let (version, rebooted) = match &self.phase {
            Rebooting { version, .. } | Assessing { version, .. } => (version.clone(), true),
            Staged { version } | WaitingToReboot { version } | Downloading { version } | Verifying { version } => {
                (version.clone(), false)
            }
            Checking => {
                self.phase = Idle;
                return;
            }
            Idle | Blessed { .. } | RolledBack { .. } | Error { .. } => return,
        };
        self.phase = if running == version {
            match (entry, &self.phase) {
                (Some(Assessment::Good), _) => Blessed { version },
                (_, Assessing { since, .. }) => Assessing { version, since: *since },
                // Booted before the state said so (the entry was in place when the host went down).
                _ => Assessing { version, since: now },
            }
        } else {
            match entry {
                Some(Assessment::Bad) | None if rebooted => {
                    if !self.rolled_back.contains(&version) {
                        self.rolled_back.push(version.clone());
                    }
                    self.last_error = Some(format!("{version} did not boot; rolled back to {running}"));
                    RolledBack { version }
                }
                // Still installed with tries left (the reboot did not happen, or someone chose the
                // old entry): staged again.
                Some(Assessment::Pending(_)) if !matches!(self.phase, Downloading { .. } | Verifying { .. }) => {
                    Staged { version }
                }
                _ => Idle,
            }
        };
    }

    /// Whether `candidate` may be installed on a host running `current`.
    pub fn may_install(&self, candidate: &str, current: &str) -> Result<(), StateError> {
        if self.rolled_back.iter().any(|v| v == candidate) {
            return Err(StateError::RolledBack(candidate.into()));
        }
        if cairn_release::version::compare(candidate, current) != std::cmp::Ordering::Greater {
            return Err(StateError::NotNewer { candidate: candidate.into(), current: current.into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_reboot(s: &mut AgentState, v: &str) {
        s.transition(Phase::Checking).unwrap();
        s.transition(Phase::Downloading { version: v.into() }).unwrap();
        s.transition(Phase::Verifying { version: v.into() }).unwrap();
        s.transition(Phase::Staged { version: v.into() }).unwrap();
        s.transition(Phase::Rebooting { version: v.into(), from: "1.0.0".into() }).unwrap();
    }

    #[test]
    fn healthy_update_path() {
        let mut s = AgentState::default();
        through_reboot(&mut s, "2.0.0");
        s.resume("2.0.0", Some(Assessment::Pending(2)), 100);
        assert_eq!(s.phase, Phase::Assessing { version: "2.0.0".into(), since: 100 });
        // The agent restarting while assessing keeps the window it had.
        s.resume("2.0.0", Some(Assessment::Pending(2)), 150);
        assert_eq!(s.phase, Phase::Assessing { version: "2.0.0".into(), since: 100 });
        s.transition(Phase::Blessed { version: "2.0.0".into() }).unwrap();
        assert!(s.may_install("2.1.0", "2.0.0").is_ok());
    }

    #[test]
    fn rollback_is_recorded_and_never_retried() {
        let mut s = AgentState::default();
        through_reboot(&mut s, "3.0.0");
        s.resume("3.0.0", Some(Assessment::Pending(2)), 100);
        // Each failed try reboots into 3.0.0 again, still assessing; then the loader gives up.
        s.resume("3.0.0", Some(Assessment::Pending(1)), 130);
        s.resume("2.0.0", Some(Assessment::Bad), 160);
        assert_eq!(s.phase, Phase::RolledBack { version: "3.0.0".into() });
        assert!(s.last_error.as_deref().unwrap().contains("rolled back"));
        assert_eq!(s.may_install("3.0.0", "2.0.0"), Err(StateError::RolledBack("3.0.0".into())));
        assert!(s.may_install("3.0.1", "2.0.0").is_ok(), "a newer release is fine");
    }

    #[test]
    fn interrupted_work_resumes_cleanly() {
        let at = |phase: Phase| AgentState { phase, ..AgentState::default() };
        let v = || "2.0.0".to_string();
        // Cut short before the entry existed: start over.
        for p in [Phase::Checking, Phase::Downloading { version: v() }, Phase::Verifying { version: v() }] {
            let mut s = at(p);
            s.resume("1.0.0", None, 5);
            assert_eq!(s.phase, Phase::Idle);
        }
        // The entry was renamed into place, the state not saved yet, the host went down and
        // the loader booted the new entry: it is assessed like any update.
        let mut s = at(Phase::Verifying { version: v() });
        s.resume("2.0.0", Some(Assessment::Pending(2)), 5);
        assert_eq!(s.phase, Phase::Assessing { version: v(), since: 5 });
        // Staged, not rebooted yet: still staged.
        let mut s = at(Phase::WaitingToReboot { version: v() });
        s.resume("1.0.0", Some(Assessment::Pending(3)), 5);
        assert_eq!(s.phase, Phase::Staged { version: v() });
        // A reboot that never left the old release, entry untouched: staged again, no rollback.
        let mut s = at(Phase::Rebooting { version: v(), from: "1.0.0".into() });
        s.resume("1.0.0", Some(Assessment::Pending(3)), 5);
        assert_eq!(s.phase, Phase::Staged { version: v() });
        assert!(s.rolled_back.is_empty());
        // Blessed already (the agent died after the rename of the blessing).
        let mut s = at(Phase::Assessing { version: v(), since: 1 });
        s.resume("2.0.0", Some(Assessment::Good), 5);
        assert_eq!(s.phase, Phase::Blessed { version: v() });
    }

    #[test]
    fn downgrades_and_skipped_steps_are_refused() {
        let mut s = AgentState::default();
        assert!(matches!(s.may_install("1.0.0", "1.0.0"), Err(StateError::NotNewer { .. })));
        assert!(matches!(s.may_install("1.0~rc1", "1.0"), Err(StateError::NotNewer { .. })));
        assert!(s.transition(Phase::Staged { version: "2".into() }).is_err());
        s.transition(Phase::Checking).unwrap();
        s.transition(Phase::Downloading { version: "2".into() }).unwrap();
        // Verifying a different version than the one downloaded is a bug, refused.
        assert!(s.transition(Phase::Verifying { version: "3".into() }).is_err());
    }

    #[test]
    fn errors_back_off() {
        let mut s = AgentState::default();
        s.fail("server hung".into(), 1000);
        s.fail("server hung".into(), 1030);
        assert_eq!(s.phase, Phase::Error { message: "server hung".into(), attempts: 1, retry_at: 1030 + 60 });
    }
}

//! The agent's state on disk: JSON under /var/lib/cairn, written durably (temp file, fsync,
//! rename) so a crash or a reboot resumes where it was.

use crate::core::state::AgentState;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("saving {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub struct StateFile(pub PathBuf);

impl StateFile {
    /// The saved state; the default one if none was saved yet.
    pub fn load(&self) -> Result<AgentState, StoreError> {
        let path = &self.0;
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt { path: path.clone(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(source) => Err(StoreError::Read { path: path.clone(), source }),
        }
    }

    pub fn save(&self, state: &AgentState) -> Result<(), StoreError> {
        let path = &self.0;
        let err = |source| StoreError::Write { path: path.clone(), source };
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(err)?;
        let json = serde_json::to_vec_pretty(state).expect("serializable");
        cairn_release::durable::write_atomic(path, &json, 0o600).map_err(err)
    }

    /// Where downloads wait to be verified (beside the state, on ROOT).
    pub fn staging_dir(&self) -> &Path {
        self.0.parent().unwrap_or(Path::new("/var/lib/cairn"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let t = tempfile::tempdir().unwrap();
        let file = StateFile(t.path().join("state.json"));
        let mut s = AgentState::default();
        s.fail("server hung".into(), 1000);
        file.save(&s).unwrap();
        assert_eq!(file.load().unwrap(), s);
        assert_eq!(StateFile(t.path().join("none.json")).load().unwrap(), AgentState::default());
        std::fs::write(&file.0, b"{\"format\":1,\"bogus\":true}").unwrap();
        assert!(matches!(file.load(), Err(StoreError::Corrupt { .. })));
    }
}

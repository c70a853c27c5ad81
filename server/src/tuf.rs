//! The server's TUF repository (`--tuf-repo DIR`): releases published into it offline with
//! `cairn release publish --keys` (the targets key never reaches the server), served to agents
//! under `/v1/tuf/`, offered by naming their manifest's target. The server holds the timestamp
//! key (`--tuf-keys DIR`) and signs a new timestamp whenever less than half of its lifetime is
//! left; a server that cannot sign refuses to start, and a refresh that fails is logged as an
//! error each time with when hosts will start refusing the feed.

use cairn_release::admin::Package;
use cairn_release::checkin::Offer;
use cairn_tuf::keys::RoleType;
use cairn_tuf::releases::ReleaseTargets;
use cairn_tuf::repo::FeedState;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub struct TufRepository {
    dir: PathBuf,
    keys: PathBuf,
    /// How long each timestamp the server signs is valid, in seconds.
    lifetime: u64,
    state: RwLock<FeedState>,
}

/// What one round of maintenance did.
#[derive(Debug, PartialEq, Eq)]
pub enum Maintained {
    /// The timestamp had more than half its lifetime left.
    Fresh,
    /// A new timestamp of this version was signed.
    Refreshed(u64),
}

/// Whether a timestamp expiring at `expires` is refreshed at `now`: once less than half of
/// `lifetime` is left, so one failed attempt still leaves time for the next ones.
pub fn needs_refresh(expires: u64, now: u64, lifetime: u64) -> bool {
    expires.saturating_sub(now) < lifetime / 2
}

impl TufRepository {
    /// Opens the repository in `dir` with the timestamp key in `keys`: refused unless the key
    /// is one the repository's root names.
    pub fn open(dir: &Path, keys: &Path, lifetime: u64) -> Result<TufRepository, cairn_tuf::Error> {
        cairn_tuf::repo::can_sign(dir, keys, RoleType::Timestamp)?;
        let state = cairn_tuf::repo::state(dir)?;
        Ok(TufRepository { dir: dir.to_path_buf(), keys: keys.to_path_buf(), lifetime, state: RwLock::new(state) })
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, FeedState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn release(&self, version: &str) -> Option<ReleaseTargets> {
        self.state().releases.0.iter().find(|r| r.version == version).cloned()
    }

    /// The offer of `version`: its manifest's target, which the agent verifies through the
    /// repository's metadata.
    pub fn offer(&self, version: &str) -> Option<Offer> {
        self.release(version).map(|r| Offer {
            version: r.version,
            path: r.manifest.name,
            manifest_sha256: r.manifest.sha256,
        })
    }

    pub fn timestamp_expires(&self) -> u64 {
        self.state().timestamp_expires
    }

    /// Reads the repository again (an operator may have published). Blocking: file I/O.
    pub fn reread(&self) -> Result<(), cairn_tuf::Error> {
        let state = cairn_tuf::repo::state(&self.dir)?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(())
    }

    /// Reads the repository again and signs a new timestamp if it is due. Blocking: file I/O
    /// and signing.
    pub fn maintain(&self, now: u64) -> Result<Maintained, cairn_tuf::Error> {
        self.reread()?;
        if !needs_refresh(self.timestamp_expires(), now, self.lifetime) {
            return Ok(Maintained::Fresh);
        }
        let version = cairn_tuf::refresh(&self.dir, &self.keys, now, self.lifetime)?;
        self.reread()?;
        Ok(Maintained::Refreshed(version))
    }

    /// Every release in the repository, oldest version first.
    pub fn packages(&self) -> Vec<Package> {
        let mut releases = self.state().releases.0.clone();
        releases.sort_by(|a, b| cairn_release::version::compare(&a.version, &b.version));
        releases
            .into_iter()
            .map(|r| Package {
                size: r.files.values().map(|f| f.length).sum(),
                version: r.version,
                channels: r.channels,
                manifest: r.manifest.name,
                manifest_sha256: r.manifest.sha256,
            })
            .collect()
    }

    /// A chunk of the repository's store (`cairn release publish` writes them beside the
    /// metadata), asked for as `/v1/tuf/chunks/{prefix}/{name}`: `None` unless `prefix` is
    /// four hex digits and `name` a chunk id (64 hex digits) starting with them, `.cacnk`.
    pub fn chunk(&self, prefix: &str, name: &str) -> Option<PathBuf> {
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let id = name.strip_suffix(".cacnk")?;
        let ok = prefix.len() == 4 && id.len() == 64 && hex(id) && id.starts_with(prefix);
        ok.then(|| self.dir.join(cairn_tuf::releases::CHUNK_STORE).join(prefix).join(name))
    }

    /// The file an agent asks for as `/v1/tuf/{metadata|targets}/{name}`; `None` for any other
    /// directory or a name that is not a plain file name.
    pub fn file(&self, dir: &str, name: &str) -> Option<PathBuf> {
        let plain = cairn_release::manifest::safe_name(name);
        (plain && matches!(dir, "metadata" | "targets")).then(|| self.dir.join(dir).join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chunk_names_reach_the_chunk_store() {
        let t = tempfile::tempdir().unwrap();
        let repo = TufRepository {
            dir: t.path().to_path_buf(),
            keys: t.path().to_path_buf(),
            lifetime: 86400,
            state: RwLock::new(FeedState { releases: Default::default(), timestamp_version: 1, timestamp_expires: 0 }),
        };
        let id = "462af305a36c4bf0e1fbf0ab708108d8783b7315b488b9e1c9ad2e2c5cee1a4d";
        let name = format!("{id}.cacnk");
        assert_eq!(repo.chunk("462a", &name), Some(t.path().join("chunks/462a").join(&name)));
        assert_eq!(repo.chunk("462b", &name), None, "another prefix");
        assert_eq!(repo.chunk("..", &name), None);
        assert_eq!(repo.chunk("462a", "../../metadata/root.json"), None);
        assert_eq!(repo.chunk("462a", &format!("{}.cacnk", id.to_uppercase())), None);
        assert_eq!(repo.chunk("462a", id), None, "no suffix");
    }

    #[test]
    fn a_timestamp_is_refreshed_once_half_its_lifetime_is_gone() {
        assert!(!needs_refresh(1000 + 86400, 1000, 86400));
        assert!(!needs_refresh(1000 + 43200, 1000, 86400));
        assert!(needs_refresh(1000 + 43199, 1000, 86400));
        assert!(needs_refresh(500, 1000, 86400), "expired");
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn the_server_signs_timestamps_only_with_a_key_the_root_names_and_when_due() {
        let t = tempfile::tempdir().unwrap();
        let (feed, keys) = (t.path().join("feed"), t.path().join("keys"));
        cairn_tuf::init(&feed, &keys, now(), cairn_tuf::Expiry::default()).unwrap();
        let online = t.path().join("online");
        std::fs::create_dir_all(&online).unwrap();
        let e = TufRepository::open(&feed, &online, 86400).err().expect("no timestamp key").to_string();
        assert!(e.contains("holds no timestamp key"), "{e}");
        let key = cairn_tuf::keys::path(&keys, RoleType::Timestamp, 1);
        std::fs::copy(&key, cairn_tuf::keys::path(&online, RoleType::Timestamp, 1)).unwrap();
        let repo = TufRepository::open(&feed, &online, 86400).unwrap();
        assert_eq!(repo.maintain(now()).unwrap(), Maintained::Fresh);
        // Thirteen hours on, less than half of the day is left: a new timestamp.
        let later = now() + 13 * 3600;
        assert_eq!(repo.maintain(later).unwrap(), Maintained::Refreshed(2));
        assert!(repo.timestamp_expires() >= later + 86400);
        assert_eq!(repo.file("metadata", "timestamp.json"), Some(feed.join("metadata/timestamp.json")));
        assert_eq!(repo.file("metadata", "../keys"), None);
        assert_eq!(repo.file("keys", "timestamp-1.pk8"), None);
    }
}

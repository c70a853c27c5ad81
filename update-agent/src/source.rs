//! Where releases come from. A `Transport` fetches files of a feed by relative path; the
//! feed logic verifies the signed index, picks the newest installable release and verifies its
//! manifest, before anything large is downloaded. A directory is a transport (air-gapped hosts,
//! tests); HTTP comes with the daemon.

use crate::state::{AgentState, StateError};
use cairn_release::keys::PublicKey;
use cairn_release::manifest::{FeedIndex, MANIFEST, Release, SIGNATURE_SUFFIX, VerifyError};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("fetching {path}: {message}")]
    Fetch { path: String, message: String },
    #[error("{what}: {source}")]
    Verify { what: String, source: VerifyError },
    #[error("{0}")]
    Refused(String),
}

/// `Send + Sync`: downloads are read on a thread of their own.
pub trait Transport: Send + Sync {
    /// The file at `path` (relative to the feed), from byte `offset` on.
    fn open(&self, path: &str, offset: u64) -> Result<Box<dyn Read + Send>, SourceError>;

    fn read_all(&self, path: &str, limit: u64) -> Result<Vec<u8>, SourceError> {
        let mut buf = Vec::new();
        self.open(path, 0)?
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| SourceError::Fetch { path: path.into(), message: e.to_string() })?;
        if buf.len() as u64 > limit {
            return Err(SourceError::Fetch { path: path.into(), message: format!("larger than {limit} bytes") });
        }
        Ok(buf)
    }
}

/// A feed in a local directory.
pub struct DirTransport(pub PathBuf);

impl Transport for DirTransport {
    fn open(&self, path: &str, offset: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(SourceError::Fetch { path: path.into(), message: "not a feed path".into() });
        }
        let err = |e: std::io::Error| SourceError::Fetch { path: path.into(), message: e.to_string() };
        let mut f = std::fs::File::open(self.0.join(path)).map_err(err)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(err)?;
        Ok(Box::new(f))
    }
}

/// Signed documents are small; a server sending more is refused before parsing.
const MAX_DOCUMENT: u64 = 1 << 20;

/// A release to install, verified.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub release: Release,
    /// Directory of the release in the feed.
    pub path: String,
}

/// Checks the feed: `Ok(None)` when there is nothing to install (with the reason for logs).
pub fn check(
    transport: &dyn Transport,
    trusted: &[PublicKey],
    now: u64,
    os_id: &str,
    running: &str,
    state: &AgentState,
) -> Result<Result<Candidate, String>, SourceError> {
    let index_bytes = transport.read_all("index.json", MAX_DOCUMENT)?;
    let index_sig = transport.read_all(&format!("index.json{SIGNATURE_SUFFIX}"), MAX_DOCUMENT)?;
    let index = FeedIndex::verify(&index_bytes, &index_sig, trusted, now)
        .map_err(|source| SourceError::Verify { what: "feed index".into(), source })?;
    let Some(entry) = index.latest() else { return Ok(Err("the feed lists no release".into())) };
    match state.may_install(&entry.version, running) {
        Ok(()) => {}
        Err(e @ (StateError::NotNewer { .. } | StateError::RolledBack(_))) => return Ok(Err(e.to_string())),
        Err(e) => return Err(SourceError::Refused(e.to_string())),
    }
    if entry.path.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(SourceError::Refused(format!("release path {:?} leaves the feed", entry.path)));
    }
    let manifest = transport.read_all(&format!("{}/{MANIFEST}", entry.path), MAX_DOCUMENT)?;
    let sig = transport.read_all(&format!("{}/{MANIFEST}{SIGNATURE_SUFFIX}", entry.path), MAX_DOCUMENT)?;
    let release = Release::verify(&manifest, &sig, trusted, now)
        .map_err(|source| SourceError::Verify { what: format!("release {}", entry.version), source })?;
    let sha = hex::encode(Sha256::digest(&manifest));
    if sha != entry.manifest_sha256 {
        return Err(SourceError::Refused(format!(
            "release.json of {} does not match the index's sha256",
            entry.version
        )));
    }
    if release.version != entry.version || release.os_id != os_id {
        return Err(SourceError::Refused(format!(
            "the index lists {} {} but the release is {} {}",
            os_id, entry.version, release.os_id, release.version
        )));
    }
    Ok(Ok(Candidate { release, path: entry.path.clone() }))
}

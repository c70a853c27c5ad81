//! Where releases come from. A `Transport` fetches files of a feed by relative path; the
//! feed logic verifies the signed index, picks the newest installable release and verifies its
//! manifest, before anything large is downloaded. A directory is a transport (air-gapped hosts,
//! tests); HTTP comes with the daemon.

use crate::state::{AgentState, StateError};
use cairn_release::checkin::{CheckIn, CheckInReply, Event};
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
    fetch_release(transport, trusted, now, os_id, &entry.version, &entry.path, &entry.manifest_sha256).map(Ok)
}

/// Fetches and verifies the release at `path` (a directory of the feed, or an http(s) URL)
/// that an index or a rollout server named as `version` with `manifest_sha256`.
pub fn fetch_release(
    transport: &dyn Transport,
    trusted: &[PublicKey],
    now: u64,
    os_id: &str,
    version: &str,
    path: &str,
    manifest_sha256: &str,
) -> Result<Candidate, SourceError> {
    let manifest = transport.read_all(&format!("{path}/{MANIFEST}"), MAX_DOCUMENT)?;
    let sig = transport.read_all(&format!("{path}/{MANIFEST}{SIGNATURE_SUFFIX}"), MAX_DOCUMENT)?;
    let release = Release::verify(&manifest, &sig, trusted, now)
        .map_err(|source| SourceError::Verify { what: format!("release {version}"), source })?;
    let sha = hex::encode(Sha256::digest(&manifest));
    if sha != manifest_sha256 {
        return Err(SourceError::Refused(format!(
            "release.json of {version} does not match the sha256 it was offered with"
        )));
    }
    if release.version != version || release.os_id != os_id {
        return Err(SourceError::Refused(format!(
            "offered {os_id} {version} but the release is {} {}",
            release.os_id, release.version
        )));
    }
    Ok(Candidate { release, path: path.to_string() })
}

/// Asks the rollout server what to install. `Ok(Err(reason))` when there is nothing.
pub fn check_server(
    server: &dyn RolloutServer,
    transport: &dyn Transport,
    trusted: &[PublicKey],
    now: u64,
    checkin: &CheckIn,
    state: &AgentState,
) -> Result<Result<Candidate, String>, SourceError> {
    let reply = server.check_in(checkin)?;
    let Some(offer) = reply.update else {
        return Ok(Err(reply.reason.unwrap_or_else(|| "the server offers no update".into())));
    };
    match state.may_install(&offer.version, &checkin.version) {
        Ok(()) => {}
        Err(e @ (StateError::NotNewer { .. } | StateError::RolledBack(_))) => return Ok(Err(e.to_string())),
        Err(e) => return Err(SourceError::Refused(e.to_string())),
    }
    let absolute = offer.path.starts_with("https://") || offer.path.starts_with("http://");
    if !absolute && offer.path.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(SourceError::Refused(format!("release path {:?} leaves the server", offer.path)));
    }
    let path = offer.path.trim_end_matches('/');
    fetch_release(transport, trusted, now, &checkin.os_id, &offer.version, path, &offer.manifest_sha256).map(Ok)
}

/// The rollout server's agent API (cairn_release::checkin).
pub trait RolloutServer: Send + Sync {
    fn check_in(&self, checkin: &CheckIn) -> Result<CheckInReply, SourceError>;
    fn report(&self, event: &Event) -> Result<(), SourceError>;
}

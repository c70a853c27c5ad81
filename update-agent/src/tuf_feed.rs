//! A feed that is a TUF repository (the image trusts its root, `cairn build --trust-root`):
//! every check verifies the feed's metadata from the newest root this host has seen
//! (`cairn_tuf::client`), offers the newest release on the host's channel, and fetches its
//! manifest as a verified target. Artifacts are downloaded by the usual resumable path and
//! checked against the sha256 that both the manifest and the targets metadata name.

use crate::ports::{Candidate, FetchError, Offered, ReleaseSource, RolloutServer, SourceError, Transport};
use cairn_release::checkin::{CheckIn, Offer};
use cairn_release::manifest::Release;
use cairn_tuf::client::{Client, Cost, Fetch, FetchFailure, TrustError, Verified};
use cairn_tuf::releases::ReleaseTargets;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The agent's transport as the TUF client's fetch: a missing file is `None`.
struct TransportFetch(Arc<dyn Transport>);

impl Fetch for TransportFetch {
    fn fetch(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchFailure> {
        match self.0.read_all(path, limit) {
            Ok(data) => Ok(Some(data)),
            Err(SourceError::Fetch { source, .. }) if is_missing(&source) => Ok(None),
            Err(e) => Err(FetchFailure { message: e.to_string(), transient: e.is_transient() }),
        }
    }
}

fn is_missing(e: &FetchError) -> bool {
    match e {
        FetchError::Status(404) | FetchError::Answer { status: 404, .. } => true,
        FetchError::Io(e) => e.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

pub struct TufFeed {
    client: Client,
    transport: Arc<dyn Transport>,
    channel: String,
    /// The last check's verified feed: `fetch` follows the `offer` it made.
    verified: Mutex<Option<Verified>>,
}

impl TufFeed {
    /// `shipped_root`: the image's root metadata; `state`: where the host keeps what it verified.
    pub fn new(transport: Arc<dyn Transport>, shipped_root: PathBuf, state: PathBuf, channel: &str) -> TufFeed {
        let client = Client::new(Arc::new(TransportFetch(transport.clone())), shipped_root, state);
        TufFeed { client, transport, channel: channel.to_string(), verified: Mutex::new(None) }
    }

    fn check(&self, now: u64) -> Result<(), SourceError> {
        let verified = self.client.check(now).map_err(untrusted)?;
        let Cost { requests, bytes } = verified.cost;
        eprintln!(
            "cairn-agent: feed verified (root {}): {requests} request(s), {bytes} bytes",
            verified.root_version()
        );
        *self.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(verified);
        Ok(())
    }

    /// The release `offer` names, verified through the last check's metadata (and on
    /// `channel`, when the host chooses its channel itself).
    fn verify_offer(&self, offer: &Offer, os_id: &str, channel: Option<&str>) -> Result<Candidate, SourceError> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let verified = verified.as_ref().ok_or_else(|| SourceError::Refused("TUF: the feed was not checked".into()))?;
        let targets = verified
            .releases
            .by_manifest(&offer.path)
            .ok_or_else(|| SourceError::Refused(format!("TUF: the feed has no release manifest {:?}", offer.path)))?;
        if let Some(channel) = channel
            && !targets.on(channel)
        {
            return Err(SourceError::Refused(format!(
                "TUF: release {} is not on channel {channel} (it is on {})",
                targets.version,
                targets.channels.join(", ")
            )));
        }
        let manifest = verified.read(&targets.manifest.name).map_err(untrusted)?;
        if hex::encode(Sha256::digest(&manifest)) != offer.manifest_sha256 {
            return Err(SourceError::Refused(format!(
                "release.json of {} does not match the sha256 it was offered with",
                offer.version
            )));
        }
        let release = Release::parse_trusted(&manifest)
            .map_err(|source| SourceError::Verify { what: format!("release {}", offer.version), source })?;
        if release.version != offer.version || release.version != targets.version || release.os_id != os_id {
            return Err(SourceError::Refused(format!(
                "offered {os_id} {} but the release is {} {}",
                offer.version, release.os_id, release.version
            )));
        }
        let artifacts = locate(&release, targets)?;
        let usr_chunks = usr_chunks(&release, targets);
        Ok(Candidate { release, artifacts, usr_chunks })
    }
}

/// A rollout server with a TUF repository: its check-in reply only names a release's target;
/// the agent verifies the server's repository (at `/v1/tuf/`) and the release through it, so a
/// server, or whoever sits between it and the host, can withhold an offer but not forge one.
/// The server chooses the channel (by the host's group).
pub struct TufServerSource {
    pub server: Arc<dyn RolloutServer>,
    pub feed: TufFeed,
}

impl ReleaseSource for TufServerSource {
    fn offer(&self, checkin: &CheckIn, _now: u64) -> Result<Offered, SourceError> {
        crate::source::server_offer(&*self.server, checkin)
    }

    fn fetch(&self, offer: &Offer, os_id: &str, now: u64) -> Result<Candidate, SourceError> {
        self.feed.check(now)?;
        self.feed.verify_offer(offer, os_id, None)
    }

    fn transport(&self) -> &dyn Transport {
        self.feed.transport()
    }
}

/// A TUF refusal as the agent reports it: unreachable feeds are retried, the rest are refused
/// with TUF's reason (shown by `updatectl status`).
fn untrusted(e: TrustError) -> SourceError {
    if e.is_transient() {
        SourceError::Fetch { path: "the feed's metadata".into(), source: FetchError::Network(e.to_string()) }
    } else {
        SourceError::Refused(format!("TUF: {e}"))
    }
}

impl ReleaseSource for TufFeed {
    fn offer(&self, _checkin: &CheckIn, now: u64) -> Result<Offered, SourceError> {
        self.check(now)?;
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let verified = verified.as_ref().expect("checked just now");
        Ok(match verified.releases.newest(&self.channel) {
            None => Offered::Nothing(format!("the feed has no release on channel {}", self.channel)),
            Some(r) => Offered::Release(Offer {
                version: r.version.clone(),
                path: r.manifest.name.clone(),
                manifest_sha256: r.manifest.sha256.clone(),
            }),
        })
    }

    fn fetch(&self, offer: &Offer, os_id: &str, now: u64) -> Result<Candidate, SourceError> {
        if self.verified.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            self.check(now)?;
        }
        self.verify_offer(offer, os_id, Some(&self.channel))
    }

    fn transport(&self) -> &dyn Transport {
        &*self.transport
    }
}

/// Each artifact's target: it must be in the same release's targets with the same size and
/// sha256 as the manifest says (two signed documents that must agree).
fn locate(release: &Release, targets: &ReleaseTargets) -> Result<BTreeMap<String, String>, SourceError> {
    let mut paths = BTreeMap::new();
    for a in &release.artifacts {
        let target = targets.files.get(&a.name).ok_or_else(|| {
            SourceError::Refused(format!("TUF: release {} has no target for {}", release.version, a.name))
        })?;
        if target.sha256 != a.sha256 || target.length != a.size {
            return Err(SourceError::Refused(format!(
                "TUF: {} of release {}: the targets metadata and release.json disagree on its size or sha256",
                a.name, release.version
            )));
        }
        paths.insert(a.name.clone(), Verified::target_path(target));
    }
    Ok(paths)
}

/// The `/usr` image's chunk index, when the release's targets have one (`cairn release
/// publish` writes it with the chunks into the feed's store).
fn usr_chunks(release: &Release, targets: &ReleaseTargets) -> Option<crate::ports::UsrChunks> {
    let usr = release.artifacts.iter().find(|a| a.kind == cairn_release::manifest::ArtifactKind::Usr)?;
    let index = targets.files.get(&cairn_tuf::releases::usr_index_name(&usr.name))?;
    Some(crate::ports::UsrChunks {
        index: Verified::target_path(index),
        index_sha256: index.sha256.clone(),
        index_size: index.length,
        store: cairn_tuf::releases::CHUNK_STORE.to_string(),
    })
}

#[cfg(test)]
mod tests;

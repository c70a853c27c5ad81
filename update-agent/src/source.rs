//! Where releases come from: a signed static feed (`Feed`, over any `Transport`) or a rollout
//! server's offer (`ServerSource`). Both end in the same verified fetch of the release's
//! manifest, before anything large is downloaded. Whether an offer is worth installing is the
//! core's decision, not made here.

use crate::ports::{Candidate, FetchError, Offered, ReleaseSource, RolloutServer, SourceError, Transport};
use cairn_release::checkin::{CheckIn, Offer};
use cairn_release::keys::PublicKey;
use cairn_release::manifest::{FeedIndex, MANIFEST, Release, SIGNATURE_SUFFIX};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

/// A feed in a local directory (air-gapped hosts, tests).
pub struct DirTransport(pub PathBuf);

impl Transport for DirTransport {
    fn open(&self, path: &str, offset: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        if !inside_feed(path) {
            return Err(SourceError::fetch(path)(FetchError::OutsideFeed));
        }
        let err = |e: std::io::Error| SourceError::fetch(path)(e.into());
        let mut f = std::fs::File::open(self.0.join(path)).map_err(err)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(err)?;
        Ok(Box::new(f))
    }
}

/// A relative path that stays inside the feed (no `..`, no empty components).
fn inside_feed(path: &str) -> bool {
    !path.split('/').any(|c| c == ".." || c.is_empty())
}

/// Signed documents are small; a server sending more is refused before parsing.
const MAX_DOCUMENT: u64 = 1 << 20;

/// A signed static feed: the channel index names the newest release.
pub struct Feed {
    pub transport: Box<dyn Transport>,
    pub trusted: Vec<PublicKey>,
}

impl ReleaseSource for Feed {
    fn offer(&self, _checkin: &CheckIn, now: u64) -> Result<Offered, SourceError> {
        let index = self.transport.read_all("index.json", MAX_DOCUMENT)?;
        let signature = self.transport.read_all(&format!("index.json{SIGNATURE_SUFFIX}"), MAX_DOCUMENT)?;
        let index = FeedIndex::verify(&index, &signature, &self.trusted, now)
            .map_err(|source| SourceError::Verify { what: "feed index".into(), source })?;
        Ok(match index.latest() {
            None => Offered::Nothing("the feed lists no release".into()),
            Some(e) => Offered::Release(Offer {
                version: e.version.clone(),
                path: e.path.clone(),
                manifest_sha256: e.manifest_sha256.clone(),
            }),
        })
    }

    fn fetch(&self, offer: &Offer, os_id: &str, now: u64) -> Result<Candidate, SourceError> {
        if !inside_feed(&offer.path) {
            return Err(SourceError::Refused(format!("release path {:?} leaves the feed", offer.path)));
        }
        fetch_release(&*self.transport, &self.trusted, now, os_id, offer, &offer.path)
    }

    fn transport(&self) -> &dyn Transport {
        &*self.transport
    }
}

/// A rollout server: the check-in's reply offers a release in the server's feed (or by URL).
pub struct ServerSource {
    pub server: Arc<dyn RolloutServer>,
    pub transport: Box<dyn Transport>,
    pub trusted: Vec<PublicKey>,
}

/// What a rollout server's check-in reply offers, or why nothing.
pub fn server_offer(server: &dyn RolloutServer, checkin: &CheckIn) -> Result<Offered, SourceError> {
    let reply = server.check_in(checkin)?;
    Ok(match reply.update {
        Some(offer) => Offered::Release(offer),
        None => Offered::Nothing(reply.reason.unwrap_or_else(|| "the server offers no update".into())),
    })
}

impl ReleaseSource for ServerSource {
    fn offer(&self, checkin: &CheckIn, _now: u64) -> Result<Offered, SourceError> {
        server_offer(&*self.server, checkin)
    }

    fn fetch(&self, offer: &Offer, os_id: &str, now: u64) -> Result<Candidate, SourceError> {
        let absolute = offer.path.starts_with("https://") || offer.path.starts_with("http://");
        if !absolute && !inside_feed(&offer.path) {
            return Err(SourceError::Refused(format!("release path {:?} leaves the server", offer.path)));
        }
        let path = offer.path.trim_end_matches('/');
        fetch_release(&*self.transport, &self.trusted, now, os_id, offer, path)
    }

    fn transport(&self) -> &dyn Transport {
        &*self.transport
    }
}

/// Fetches and verifies the release at `path` (a directory of the feed, or an http(s) URL)
/// that was offered as `offer`: signed by a trusted key, not expired, the exact manifest the
/// offer pinned, the version and OS it named.
pub fn fetch_release(
    transport: &dyn Transport,
    trusted: &[PublicKey],
    now: u64,
    os_id: &str,
    offer: &Offer,
    path: &str,
) -> Result<Candidate, SourceError> {
    let version = &offer.version;
    let manifest = transport.read_all(&format!("{path}/{MANIFEST}"), MAX_DOCUMENT)?;
    let sig = transport.read_all(&format!("{path}/{MANIFEST}{SIGNATURE_SUFFIX}"), MAX_DOCUMENT)?;
    let release = Release::verify(&manifest, &sig, trusted, now)
        .map_err(|source| SourceError::Verify { what: format!("release {version}"), source })?;
    if hex::encode(Sha256::digest(&manifest)) != offer.manifest_sha256 {
        return Err(SourceError::Refused(format!(
            "release.json of {version} does not match the sha256 it was offered with"
        )));
    }
    if &release.version != version || release.os_id != os_id {
        return Err(SourceError::Refused(format!(
            "offered {os_id} {version} but the release is {} {}",
            release.os_id, release.version
        )));
    }
    Ok(Candidate::beside(release, path))
}

//! The host's side of a TUF feed: `tough` walks the chain of roots from the newest one this host
//! has verified, then loads timestamp, snapshot and targets with every check TUF makes
//! (signature thresholds, rollback of any role, snapshot and targets agreeing). Expiry is judged
//! here against the caller's clock, so it can be injected; the newest root is kept durably in
//! the state directory, so a rotated key takes effect without an OS update.
//!
//! Versioned metadata (`N.snapshot.json`, `N.targets.json`) never changes under consistent
//! snapshots: once verified it is kept and not downloaded again, so a check with nothing new
//! costs the probe for the next root and the timestamp.

use crate::releases::{self, Releases};
use cairn_release::durable::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tough::schema::{RoleType, Root, Signed};
use tough::{ExpirationEnforcement, IntoVec, Repository, RepositoryLoader, TargetName};

/// The base URL tough is given; the adapter turns its URLs back into paths inside the feed.
const FEED_BASE: &str = "https://feed.invalid/";
/// No metadata file of a feed is larger (tough bounds each role more tightly still).
const MAX_FILE: u64 = 16 << 20;

/// Where the host's TUF state lives, under the state directory.
const KEPT_ROOT: &str = "root.json";
const DATASTORE: &str = "datastore";
const VERIFIED: &str = "verified";

/// Fetches a file of the feed by its path (`metadata/timestamp.json`, `targets/HASH.NAME`).
pub trait Fetch: Send + Sync {
    /// The whole file (at most `limit` bytes), or `Ok(None)` when the feed has no such file.
    fn fetch(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchFailure>;
}

/// A fetch that did not work; `transient` when trying later may help (the network, a 5xx).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchFailure {
    pub message: String,
    pub transient: bool,
}

/// Why a feed was not trusted, in the kinds an operator acts on.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The feed could not be reached: try again later.
    #[error("the feed could not be read: {0}")]
    Unreachable(String),
    /// Metadata past its expiry: a feed nobody refreshes, or someone replaying old metadata.
    #[error(
        "the {role} metadata expired at {expires} (this host's clock says {now}): the feed is not being refreshed, or \
         someone is replaying old metadata (a freeze attack)"
    )]
    Expired { role: &'static str, expires: String, now: String },
    /// Older metadata than this host has already seen.
    #[error("rollback refused: {0}")]
    Rollback(String),
    /// A signature missing, by an unknown or revoked key, or below the threshold.
    #[error("signature refused: {0}")]
    Signature(String),
    /// Roles that do not agree (targets not the ones the snapshot names, a file not its hash).
    #[error("inconsistent feed refused: {0}")]
    Inconsistent(String),
    /// The clock reads earlier than when this host last checked.
    #[error("the clock went backwards: {0}; no verdict until it is right")]
    Clock(String),
    #[error("{0}")]
    Refused(String),
    /// This host's own state (the state directory, the shipped root).
    #[error("{0}")]
    Local(String),
}

impl TrustError {
    pub fn is_transient(&self) -> bool {
        matches!(self, TrustError::Unreachable(_))
    }

    fn from_tough(e: tough::error::Error, failures: &Failures) -> TrustError {
        use tough::error::Error as E;
        let message = e.to_string();
        match e {
            // A stream that failed after its fetch worked failed tough's own checks (a hash, a
            // length); otherwise the fetch's failure says what happened.
            E::Transport { .. } | E::CacheFileRead { .. } => match failures.last() {
                Some(f) if !f.transient => TrustError::Refused(f.message),
                Some(f) => TrustError::Unreachable(f.message),
                None => TrustError::Inconsistent(message),
            },
            E::OlderMetadata { .. } | E::OlderSnapshotInTimestamp { .. } | E::SnapshotRoleRollback { .. } => {
                TrustError::Rollback(message)
            }
            E::VerifyMetadata { .. } | E::VerifyRoleMetadata { .. } | E::VerifyTrustedMetadata { .. } => {
                TrustError::Signature(message)
            }
            E::VersionMismatch { .. }
            | E::HashMismatch { .. }
            | E::MetaMissing { .. }
            | E::SnapshotTargetsMetaMissing { .. }
            | E::SnapshotRoleMissing { .. }
            | E::MissingSnapshotMeta { .. }
            | E::TimestampMetaLength { .. }
            | E::MaxSizeExceeded { .. } => TrustError::Inconsistent(message),
            E::SystemTimeSteppedBackward { .. } => TrustError::Clock(message),
            E::DatastoreCreate { .. }
            | E::DatastoreOpen { .. }
            | E::DatastoreRemove { .. }
            | E::DatastoreSerialize { .. }
            | E::DatastoreInit { .. } => TrustError::Local(message),
            _ => TrustError::Refused(message),
        }
    }
}

/// What the last fetch that failed said (tough keeps only a string of it).
#[derive(Default)]
struct Failures(Mutex<Option<FetchFailure>>);

impl Failures {
    /// What the newest fetch did: a failure, or `None` when it worked.
    fn record(&self, f: Option<FetchFailure>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
    fn last(&self) -> Option<FetchFailure> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Requests and bytes one check cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub requests: u64,
    pub bytes: u64,
}

/// A file's name and bytes, as downloaded.
type Fetched = (String, Vec<u8>);

/// tough's transport over a `Fetch`: counts what it costs, serves verified versioned metadata
/// from the state directory, and remembers new versioned metadata to keep once verified.
#[derive(Clone)]
struct Adapter {
    fetch: Arc<dyn Fetch>,
    verified_dir: PathBuf,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    fresh: Arc<Mutex<Vec<Fetched>>>,
    failures: Arc<Failures>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cairn feed transport")
    }
}

/// `N.snapshot.json` or `N.targets.json`: immutable under consistent snapshots.
fn versioned_metadata(path: &str) -> Option<&str> {
    let name = path.strip_prefix("metadata/")?;
    let (n, role) = name.split_once('.')?;
    let immutable = matches!(role, "snapshot.json" | "targets.json");
    (immutable && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

impl Adapter {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, FetchFailure> {
        if let Some(name) = versioned_metadata(path)
            && let Ok(kept) = std::fs::read(self.verified_dir.join(name))
        {
            return Ok(Some(kept));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let got = self.fetch.fetch(path, MAX_FILE)?;
        if let Some(data) = &got {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some(name) = versioned_metadata(path) {
                self.fresh.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), data.clone()));
            }
        }
        Ok(got)
    }
}

#[async_trait::async_trait]
impl tough::Transport for Adapter {
    async fn fetch(&self, url: url::Url) -> Result<tough::TransportStream, tough::TransportError> {
        use tough::{TransportError, TransportErrorKind as Kind};
        let Some(path) = url.as_str().strip_prefix(FEED_BASE).map(str::to_string) else {
            return Err(TransportError::new(Kind::UnsupportedUrlScheme, url));
        };
        let this = self.clone();
        let fetched = path.clone();
        // The fetch blocks (a blocking HTTP client): off the runtime's thread.
        let got = tokio::task::spawn_blocking(move || this.get(&fetched))
            .await
            .map_err(|e| TransportError::new_with_cause(Kind::Other, &url, e))?;
        let missing = || FetchFailure { message: format!("{path} is not in the feed"), transient: true };
        self.failures.record(match &got {
            Ok(Some(_)) => None,
            Ok(None) => Some(missing()),
            Err(failure) => Some(failure.clone()),
        });
        match got {
            Ok(Some(data)) => {
                let chunk: Result<bytes::Bytes, TransportError> = Ok(bytes::Bytes::from(data));
                Ok(Box::pin(futures_util::stream::iter([chunk])))
            }
            Ok(None) => Err(TransportError::new(Kind::FileNotFound, url)),
            Err(failure) => Err(TransportError::new_with_cause(Kind::Other, url, failure)),
        }
    }
}

/// A host's view of one feed: the root shipped in its image, its state directory, the feed.
pub struct Client {
    fetch: Arc<dyn Fetch>,
    shipped_root: PathBuf,
    state: PathBuf,
}

/// A feed as verified by one check: every role signed, consistent, newer than or as new as what
/// this host saw before, and not expired at the check's time.
pub struct Verified {
    repo: Repository,
    runtime: tokio::runtime::Runtime,
    adapter: Adapter,
    pub cost: Cost,
    pub releases: Releases,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified").field("root", &self.root_version()).field("cost", &self.cost).finish()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, TrustError> {
    tokio::runtime::Builder::new_current_thread().build().map_err(|e| TrustError::Local(format!("a runtime: {e}")))
}

/// Checks that `bytes` is TUF root metadata signed by a threshold of its own root keys (what
/// an image may ship as its trust anchor); its version is returned.
pub fn check_root(bytes: &[u8]) -> Result<u64, String> {
    let root: Signed<Root> = serde_json::from_slice(bytes).map_err(|e| format!("not TUF root metadata: {e}"))?;
    root.signed.verify_role(&root).map_err(|e| format!("not signed by its own root keys: {e}"))?;
    Ok(root.signed.version.get())
}

fn root_version(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Signed<Root>>(bytes).ok().map(|r| r.signed.version.get())
}

impl Client {
    /// `shipped_root`: the root metadata in the image (`/usr`); `state`: a directory on ROOT
    /// that outlives updates (the newest verified root, tough's datastore, kept metadata).
    pub fn new(fetch: Arc<dyn Fetch>, shipped_root: PathBuf, state: PathBuf) -> Client {
        Client { fetch, shipped_root, state }
    }

    /// The root a check starts from: the newest of the one kept on ROOT and the image's.
    fn starting_root(&self) -> Result<(Vec<u8>, u64), TrustError> {
        let shipped = std::fs::read(&self.shipped_root)
            .map_err(|e| TrustError::Local(format!("{}: {e}", self.shipped_root.display())))?;
        let shipped_version = root_version(&shipped)
            .ok_or_else(|| TrustError::Local(format!("{}: not TUF root metadata", self.shipped_root.display())))?;
        let kept = std::fs::read(self.state.join(KEPT_ROOT)).ok().and_then(|b| root_version(&b).map(|v| (b, v)));
        Ok(match kept {
            Some((kept, version)) if version > shipped_version => (kept, version),
            _ => (shipped, shipped_version),
        })
    }

    /// The version of the newest root this host has verified (the image's if none newer).
    pub fn trusted_root_version(&self) -> Result<u64, TrustError> {
        Ok(self.starting_root()?.1)
    }

    /// Loads and verifies the feed at `now` (Unix seconds).
    pub fn check(&self, now: u64) -> Result<Verified, TrustError> {
        let (root, root_version) = self.starting_root()?;
        let datastore = self.state.join(DATASTORE);
        let verified_dir = self.state.join(VERIFIED);
        for dir in [&datastore, &verified_dir] {
            std::fs::create_dir_all(dir).map_err(|e| TrustError::Local(format!("{}: {e}", dir.display())))?;
        }
        let adapter = Adapter {
            fetch: self.fetch.clone(),
            verified_dir,
            requests: Arc::default(),
            bytes: Arc::default(),
            fresh: Arc::default(),
            failures: Arc::default(),
        };
        let base = url::Url::parse(FEED_BASE).expect("a URL");
        let runtime = runtime()?;
        let repo = runtime
            .block_on(
                RepositoryLoader::new(
                    &root,
                    base.join("metadata/").expect("a URL"),
                    base.join("targets/").expect("a URL"),
                )
                .transport(adapter.clone())
                .datastore(datastore)
                // Expiry is checked below, against the caller's clock.
                .expiration_enforcement(ExpirationEnforcement::Unsafe)
                .load(),
            )
            .map_err(|e| TrustError::from_tough(e, &adapter.failures))?;
        check_fresh(&expiries(&repo), now)?;
        self.keep(&repo, root_version, &adapter)?;
        let releases = releases::from_targets(repo.targets().signed.targets.iter().map(|(name, t)| (name.raw(), t)))
            .map_err(TrustError::Refused)?;
        let cost =
            Cost { requests: adapter.requests.load(Ordering::Relaxed), bytes: adapter.bytes.load(Ordering::Relaxed) };
        Ok(Verified { repo, runtime, adapter, cost, releases })
    }

    /// Keeps what this check verified: the root when the chain went past the one it started
    /// from, and the versioned metadata it downloaded.
    fn keep(&self, repo: &Repository, started_from: u64, adapter: &Adapter) -> Result<(), TrustError> {
        let local = |what: &Path, e: std::io::Error| TrustError::Local(format!("{}: {e}", what.display()));
        let write = |path: &Path, data: &[u8]| write_atomic(path, data, 0o644).map_err(|e| local(path, e));
        let root = &repo.root();
        if root.signed.version.get() > started_from {
            let bytes = serde_json::to_vec(root).map_err(|e| TrustError::Local(format!("root metadata: {e}")))?;
            write(&self.state.join(KEPT_ROOT), &bytes)?;
        }
        let fresh = std::mem::take(&mut *adapter.fresh.lock().unwrap_or_else(|e| e.into_inner()));
        for (name, data) in fresh {
            write(&adapter.verified_dir.join(&name), &data)?;
        }
        Ok(())
    }
}

fn expiries(repo: &Repository) -> [(RoleType, jiff::Timestamp); 4] {
    [
        (RoleType::Root, repo.root().signed.expires),
        (RoleType::Timestamp, repo.timestamp().signed.expires),
        (RoleType::Snapshot, repo.snapshot().signed.expires),
        (RoleType::Targets, repo.targets().signed.expires),
    ]
}

/// Refuses metadata that has expired at `now` (Unix seconds), naming the role.
pub fn check_fresh(expiries: &[(RoleType, jiff::Timestamp)], now: u64) -> Result<(), TrustError> {
    let now_ts = jiff::Timestamp::from_second(now as i64).unwrap_or(jiff::Timestamp::MAX);
    match expiries.iter().find(|(_, expires)| *expires <= now_ts) {
        None => Ok(()),
        Some((role, expires)) => Err(TrustError::Expired {
            role: crate::keys::role_name(*role),
            expires: expires.to_string(),
            now: now_ts.to_string(),
        }),
    }
}

impl Verified {
    /// The target `name`, downloaded and checked against its length and hashes.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, TrustError> {
        let target = TargetName::new(name).map_err(|e| TrustError::Refused(format!("target {name:?}: {e}")))?;
        let failures = &self.adapter.failures;
        self.runtime.block_on(async {
            let stream = self
                .repo
                .read_target(&target)
                .await
                .map_err(|e| TrustError::from_tough(e, failures))?
                .ok_or_else(|| TrustError::Refused(format!("the feed has no target {name:?}")))?;
            stream.into_vec().await.map_err(|e| TrustError::from_tough(e, failures))
        })
    }

    /// The version of the root this check ended on.
    pub fn root_version(&self) -> u64 {
        self.repo.root().signed.version.get()
    }

    /// Where a target's bytes are, relative to the feed (consistent snapshots: under its hash).
    pub fn target_path(file: &releases::TargetFile) -> String {
        format!("targets/{}.{}", file.sha256, file.name)
    }
}

#[cfg(test)]
mod tests;

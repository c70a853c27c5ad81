//! Everything the agent's driver reaches outside itself, as traits: the clock, the host, its
//! ESP, where releases come from, the rollout server and the reboot lock; and the data and the
//! errors that cross them. The core (`crate::core`) sees none of these traits, only their
//! answers; Linux implementations live in `crate::linux`, HTTP ones in `http`, `server`,
//! `fleetlock` and `source`.

use cairn_release::checkin::{CheckIn, CheckInReply, Event, Offer};
use cairn_release::gpt::Slot;
use cairn_release::manifest::{Artifact, ManifestError, Release};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub trait Clock {
    /// Unix seconds.
    fn now(&self) -> u64;
}

/// The host's clock, as the agent judges time by it (`cairn_release::clock::judging_time`):
/// never synchronised and earlier than the running release's build time, it reads as that.
pub struct SystemClock {
    /// The running release's build time (Unix seconds): every file of `/usr` carries it.
    pub built: u64,
}

impl SystemClock {
    pub fn this_host() -> SystemClock {
        let built = std::fs::metadata("/usr/lib/os-release")
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        SystemClock { built }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let synchronised = cairn_release::clock::kernel_sync().is_ok_and(|s| s.synchronised);
        cairn_release::clock::judging_time(now, synchronised, self.built)
    }
}

/// The release this boot runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub os_id: String,
    pub version: String,
    pub slot: Slot,
    /// The running `/usr` partition's device (`/dev/vda2`).
    pub usr_partition: PathBuf,
    /// Its dm-verity device (`/dev/dm-0`): the running `/usr` image's data, verified as read.
    pub usr_device: Option<PathBuf>,
}

/// Where the other slot is written.
#[derive(Clone, Debug)]
pub struct TargetDevice {
    pub disk: PathBuf,
    pub partition: PathBuf,
    /// Where the partition starts within `partition` (0 for a partition device).
    pub offset: u64,
    pub size: u64,
    pub slot: Slot,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// The host is not laid out as a Cairn host (a missing key, device or partition).
    #[error("{0}")]
    Layout(String),
    /// cairn-init could not be asked.
    #[error(transparent)]
    Control(#[from] cairn_release::control::CallError),
    /// cairn-init answered no, or not what it should.
    #[error("cairn-init: {0}")]
    Init(String),
}

impl HostError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
        let what = what.into();
        move |source| HostError::Io { what, source }
    }
}

pub trait Host {
    fn running(&self) -> &Running;
    /// Every required service running.
    fn healthy(&self) -> Result<bool, HostError>;
    fn reboot(&self) -> Result<(), HostError>;
    fn target(&self) -> Result<TargetDevice, HostError>;
    fn esp(&self) -> &dyn Esp;
}

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("{what}: {source}")]
    Mount { what: String, source: nix::Error },
    #[error("on the ESP ({dir}): {source}")]
    Io { dir: String, source: std::io::Error },
}

/// The ESP's `EFI/Linux` directory, made available for `f` (a host mounts the ESP around it).
pub trait Esp {
    fn with_entries(&self, f: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> Result<(), EspError>;
}

/// An ESP that is a directory already (tests, or an ESP mounted by the administrator).
pub struct EntriesDir(pub PathBuf);

impl Esp for EntriesDir {
    fn with_entries(&self, f: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> Result<(), EspError> {
        f(&self.0).map_err(|source| EspError::Io { dir: self.0.display().to_string(), source })
    }
}

/// Why a fetch failed, in the kinds a caller acts on.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with this status. 4xx: it refuses; 5xx: it may work later.
    #[error("HTTP {0}")]
    Status(u16),
    /// Like `Status`, with the server's explanation.
    #[error("HTTP {status}: {detail}")]
    Answer { status: u16, detail: String },
    /// No answer, a reset, a timeout: it may work later.
    #[error("{0}")]
    Network(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("not a path inside the feed")]
    OutsideFeed,
    /// The server answered something that is not what the protocol says.
    #[error("{0}")]
    Malformed(String),
}

impl FetchError {
    /// Worth trying again: the network or the server's side, not a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status(code) | FetchError::Answer { status: code, .. } => !(400..500).contains(code),
            FetchError::Network(_) | FetchError::Io(_) => true,
            FetchError::TooLarge(_) | FetchError::OutsideFeed | FetchError::Malformed(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("fetching {path}: {source}")]
    Fetch { path: String, source: FetchError },
    #[error("{what}: {source}")]
    Verify { what: String, source: ManifestError },
    /// Verified, but not what was asked for (another version, another OS, a path leaving the
    /// feed): never retried as is.
    #[error("{0}")]
    Refused(String),
    #[error("no update source is configured")]
    NotConfigured,
}

impl SourceError {
    pub fn fetch(path: &str) -> impl Fn(FetchError) -> SourceError + Copy + '_ {
        move |source| SourceError::Fetch { path: path.into(), source }
    }

    /// Worth trying again later (the network, a server error), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Fetch { source, .. } if source.is_transient())
    }
}

/// `Send + Sync`: downloads are read on a thread of their own.
pub trait Transport: Send + Sync {
    /// The file at `path` (relative to the feed), from byte `offset` on.
    fn open(&self, path: &str, offset: u64) -> Result<Box<dyn Read + Send>, SourceError>;

    /// The longest one download may take in all (`None`: no limit beyond each read's).
    fn download_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    fn read_all(&self, path: &str, limit: u64) -> Result<Vec<u8>, SourceError> {
        let mut buf = Vec::new();
        self.open(path, 0)?.take(limit + 1).read_to_end(&mut buf).map_err(|e| SourceError::fetch(path)(e.into()))?;
        if buf.len() as u64 > limit {
            return Err(SourceError::fetch(path)(FetchError::TooLarge(limit)));
        }
        Ok(buf)
    }
}

/// A release to install, verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub release: Release,
    /// Where each artifact is downloaded from, by its name: a path in the source (or an
    /// http(s) URL a rollout server gave).
    pub artifacts: BTreeMap<String, String>,
    /// The `/usr` image's chunk index and the store of its chunks, when the source has them:
    /// the image can then be assembled from what the host has and the chunks it lacks.
    pub usr_chunks: Option<UsrChunks>,
}

/// Where a release's `/usr` chunks are: its index (a signed target: size and sha256 known) and
/// the chunk store beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsrChunks {
    pub index: String,
    pub index_sha256: String,
    pub index_size: u64,
    /// The store's path in the source (`chunks`): chunk `ID` is `STORE/xxxx/ID.cacnk`.
    pub store: String,
}

impl Candidate {
    /// A release whose artifacts lie beside its manifest in `dir`.
    pub fn beside(release: Release, dir: &str) -> Candidate {
        let artifacts = release.artifacts.iter().map(|a| (a.name.clone(), format!("{dir}/{}", a.name))).collect();
        Candidate { release, artifacts, usr_chunks: None }
    }

    /// Where `artifact` is downloaded from.
    pub fn location(&self, artifact: &Artifact) -> &str {
        self.artifacts.get(&artifact.name).map(String::as_str).expect("every artifact has a location")
    }
}

/// What a source offers now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// This release, not verified yet: `ReleaseSource::fetch` does that.
    Release(Offer),
    /// Nothing, and why (the server's reason, an empty feed).
    Nothing(String),
}

/// Where releases come from: a signed static feed, or a rollout server's offer.
pub trait ReleaseSource: Send + Sync {
    /// What the source offers a host that says `checkin` (a rollout server's input; a feed
    /// ignores it). `now` judges the expiry of signed documents.
    fn offer(&self, checkin: &CheckIn, now: u64) -> Result<Offered, SourceError>;
    /// The offered release's manifest, verified against the trusted keys and the offer.
    fn fetch(&self, offer: &Offer, os_id: &str, now: u64) -> Result<Candidate, SourceError>;
    /// Where the release's artifacts are downloaded from.
    fn transport(&self) -> &dyn Transport;
}

/// The rollout server's agent API (cairn_release::checkin).
pub trait RolloutServer: Send + Sync {
    fn check_in(&self, checkin: &CheckIn) -> Result<CheckInReply, SourceError>;
    fn report(&self, event: &Event) -> Result<(), SourceError>;
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock server said no (all slots held, a bad token): ask again later.
    #[error("{op}: {kind}: {value}")]
    Refused { op: &'static str, kind: String, value: String },
    #[error("{op}: HTTP {status}")]
    Status { op: &'static str, status: u16 },
    #[error("{op}: {message}")]
    Unreachable { op: &'static str, message: String },
    #[error("strategy fleetlock without a lock server")]
    NotConfigured,
}

/// A cluster-wide reboot semaphore.
pub trait RebootLock: Send + Sync {
    /// Takes a slot (`Err` says why not, e.g. all slots are held).
    fn lock(&self) -> Result<(), LockError>;
    /// Gives the slot back (succeeds if none was held).
    fn unlock(&self) -> Result<(), LockError>;
}

//! Cairn feeds as TUF repositories (The Update Framework, through `tough`): the standard layout
//! (`FEED/metadata/N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`,
//! `FEED/targets/`, consistent snapshots), role keys kept one per file, a root of three keys
//! of which two must sign, and the operations of a feed's life: `init`, `publish`, `refresh`,
//! `rotate` (`repo.rs`); how a release's files are targets (`releases.rs`); and the host's side,
//! which verifies a feed from the newest root it trusts (`client.rs`).

pub mod client;
pub mod keys;
pub mod releases;
pub mod repo;

pub use repo::{Expiry, init, publish, refresh, resign, rotate};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// tough's errors are large (they carry backtraces): boxed.
    #[error("{0}")]
    Tough(Box<tough::error::Error>),
    #[error("{what}: {source}")]
    Schema { what: String, source: Box<tough::schema::Error> },
    #[error("{0}")]
    Feed(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<tough::error::Error> for Error {
    fn from(e: tough::error::Error) -> Error {
        Error::Tough(Box::new(e))
    }
}

fn schema(what: &std::path::Path) -> impl FnOnce(tough::schema::Error) -> Error + '_ {
    move |source| Error::Schema { what: what.display().to_string(), source: Box::new(source) }
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

//! Release images as content-defined chunks, in casync's formats so Debian's `casync` can
//! read what Cairn writes:
//!
//! - `chunker.rs`: FastCDC (the `fastcdc` crate) cuts an image into chunks of 16-256 KiB
//!   (64 KiB on average, casync's defaults), each named by its SHA-256 (casync's
//!   `--digest=sha256`: with the CPU's SHA instructions it hashes twice as fast as casync's
//!   default SHA-512/256, which indexes that name it are still read);
//! - `index.rs` (pure): the blob index (`.caibx`): the chunk sizes, then each chunk's end
//!   offset and id;
//! - `store.rs`: the chunk store (`.castr`): `xxxx/<id>.cacnk`, each chunk zstd-compressed,
//!   written once however many images hold it, and read back checked against its id.

pub mod chunker;
pub mod index;
pub mod store;

/// A chunk's name: the hash of its uncompressed bytes, by its index's [`Digest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

/// How an index names its chunks (its feature flags say which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha256,
    /// casync's default.
    Sha512_256,
}

impl Digest {
    /// What Cairn names new chunks by.
    pub const NEW: Digest = Digest::Sha256;

    pub fn of(self, data: &[u8]) -> ChunkId {
        use sha2::Digest as _;
        match self {
            Digest::Sha256 => ChunkId(sha2::Sha256::digest(data).into()),
            Digest::Sha512_256 => ChunkId(sha2::Sha512_256::digest(data).into()),
        }
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

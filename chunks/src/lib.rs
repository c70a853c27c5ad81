//! Release images as content-defined chunks, in casync's formats so Debian's `casync` can
//! read what Cairn writes:
//!
//! - `chunker.rs`: FastCDC (the `fastcdc` crate) cuts an image into chunks of 16-256 KiB
//!   (64 KiB on average, casync's defaults), each named by its SHA-512/256;
//! - `index.rs` (pure): the blob index (`.caibx`): the chunk sizes, then each chunk's end
//!   offset and id;
//! - `store.rs`: the chunk store (`.castr`): `xxxx/<id>.cacnk`, each chunk zstd-compressed,
//!   written once however many images hold it, and read back checked against its id.

pub mod chunker;
pub mod index;
pub mod store;

/// A chunk's name: the SHA-512/256 of its uncompressed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        use sha2::Digest;
        ChunkId(sha2::Sha512_256::digest(data).into())
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

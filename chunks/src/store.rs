//! casync's chunk store (`.castr`): `<store>/<first 4 hex digits>/<id>.cacnk`, each chunk
//! zstd-compressed. A chunk already stored is not written again; a chunk read back is
//! decompressed and checked against its id.

use crate::{ChunkId, Digest};
use std::io::Write;
use std::path::{Path, PathBuf};

/// zstd's level for chunks: casync's default, fast enough to chunk a release as it is published.
const LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("chunk {id}: its content hashes to {actual}")]
    Mismatch { id: ChunkId, actual: ChunkId },
    #[error("chunk {id}: decompresses to over {limit} bytes")]
    TooLarge { id: ChunkId, limit: u64 },
}

pub struct Store {
    pub dir: PathBuf,
}

/// Where chunk `id` lives under `dir` (also the path of a store served over HTTP).
pub fn chunk_path(id: &ChunkId) -> String {
    let hex = id.to_string();
    format!("{}/{hex}.cacnk", &hex[..4])
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store { dir: dir.to_path_buf() }
    }

    /// Stores `data` as chunk `id` unless the store has it; returns whether it was new.
    /// Written beside its place and renamed, so a reader never sees half a chunk.
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> Result<bool, StoreError> {
        let path = self.dir.join(chunk_path(id));
        if path.exists() {
            return Ok(false);
        }
        let io = |source| StoreError::Io { path: path.clone(), source };
        let dir = path.parent().expect("a chunk has a directory");
        std::fs::create_dir_all(dir).map_err(io)?;
        let compressed = zstd::bulk::compress(data, LEVEL).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(&compressed).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(true)
    }

    /// Chunk `id`, decompressed and checked.
    pub fn get(&self, id: &ChunkId, digest: Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(chunk_path(id));
        let compressed = std::fs::read(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        decode(id, digest, &compressed, crate::chunker::MAX.into()).map_err(|e| match e {
            StoreError::Io { source, .. } => StoreError::Io { path, source },
            other => other,
        })
    }
}

/// Cuts `image` into chunks, puts each into `store` (once however many times it occurs) and
/// returns the image's index: what a publisher does with a release's `/usr`.
pub fn store_image(image: impl std::io::Read, store: &Store) -> std::io::Result<crate::index::Index> {
    use crate::chunker::{self, AVG, MAX, MIN};
    let digest = Digest::NEW;
    let chunks = chunker::chunk(image, digest, |c| store.put(&c.id, &c.data).map(drop).map_err(std::io::Error::other))?;
    Ok(crate::index::Index {
        digest,
        chunk_size_min: MIN.into(),
        chunk_size_avg: AVG.into(),
        chunk_size_max: MAX.into(),
        chunks,
    })
}

/// A stored chunk's bytes from its compressed form, checked against `id` (by `digest`): what a
/// client does with a chunk it downloaded. Decompression stops past `limit` bytes (the size
/// the index gives the chunk): a chunk that would inflate without end is refused, not followed.
pub fn decode(id: &ChunkId, digest: Digest, compressed: &[u8], limit: u64) -> Result<Vec<u8>, StoreError> {
    use std::io::Read;
    let io = |source| StoreError::Io { path: PathBuf::from(chunk_path(id)), source };
    let mut data = Vec::new();
    zstd::stream::read::Decoder::new(compressed).map_err(io)?.take(limit + 1).read_to_end(&mut data).map_err(io)?;
    if data.len() as u64 > limit {
        return Err(StoreError::TooLarge { id: *id, limit });
    }
    let actual = digest.of(&data);
    if actual != *id {
        return Err(StoreError::Mismatch { id: *id, actual });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_stored_once_and_checked_when_read() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::new(t.path());
        let data = b"hello chunk".repeat(100);
        let id = Digest::NEW.of(&data);
        assert!(store.put(&id, &data).unwrap());
        assert!(!store.put(&id, &data).unwrap(), "a chunk is stored once");
        assert_eq!(store.get(&id, Digest::NEW).unwrap(), data);
        let path = t.path().join(chunk_path(&id));
        assert!(chunk_path(&id).starts_with(&id.to_string()[..4]));
        // Another chunk's bytes under this id are refused.
        std::fs::write(&path, zstd::bulk::compress(b"other", 3).unwrap()).unwrap();
        assert!(matches!(store.get(&id, Digest::NEW), Err(StoreError::Mismatch { .. })));
        // A small download that would inflate past the chunk's size is cut off.
        let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 19).unwrap();
        assert!(bomb.len() < 4096);
        assert!(matches!(decode(&id, Digest::NEW, &bomb, data.len() as u64), Err(StoreError::TooLarge { .. })));
    }
}

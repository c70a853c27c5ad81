//! casync's blob index (`.caibx`), as `caformat.h` lays it out: an INDEX object (feature
//! flags, chunk sizes), a TABLE object of (end offset, chunk id) items, and the table's tail.
//! All numbers little-endian.

use crate::{ChunkId, Digest};

const INDEX: u64 = 0x96824d9c7b129ff9;
const TABLE: u64 = 0xe75b9e112f17417d;
const TABLE_TAIL_MARKER: u64 = 0x4b4f050e5549ecd1;
/// Chunk ids are SHA-512/256; without it, SHA-256.
const SHA512_256: u64 = 0x2000000000000000;
const INDEX_SIZE: u64 = 48;
const ITEM_SIZE: u64 = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub digest: Digest,
    pub chunk_size_min: u64,
    pub chunk_size_avg: u64,
    pub chunk_size_max: u64,
    /// Each chunk's end offset in the blob and its id, in order.
    pub chunks: Vec<(u64, ChunkId)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("not a casync blob index: {0}")]
    Format(String),
}

impl Index {
    /// The blob's size: where the last chunk ends.
    pub fn size(&self) -> u64 {
        self.chunks.last().map_or(0, |(end, _)| *end)
    }

    /// Each chunk's (start, end, id).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, ChunkId)> + '_ {
        let starts = std::iter::once(0).chain(self.chunks.iter().map(|(end, _)| *end));
        starts.zip(&self.chunks).map(|(start, (end, id))| (start, *end, *id))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity((INDEX_SIZE + 16 + ITEM_SIZE * (self.chunks.len() as u64 + 1)) as usize);
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(INDEX_SIZE);
        put(INDEX);
        put(match self.digest {
            Digest::Sha256 => 0,
            Digest::Sha512_256 => SHA512_256,
        });
        put(self.chunk_size_min);
        put(self.chunk_size_avg);
        put(self.chunk_size_max);
        put(u64::MAX);
        put(TABLE);
        for (end, id) in &self.chunks {
            out.extend_from_slice(&end.to_le_bytes());
            out.extend_from_slice(&id.0);
        }
        let table_size = 16 + ITEM_SIZE * (self.chunks.len() as u64 + 1);
        for v in [0, 0, INDEX_SIZE, table_size, TABLE_TAIL_MARKER] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads an index, checking its structure: the magic numbers, chunk sizes in order, end
    /// offsets that only grow, and the tail.
    pub fn parse(data: &[u8]) -> Result<Index, IndexError> {
        let bad = |m: &str| IndexError::Format(m.to_string());
        let word = |at: usize| -> Result<u64, IndexError> {
            let b = data.get(at..at + 8).ok_or_else(|| bad("truncated"))?;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        if word(0)? != INDEX_SIZE || word(8)? != INDEX {
            return Err(bad("no INDEX object at the start"));
        }
        // The other flags say what a directory archive holds: nothing to a blob.
        let digest = if word(16)? & SHA512_256 != 0 { Digest::Sha512_256 } else { Digest::Sha256 };
        let (min, avg, max) = (word(24)?, word(32)?, word(40)?);
        if !(0 < min && min <= avg && avg <= max) {
            return Err(bad("chunk sizes out of order"));
        }
        if word(48)? != u64::MAX || word(56)? != TABLE {
            return Err(bad("no TABLE object after the INDEX"));
        }
        let items = &data[64..];
        if items.len() < ITEM_SIZE as usize || !items.len().is_multiple_of(ITEM_SIZE as usize) {
            return Err(bad("the table is not whole items and a tail"));
        }
        let n = items.len() / ITEM_SIZE as usize - 1;
        let tail = 64 + n * ITEM_SIZE as usize;
        let table_size = 16 + ITEM_SIZE * (n as u64 + 1);
        if word(tail)? != 0 || word(tail + 8)? != 0 || word(tail + 16)? != INDEX_SIZE || word(tail + 24)? != table_size
        {
            return Err(bad("the table's tail does not match the table"));
        }
        if word(tail + 32)? != TABLE_TAIL_MARKER {
            return Err(bad("no table tail marker"));
        }
        let mut chunks = Vec::with_capacity(n);
        let mut last = 0;
        for i in 0..n {
            let at = 64 + i * ITEM_SIZE as usize;
            let end = word(at)?;
            if end <= last {
                return Err(bad("chunk offsets do not grow"));
            }
            last = end;
            let id: [u8; 32] = data[at + 8..at + 40].try_into().expect("32 bytes");
            chunks.push((end, ChunkId(id)));
        }
        Ok(Index { digest, chunk_size_min: min, chunk_size_avg: avg, chunk_size_max: max, chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        Index {
            digest: Digest::Sha512_256,
            chunk_size_min: 16384,
            chunk_size_avg: 65536,
            chunk_size_max: 262144,
            chunks: vec![(70000, Digest::Sha512_256.of(b"a")), (100000, Digest::Sha512_256.of(b"b"))],
        }
    }

    #[test]
    fn an_index_round_trips_and_its_layout_is_casyncs() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes.len(), 48 + 16 + 2 * 40 + 40);
        assert_eq!(Index::parse(&bytes).unwrap(), sample());
        assert_eq!(sample().size(), 100000);
        let ranges: Vec<(u64, u64)> = sample().ranges().map(|(s, e, _)| (s, e)).collect();
        assert_eq!(ranges, [(0, 70000), (70000, 100000)]);
    }

    #[test]
    fn damaged_indexes_are_refused() {
        let bytes = sample().to_bytes();
        assert!(Index::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut sha256 = bytes.clone();
        sha256[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(Index::parse(&sha256).unwrap().digest, Digest::Sha256);
        let mut shrinking = bytes.clone();
        shrinking[104..112].copy_from_slice(&1u64.to_le_bytes());
        assert!(Index::parse(&shrinking).unwrap_err().to_string().contains("do not grow"));
    }
}

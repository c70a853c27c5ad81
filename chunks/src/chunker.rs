//! Cutting a stream into content-defined chunks: the same bytes cut the same way wherever
//! they sit, so an image that changed in one place shares all but a few chunks with the last.

use crate::{ChunkId, Digest};
use std::io::Read;

/// casync's default chunk sizes (its index records them): 16 KiB, 64 KiB, 256 KiB.
pub const MIN: u32 = 16 << 10;
pub const AVG: u32 = 64 << 10;
pub const MAX: u32 = 256 << 10;

/// One chunk: where it ends in the stream, its id and its bytes.
pub struct Chunk {
    pub end: u64,
    pub id: ChunkId,
    pub data: Vec<u8>,
}

/// The chunks of `reader`, in order, named by `digest`; `each` sees every one (to store it)
/// as it is cut.
pub fn chunk(
    reader: impl Read,
    digest: Digest,
    mut each: impl FnMut(&Chunk) -> std::io::Result<()>,
) -> std::io::Result<Vec<(u64, ChunkId)>> {
    let mut out = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(reader, MIN, AVG, MAX) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
        let chunk = Chunk { end: c.offset + c.length as u64, id: digest.of(&c.data), data: c.data };
        each(&chunk)?;
        out.push((chunk.end, chunk.id));
    }
    Ok(out)
}

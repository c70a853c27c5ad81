//! Writing a release's `/usr` image into the inactive partition in one pass: the download
//! stream arrives on one thread, is decompressed on others (`frames`: one per core), and
//! written and checked on another. Nothing is trusted until every check passed, and the caller
//! only then binds the partition to the release (its GPT UUID) and writes a boot entry, so a
//! bad image never reaches a boot entry.
//!
//! Each byte is hashed once. The image is its data blocks followed by their verity hash area
//! (the builder's layout, required here): the data are checked by their tree, whose root the
//! release signs, and the hash area byte for byte against that tree. Together they cover every
//! byte written, so a sha256 of the download or of the whole image would add nothing but time.

use cairn_release::manifest::{Artifact, Compression};
use cairn_release::verity;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

mod frames;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("download: {0}")]
    Read(io::Error),
    #[error("writing the partition: {0}")]
    Write(io::Error),
    #[error("decompressing: {0}")]
    Decompress(io::Error),
    #[error("{what}: expected {expected}, got {actual}")]
    Mismatch { what: &'static str, expected: String, actual: String },
    #[error("the image ({0} bytes) does not fit the partition ({1} bytes)")]
    TooBig(u64, u64),
    #[error("verity: {0}")]
    Verity(String),
}

/// A reader that hashes and counts what passes through it (for the UKI, which has no tree).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), count: 0 }
    }
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// What was written, for the caller's records.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub root_hash: [u8; 32],
}

/// Buffers travel between the pipeline's threads in this size; at most `DEPTH` wait at each
/// stage, which bounds the memory in flight to a few MiB.
const CHUNK: usize = 256 << 10;
const DEPTH: usize = 1;

/// The pipeline's buffers, used again once the last stage is done with them: allocating and
/// zeroing one per piece costs as much as a hash pass.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    /// A buffer of `CHUNK` bytes (contents unspecified).
    fn get(&self) -> Vec<u8> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        buf.resize(CHUNK, 0);
        buf
    }

    /// A buffer of no bytes that can hold `capacity`.
    fn empty(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    }
}

/// Decoded bytes on their way to the partition, with the hashes of their whole blocks where the
/// thread that decoded them computed those (`verity::leaf_hashes`).
struct Piece {
    bytes: Vec<u8>,
    leaves: Option<Vec<u8>>,
}

/// What the writer receives, in the image's order: bytes, or a frame still being decoded.
enum Incoming {
    Ready(Vec<u8>),
    Pending(Receiver<Result<Piece, ApplyError>>),
}

impl Incoming {
    fn wait(self) -> Result<Piece, ApplyError> {
        match self {
            Incoming::Ready(bytes) => Ok(Piece { bytes, leaves: None }),
            Incoming::Pending(decoding) => {
                decoding.recv().unwrap_or_else(|_| Err(ApplyError::Verity("a decoder thread panicked".into())))
            }
        }
    }
}

/// Streams `download` (the artifact's stored bytes) into `partition` and checks everything the
/// signed release says about it. `partition_size` bounds the write.
///
/// A reader thread takes the download (never more than its declared size); this thread
/// decompresses, or cuts it into frames that threads on every core decode and hash; a writer
/// thread writes and builds the verity tree of the bytes written, whose root must be the signed
/// one and whose hash area must be the bytes that follow the data. dm-verity checks them again
/// on every read.
pub fn write_usr<R: Read + Send, W: Write + Seek + Send>(
    download: R,
    artifact: &Artifact,
    partition: &mut W,
    partition_size: u64,
) -> Result<Written, ApplyError> {
    write_usr_decoding_on(download, artifact, partition, partition_size, frames::decoders())
}

/// `write_usr` with frames decoded on `decoders` threads; with one, as one stream (the same
/// work, in less memory).
fn write_usr_decoding_on<R: Read + Send, W: Write + Seek + Send>(
    download: R,
    artifact: &Artifact,
    partition: &mut W,
    partition_size: u64,
    decoders: usize,
) -> Result<Written, ApplyError> {
    let info = artifact.verity.as_ref().ok_or_else(|| ApplyError::Verity("no verity parameters".into()))?;
    if artifact.uncompressed_size > partition_size {
        return Err(ApplyError::TooBig(artifact.uncompressed_size, partition_size));
    }
    let mut salt = [0u8; verity::SALT_SIZE];
    hex::decode_to_slice(&info.salt, &mut salt)
        .map_err(|_| ApplyError::Verity("the salt is not 64 hex digits".into()))?;
    let data_end = info.data_blocks * verity::BLOCK_SIZE as u64;
    if data_end != info.hash_offset || info.hash_offset > artifact.uncompressed_size {
        return Err(ApplyError::Verity(format!(
            "{} data blocks, hash offset {} and size {}: not data blocks followed by their hash area",
            info.data_blocks, info.hash_offset, artifact.uncompressed_size
        )));
    }
    partition.seek(SeekFrom::Start(0)).map_err(ApplyError::Write)?;

    let (pool, frame_pool) = (Pool::default(), Pool::default());
    let (to_writer, writer_in) = sync_channel::<Incoming>(DEPTH);
    let (decoded, written) = std::thread::scope(|s| {
        let (pool, frame_pool) = (&pool, &frame_pool);
        // Each piece is hashed right after it is written, while it is still in the CPU's cache,
        // unless the thread that decoded it hashed it already.
        let writer = s.spawn(move || -> Result<(u64, verity::HashTree, bool), ApplyError> {
            let mut tree = TreeCheck::new(verity::TreeBuilder::new(info.data_blocks, salt));
            let mut count = 0u64;
            for incoming in writer_in {
                let piece = incoming.wait()?;
                partition.write_all(&piece.bytes).map_err(ApplyError::Write)?;
                count += piece.bytes.len() as u64;
                tree.feed(&piece.bytes, piece.leaves.as_deref())?;
                match piece.leaves {
                    Some(_) => frame_pool.put(piece.bytes),
                    None => pool.put(piece.bytes),
                }
            }
            partition.flush().map_err(ApplyError::Write)?;
            let (tree, hash_area_matches) = tree.finish()?;
            Ok((count, tree, hash_area_matches))
        });
        let decoded = match artifact.compression {
            Compression::None => {
                read_stream(download, artifact.size, pool, |buf| to_writer.send(Incoming::Ready(buf)).is_ok())
            }
            Compression::Zstd => decode(download, artifact, &salt, [pool, frame_pool], decoders, &to_writer),
        };
        drop(to_writer);
        (decoded, joined(writer.join()))
    });
    // The first failure along the stream is the one to report.
    let stored = decoded?;
    let (bytes, tree, hash_area_matches) = written?;
    check("download size", artifact.size.to_string(), stored.to_string())?;
    check("uncompressed size", artifact.uncompressed_size.to_string(), bytes.to_string())?;
    check("verity root hash", info.root_hash.clone(), hex::encode(tree.root_hash))?;
    if !hash_area_matches {
        return Err(ApplyError::Verity("the hash area differs from the tree of the data blocks".into()));
    }
    Ok(Written { bytes, root_hash: tree.root_hash })
}

/// The tree of the data blocks, then the bytes after them compared with its hash area as they
/// arrive rather than kept (they are a 128th of the image).
struct TreeCheck {
    building: Option<verity::TreeBuilder>,
    built: Option<verity::HashTree>,
    /// Bytes after the data so far, and whether any differed from the hash area.
    after: usize,
    differs: bool,
}

impl TreeCheck {
    fn new(builder: verity::TreeBuilder) -> TreeCheck {
        TreeCheck { building: Some(builder), built: None, after: 0, differs: false }
    }

    /// The next bytes of the image, with their blocks' hashes if a decoder computed them.
    fn feed(&mut self, bytes: &[u8], leaves: Option<&[u8]>) -> Result<(), ApplyError> {
        let mut after = bytes;
        if let Some(builder) = &mut self.building {
            let data = match leaves {
                Some(leaves) => builder.update_hashed(bytes, leaves),
                None => builder.update(bytes),
            };
            if builder.wants() > 0 {
                return Ok(());
            }
            after = &bytes[data..];
            if let Some(builder) = self.building.take() {
                self.built = Some(builder.finish().map_err(|e| ApplyError::Verity(e.to_string()))?);
            }
        }
        if let Some(tree) = &self.built {
            let end = self.after + after.len();
            self.differs |= tree.hash_area.get(self.after..end) != Some(after);
            self.after = end;
        }
        Ok(())
    }

    /// The tree, and whether exactly its hash area followed the data.
    fn finish(self) -> Result<(verity::HashTree, bool), ApplyError> {
        let tree = match (self.building, self.built) {
            (_, Some(tree)) => tree,
            // Short of data: this names the first missing block.
            (Some(builder), None) => builder.finish().map_err(|e| ApplyError::Verity(e.to_string()))?,
            (None, None) => return Err(ApplyError::Verity("no tree was built".into())),
        };
        let matches = !self.differs && self.after == tree.hash_area.len();
        Ok((tree, matches))
    }
}

fn joined<T>(r: std::thread::Result<Result<T, ApplyError>>) -> Result<T, ApplyError> {
    r.unwrap_or_else(|_| Err(ApplyError::Verity("a pipeline thread panicked".into())))
}

/// Sends `input` on in pool buffers, never more than `size` bytes and one to notice: a server
/// that streams forever cannot keep the agent busy. Returns the bytes read.
fn read_stream<R: Read>(
    input: R,
    size: u64,
    pool: &Pool,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<u64, ApplyError> {
    let mut input = input.take(size + 1);
    let mut count = 0u64;
    loop {
        let mut buf = pool.get();
        let n = fill(&mut input, &mut buf).map_err(ApplyError::Read)?;
        if n == 0 {
            return Ok(count);
        }
        count += n as u64;
        buf.truncate(n);
        if !send(buf) {
            return Ok(count); // The next stage stopped; its error is reported.
        }
    }
}

/// Decompresses `download` into buffers for the writer: frame by frame on every core when the
/// image is written as frames that declare their size (`frames`), else as one stream here while
/// a reader thread downloads. Returns the download's size.
fn decode<R: Read + Send>(
    download: R,
    artifact: &Artifact,
    salt: &[u8; verity::SALT_SIZE],
    [pool, frame_pool]: [&Pool; 2],
    decoders: usize,
    out: &SyncSender<Incoming>,
) -> Result<u64, ApplyError> {
    // Never more than the declared size and one byte to notice.
    let mut download = download.take(artifact.size + 1);
    let mut head = vec![0u8; frames::HEADER_MAX];
    let n = fill(&mut download, &mut head).map_err(ApplyError::Read)?;
    head.truncate(n);
    if decoders > 1 && frames::starts_sized_frame(&head) {
        return frames::decode(download, head, artifact.uncompressed_size, (salt, decoders), frame_pool, out);
    }
    let download = io::Cursor::new(head).chain(download);
    let (to_decoder, decoder_in) = sync_channel::<Vec<u8>>(DEPTH);
    std::thread::scope(|s| {
        let reader = s.spawn(move || read_stream(download, artifact.size, pool, |buf| to_decoder.send(buf).is_ok()));
        let decoded = decompress(ChannelReader::new(decoder_in, pool), artifact, pool, out);
        // A download that broke is the cause of whatever the decompressor then saw.
        let count = joined(reader.join())?;
        decoded?;
        Ok(count)
    })
}

/// One zstd stream decoded on this thread.
fn decompress(
    mut stored: impl Read,
    artifact: &Artifact,
    pool: &Pool,
    out: &SyncSender<Incoming>,
) -> Result<(), ApplyError> {
    {
        let plain = zstd::stream::Decoder::new(&mut stored).map_err(ApplyError::Decompress)?;
        // Never past what the release declared: a longer stream cannot overrun the partition.
        let mut limited = plain.take(artifact.uncompressed_size + 1);
        loop {
            let mut buf = pool.get();
            // The stream arrived (the reader reports its own failures), but these bytes are no
            // valid, or a truncated, compressed image.
            let n = fill(&mut limited, &mut buf).map_err(ApplyError::Decompress)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if out.send(Incoming::Ready(buf)).is_err() {
                return Ok(()); // The writer stopped; its error is reported.
            }
        }
    }
    // Whatever the decoder did not need is still read, and counted against the download size.
    io::copy(&mut stored, &mut io::sink()).map_err(ApplyError::Read)?;
    Ok(())
}

/// Reads until `buf` is full or the stream ends.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The buffers of a channel as a stream; each goes back to the pool once read.
struct ChannelReader<'a> {
    rx: Receiver<Vec<u8>>,
    pool: &'a Pool,
    piece: Vec<u8>,
    pos: usize,
}

impl ChannelReader<'_> {
    fn new(rx: Receiver<Vec<u8>>, pool: &Pool) -> ChannelReader<'_> {
        ChannelReader { rx, pool, piece: Vec::new(), pos: 0 }
    }
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.piece.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let used = std::mem::replace(&mut self.piece, next);
                    self.pool.put(used);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn check(what: &'static str, expected: String, actual: String) -> Result<(), ApplyError> {
    if expected != actual {
        return Err(ApplyError::Mismatch { what, expected, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_release::manifest::{ArtifactKind, VerityInfo};
    use std::io::Cursor;

    /// A small "usr image": data blocks plus superblock and tree, and its artifact entry.
    fn image(blocks: usize, compression: Compression) -> (Vec<u8>, Artifact) {
        let data: Vec<u8> = (0..blocks * 4096).map(|i| (i % 253) as u8).collect();
        let salt = [5u8; 32];
        let tree = verity::build(&data[..], blocks as u64, salt).unwrap();
        let mut img = data.clone();
        img.extend_from_slice(&tree.hash_area);
        let stored = match compression {
            Compression::None => img.clone(),
            Compression::Zstd => zstd::encode_all(&img[..], 3).unwrap(),
        };
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        let artifact = Artifact {
            name: "usr.img.zst".into(),
            kind: ArtifactKind::Usr,
            size: stored.len() as u64,
            sha256: sha(&stored),
            compression,
            uncompressed_size: img.len() as u64,
            uncompressed_sha256: sha(&img),
            verity: Some(VerityInfo {
                root_hash: hex::encode(tree.root_hash),
                salt: hex::encode(salt),
                data_blocks: blocks as u64,
                hash_offset: (blocks * 4096) as u64,
            }),
        };
        (stored, artifact)
    }

    #[test]
    fn writes_and_verifies_a_compressed_image() {
        let (stored, artifact) = image(300, Compression::Zstd);
        let mut part = Cursor::new(vec![0u8; 2 << 20]);
        let w = write_usr(&stored[..], &artifact, &mut part, 2 << 20).unwrap();
        assert_eq!(w.bytes, artifact.uncompressed_size);
        assert_eq!(hex::encode(w.root_hash), artifact.verity.unwrap().root_hash);
    }

    #[test]
    fn every_kind_of_damage_is_caught() {
        let (stored, artifact) = image(50, Compression::Zstd);
        let run = |bytes: &[u8], a: &Artifact| {
            let mut part = Cursor::new(vec![0u8; 1 << 20]);
            write_usr(bytes, a, &mut part, 1 << 20).unwrap_err().to_string()
        };
        // Truncated download.
        let e = run(&stored[..stored.len() / 2], &artifact);
        assert!(e.contains("decompressing") && e.contains("incomplete"), "{e}");
        // Altered bytes: caught by the tree (a data block) or against it (the hash area).
        let (plain, a) = image(50, Compression::None);
        let mut data_byte = plain.clone();
        data_byte[4096 * 7 + 5] ^= 1;
        assert!(run(&data_byte, &a).contains("verity root hash"), "{}", run(&data_byte, &a));
        let mut tree_byte = plain.clone();
        *tree_byte.last_mut().unwrap() ^= 1;
        assert!(run(&tree_byte, &a).contains("hash area differs"), "{}", run(&tree_byte, &a));
        // Stored bytes the release does not declare: counted, and refused.
        let mut longer = plain.clone();
        longer.extend_from_slice(b"trailing");
        assert!(run(&longer, &a).contains("download size"), "{}", run(&longer, &a));
        // Data and hash area apart (a layout the builder never writes): refused up front.
        let mut gap = artifact.clone();
        gap.verity.as_mut().unwrap().hash_offset += 4096;
        assert!(run(&stored, &gap).contains("not data blocks followed by their hash area"));
        // A release whose root hash does not match what the image hashes to.
        let mut wrong_root = artifact.clone();
        wrong_root.verity.as_mut().unwrap().root_hash = "11".repeat(32);
        assert!(run(&stored, &wrong_root).contains("verity root hash"));
        // Too big for the partition.
        let mut part = Cursor::new(vec![0u8; 4096]);
        assert!(matches!(write_usr(&stored[..], &artifact, &mut part, 4096), Err(ApplyError::TooBig(..))));
        // A signed image whose hash area is not the tree of its data (here: a superblock byte,
        // which the root does not cover) would not mount: refused.
        let (mut plain, mut a) = image(50, Compression::None);
        let at = a.verity.as_ref().unwrap().hash_offset as usize + 200;
        plain[at] ^= 1;
        (a.sha256, a.uncompressed_sha256) = (hex::encode(Sha256::digest(&plain)), hex::encode(Sha256::digest(&plain)));
        assert!(run(&plain, &a).contains("hash area differs"), "{}", run(&plain, &a));
        // Garbage instead of zstd.
        let e = run(b"this is not zstd at all", &artifact);
        assert!(e.contains("decompress"), "{e}");
    }

    /// `img` as the builder writes it: independent frames of `size` bytes declaring their size.
    fn framed(img: &[u8], size: usize) -> Vec<u8> {
        img.chunks(size).flat_map(|frame| zstd::bulk::compress(frame, 3).unwrap()).collect()
    }

    fn as_stored(mut artifact: Artifact, stored: &[u8]) -> Artifact {
        (artifact.size, artifact.sha256) = (stored.len() as u64, hex::encode(Sha256::digest(stored)));
        artifact
    }

    #[test]
    fn an_image_in_frames_is_decoded_on_every_core_into_the_same_partition() {
        let (plain, artifact) = image(300, Compression::None);
        let artifact = Artifact { compression: Compression::Zstd, ..artifact };
        // Frames of whole blocks (hashed where decoded), of a size that leaves later frames
        // off the block boundary (hashed by the writer), and one frame for all.
        // On one decoder, the same frames as one stream.
        for (size, decoders) in [(64 << 10, 2), (10_000, 3), (2 << 20, 2), (64 << 10, 1)] {
            let stored = framed(&plain, size);
            let mut part = Cursor::new(vec![0u8; 2 << 20]);
            let a = as_stored(artifact.clone(), &stored);
            let w = write_usr_decoding_on(&stored[..], &a, &mut part, 2 << 20, decoders).unwrap();
            assert_eq!(w.bytes, artifact.uncompressed_size, "frames of {size}");
            assert_eq!(hex::encode(w.root_hash), artifact.verity.as_ref().unwrap().root_hash, "frames of {size}");
            assert!(part.get_ref()[..plain.len()] == plain[..], "frames of {size}: the partition differs");
        }
    }

    #[test]
    fn damaged_frames_are_refused_naming_the_frame() {
        let (plain, artifact) = image(100, Compression::None);
        let artifact = Artifact { compression: Compression::Zstd, ..artifact };
        let stored = framed(&plain, 64 << 10);
        let run = |bytes: &[u8], a: &Artifact| {
            let mut part = Cursor::new(vec![0u8; 1 << 20]);
            write_usr_decoding_on(bytes, &as_stored(a.clone(), bytes), &mut part, 1 << 20, 2).unwrap_err().to_string()
        };
        let second = zstd::zstd_safe::find_frame_compressed_size(&stored).unwrap();
        // Cut inside the second frame.
        let e = run(&stored[..second + 100], &artifact);
        assert!(e.contains("decompressing") && e.contains("incomplete") && e.contains("frame 1"), "{e}");
        // A byte of the second frame's compressed data changed.
        let mut flipped = stored.clone();
        flipped[second + 300] ^= 0x55;
        let e = run(&flipped, &artifact);
        assert!(e.contains("frame 1") || e.contains("verity root hash"), "{e}");
        // Bytes after the last frame.
        let mut trailing = stored.clone();
        trailing.extend_from_slice(b"and then some");
        assert!(run(&trailing, &artifact).contains("incomplete or damaged frame"), "{}", run(&trailing, &artifact));
        // A frame of no declared size after sized ones.
        let mut unsized_frame = stored[..second].to_vec();
        unsized_frame.extend(zstd::encode_all(&plain[64 << 10..], 3).unwrap());
        let e = run(&unsized_frame, &artifact);
        assert!(e.contains("frame 1") && e.contains("does not declare a size"), "{e}");
        // Frames holding more than the release declares.
        let mut smaller = artifact.clone();
        smaller.uncompressed_size -= 4096;
        let e = run(&stored, &smaller);
        assert!(e.contains("more than the") || e.contains("uncompressed size"), "{e}");
    }

    #[test]
    fn an_uncompressed_image_longer_than_declared_is_refused() {
        let (mut stored, mut artifact) = image(10, Compression::None);
        stored.extend_from_slice(&[9u8; 8192]);
        artifact.size = stored.len() as u64;
        artifact.sha256 = hex::encode(Sha256::digest(&stored));
        let mut part = Cursor::new(vec![0u8; 1 << 20]);
        let e = write_usr(&stored[..], &artifact, &mut part, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("uncompressed size"), "{e}");
    }
}

//! Writing a release's `/usr` image into the inactive partition in one pass: the download
//! stream is hashed as it arrives, decompressed, written, and what was written is hashed again
//! (sha256 and the verity tree) on another thread. Nothing is trusted until every check passed,
//! and the caller only then binds the partition to the release (its GPT UUID) and writes a boot
//! entry, so a bad image never reaches a boot entry.

use cairn_release::manifest::{Artifact, Compression};
use cairn_release::verity;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

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

/// A reader that hashes and counts what passes through it.
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

/// Chunks travel between the pipeline's threads in this size; at most `DEPTH` wait at each
/// stage, which bounds the memory in flight to a few MiB.
const CHUNK: usize = 256 << 10;
const DEPTH: usize = 2;

/// Streams `download` (the artifact's stored bytes) into `partition` and checks everything the
/// signed release says about it. `partition_size` bounds the write.
///
/// Four stages run at once: a reader thread downloads and hashes the download; this thread
/// decompresses; a writer thread writes; a hasher thread hashes what was written (sha256, and the verity tree of the data
/// blocks, whose root must be the signed one and whose hash area must be the bytes that follow
/// the data). The bytes hashed are the bytes written; dm-verity checks them again on every read.
pub fn write_usr<R: Read + Send, W: Write + Seek + Send>(
    download: R,
    artifact: &Artifact,
    partition: &mut W,
    partition_size: u64,
) -> Result<Written, ApplyError> {
    let info = artifact.verity.as_ref().ok_or_else(|| ApplyError::Verity("no verity parameters".into()))?;
    if artifact.uncompressed_size > partition_size {
        return Err(ApplyError::TooBig(artifact.uncompressed_size, partition_size));
    }
    let mut salt = [0u8; verity::SALT_SIZE];
    hex::decode_to_slice(&info.salt, &mut salt)
        .map_err(|_| ApplyError::Verity("the salt is not 64 hex digits".into()))?;
    let data_end = info.data_blocks * verity::BLOCK_SIZE as u64;
    if data_end > info.hash_offset || info.hash_offset > artifact.uncompressed_size {
        return Err(ApplyError::Verity(format!(
            "{} data blocks, hash offset {} and size {} do not fit together",
            info.data_blocks, info.hash_offset, artifact.uncompressed_size
        )));
    }
    partition.seek(SeekFrom::Start(0)).map_err(ApplyError::Write)?;

    let (to_writer, writer_in) = sync_channel::<Arc<Vec<u8>>>(DEPTH);
    let (to_hasher, hasher_in) = sync_channel::<Arc<Vec<u8>>>(DEPTH);
    let (decoded, written, hashed) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<u64, ApplyError> {
            let mut n = 0u64;
            for chunk in writer_in {
                partition.write_all(&chunk).map_err(ApplyError::Write)?;
                n += chunk.len() as u64;
                // A hasher that stopped has its own error to report.
                let _ = to_hasher.send(chunk);
            }
            drop(to_hasher);
            partition.flush().map_err(ApplyError::Write)?;
            Ok(n)
        });
        let hasher = s.spawn(move || -> Result<(verity::HashTree, Vec<u8>, String, u64), ApplyError> {
            let mut plain = HashingReader::new(ChannelReader::new(hasher_in));
            let tree =
                verity::build(&mut plain, info.data_blocks, salt).map_err(|e| ApplyError::Verity(e.to_string()))?;
            let mut rest = Vec::new();
            plain.read_to_end(&mut rest).map_err(|e| ApplyError::Verity(e.to_string()))?;
            let (sha, count) = plain.finish();
            Ok((tree, rest, sha, count))
        });
        let decoded = decode(download, artifact, &to_writer);
        drop(to_writer);
        (decoded, joined(writer.join()), joined(hasher.join()))
    });
    // The first failure along the stream is the one to report.
    decoded?;
    let bytes = written?;
    let (tree, rest, sha, count) = hashed?;
    check("uncompressed size", artifact.uncompressed_size.to_string(), count.to_string())?;
    check("uncompressed sha256", artifact.uncompressed_sha256.clone(), sha)?;
    check("verity root hash", info.root_hash.clone(), hex::encode(tree.root_hash))?;
    let hash_area = &rest[(info.hash_offset - data_end) as usize..];
    if !hash_area.starts_with(&tree.hash_area) {
        return Err(ApplyError::Verity("the hash area differs from the tree of the data blocks".into()));
    }
    Ok(Written { bytes, root_hash: tree.root_hash })
}

fn joined<T>(r: std::thread::Result<Result<T, ApplyError>>) -> Result<T, ApplyError> {
    r.unwrap_or_else(|_| Err(ApplyError::Verity("a pipeline thread panicked".into())))
}

/// Downloads and hashes `download` on a reader thread and decompresses it here into chunks for
/// the writer; checks the download's size and sha256.
fn decode<R: Read + Send>(download: R, artifact: &Artifact, out: &SyncSender<Arc<Vec<u8>>>) -> Result<(), ApplyError> {
    let (to_decoder, decoder_in) = sync_channel::<Arc<Vec<u8>>>(DEPTH);
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<(String, u64), ApplyError> {
            // Never more than the release declared (plus one byte, to notice): a server that
            // streams forever cannot keep the agent busy.
            let mut stored = HashingReader::new(download.take(artifact.size + 1));
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = fill(&mut stored, &mut buf).map_err(ApplyError::Read)?;
                if n == 0 {
                    return Ok(stored.finish());
                }
                buf.truncate(n);
                if to_decoder.send(Arc::new(buf)).is_err() {
                    return Ok(stored.finish()); // The decoder stopped; its error is reported.
                }
            }
        });
        let decoded = decompress(ChannelReader::new(decoder_in), artifact, out);
        // A download that broke is the cause of whatever the decompressor then saw.
        let (sha, count) = joined(reader.join())?;
        decoded?;
        check("download size", artifact.size.to_string(), count.to_string())?;
        check("download sha256", artifact.sha256.clone(), sha)
    })
}

fn decompress(
    mut stored: ChannelReader,
    artifact: &Artifact,
    out: &SyncSender<Arc<Vec<u8>>>,
) -> Result<(), ApplyError> {
    {
        let plain: Box<dyn Read> = match artifact.compression {
            Compression::None => Box::new(&mut stored),
            Compression::Zstd => Box::new(zstd::stream::Decoder::new(&mut stored).map_err(ApplyError::Decompress)?),
        };
        // Never past what the release declared: a longer stream cannot overrun the partition.
        let mut limited = plain.take(artifact.uncompressed_size + 1);
        loop {
            let mut buf = vec![0u8; CHUNK];
            // The stream arrived (the reader reports its own failures), but these bytes are no
            // valid, or a truncated, compressed image.
            let n = fill(&mut limited, &mut buf).map_err(ApplyError::Decompress)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if out.send(Arc::new(buf)).is_err() {
                return Ok(()); // The writer stopped; its error is reported.
            }
        }
    }
    // Whatever the decoder did not need still goes through the reader's hash (which then fails).
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

/// The chunks the writer wrote, as a stream.
struct ChannelReader {
    rx: Receiver<Arc<Vec<u8>>>,
    chunk: Arc<Vec<u8>>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: Receiver<Arc<Vec<u8>>>) -> ChannelReader {
        ChannelReader { rx, chunk: Arc::new(Vec::new()), pos: 0 }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => (self.chunk, self.pos) = (c, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
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
        // Altered stored bytes that still decompress: caught by a hash.
        let mut wrong_meta = artifact.clone();
        wrong_meta.sha256 = "00".repeat(32);
        assert!(run(&stored, &wrong_meta).contains("download sha256"));
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

//! Writing a release's `/usr` image into the inactive partition in one pass: the download
//! stream is hashed as it arrives, decompressed, hashed and counted again, and written. Nothing
//! is trusted until every check passed, and the caller only then binds the partition to the
//! release (its GPT UUID) and writes a boot entry. Finally the verity root hash is recomputed
//! from what is on the partition, so a bad write never reaches a boot entry.

use cairn_release::manifest::{Artifact, Compression};
use cairn_release::verity;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Seek, SeekFrom, Write};

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

/// Marks an error as the download's own (not the decompressor's), through the decoder.
#[derive(Debug)]
struct DownloadFailure(io::Error);

impl std::fmt::Display for DownloadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DownloadFailure {}

/// The raw download stream, its errors tagged.
struct Download<R>(R);

impl<R: Read> Read for Download<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| io::Error::other(DownloadFailure(e)))
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

/// Streams `download` (the artifact's stored bytes) into `partition` and checks everything the
/// signed release says about it. `partition_size` bounds the write.
pub fn write_usr<R: Read, W: Write + Read + Seek>(
    download: R,
    artifact: &Artifact,
    partition: &mut W,
    partition_size: u64,
) -> Result<Written, ApplyError> {
    let verity_info = artifact.verity.as_ref().ok_or_else(|| ApplyError::Verity("no verity parameters".into()))?;
    if artifact.uncompressed_size > partition_size {
        return Err(ApplyError::TooBig(artifact.uncompressed_size, partition_size));
    }
    let mut stored = HashingReader::new(Download(download));
    let bytes = {
        let mut plain: Box<dyn Read> = match artifact.compression {
            Compression::None => Box::new(&mut stored),
            Compression::Zstd => Box::new(zstd::stream::Decoder::new(&mut stored).map_err(ApplyError::Decompress)?),
        };
        let mut plain = HashingReader::new(&mut plain);
        partition.seek(SeekFrom::Start(0)).map_err(ApplyError::Write)?;
        // Never past what the release declared: a longer stream cannot overrun the partition.
        let mut limited = (&mut plain).take(artifact.uncompressed_size + 1);
        let n = copy(&mut limited, partition)?;
        partition.flush().map_err(ApplyError::Write)?;
        let (sha, count) = plain.finish();
        check("uncompressed size", artifact.uncompressed_size.to_string(), count.to_string())?;
        check("uncompressed sha256", artifact.uncompressed_sha256.clone(), sha)?;
        n
    };
    // Drain what the decoder did not need (trailing frames would change the hash).
    io::copy(&mut stored, &mut io::sink()).map_err(ApplyError::Read)?;
    let (sha, count) = stored.finish();
    check("download size", artifact.size.to_string(), count.to_string())?;
    check("download sha256", artifact.sha256.clone(), sha)?;

    // What the partition now holds must hash to the signed root: re-read it.
    let root_hash = recompute_root(partition, verity_info)?;
    check("verity root hash", verity_info.root_hash.clone(), hex::encode(root_hash))?;
    Ok(Written { bytes, root_hash })
}

fn copy<R: Read, W: Write>(r: &mut R, w: &mut W) -> Result<u64, ApplyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<DownloadFailure>()) => {
                return Err(ApplyError::Read(e));
            }
            // The stream arrived, but its bytes are no valid (or a truncated) compressed image.
            Err(e) => return Err(ApplyError::Decompress(e)),
        };
        w.write_all(&buf[..n]).map_err(ApplyError::Write)?;
        total += n as u64;
    }
}

fn check(what: &'static str, expected: String, actual: String) -> Result<(), ApplyError> {
    if expected != actual {
        return Err(ApplyError::Mismatch { what, expected, actual });
    }
    Ok(())
}

/// The verity root hash of the data blocks on `partition`, using the salt of the superblock
/// written there and checking it against the signed parameters.
pub fn recompute_root<P: Read + Seek>(
    partition: &mut P,
    info: &cairn_release::manifest::VerityInfo,
) -> Result<[u8; 32], ApplyError> {
    let mut sb = vec![0u8; verity::BLOCK_SIZE];
    partition.seek(SeekFrom::Start(info.hash_offset)).map_err(ApplyError::Write)?;
    partition.read_exact(&mut sb).map_err(ApplyError::Write)?;
    let sb = verity::Superblock::parse(&sb).map_err(|e| ApplyError::Verity(e.to_string()))?;
    check("verity salt", info.salt.clone(), hex::encode(sb.salt))?;
    check("verity data blocks", info.data_blocks.to_string(), sb.data_blocks.to_string())?;
    partition.seek(SeekFrom::Start(0)).map_err(ApplyError::Write)?;
    let tree = verity::build(io::BufReader::with_capacity(1 << 20, partition), sb.data_blocks, sb.salt)
        .map_err(|e| ApplyError::Verity(e.to_string()))?;
    Ok(tree.root_hash)
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

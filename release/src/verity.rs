//! The kernel's dm-verity format (hash type 1, sha256, 4 KiB blocks) with a veritysetup-compatible
//! superblock, so `veritysetup verify --hash-offset` accepts what the builder writes.
//!
//! Layout of a `/usr` partition: the filesystem image (`data_blocks` blocks), then at `hash_offset`
//! one block holding the superblock, then the hash tree, top level first.

use sha2::{Digest, Sha256};
use std::io::Read;

pub const BLOCK_SIZE: usize = 4096;
const HASH_SIZE: usize = 32;
const HASHES_PER_BLOCK: usize = BLOCK_SIZE / HASH_SIZE;
const SUPERBLOCK_MAGIC: &[u8; 8] = b"verity\0\0";
pub const SALT_SIZE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("reading data block {block}: {source}")]
    Read { block: u64, source: std::io::Error },
    #[error("verity superblock: {0}")]
    Superblock(&'static str),
}

/// What a verity device needs besides the devices themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    pub root_hash: [u8; 32],
    pub salt: [u8; SALT_SIZE],
    pub data_blocks: u64,
    /// Byte offset of the superblock; the tree starts one block later.
    pub hash_offset: u64,
}

impl VerityParams {
    /// The device-mapper table line for a `verity` target over `dev` (data and hash on one device).
    pub fn dm_table(&self, dev: &str) -> String {
        let hash_start_block = self.hash_offset / BLOCK_SIZE as u64 + 1;
        format!(
            "1 {dev} {dev} {BLOCK_SIZE} {BLOCK_SIZE} {} {hash_start_block} sha256 {} {}",
            self.data_blocks,
            hex::encode(self.root_hash),
            hex::encode(self.salt)
        )
    }

    /// Sectors (512 bytes) of data the verity device exposes.
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE as u64 / 512)
    }
}

/// The hash area (superblock block + tree) and the root hash of `data_blocks` blocks read from `data`.
pub struct HashTree {
    pub root_hash: [u8; 32],
    /// Superblock block followed by the levels, top first: write it at `hash_offset`.
    pub hash_area: Vec<u8>,
}

fn salted_hash(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Hashes one level into the next: one salted hash per block, packed and zero-padded to whole blocks.
fn hash_level(salt: &[u8], level: &[u8]) -> Vec<u8> {
    let blocks = level.len() / BLOCK_SIZE;
    let mut out = Vec::with_capacity(blocks.div_ceil(HASHES_PER_BLOCK) * BLOCK_SIZE);
    for block in level.chunks(BLOCK_SIZE) {
        out.extend_from_slice(&salted_hash(salt, block));
    }
    pad_to_block(&mut out);
    out
}

fn pad_to_block(v: &mut Vec<u8>) {
    let padded = v.len().div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    v.resize(padded, 0);
}

/// Builds the tree over `data_blocks` blocks of `data`. The hash offset only goes into the result
/// the caller keeps; the tree does not depend on it.
pub fn build(mut data: impl Read, data_blocks: u64, salt: [u8; SALT_SIZE]) -> Result<HashTree, VerityError> {
    let mut tree = TreeBuilder::new(data_blocks, salt);
    let mut buf = vec![0u8; 1 << 20];
    while tree.wants() > 0 {
        let want = buf.len().min(usize::try_from(tree.wants()).unwrap_or(usize::MAX));
        let n = match data.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(VerityError::Read { block: tree.blocks_hashed(), source }),
        };
        tree.update(&buf[..n]);
    }
    tree.finish()
}

/// The salted hashes of `bytes`' whole blocks, for `TreeBuilder::update_hashed`: the leaves
/// of the tree where `bytes` are data blocks.
pub fn leaf_hashes(salt: &[u8; SALT_SIZE], bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / BLOCK_SIZE * HASH_SIZE);
    for block in bytes.chunks_exact(BLOCK_SIZE) {
        out.extend_from_slice(&salted_hash(salt, block));
    }
    out
}

/// The tree of a stream of data blocks fed in pieces of any size, each byte hashed where it
/// lies: what an install pipeline does with the buffers it writes.
pub struct TreeBuilder {
    salt: [u8; SALT_SIZE],
    data_blocks: u64,
    /// Bytes of data fed so far.
    fed: u64,
    /// A block split between two pieces.
    partial: Vec<u8>,
    leaves: Vec<u8>,
}

impl TreeBuilder {
    pub fn new(data_blocks: u64, salt: [u8; SALT_SIZE]) -> TreeBuilder {
        let leaves = Vec::with_capacity((data_blocks as usize).div_ceil(HASHES_PER_BLOCK) * BLOCK_SIZE);
        TreeBuilder { salt, data_blocks, fed: 0, partial: Vec::with_capacity(BLOCK_SIZE), leaves }
    }

    /// Bytes of data still to come.
    pub fn wants(&self) -> u64 {
        self.data_blocks * BLOCK_SIZE as u64 - self.fed
    }

    fn blocks_hashed(&self) -> u64 {
        self.fed / BLOCK_SIZE as u64
    }

    /// Hashes the data blocks in `piece`; returns how many of its bytes were data (what follows
    /// the last data block is the caller's).
    pub fn update(&mut self, piece: &[u8]) -> usize {
        let take = piece.len().min(usize::try_from(self.wants()).unwrap_or(usize::MAX));
        let mut data = &piece[..take];
        if !self.partial.is_empty() {
            let n = data.len().min(BLOCK_SIZE - self.partial.len());
            self.partial.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.partial.len() == BLOCK_SIZE {
                self.leaves.extend_from_slice(&salted_hash(&self.salt, &self.partial));
                self.partial.clear();
            }
        }
        let mut blocks = data.chunks_exact(BLOCK_SIZE);
        for block in &mut blocks {
            self.leaves.extend_from_slice(&salted_hash(&self.salt, block));
        }
        self.partial.extend_from_slice(blocks.remainder());
        self.fed += take as u64;
        take
    }

    /// Like `update`, with the salted hashes of `piece`'s whole blocks already computed by
    /// `leaf_hashes` (on another thread, while the bytes were in its cache). They are used only
    /// where `piece` starts on a block boundary; otherwise the piece is hashed here.
    pub fn update_hashed(&mut self, piece: &[u8], leaves: &[u8]) -> usize {
        if !self.partial.is_empty() || leaves.len() != piece.len() / BLOCK_SIZE * HASH_SIZE {
            return self.update(piece);
        }
        let take = piece.len().min(usize::try_from(self.wants()).unwrap_or(usize::MAX));
        let blocks = take / BLOCK_SIZE;
        self.leaves.extend_from_slice(&leaves[..blocks * HASH_SIZE]);
        self.partial.extend_from_slice(&piece[blocks * BLOCK_SIZE..take]);
        self.fed += take as u64;
        take
    }

    /// The hash area and root, once every data block was fed.
    pub fn finish(self) -> Result<HashTree, VerityError> {
        if self.wants() > 0 {
            let source = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
            return Err(VerityError::Read { block: self.blocks_hashed(), source });
        }
        let (salt, data_blocks, mut leaves) = (self.salt, self.data_blocks, self.leaves);
        pad_to_block(&mut leaves);
        // levels[0] are the leaves; each next level hashes the previous until one block remains.
        let mut levels = vec![leaves];
        while levels.last().map(|l| l.len() > BLOCK_SIZE).unwrap_or(false) {
            let next = hash_level(&salt, levels.last().expect("at least one level"));
            levels.push(next);
        }
        let top = levels.last().expect("at least one level");
        let root_hash = salted_hash(&salt, &top[..BLOCK_SIZE]);

        let mut hash_area = Superblock { data_blocks, salt }.to_block();
        for level in levels.iter().rev() {
            hash_area.extend_from_slice(level);
        }
        Ok(HashTree { root_hash, hash_area })
    }
}

/// The veritysetup on-disk superblock (version 1), padded to one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub data_blocks: u64,
    pub salt: [u8; SALT_SIZE],
}

impl Superblock {
    pub fn to_block(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[0..8].copy_from_slice(SUPERBLOCK_MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: salt first (the kernel's "1")
        // 16..32: uuid, zero: the partition UUID identifies the image instead.
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(SALT_SIZE as u16).to_le_bytes());
        b[88..88 + SALT_SIZE].copy_from_slice(&self.salt);
        b
    }

    /// Reads the parameters the builder wrote; anything else is refused.
    pub fn parse(b: &[u8]) -> Result<Superblock, VerityError> {
        if b.len() < 512 {
            return Err(VerityError::Superblock("shorter than 512 bytes"));
        }
        if &b[0..8] != SUPERBLOCK_MAGIC {
            return Err(VerityError::Superblock("no verity signature"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(8) != 1 || u32_at(12) != 1 {
            return Err(VerityError::Superblock("unsupported version or hash type"));
        }
        if &b[32..39] != b"sha256\0" {
            return Err(VerityError::Superblock("hash algorithm is not sha256"));
        }
        if u32_at(64) as usize != BLOCK_SIZE || u32_at(68) as usize != BLOCK_SIZE {
            return Err(VerityError::Superblock("block size is not 4096"));
        }
        if u16::from_le_bytes([b[80], b[81]]) as usize != SALT_SIZE {
            return Err(VerityError::Superblock("salt is not 32 bytes"));
        }
        let data_blocks = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes"));
        let mut salt = [0u8; SALT_SIZE];
        salt.copy_from_slice(&b[88..88 + SALT_SIZE]);
        Ok(Superblock { data_blocks, salt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK_SIZE).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn single_leaf_block_root_is_hash_of_it() {
        let salt = [3u8; 32];
        let d = data(2);
        let t = build(&d[..], 2, salt).unwrap();
        // Superblock block + one leaf block.
        assert_eq!(t.hash_area.len(), 2 * BLOCK_SIZE);
        let leaf = &t.hash_area[BLOCK_SIZE..];
        assert_eq!(&leaf[..32], &salted_hash(&salt, &d[..BLOCK_SIZE]));
        assert_eq!(t.root_hash, salted_hash(&salt, leaf));
    }

    #[test]
    fn two_levels_are_laid_out_top_first() {
        let salt = [9u8; 32];
        let blocks = HASHES_PER_BLOCK + 1; // two leaf blocks, one top block
        let d = data(blocks);
        let t = build(&d[..], blocks as u64, salt).unwrap();
        assert_eq!(t.hash_area.len(), 4 * BLOCK_SIZE);
        let top = &t.hash_area[BLOCK_SIZE..2 * BLOCK_SIZE];
        let leaves = &t.hash_area[2 * BLOCK_SIZE..];
        assert_eq!(&top[..32], &salted_hash(&salt, &leaves[..BLOCK_SIZE]));
        assert_eq!(&top[32..64], &salted_hash(&salt, &leaves[BLOCK_SIZE..]));
        assert_eq!(t.root_hash, salted_hash(&salt, top));
    }

    #[test]
    fn changing_one_byte_changes_the_root() {
        let salt = [0u8; 32];
        let mut d = data(300);
        let a = build(&d[..], 300, salt).unwrap().root_hash;
        d[123_456] ^= 1;
        let b = build(&d[..], 300, salt).unwrap().root_hash;
        assert_ne!(a, b);
    }

    #[test]
    fn short_data_is_an_error_naming_the_block() {
        let d = data(1);
        let err = build(&d[..], 2, [0; 32]).err().unwrap();
        assert!(err.to_string().contains("block 1"), "{err}");
    }

    #[test]
    fn pieces_of_any_size_make_the_same_tree() {
        let salt = [4u8; 32];
        let blocks = HASHES_PER_BLOCK + 3;
        let mut d = data(blocks + 2);
        let whole = build(&d[..], blocks as u64, salt).unwrap();
        for size in [1, 100, 4095, 4097, 65536] {
            let mut tree = TreeBuilder::new(blocks as u64, salt);
            let mut rest = Vec::new();
            for piece in d.chunks(size) {
                let n = tree.update(piece);
                rest.extend_from_slice(&piece[n..]);
            }
            let t = tree.finish().unwrap();
            assert_eq!((t.root_hash, &t.hash_area), (whole.root_hash, &whole.hash_area), "pieces of {size}");
            assert_eq!(rest, d[blocks * BLOCK_SIZE..], "pieces of {size}");
        }
        d.truncate(BLOCK_SIZE * 3 + 10);
        let mut short = TreeBuilder::new(blocks as u64, salt);
        short.update(&d);
        assert!(short.finish().err().unwrap().to_string().contains("block 3"));
    }

    #[test]
    fn leaves_hashed_elsewhere_make_the_same_tree_and_misaligned_pieces_are_hashed_here() {
        let salt = [6u8; 32];
        let blocks = HASHES_PER_BLOCK + 5;
        let d = data(blocks + 2);
        let whole = build(&d[..], blocks as u64, salt).unwrap();
        // Whole blocks, a piece that ends inside a block (the next ones start misaligned), and
        // leaves that do not match the piece's blocks: each still gives the same tree.
        for sizes in [&[8 * BLOCK_SIZE][..], &[3 * BLOCK_SIZE + 7, 8 * BLOCK_SIZE], &[BLOCK_SIZE * 100]] {
            let mut tree = TreeBuilder::new(blocks as u64, salt);
            let (mut rest, mut at, mut turn) = (Vec::new(), 0, 0);
            while at < d.len() {
                let piece = &d[at..d.len().min(at + sizes[turn % sizes.len()])];
                let leaves = if turn == 2 { vec![0u8; 64] } else { leaf_hashes(&salt, piece) };
                let n = tree.update_hashed(piece, &leaves);
                rest.extend_from_slice(&piece[n..]);
                (at, turn) = (at + piece.len(), turn + 1);
            }
            let t = tree.finish().unwrap();
            assert_eq!((t.root_hash, &t.hash_area), (whole.root_hash, &whole.hash_area), "pieces of {sizes:?}");
            assert_eq!(rest, d[blocks * BLOCK_SIZE..], "pieces of {sizes:?}");
        }
    }

    #[test]
    fn superblock_round_trips() {
        let sb = Superblock { data_blocks: 12345, salt: [7; 32] };
        assert_eq!(Superblock::parse(&sb.to_block()).unwrap(), sb);
        let mut bad = sb.to_block();
        bad[0] = b'x';
        assert!(Superblock::parse(&bad).is_err());
    }

    #[test]
    fn table_points_past_the_superblock() {
        let p = VerityParams { root_hash: [0xab; 32], salt: [0xcd; 32], data_blocks: 10, hash_offset: 40960 };
        let t = p.dm_table("/dev/vda2");
        assert!(t.starts_with("1 /dev/vda2 /dev/vda2 4096 4096 10 11 sha256 abab"), "{t}");
        assert_eq!(p.data_sectors(), 80);
    }
}

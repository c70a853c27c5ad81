//! Test fixtures: a TUF feed holding one small release, a disk image with USR-A and USR-B,
//! and a directory standing in for the ESP.

use crate::ports::EntriesDir;
use crate::slots;
use crate::source::DirTransport;
use crate::tuf_feed::TufFeed;
use crate::update::Target;
use cairn_release::checkin::CheckIn;
use cairn_release::gpt::Slot;
use cairn_release::manifest::{Artifact, ArtifactKind, Compression, FORMAT, Release, VerityInfo};
use cairn_release::verity;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

pub struct World {
    pub _dir: tempfile::TempDir,
    /// The release directory, as `cairn build` writes it.
    pub release: PathBuf,
    /// A TUF feed with that release on channel stable (or the channel `world_on` names).
    pub feed: PathBuf,
    /// The root the host's image ships, and where the host keeps what it verified.
    pub shipped_root: PathBuf,
    pub tuf_state: PathBuf,
    pub disk: PathBuf,
    pub esp: PathBuf,
    pub state: PathBuf,
    pub staging: PathBuf,
}

impl World {
    /// The host's view of the feed, following `channel`.
    pub fn source(&self, channel: &str) -> TufFeed {
        let transport = Arc::new(DirTransport(self.feed.clone()));
        TufFeed::new(transport, self.shipped_root.clone(), self.tuf_state.clone(), channel)
    }

    /// The feed's copy of the release's file `name` (`targets/SHA256.VERSION-NAME`).
    pub fn published(&self, name: &str) -> PathBuf {
        let suffix = format!("-{name}");
        std::fs::read_dir(self.feed.join("targets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(&suffix))
            .unwrap_or_else(|| panic!("no published {name}"))
    }

    /// Flips a byte in the feed's `/usr` image (at `at`, from its end when negative) and puts
    /// other bytes in each of its chunks, so neither the whole image nor a chunk passes its
    /// check.
    pub fn tamper_usr(&self, at: i64) {
        let flip = |path: &Path, at: i64| {
            let mut bytes = std::fs::read(path).unwrap();
            let i = if at < 0 { bytes.len() - at.unsigned_abs() as usize } else { at as usize };
            bytes[i] ^= 0xff;
            std::fs::write(path, bytes).unwrap();
        };
        flip(&self.published("usr.img.zst"), at);
        for chunk in self.chunks() {
            std::fs::write(chunk, zstd::bulk::compress(b"tampered", 3).unwrap()).unwrap();
        }
    }

    /// The chunk files of the feed's store.
    pub fn chunks(&self) -> Vec<PathBuf> {
        let store = self.feed.join(cairn_tuf::releases::CHUNK_STORE);
        let mut out = Vec::new();
        for dir in std::fs::read_dir(store).unwrap() {
            for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out.sort();
        out
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A release directory of `version` in `dir`: a small verity image (zstd) and a UKI.
fn release_dir(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let data: Vec<u8> = (0..64 * 4096).map(|i| (i * 31 % 251) as u8).collect();
    let salt = [1u8; 32];
    let tree = verity::build(&data[..], 64, salt).unwrap();
    let mut img = data;
    img.extend_from_slice(&tree.hash_area);
    let zst = zstd::encode_all(&img[..], 3).unwrap();
    std::fs::write(dir.join("usr.img.zst"), &zst).unwrap();
    let uki = format!("uki of {version}").into_bytes();
    std::fs::write(dir.join(format!("cairn-{version}.efi")), &uki).unwrap();
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let release = Release {
        format: FORMAT,
        os_id: "cairn".into(),
        version: version.into(),
        created: 100,
        artifacts: vec![
            Artifact {
                name: format!("cairn-{version}.efi"),
                kind: ArtifactKind::Uki,
                size: uki.len() as u64,
                sha256: sha(&uki),
                compression: Compression::None,
                uncompressed_size: uki.len() as u64,
                uncompressed_sha256: sha(&uki),
                verity: None,
            },
            Artifact {
                name: "usr.img.zst".into(),
                kind: ArtifactKind::Usr,
                size: zst.len() as u64,
                sha256: sha(&zst),
                compression: Compression::Zstd,
                uncompressed_size: img.len() as u64,
                uncompressed_sha256: sha(&img),
                verity: Some(VerityInfo {
                    root_hash: hex::encode(tree.root_hash),
                    salt: hex::encode(salt),
                    data_blocks: 64,
                    hash_offset: 64 * 4096,
                }),
            },
        ],
        source_image: None,
    };
    std::fs::write(dir.join("release.json"), serde_json::to_vec(&release).unwrap()).unwrap();
}

/// A feed holding `version` on channel stable, a disk with USR-A/USR-B, an ESP directory
/// holding the running 1.0.0 entry.
pub fn world(version: &str) -> World {
    world_on(version, "stable")
}

/// Like [`world`], the release published on `channel`.
pub fn world_on(version: &str, channel: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join(format!("release-{version}"));
    release_dir(&release, version);
    let (feed, keys) = (dir.path().join("feed"), dir.path().join("keys"));
    let expiry = cairn_tuf::Expiry::default();
    cairn_tuf::init(&feed, &keys, now(), expiry).unwrap();
    cairn_tuf::publish(&feed, &keys, &release, &[channel.to_string()], now(), expiry).unwrap();
    let shipped_root = dir.path().join("shipped-root.json");
    std::fs::copy(feed.join("metadata/1.root.json"), &shipped_root).unwrap();
    let tuf_state = dir.path().join("tuf-state");

    let disk = dir.path().join("disk.raw");
    let f = File::create(&disk).unwrap();
    f.set_len(16 * MIB).unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let mut t = gptman::GPT::new_from(&mut f, 512, [1; 16]).unwrap();
    for (n, label, start) in [(2u32, "USR-A", 2048u64), (3, "USR-B", 2048 + 12288)] {
        t[n] = gptman::GPTPartitionEntry {
            partition_type_guid: cairn_release::gpt::TYPE_USR_X86_64.to_gpt_bytes(),
            unique_partition_guid: [n as u8; 16],
            starting_lba: start,
            ending_lba: start + 12287,
            attribute_bits: 0,
            partition_name: label.into(),
        };
    }
    t.write_into(&mut f).unwrap();
    let esp = dir.path().join("EFI/Linux");
    std::fs::create_dir_all(&esp).unwrap();
    std::fs::write(esp.join("cairn-1.0.0.efi"), b"running uki").unwrap();
    let state = dir.path().join("state.json");
    let staging = dir.path().join("staging");
    World { _dir: dir, release, feed, shipped_root, tuf_state, disk, esp, state, staging }
}

/// The boot entries in the ESP directory of `w`, by file name.
pub fn esp_names(w: &World) -> Vec<String> {
    crate::entries::list(&w.esp, "cairn").unwrap().iter().map(crate::entries::Entry::file_name).collect()
}

/// The inactive slot (USR-B) of `w` as an update writes it, with the ESP `esp`.
pub fn target<'a>(w: &'a World, esp: &'a EntriesDir) -> (slots::UsrPartition, Target<'a>) {
    let mut f = File::open(&w.disk).unwrap();
    let b = slots::find(&mut f, Slot::B).unwrap();
    let t = Target {
        disk: &w.disk,
        partition: &w.disk,
        partition_offset: b.offset,
        partition_size: b.size,
        slot: Slot::B,
        running_slot: Slot::A,
        running_version: "1.0.0",
        esp,
        progress: &|_, _| {},
        staging_dir: &w.staging,
        wait: &|_| {},
        running_usr: None,
        running_partition: None,
    };
    (b, t)
}

/// What a host running 1.0.0 in slot A says when it checks.
pub fn checkin() -> CheckIn {
    CheckIn {
        format: 1,
        instance_id: "m".into(),
        group: "default".into(),
        os_id: "cairn".into(),
        version: "1.0.0".into(),
        slot: "a".into(),
        state: "idle".into(),
        rolled_back: vec![],
    }
}

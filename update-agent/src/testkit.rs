//! Test fixtures: a signed feed holding one small release, a disk image with USR-A and USR-B,
//! and a directory standing in for the ESP.

use crate::ports::EntriesDir;
use crate::slots;
use crate::update::Target;
use cairn_release::checkin::CheckIn;
use cairn_release::gpt::Slot;
use cairn_release::keys::SecretKey;
use cairn_release::manifest::{self, Artifact, ArtifactKind, Compression, FeedEntry, FeedIndex, Release, VerityInfo};
use cairn_release::verity;
use sha2::{Digest, Sha256};
use std::fs::File;

const MIB: u64 = 1 << 20;

pub struct World {
    pub _dir: tempfile::TempDir,
    pub feed: std::path::PathBuf,
    pub disk: std::path::PathBuf,
    pub esp: std::path::PathBuf,
    pub state: std::path::PathBuf,
    pub staging: std::path::PathBuf,
    pub key: SecretKey,
}

/// A feed holding `version` (a small verity image, zstd), a disk with USR-A/USR-B, an ESP
/// directory holding the running 1.0.0 entry.
pub fn world(version: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([9; 32]);
    let feed = dir.path().join("feed");
    let rel = feed.join(format!("releases/{version}"));
    std::fs::create_dir_all(&rel).unwrap();
    let data: Vec<u8> = (0..64 * 4096).map(|i| (i * 31 % 251) as u8).collect();
    let salt = [1u8; 32];
    let tree = verity::build(&data[..], 64, salt).unwrap();
    let mut img = data;
    img.extend_from_slice(&tree.hash_area);
    let zst = zstd::encode_all(&img[..], 3).unwrap();
    std::fs::write(rel.join("usr.img.zst"), &zst).unwrap();
    let uki = format!("uki of {version}").into_bytes();
    std::fs::write(rel.join(format!("cairn-{version}.efi")), &uki).unwrap();
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let release = Release {
        format: 1,
        os_id: "cairn".into(),
        version: version.into(),
        created: 100,
        expires: 10_000,
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
    };
    let m = serde_json::to_vec(&release).unwrap();
    std::fs::write(rel.join("release.json"), &m).unwrap();
    std::fs::write(rel.join("release.json.sig"), manifest::sign(&m, &[&key])).unwrap();
    let index = FeedIndex {
        format: 1,
        channel: "stable".into(),
        created: 100,
        expires: 10_000,
        releases: vec![FeedEntry {
            version: version.into(),
            path: format!("releases/{version}"),
            manifest_sha256: sha(&m),
        }],
    };
    let i = serde_json::to_vec(&index).unwrap();
    std::fs::write(feed.join("index.json"), &i).unwrap();
    std::fs::write(feed.join("index.json.sig"), manifest::sign(&i, &[&key])).unwrap();

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
    World { _dir: dir, feed, disk, esp, state, staging, key }
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

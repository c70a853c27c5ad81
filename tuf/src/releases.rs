//! How a release lives in a feed's targets, defined once for the publisher and the host: each
//! file of a release directory is a target `VERSION-FILE` whose custom metadata says
//! `version`, `file` (its name in the release), `kind` (`manifest` for `release.json`, `uki`,
//! `usr`, `usr-index` for the chunk index of the `/usr` image, `other`), `channels`, and for
//! the `/usr` image its `verity` root hash and offset.
//! Pure: no I/O.

use cairn_release::manifest::{ArtifactKind, MANIFEST, Release};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a feed keeps the chunks of its releases' `/usr` images (casync's `.castr` layout),
/// served beside `metadata/` and `targets/`.
pub const CHUNK_STORE: &str = "chunks";

/// The name of the chunk index (`.caibx`) of a release's `/usr` image `usr_file`.
pub fn usr_index_name(usr_file: &str) -> String {
    format!("{}.caibx", usr_file.strip_suffix(".zst").unwrap_or(usr_file))
}

/// The name a release's file has as a target.
pub fn target_name(release_version: &str, file: &str) -> String {
    format!("{release_version}-{file}")
}

/// The custom metadata of a release's target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Custom {
    pub version: String,
    pub file: String,
    pub kind: String,
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<Verity>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    pub root_hash: String,
    pub hash_offset: u64,
}

impl Custom {
    /// The custom metadata of `file` of `release`, published on `channels`.
    pub fn of(release: &Release, file: &str, channels: &[String]) -> Custom {
        let artifact = release.artifacts.iter().find(|a| a.name == file);
        let usr_index =
            release.artifacts.iter().any(|a| a.kind == ArtifactKind::Usr && usr_index_name(&a.name) == file);
        let kind = match artifact.map(|a| a.kind) {
            _ if file == MANIFEST => "manifest",
            _ if usr_index => "usr-index",
            Some(ArtifactKind::Uki) => "uki",
            Some(ArtifactKind::Usr) => "usr",
            None => "other",
        };
        Custom {
            version: release.version.clone(),
            file: file.to_string(),
            kind: kind.to_string(),
            channels: channels.to_vec(),
            verity: artifact
                .and_then(|a| a.verity.as_ref())
                .map(|v| Verity { root_hash: v.root_hash.clone(), hash_offset: v.hash_offset }),
        }
    }
}

/// A target as the host downloads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetFile {
    pub name: String,
    pub sha256: String,
    pub length: u64,
}

/// One release's targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseTargets {
    pub version: String,
    pub channels: Vec<String>,
    /// `release.json`.
    pub manifest: TargetFile,
    /// Every file of the release by its name in the release (`release.json` included).
    pub files: BTreeMap<String, TargetFile>,
}

impl ReleaseTargets {
    pub fn on(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| c == channel)
    }
}

/// The releases of a feed's targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Releases(pub Vec<ReleaseTargets>);

impl Releases {
    /// The newest release on `channel`, by version order.
    pub fn newest(&self, channel: &str) -> Option<&ReleaseTargets> {
        self.0.iter().filter(|r| r.on(channel)).max_by(|a, b| cairn_release::version::compare(&a.version, &b.version))
    }

    /// The release whose manifest is the target `name`.
    pub fn by_manifest(&self, name: &str) -> Option<&ReleaseTargets> {
        self.0.iter().find(|r| r.manifest.name == name)
    }
}

/// A release's channels, manifest and files, while targets are grouped.
type Grouped = (Vec<String>, Option<TargetFile>, BTreeMap<String, TargetFile>);

/// Groups targets into releases. Targets without Cairn's custom metadata are ignored (a feed
/// may carry other files); a release without its manifest, or files of one version that
/// disagree on channels, are refused.
pub fn from_targets<'a>(
    targets: impl IntoIterator<Item = (&'a str, &'a tough::schema::Target)>,
) -> Result<Releases, String> {
    let mut by_version: BTreeMap<String, Grouped> = BTreeMap::new();
    for (name, target) in targets {
        let Ok(custom) = serde_json::from_value::<Custom>(serde_json::Value::Object(
            target.custom.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )) else {
            continue;
        };
        if name != target_name(&custom.version, &custom.file) {
            return Err(format!("target {name:?} claims to be {} of release {}", custom.file, custom.version));
        }
        let file =
            TargetFile { name: name.to_string(), sha256: hex::encode(&target.hashes.sha256), length: target.length };
        let entry = by_version
            .entry(custom.version.clone())
            .or_insert_with(|| (custom.channels.clone(), None, BTreeMap::new()));
        if entry.0 != custom.channels {
            return Err(format!("the targets of release {} disagree on its channels", custom.version));
        }
        if custom.kind == "manifest" {
            entry.1 = Some(file.clone());
        }
        entry.2.insert(custom.file, file);
    }
    let mut releases = Vec::new();
    for (version, (channels, manifest, files)) in by_version {
        let manifest = manifest.ok_or_else(|| format!("release {version} has no {MANIFEST} target"))?;
        releases.push(ReleaseTargets { version, channels, manifest, files });
    }
    Ok(Releases(releases))
}

/// `len` bytes that do not compress away (xorshift from `seed`), the same every run: a /usr
/// image for tests whose stored (zstd) file must stay about as large.
#[doc(hidden)]
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a release directory of `version` into `dir`: `uki.efi`, `usr.img.zst` holding `usr`
/// zstd-compressed (neither is a real image) and the `release.json` naming them with their
/// sizes and hashes.
/// Returns release.json's bytes. For tests of feeds, which never look inside the files.
#[doc(hidden)]
pub fn example_release(dir: &std::path::Path, version: &str, usr: &[u8]) -> std::io::Result<Vec<u8>> {
    use cairn_release::manifest::{Artifact, Compression, VerityInfo};
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(dir)?;
    let uki = format!("uki of {version}").into_bytes();
    let usr_zst = zstd::encode_all(usr, 3)?;
    let artifact = |name: &str, kind, stored: &[u8], bytes: &[u8], compression, verity| Artifact {
        name: name.into(),
        kind,
        size: stored.len() as u64,
        sha256: hex::encode(Sha256::digest(stored)),
        compression,
        uncompressed_size: bytes.len() as u64,
        uncompressed_sha256: hex::encode(Sha256::digest(bytes)),
        verity,
    };
    let verity = VerityInfo { root_hash: "ab".repeat(32), salt: "cd".repeat(32), data_blocks: 1, hash_offset: 4096 };
    let release = Release {
        format: cairn_release::manifest::FORMAT,
        os_id: "cairn".into(),
        version: version.into(),
        created: 0,
        artifacts: vec![
            artifact("uki.efi", ArtifactKind::Uki, &uki, &uki, Compression::None, None),
            artifact("usr.img.zst", ArtifactKind::Usr, &usr_zst, usr, Compression::Zstd, Some(verity)),
        ],
        source_image: None,
    };
    let manifest = serde_json::to_vec_pretty(&release).expect("serializable");
    std::fs::write(dir.join("uki.efi"), uki)?;
    std::fs::write(dir.join("usr.img.zst"), usr_zst)?;
    std::fs::write(dir.join(MANIFEST), &manifest)?;
    Ok(manifest)
}

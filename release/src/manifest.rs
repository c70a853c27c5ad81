//! A release's manifest, `release.json`: what the release is and what its artifacts are.
//! It is a TUF target, trusted only through the feed's metadata (`cairn-tuf`), whose
//! signatures and expiry cover it. docs/releases.md is the format's specification.

use serde::{Deserialize, Serialize};

/// 2: signatures and expiry moved to TUF (format 1 carried `expires` and a `.sig` file).
pub const FORMAT: u32 = 2;
pub const MANIFEST: &str = "release.json";

/// Fields this build does not know are ignored (a later build may add optional ones); the
/// artifacts, which are written to disks, are strict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub format: u32,
    pub os_id: String,
    pub version: String,
    /// Unix seconds.
    pub created: u64,
    pub artifacts: Vec<Artifact>,
    /// The OCI image the release's `/usr` was built from (`cairn build --from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<SourceImage>,
}

/// An OCI image a release was built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceImage {
    /// The containers-image reference it was taken from.
    pub reference: String,
    /// Its manifest digest (`sha256:...`): what identifies it.
    pub digest: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// The unified kernel image (boots from either slot).
    Uki,
    /// The `/usr` partition image: erofs with its verity superblock and hash tree.
    Usr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name beside release.json: `[A-Za-z0-9._+-]+`, no path.
    pub name: String,
    pub kind: ArtifactKind,
    /// Size and sha256 of the file as stored (compressed).
    pub size: u64,
    pub sha256: String,
    pub compression: Compression,
    /// Size and sha256 after decompression: what is written to the disk.
    pub uncompressed_size: u64,
    pub uncompressed_sha256: String,
    /// For `usr`: the dm-verity parameters of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<VerityInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    pub hash_offset: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("release.json is malformed: {0}")]
    Malformed(String),
    #[error("unsupported release.json format {0} (this build reads format {FORMAT})")]
    Format(u32),
    #[error("artifact {0:?}: {1}")]
    BadArtifact(String, String),
}

impl Release {
    /// Parses a manifest whose bytes are already trusted (a TUF target, verified through its
    /// metadata, whose expiry stands in for the manifest's): format, version, OS id and artifact
    /// names are still checked, since they become paths.
    pub fn parse_trusted(manifest: &[u8]) -> Result<Release, ManifestError> {
        let r: Release = serde_json::from_slice(manifest).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if r.format != FORMAT {
            return Err(ManifestError::Format(r.format));
        }
        // Both become part of a file name on the ESP (`ID-VERSION+3.efi`): a signed document is
        // still not allowed to name a path.
        crate::version::validate(&r.version).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        crate::checkin::validate_name("os_id", &r.os_id, 64).map_err(|e| ManifestError::Malformed(e.0))?;
        for a in &r.artifacts {
            if !safe_name(&a.name) {
                return Err(ManifestError::BadArtifact(a.name.clone(), "not a plain file name".into()));
            }
            if a.kind == ArtifactKind::Usr && a.verity.is_none() {
                return Err(ManifestError::BadArtifact(a.name.clone(), "a usr image without verity parameters".into()));
            }
        }
        for kind in [ArtifactKind::Uki, ArtifactKind::Usr] {
            if r.artifacts.iter().filter(|a| a.kind == kind).count() != 1 {
                return Err(ManifestError::Malformed(format!("expected exactly one {kind:?} artifact")));
            }
        }
        Ok(r)
    }

    pub fn artifact(&self, kind: ArtifactKind) -> &Artifact {
        self.artifacts.iter().find(|a| a.kind == kind).expect("verified: one of each kind")
    }
}

/// A plain file name: no directories, no dot-files, nothing a shell or a URL would bend.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        let art = |name: &str, kind, verity| Artifact {
            name: name.into(),
            kind,
            size: 10,
            sha256: "00".repeat(32),
            compression: Compression::None,
            uncompressed_size: 10,
            uncompressed_sha256: "00".repeat(32),
            verity,
        };
        Release {
            format: FORMAT,
            os_id: "cairn".into(),
            version: "2.0.0".into(),
            created: 1000,
            artifacts: vec![
                art("cairn-2.0.0.efi", ArtifactKind::Uki, None),
                art(
                    "usr.img.zst",
                    ArtifactKind::Usr,
                    Some(VerityInfo {
                        root_hash: "ab".repeat(32),
                        salt: "cd".repeat(32),
                        data_blocks: 1,
                        hash_offset: 4096,
                    }),
                ),
            ],
            source_image: None,
        }
    }

    fn parse(r: &Release) -> Result<Release, ManifestError> {
        Release::parse_trusted(&serde_json::to_vec_pretty(r).unwrap())
    }

    #[test]
    fn a_release_parses_back() {
        assert_eq!(parse(&release()).unwrap(), release());
    }

    #[test]
    fn another_format_is_refused() {
        assert_eq!(parse(&Release { format: 1, ..release() }), Err(ManifestError::Format(1)));
    }

    #[test]
    fn path_traversal_names_are_refused_even_when_trusted() {
        let mut r = release();
        r.artifacts[0].name = "../../boot/evil.efi".into();
        assert!(matches!(parse(&r), Err(ManifestError::BadArtifact(..))));
        // The version and the OS id become part of the entry's file name on the ESP.
        for (version, os_id) in [("2/../../x", "cairn"), ("2", "../evil"), ("2+3", "cairn"), ("", "cairn")] {
            let r = Release { version: version.into(), os_id: os_id.into(), ..release() };
            let e = parse(&r).unwrap_err();
            assert!(matches!(e, ManifestError::Malformed(_)), "{version:?} {os_id:?}: {e}");
        }
    }

    #[test]
    fn the_source_image_is_kept_and_absent_when_none() {
        let none = serde_json::to_string(&release()).unwrap();
        assert!(!none.contains("source_image"), "{none}");
        let image = SourceImage {
            reference: "docker://r.example/cairn:1".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
        };
        let r = Release { source_image: Some(image), ..release() };
        assert_eq!(parse(&r).unwrap(), r);
    }

    #[test]
    fn unknown_artifact_fields_and_missing_artifacts_are_refused_and_new_release_fields_ignored() {
        // A later writer's optional field at the top is read past (hosts keep updating) ...
        let m = serde_json::to_string(&release()).unwrap().replacen('{', "{\"added_later\":1,", 1).into_bytes();
        assert_eq!(Release::parse_trusted(&m).unwrap(), release());
        // ... but an artifact, which is written to a disk, has exactly the fields this build knows.
        let m =
            serde_json::to_string(&release()).unwrap().replacen("\"kind\"", "\"offset\":4096,\"kind\"", 1).into_bytes();
        assert!(matches!(Release::parse_trusted(&m), Err(ManifestError::Malformed(_))));
        let mut r = release();
        r.artifacts.pop();
        assert!(matches!(parse(&r), Err(ManifestError::Malformed(_))));
    }
}

//! Signed releases: `release.json` (what the release is) and `release.json.sig` (detached
//! ed25519 signatures over the exact bytes of release.json). docs/releases.md is the format's
//! specification. The update agent verifies the signature and expiry before it downloads
//! anything else; a feed's `index.json` is signed the same way.

use crate::keys::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "release.json";
pub const SIGNATURE_SUFFIX: &str = ".sig";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub format: u32,
    pub os_id: String,
    pub version: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; the release is refused from then on.
    pub expires: u64,
    pub artifacts: Vec<Artifact>,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: u32,
    pub signatures: Vec<Signature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub key_id: String,
    pub algorithm: String,
    /// 128 hex digits.
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the signature file is malformed: {0}")]
    MalformedSignature(String),
    #[error("signed by no trusted key (signed by: {signed_by}; trusted: {trusted})")]
    UnknownKey { signed_by: String, trusted: String },
    #[error("the signature by key {0} does not match: the file was altered or signed by another key")]
    BadSignature(String),
    #[error("the signed document is malformed: {0}")]
    Malformed(String),
    #[error("unsupported format {0} (this build reads format {FORMAT})")]
    Format(u32),
    #[error("expired at {expires} (now {now})")]
    Expired { expires: u64, now: u64 },
    #[error("created in the future ({created}, now {now})")]
    FromTheFuture { created: u64, now: u64 },
    #[error("artifact {0:?}: {1}")]
    BadArtifact(String, String),
}

/// Detached signatures of `message` by each key.
pub fn sign(message: &[u8], keys: &[&SecretKey]) -> Vec<u8> {
    let file = SignatureFile {
        format: FORMAT,
        signatures: keys
            .iter()
            .map(|k| Signature {
                key_id: k.public().id(),
                algorithm: "ed25519".into(),
                signature: hex::encode(k.sign(message)),
            })
            .collect(),
    };
    let mut out = serde_json::to_vec_pretty(&file).expect("serializable");
    out.push(b'\n');
    out
}

/// Checks that `message` carries a valid signature by one of `trusted`. Signatures by unknown
/// keys are ignored; one valid signature by a trusted key is enough.
pub fn verify_signature(message: &[u8], signature_file: &[u8], trusted: &[PublicKey]) -> Result<String, VerifyError> {
    let file: SignatureFile =
        serde_json::from_slice(signature_file).map_err(|e| VerifyError::MalformedSignature(e.to_string()))?;
    if file.format != FORMAT {
        return Err(VerifyError::Format(file.format));
    }
    let mut bad = None;
    for s in &file.signatures {
        let Some(key) = trusted.iter().find(|k| k.id() == s.key_id) else { continue };
        let mut sig = [0u8; 64];
        if s.algorithm != "ed25519" || hex::decode_to_slice(&s.signature, &mut sig).is_err() {
            return Err(VerifyError::MalformedSignature(format!("signature by {} is not ed25519 hex", s.key_id)));
        }
        if key.verify(message, &sig) {
            return Ok(s.key_id.clone());
        }
        bad = Some(s.key_id.clone());
    }
    match bad {
        Some(id) => Err(VerifyError::BadSignature(id)),
        None => Err(VerifyError::UnknownKey {
            signed_by: file.signatures.iter().map(|s| s.key_id.as_str()).collect::<Vec<_>>().join(", "),
            trusted: trusted.iter().map(PublicKey::id).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Tolerated clock difference for `created`.
const CLOCK_SKEW: u64 = 24 * 3600;

impl Release {
    /// Verifies signature, format, expiry and artifact names, in that order; nothing of the
    /// document is trusted before its signature is.
    pub fn verify(
        manifest: &[u8],
        signature_file: &[u8],
        trusted: &[PublicKey],
        now: u64,
    ) -> Result<Release, VerifyError> {
        verify_signature(manifest, signature_file, trusted)?;
        let r = Release::parse_trusted(manifest)?;
        if now >= r.expires {
            return Err(VerifyError::Expired { expires: r.expires, now });
        }
        if r.created > now + CLOCK_SKEW {
            return Err(VerifyError::FromTheFuture { created: r.created, now });
        }
        Ok(r)
    }

    /// Parses a manifest whose bytes are already trusted (a TUF target, verified through its
    /// metadata, whose expiry stands in for the manifest's): format, version, OS id and artifact
    /// names are still checked, since they become paths.
    pub fn parse_trusted(manifest: &[u8]) -> Result<Release, VerifyError> {
        let r: Release = serde_json::from_slice(manifest).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if r.format != FORMAT {
            return Err(VerifyError::Format(r.format));
        }
        // Both become part of a file name on the ESP (`ID-VERSION+3.efi`): a signed document is
        // still not allowed to name a path.
        crate::version::validate(&r.version).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        crate::checkin::validate_name("os_id", &r.os_id, 64).map_err(|e| VerifyError::Malformed(e.0))?;
        for a in &r.artifacts {
            if !safe_name(&a.name) {
                return Err(VerifyError::BadArtifact(a.name.clone(), "not a plain file name".into()));
            }
            if a.kind == ArtifactKind::Usr && a.verity.is_none() {
                return Err(VerifyError::BadArtifact(a.name.clone(), "a usr image without verity parameters".into()));
            }
        }
        for kind in [ArtifactKind::Uki, ArtifactKind::Usr] {
            if r.artifacts.iter().filter(|a| a.kind == kind).count() != 1 {
                return Err(VerifyError::Malformed(format!("expected exactly one {kind:?} artifact")));
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

/// A static feed's channel index (`index.json`, signed as `index.json.sig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedIndex {
    pub format: u32,
    pub channel: String,
    pub created: u64,
    pub expires: u64,
    /// Every published release, oldest first by version order.
    pub releases: Vec<FeedEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    pub version: String,
    /// Directory of the release, relative to the feed (`releases/<version>`).
    pub path: String,
    /// sha256 of that release's release.json: the index pins the exact release.
    pub manifest_sha256: String,
}

impl FeedIndex {
    pub fn verify(
        index: &[u8],
        signature_file: &[u8],
        trusted: &[PublicKey],
        now: u64,
    ) -> Result<FeedIndex, VerifyError> {
        verify_signature(index, signature_file, trusted)?;
        let f: FeedIndex = serde_json::from_slice(index).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if f.format != FORMAT {
            return Err(VerifyError::Format(f.format));
        }
        if now >= f.expires {
            return Err(VerifyError::Expired { expires: f.expires, now });
        }
        Ok(f)
    }

    /// The newest release by version order.
    pub fn latest(&self) -> Option<&FeedEntry> {
        self.releases.iter().max_by(|a, b| crate::version::compare(&a.version, &b.version))
    }
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
            expires: 2000,
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
        }
    }

    fn signed(r: &Release, key: &SecretKey) -> (Vec<u8>, Vec<u8>) {
        let m = serde_json::to_vec_pretty(r).unwrap();
        let s = sign(&m, &[key]);
        (m, s)
    }

    #[test]
    fn a_signed_release_verifies() {
        let k = SecretKey::from_seed([1; 32]);
        let (m, s) = signed(&release(), &k);
        assert_eq!(Release::verify(&m, &s, &[k.public()], 1500).unwrap(), release());
    }

    #[test]
    fn tampering_unknown_keys_and_expiry_are_refused() {
        let k = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let (m, s) = signed(&release(), &k);
        let mut altered = m.clone();
        let at = altered.iter().position(|b| *b == b'2').unwrap();
        altered[at] = b'9';
        assert!(matches!(Release::verify(&altered, &s, &[k.public()], 1500), Err(VerifyError::BadSignature(_))));
        assert!(matches!(Release::verify(&m, &s, &[other.public()], 1500), Err(VerifyError::UnknownKey { .. })));
        assert_eq!(
            Release::verify(&m, &s, &[k.public()], 2000),
            Err(VerifyError::Expired { expires: 2000, now: 2000 })
        );
        assert!(matches!(
            Release::verify(&m, b"garbage", &[k.public()], 1500),
            Err(VerifyError::MalformedSignature(_))
        ));
        // Signed by both: the trusted one suffices.
        let both = sign(&m, &[&other, &k]);
        assert!(Release::verify(&m, &both, &[k.public()], 1500).is_ok());
    }

    #[test]
    fn path_traversal_names_are_refused_even_when_signed() {
        let k = SecretKey::from_seed([1; 32]);
        let mut r = release();
        r.artifacts[0].name = "../../boot/evil.efi".into();
        let (m, s) = signed(&r, &k);
        assert!(matches!(Release::verify(&m, &s, &[k.public()], 1500), Err(VerifyError::BadArtifact(..))));
        // The version and the OS id become part of the entry's file name on the ESP.
        for (version, os_id) in [("2/../../x", "cairn"), ("2", "../evil"), ("2+3", "cairn"), ("", "cairn")] {
            let r = Release { version: version.into(), os_id: os_id.into(), ..release() };
            let (m, s) = signed(&r, &k);
            let e = Release::verify(&m, &s, &[k.public()], 1500).unwrap_err();
            assert!(matches!(e, VerifyError::Malformed(_)), "{version:?} {os_id:?}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let k = SecretKey::from_seed([1; 32]);
        let m = serde_json::to_string(&release()).unwrap().replacen('{', "{\"extra\":1,", 1).into_bytes();
        let s = sign(&m, &[&k]);
        assert!(matches!(Release::verify(&m, &s, &[k.public()], 1500), Err(VerifyError::Malformed(_))));
    }

    #[test]
    fn feed_latest_uses_version_order() {
        let e =
            |v: &str| FeedEntry { version: v.into(), path: format!("releases/{v}"), manifest_sha256: String::new() };
        let f = FeedIndex {
            format: 1,
            channel: "stable".into(),
            created: 0,
            expires: 10,
            releases: vec![e("1.9"), e("1.10"), e("1.10~rc1")],
        };
        assert_eq!(f.latest().unwrap().version, "1.10");
    }
}

//! Signed releases on the build side: key generation, the release directory `cairn build`
//! writes, and static feeds (`cairn release publish`). The format is in `cairn_release`
//! and docs/releases.md.

use crate::apt::sha256_file;
use anyhow::{Context, Result, bail};
use cairn_release::keys::{PublicKey, SecretKey};
use cairn_release::manifest::{
    self, Artifact, ArtifactKind, Compression, FeedEntry, FeedIndex, Release, SIGNATURE_SUFFIX, VerityInfo,
};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const PUBLIC_FILE: &str = "release.pub";
pub const SECRET_FILE: &str = "release.key";

/// Writes a new key pair into `dir`; refuses to replace an existing key.
pub fn keygen(dir: &Path) -> Result<PublicKey> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    let sk = SecretKey::from_seed(seed);
    let secret = dir.join(SECRET_FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("creating {} (an existing key is never replaced)", secret.display()))?;
    std::io::Write::write_all(&mut f, sk.to_text().as_bytes())?;
    f.sync_all()?;
    write_atomic(&dir.join(PUBLIC_FILE), sk.public().to_text().as_bytes())?;
    Ok(sk.public())
}

pub fn load_secret(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SecretKey::parse(&text).with_context(|| format!("{}", path.display()))
}

pub fn load_public(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PublicKey::parse(&text).with_context(|| format!("{}", path.display()))
}

/// Durable write of a public file, with the path in the error.
fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    cairn_release::durable::write_atomic(path, content, 0o644).with_context(|| format!("writing {}", path.display()))
}

/// Now, or SOURCE_DATE_EPOCH when it is set (reproducible release directories).
pub fn release_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?}")),
        Err(_) => Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()),
    }
}

pub struct ReleaseInputs<'a> {
    pub os_id: &'a str,
    pub version: &'a str,
    pub uki: &'a Path,
    pub usr: &'a Path,
    pub verity: VerityInfo,
    pub created: u64,
    pub valid_for_days: u64,
}

/// Compresses `src` with zstd into `dest` (temp file, fsync, rename).
pub fn zstd_file(src: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("zst.tmp");
    let input = std::fs::File::open(src)?;
    let out = std::fs::File::create(&tmp)?;
    let mut enc = zstd::stream::Encoder::new(out, 3)?;
    enc.multithread(2)?;
    enc.include_checksum(true)?;
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, input), &mut enc)?;
    enc.finish()?.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// Writes `dir` = release.json, its signature (with `key`), the UKI and the zstd-compressed
/// /usr image. `usr_zst` is the compressed image (cached by the caller).
pub fn write_release_dir(
    dir: &Path,
    inputs: &ReleaseInputs,
    usr_zst: &Path,
    key: Option<&SecretKey>,
) -> Result<Release> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let uki_name = inputs.uki.file_name().context("uki name")?.to_string_lossy().into_owned();
    let usr_name = "usr.img.zst".to_string();
    link_or_copy(inputs.uki, &dir.join(&uki_name))?;
    link_or_copy(usr_zst, &dir.join(&usr_name))?;
    let uki_sha = sha256_file(inputs.uki)?;
    let uki_size = std::fs::metadata(inputs.uki)?.len();
    let release = Release {
        format: manifest::FORMAT,
        os_id: inputs.os_id.to_string(),
        version: inputs.version.to_string(),
        created: inputs.created,
        expires: inputs.created + inputs.valid_for_days * 86_400,
        artifacts: vec![
            Artifact {
                name: uki_name,
                kind: ArtifactKind::Uki,
                size: uki_size,
                sha256: uki_sha.clone(),
                compression: Compression::None,
                uncompressed_size: uki_size,
                uncompressed_sha256: uki_sha,
                verity: None,
            },
            Artifact {
                name: usr_name,
                kind: ArtifactKind::Usr,
                size: std::fs::metadata(usr_zst)?.len(),
                sha256: sha256_file(usr_zst)?,
                compression: Compression::Zstd,
                uncompressed_size: std::fs::metadata(inputs.usr)?.len(),
                uncompressed_sha256: sha256_file(inputs.usr)?,
                verity: Some(inputs.verity.clone()),
            },
        ],
    };
    let mut json = serde_json::to_vec_pretty(&release)?;
    json.push(b'\n');
    write_atomic(&dir.join(manifest::MANIFEST), &json)?;
    if let Some(key) = key {
        write_atomic(&dir.join(format!("{}{SIGNATURE_SUFFIX}", manifest::MANIFEST)), &manifest::sign(&json, &[key]))?;
    }
    Ok(release)
}

/// Verifies a release directory: signature, expiry, and every artifact's size and sha256.
pub fn verify_release_dir(dir: &Path, trusted: &[PublicKey], now: u64) -> Result<Release> {
    let m = std::fs::read(dir.join(manifest::MANIFEST))
        .with_context(|| format!("reading {}/release.json", dir.display()))?;
    let s = std::fs::read(dir.join(format!("{}{SIGNATURE_SUFFIX}", manifest::MANIFEST)))
        .with_context(|| format!("reading {}/release.json.sig", dir.display()))?;
    let release = Release::verify(&m, &s, trusted, now).with_context(|| format!("{}/release.json", dir.display()))?;
    for a in &release.artifacts {
        let p = dir.join(&a.name);
        let size = std::fs::metadata(&p).with_context(|| format!("artifact {}", p.display()))?.len();
        if size != a.size {
            bail!("artifact {}: {size} bytes, release.json says {}", a.name, a.size);
        }
        let sha = sha256_file(&p)?;
        if sha != a.sha256 {
            bail!("artifact {}: sha256 {sha}, release.json says {}", a.name, a.sha256);
        }
    }
    Ok(release)
}

const INDEX: &str = "index.json";

/// Adds a verified release to a static feed directory and re-signs its index.
pub fn publish(
    feed: &Path,
    release_dir: &Path,
    key: &SecretKey,
    trusted: &[PublicKey],
    channel: &str,
    valid_for_days: u64,
) -> Result<FeedEntry> {
    let now = release_time()?;
    let release = verify_release_dir(release_dir, trusted, now)?;
    let index_path = feed.join(INDEX);
    let mut index = if index_path.exists() {
        let bytes = std::fs::read(&index_path)?;
        let sig = std::fs::read(feed.join(format!("{INDEX}{SIGNATURE_SUFFIX}")))?;
        // The feed's own index must verify too: we never extend one we cannot trust.
        let mut pubs = trusted.to_vec();
        pubs.push(key.public());
        FeedIndex::verify(&bytes, &sig, &pubs, now).or_else(|e| match e {
            manifest::VerifyError::Expired { .. } => Ok(serde_json::from_slice(&bytes)?),
            e => Err(anyhow::Error::new(e)),
        })?
    } else {
        FeedIndex { format: manifest::FORMAT, channel: channel.into(), created: now, expires: now, releases: vec![] }
    };
    if index.channel != channel {
        bail!("the feed serves channel {:?}, not {channel:?}", index.channel);
    }
    let manifest_sha256 = sha256_file(&release_dir.join(manifest::MANIFEST))?;
    let path = format!("releases/{}", release.version);
    if let Some(existing) = index.releases.iter().find(|e| e.version == release.version) {
        if existing.manifest_sha256 != manifest_sha256 {
            bail!(
                "version {} is already published with a different release.json; versions are immutable",
                release.version
            );
        }
        return Ok(existing.clone());
    }
    let dest = feed.join(&path);
    let tmp: PathBuf = feed.join(format!("releases/.{}.tmp", release.version));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    for name in release
        .artifacts
        .iter()
        .map(|a| a.name.clone())
        .chain([manifest::MANIFEST.to_string(), format!("{}{SIGNATURE_SUFFIX}", manifest::MANIFEST)])
    {
        link_or_copy(&release_dir.join(&name), &tmp.join(&name))?;
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving into {}", dest.display()))?;
    let entry = FeedEntry { version: release.version.clone(), path, manifest_sha256 };
    index.releases.push(entry.clone());
    index.releases.sort_by(|a, b| cairn_release::version::compare(&a.version, &b.version));
    index.created = now;
    index.expires = now + valid_for_days * 86_400;
    let mut json = serde_json::to_vec_pretty(&index)?;
    json.push(b'\n');
    // Signature first, then the index: a reader never sees a new index with an old signature
    // for longer than the two renames take.
    write_atomic(&feed.join(format!("{INDEX}{SIGNATURE_SUFFIX}.new")), &manifest::sign(&json, &[key]))?;
    write_atomic(&feed.join(format!("{INDEX}.new")), &json)?;
    std::fs::rename(
        feed.join(format!("{INDEX}{SIGNATURE_SUFFIX}.new")),
        feed.join(format!("{INDEX}{SIGNATURE_SUFFIX}")),
    )?;
    std::fs::rename(feed.join(format!("{INDEX}.new")), &index_path)?;
    Ok(entry)
}

fn link_or_copy(src: &Path, dest: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dest);
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest).with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_makes_a_private_key_file_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let pk = keygen(t.path()).unwrap();
        let mode = std::fs::metadata(t.path().join(SECRET_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_public(&t.path().join(PUBLIC_FILE)).unwrap(), pk);
        assert_eq!(load_secret(&t.path().join(SECRET_FILE)).unwrap().public(), pk);
        assert!(keygen(t.path()).is_err(), "an existing key must not be replaced");
    }

    fn fake_release(dir: &Path, key: &SecretKey, version: &str) -> PathBuf {
        let uki = dir.join(format!("cairn-{version}.efi"));
        let usr = dir.join(format!("usr-{version}.img"));
        std::fs::write(&uki, format!("uki {version}")).unwrap();
        std::fs::write(&usr, vec![7u8; 8192]).unwrap();
        let zst = dir.join(format!("usr-{version}.img.zst"));
        zstd_file(&usr, &zst).unwrap();
        let out = dir.join(format!("release-{version}"));
        let verity =
            VerityInfo { root_hash: "ab".repeat(32), salt: "cd".repeat(32), data_blocks: 2, hash_offset: 8192 };
        let inputs = ReleaseInputs {
            os_id: "cairn",
            version,
            uki: &uki,
            usr: &usr,
            verity,
            created: release_time().unwrap(),
            valid_for_days: 30,
        };
        write_release_dir(&out, &inputs, &zst, Some(key)).unwrap();
        out
    }

    #[test]
    fn release_dirs_verify_and_tampering_is_caught() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([3; 32]);
        let dir = fake_release(t.path(), &key, "1.0.0");
        let now = release_time().unwrap();
        let r = verify_release_dir(&dir, &[key.public()], now).unwrap();
        assert_eq!(r.version, "1.0.0");
        std::fs::write(dir.join("cairn-1.0.0.efi"), "evil uki").unwrap();
        let e = format!("{:#}", verify_release_dir(&dir, &[key.public()], now).unwrap_err());
        assert!(e.contains("cairn-1.0.0.efi"), "{e}");
    }

    #[test]
    fn publish_builds_a_signed_index_with_the_latest_version() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([4; 32]);
        let feed = t.path().join("feed");
        for v in ["1.10.0", "1.9.0"] {
            let dir = fake_release(t.path(), &key, v);
            publish(&feed, &dir, &key, &[key.public()], "stable", 30).unwrap();
        }
        let idx = std::fs::read(feed.join("index.json")).unwrap();
        let sig = std::fs::read(feed.join("index.json.sig")).unwrap();
        let index = FeedIndex::verify(&idx, &sig, &[key.public()], release_time().unwrap()).unwrap();
        assert_eq!(index.latest().unwrap().version, "1.10.0");
        assert!(feed.join("releases/1.9.0/usr.img.zst").exists());
        // Publishing the same version again is a no-op; other keys are refused.
        let dir = t.path().join("release-1.9.0");
        publish(&feed, &dir, &key, &[key.public()], "stable", 30).unwrap();
        let other = SecretKey::from_seed([5; 32]);
        let e = publish(&feed, &dir, &other, &[other.public()], "stable", 30).unwrap_err();
        assert!(format!("{e:#}").contains("no trusted key"), "{e:#}");
    }
}

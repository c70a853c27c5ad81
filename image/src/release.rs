//! The release directory `cairn build --trust-root` writes (`OUT/release/`): release.json and
//! the artifacts it names, for `cairn release publish` to sign into a TUF feed. The format is in
//! `cairn_release::manifest` and docs/releases.md.

use crate::apt::sha256_file;
use anyhow::{Context, Result};
use cairn_release::manifest::{self, Artifact, ArtifactKind, Compression, Release, VerityInfo};
use std::path::Path;

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
    /// The image the release's `/usr` came from, if it came from one.
    pub source_image: Option<cairn_release::manifest::SourceImage>,
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

/// Writes `dir` = release.json, the UKI and the zstd-compressed /usr image. `usr_zst` is the
/// compressed image (cached by the caller).
pub fn write_release_dir(dir: &Path, inputs: &ReleaseInputs, usr_zst: &Path) -> Result<Release> {
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
        source_image: inputs.source_image.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&release)?;
    json.push(b'\n');
    write_atomic(&dir.join(manifest::MANIFEST), &json)?;
    Ok(release)
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
    fn a_release_dir_names_its_artifacts_with_their_sizes_and_hashes() {
        let t = tempfile::tempdir().unwrap();
        let uki = t.path().join("cairn-1.0.0.efi");
        let usr = t.path().join("usr.img");
        std::fs::write(&uki, "uki 1.0.0").unwrap();
        std::fs::write(&usr, vec![7u8; 8192]).unwrap();
        let zst = t.path().join("usr.img.zst");
        zstd_file(&usr, &zst).unwrap();
        let verity =
            VerityInfo { root_hash: "ab".repeat(32), salt: "cd".repeat(32), data_blocks: 2, hash_offset: 8192 };
        let inputs = ReleaseInputs {
            os_id: "cairn",
            version: "1.0.0",
            uki: &uki,
            usr: &usr,
            verity,
            created: 5,
            source_image: None,
        };
        let out = t.path().join("release");
        let written = write_release_dir(&out, &inputs, &zst).unwrap();
        let read = Release::parse_trusted(&std::fs::read(out.join("release.json")).unwrap()).unwrap();
        assert_eq!(read, written);
        let usr_artifact = read.artifact(ArtifactKind::Usr);
        assert_eq!(usr_artifact.uncompressed_size, 8192);
        assert_eq!(usr_artifact.sha256, sha256_file(&out.join("usr.img.zst")).unwrap());
        assert_eq!(read.artifact(ArtifactKind::Uki).sha256, sha256_file(&uki).unwrap());
    }
}

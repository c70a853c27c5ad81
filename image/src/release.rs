//! The release directory `cairn build --trust-root` writes (`OUT/release/`): release.json and
//! the artifacts it names, for `cairn release publish` to sign into a TUF feed. The format is in
//! `cairn_release::manifest` and docs/releases.md.

use crate::apt::sha256_file;
use anyhow::{Context, Result};
use cairn_release::manifest::{self, Artifact, ArtifactKind, Compression, Release, VerityInfo};
use std::io::{Read, Write};
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

/// The uncompressed bytes of each zstd frame of a release's `/usr`. Frames are independent and
/// declare their size, so that an installer decodes them on every core at once (the agent's
/// `apply`); any zstd decoder reads them as one stream. Against one frame the download grows by
/// 1.2%; 2 MiB frames would save 0.5% of that and take the agent 6 MB more memory to apply.
pub const FRAME_SIZE: usize = 1 << 20;

/// Compresses `src` with zstd into `dest` (temp file, fsync, rename), as frames of `FRAME_SIZE`.
pub fn zstd_file(src: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("zst.tmp");
    let input = std::fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    zstd_frames(input, &mut out, FRAME_SIZE).with_context(|| format!("compressing {}", src.display()))?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// Writes `input` to `out` as independent zstd frames of `frame_size` bytes (the last one
/// shorter), each declaring its size, compressed on every core. Same input, same bytes.
pub fn zstd_frames(mut input: impl Read, out: &mut impl Write, frame_size: usize) -> std::io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    loop {
        let mut batch = Vec::with_capacity(threads);
        for _ in 0..threads {
            let mut frame = Vec::with_capacity(frame_size);
            (&mut input).take(frame_size as u64).read_to_end(&mut frame)?;
            if frame.is_empty() {
                break;
            }
            batch.push(frame);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let done = batch.len() < threads || batch.last().is_some_and(|f| f.len() < frame_size);
        let compressed: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|s| {
            let jobs: Vec<_> = batch.iter().map(|frame| s.spawn(move || zstd::bulk::compress(frame, 3))).collect();
            jobs.into_iter().map(|j| j.join().unwrap_or_else(|_| Err(std::io::Error::other("zstd panicked")))).collect()
        });
        for frame in compressed {
            out.write_all(&frame?)?;
        }
        if done {
            return Ok(());
        }
    }
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
    fn usr_is_written_as_independent_frames_that_declare_their_size() {
        let t = tempfile::tempdir().unwrap();
        let input: Vec<u8> = (0..(5 << 16) + 123).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut out = Vec::new();
        zstd_frames(&input[..], &mut out, 1 << 16).unwrap();
        // Six frames: five whole and the rest, each one cut at its end and decoded alone.
        let mut rest = &out[..];
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            sizes.push(zstd::zstd_safe::get_frame_content_size(rest).unwrap().unwrap());
            assert_eq!(zstd::decode_all(&rest[..n]).unwrap().len() as u64, *sizes.last().unwrap());
            rest = &rest[n..];
        }
        assert_eq!(sizes, [65536, 65536, 65536, 65536, 65536, 123]);
        let mut again = Vec::new();
        zstd_frames(&input[..], &mut again, 1 << 16).unwrap();
        assert!(again == out, "the same input compressed twice differs");
        // Read as one stream, as the feed's chunker and the server read them.
        assert!(zstd::decode_all(&out[..]).unwrap() == input, "one stream of frames");
        // The zstd command reads them as one stream.
        let zst = t.path().join("x.zst");
        std::fs::write(&zst, &out).unwrap();
        let cli = std::process::Command::new("zstd").args(["-d", "-c"]).arg(&zst).output().expect("zstd");
        assert!(cli.status.success() && cli.stdout == input, "zstd -d: {}", String::from_utf8_lossy(&cli.stderr));
        // Nothing in, nothing out.
        let mut empty = Vec::new();
        zstd_frames(&[][..], &mut empty, 1 << 16).unwrap();
        assert!(empty.is_empty());
    }

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

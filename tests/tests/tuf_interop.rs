//! A second implementation reads what Cairn publishes: python-tuf's `ngclient` (the reference
//! implementation, from PyPI in a virtual environment) loads a feed made by `cairn_tuf`, trusting
//! only its first root, over HTTP on loopback, and downloads and verifies the `/usr` target; a
//! tampered target is refused by it too.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const NGCLIENT: &str = r#"
import sys
from tuf.ngclient import Updater
metadata_dir, base, name, out = sys.argv[1:]
updater = Updater(metadata_dir=metadata_dir, metadata_base_url=base + "/metadata/",
                  target_base_url=base + "/targets/", target_dir=out)
updater.refresh()
info = updater.get_targetinfo(name)
if info is None:
    sys.exit("no target " + name)
print(updater.download_target(info))
print(info.custom["version"])
import json
print(json.dumps(info.custom, sort_keys=True))
"#;

/// A virtual environment with python-tuf, made once per target directory (tests in this
/// process and in others wait for the one making it).
fn python_tuf() -> Result<PathBuf> {
    static ONE_MAKER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _this_process = ONE_MAKER.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cairn_tests::workspace().join("target"));
    std::fs::create_dir_all(&target)?;
    let lock_file = std::fs::File::create(target.join("python-tuf.lock"))?;
    let _other_processes = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking the python-tuf environment: {e}"))?;
    let venv = target.join("python-tuf");
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if ready.exists() {
        return Ok(python);
    }
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("{cmd:?} (python3-venv: ./scripts/setup.sh installs it)"))?;
        if !out.status.success() {
            bail!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "tuf>=5,<7"]))?;
    std::fs::write(&ready, "")?;
    Ok(python)
}

fn ngclient(python: &Path, feed_url: &str, trusted_root: &Path, name: &str, work: &Path) -> Result<(bool, String)> {
    let metadata = work.join("client-metadata");
    let downloads = work.join("downloads");
    let _ = std::fs::remove_dir_all(&metadata);
    let _ = std::fs::remove_dir_all(&downloads);
    std::fs::create_dir_all(&metadata)?;
    std::fs::create_dir_all(&downloads)?;
    std::fs::copy(trusted_root, metadata.join("root.json"))?;
    let out =
        Command::new(python).args(["-c", NGCLIENT]).arg(&metadata).arg(feed_url).arg(name).arg(&downloads).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

#[test]
fn python_tuf_reads_a_cairn_feed_and_refuses_a_tampered_target() -> Result<()> {
    let python = python_tuf()?;
    let t = tempfile::tempdir()?;
    let (feed, keys) = (t.path().join("feed"), t.path().join("keys"));
    let release = t.path().join("release");
    // Bytes that do not compress away, so the stored (zstd) target is as large.
    let usr = cairn_tuf::releases::incompressible(300_000, 0x2545f4914f6cdd1d);
    cairn_tuf::releases::example_release(&release, "2", &usr)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    cairn_tuf::init(&feed, &keys, now, cairn_tuf::Expiry::default())?;
    cairn_tuf::publish(&feed, &keys, &release, &["stable".into()], now, cairn_tuf::Expiry::default())?;
    cairn_tuf::refresh(&feed, &keys, now, 3600)?;
    let server = cairn_tests::http::FileServer::start(&feed)?;
    let url = format!("http://127.0.0.1:{}", server.port);
    let root = feed.join("metadata/1.root.json");

    let (ok, out) = ngclient(&python, &url, &root, "2-usr.img.zst", t.path())?;
    assert!(ok, "python-tuf refused Cairn's feed:\n{out}");
    let mut lines = out.lines();
    let downloaded = PathBuf::from(lines.next().context("the downloaded path")?);
    assert_eq!(zstd::decode_all(&std::fs::read(&downloaded)?[..])?, usr, "python-tuf's download differs");
    assert_eq!(lines.next(), Some("2"), "the custom metadata: {out}");

    // One byte of the stored target changed: python-tuf refuses it as well.
    let stored = std::fs::read_dir(feed.join("targets"))?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".2-usr.img.zst"))
        .context("the stored target")?;
    let mut bytes = std::fs::read(stored.path())?;
    bytes[1000] ^= 1;
    std::fs::write(stored.path(), bytes)?;
    let (ok, out) = ngclient(&python, &url, &root, "2-usr.img.zst", t.path())?;
    assert!(!ok, "python-tuf accepted a tampered target:\n{out}");
    Ok(())
}

/// What an image ships: a host built trusting the test repository's root 1 (`cairn build
/// --trust-root`), its release published into (a copy of) that repository; python-tuf, given
/// only that root, downloads and verifies the real `/usr` target and reads its custom metadata
/// (kind, channels, the verity root hash the image was built with).
#[test]
fn python_tuf_verifies_an_images_usr_target_from_the_root_it_ships() -> Result<()> {
    let python = python_tuf()?;
    let img = cairn_tests::tuf_image("update-2", "images/dev.toml", "2")?;
    let t = tempfile::tempdir()?;
    let repo = cairn_tests::TufCopy::new(t.path())?;
    repo.publish_image(&img)?;
    let feed = repo.feed.clone();
    let server = cairn_tests::http::FileServer::start(&feed)?;
    let url = format!("http://127.0.0.1:{}", server.port);
    // The root the image ships is the repository's first.
    let shipped = cairn_tests::test_tuf_repository()?.0.join("metadata/1.root.json");
    assert_eq!(img.report["tuf_root_version"], 1);
    let (ok, out) = ngclient(&python, &url, &shipped, "2-usr.img.zst", t.path())?;
    assert!(ok, "python-tuf refused the image's feed:\n{out}");
    let mut lines = out.lines();
    let downloaded = PathBuf::from(lines.next().context("the downloaded path")?);
    let release: serde_json::Value = serde_json::from_slice(&std::fs::read(img.dir.join("release/release.json"))?)?;
    let usr = release["artifacts"].as_array().into_iter().flatten().find(|a| a["kind"] == "usr").context("usr")?;
    assert_eq!(usr["sha256"].as_str(), Some(cairn_image::apt::sha256_file(&downloaded)?.as_str()));
    assert_eq!(lines.next(), Some("2"));
    let custom: serde_json::Value = serde_json::from_str(lines.next().context("custom metadata")?)?;
    assert_eq!((custom["kind"].as_str(), custom["channels"][0].as_str()), (Some("usr"), Some("stable")), "{custom}");
    assert_eq!(custom["verity"]["root_hash"], img.report["usr"]["root_hash"], "{custom}");
    Ok(())
}

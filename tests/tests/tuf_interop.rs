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
"#;

/// A virtual environment with python-tuf, made once per target directory.
fn python_tuf() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cairn_tests::workspace().join("target"));
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
    std::fs::create_dir_all(&release)?;
    std::fs::write(release.join("release.json"), cairn_tuf::releases::example_manifest("2"))?;
    let usr: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(release.join("usr.img.zst"), &usr)?;
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
    assert_eq!(std::fs::read(&downloaded)?, usr, "python-tuf's download differs");
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

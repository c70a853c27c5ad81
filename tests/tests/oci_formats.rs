//! The OCI archives Cairn writes, read by an implementation nobody here wrote: skopeo.

use anyhow::{Context, Result, bail};
use std::process::Command;

fn skopeo(args: &[&str]) -> Result<String> {
    let out = Command::new("skopeo").args(args).output().context("running skopeo (./scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!("skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The sandbox image each host makes from its cairn-init: skopeo reads its index, manifest
/// and config, and copies it (checking every blob against its digest).
#[test]
fn the_sandbox_image_is_an_oci_archive_skopeo_reads_and_copies() -> Result<()> {
    let t = tempfile::tempdir()?;
    let binary = std::fs::read("/bin/busybox").context("a static binary to stand for cairn-init")?;
    let archive = cairn_config::container::pause::archive(&binary)?;
    let path = t.path().join("pause.tar");
    std::fs::write(&path, &archive.tar)?;
    let source = format!("oci-archive:{}", path.display());

    let config: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", "--config", &source])?)?;
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/pause"]));
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", "--raw", &source])?)?;
    assert_eq!(raw["config"]["digest"].as_str(), Some(archive.config_digest.as_str()), "{raw}");

    let copy = t.path().join("copy");
    skopeo(&["copy", "--quiet", &source, &format!("dir:{}", copy.display())])?;
    let layer = raw["layers"][0]["digest"].as_str().context("a layer")?.trim_start_matches("sha256:");
    let mut entries = tar::Archive::new(std::fs::File::open(copy.join(layer))?);
    let mut names = Vec::new();
    for e in entries.entries()? {
        let mut e = e?;
        names.push((e.path()?.display().to_string(), e.header().mode()?));
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut content)?;
        assert_eq!(content, binary, "the layer holds the binary as it is");
    }
    assert_eq!(names, [("pause".to_string(), 0o755)]);
    Ok(())
}

//! Issue 20: the composed OS as an OCI image. The default image built with an export
//! (`cairn build --push`) to an OCI directory and, from a second build of the same inputs, to
//! Debian's `docker-registry` on loopback (plain HTTP: an insecure registry, as a
//! `registries.conf.d` drop-in says for the test's port, removed after). Read back by `skopeo`, a second implementation: the same digest both
//! times, the release's labels, a layer per package.

use anyhow::{Context, Result};
use cairn_image::build::{BuildOptions, BuildReport, OciReport};
use std::path::Path;
use std::process::Command;

fn build(out: &Path, push: String) -> Result<(BuildReport, OciReport)> {
    let opts =
        BuildOptions { push: Some(push), ..cairn_tests::build_options("images/default.toml", "1.0.0", out.into()) };
    let mut report = cairn_image::build::build(&opts)?;
    let oci = report.oci.take().context("the build report names no OCI image")?;
    Ok((report, oci))
}

/// A `registries.conf.d` drop-in that lets containers tools talk plain HTTP to one loopback
/// registry (skopeo 1.9 reads no other place), removed on drop.
struct InsecureRegistry(std::path::PathBuf);

impl InsecureRegistry {
    fn allow(address: &str) -> Result<InsecureRegistry> {
        let dir = Path::new("/etc/containers/registries.conf.d");
        let path = dir.join(format!("zz-cairn-test-{}.conf", address.replace([':', '.'], "-")));
        std::fs::write(&path, format!("[[registry]]\nlocation = \"{address}\"\ninsecure = true\n")).with_context(
            || format!("writing {} (skopeo, from ./scripts/setup.sh, makes the directory; needs root)", path.display()),
        )?;
        Ok(InsecureRegistry(path))
    }
}

impl Drop for InsecureRegistry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn skopeo(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("skopeo").args(args).output().context("skopeo (./scripts/setup.sh installs it)")?;
    anyhow::ensure!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_os_exports_as_a_reproducible_labelled_image_layered_by_package_and_pushes_to_a_registry() -> Result<()> {
    let registry = cairn_tests::registry::Registry::start(None)?;
    let work = tempfile::Builder::new().prefix("cairn-oci").tempdir_in("/var/tmp")?;
    let _insecure = InsecureRegistry::allow(&registry.address())?;

    let oci = work.path().join("oci");
    let (report, local) = build(&work.path().join("a"), format!("oci:{}:1.0.0", oci.display()))?;
    let remote_ref = format!("docker://{}/cairn:1.0.0", registry.address());
    let (_, pushed) = build(&work.path().join("b"), remote_ref.clone())?;
    println!("exported {} and pushed {}", local.digest, pushed.digest);
    assert_eq!(local.digest, pushed.digest, "two exports of the same build differ");

    let inspected = skopeo(&["inspect", &format!("oci:{}:1.0.0", oci.display())])?;
    assert_eq!(inspected["Digest"], local.digest);
    assert_eq!(inspected["Labels"][cairn_oci::LABEL_VERSION], "1.0.0");
    assert_eq!(inspected["Labels"][cairn_oci::LABEL_ROOT_HASH], report.usr.root_hash);
    let remote = skopeo(&["inspect", "--tls-verify=false", &remote_ref])?;
    assert_eq!(remote["Digest"], local.digest, "the registry holds another manifest");

    // ostree-ext names the components each layer holds: the packages, one layer each.
    let manifest = skopeo(&["inspect", "--raw", &format!("oci:{}:1.0.0", oci.display())])?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    let components: Vec<&str> = layers.iter().filter_map(|l| l["annotations"]["ostree.components"].as_str()).collect();
    println!("{} layers: {components:?}", layers.len());
    let holding = |name: &str| components.iter().filter(|c| c.split(',').any(|p| p == name)).count();
    for package in ["runc", "containerd", "busybox", &report.kernel.package, cairn_oci::owners::CAIRN] {
        assert_eq!(holding(package), 1, "{package} is not in exactly one layer: {components:?}");
    }
    let packages = report.packages.len() + 2; // and the kernel, and what no package holds
    assert!(layers.len() >= packages, "{} layers for {packages} components", layers.len());
    Ok(())
}

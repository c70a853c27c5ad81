//! Issue 20: the composed OS as an OCI image. The default image built with an export
//! (`cairn build --push`) to an OCI directory and, from a second build of the same inputs, to
//! Debian's `docker-registry` on loopback (plain HTTP: an insecure registry, as a
//! `registries.conf.d` drop-in says for the test's port, removed after). Read back by `skopeo`,
//! a second implementation: the same digest both times, the release's labels, a layer per
//! package. Then the operator's path: a Containerfile FROM that image, built and pushed by
//! `buildah`, and `cairn build --from` it; the host boots with the derived file and service.

use anyhow::{Context, Result};
use cairn_image::build::{BuildOptions, BuildReport, OciReport};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);

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
    // The first is ostree-ext's own: the commit and every directory object, which any change
    // changes.
    let size = |l: &serde_json::Value| l["size"].as_u64().unwrap_or(0);
    println!(
        "commit layer {} bytes of {} bytes compressed in all",
        size(&layers[0]),
        layers.iter().map(size).sum::<u64>()
    );
    let holding = |name: &str| components.iter().filter(|c| c.split(',').any(|p| p == name)).count();
    for package in ["crun", "containerd", "busybox", &report.kernel.package, cairn_oci::owners::CAIRN] {
        assert_eq!(holding(package), 1, "{package} is not in exactly one layer: {components:?}");
    }
    let packages = report.packages.len() + 2; // and the kernel, and what no package holds
    assert!(layers.len() >= packages, "{} layers for {packages} components", layers.len());

    derive_and_build_from(work.path(), &registry.address(), &remote_ref)
}

/// `buildah bud` of `containerfile` (FROM the pushed image) with `files` in its context,
/// pushed to the registry as `NAME:1`; returns the reference.
fn derive(dir: &Path, address: &str, name: &str, containerfile: &str, files: &[(&str, &str)]) -> Result<String> {
    let ctx = dir.join(format!("ctx-{name}"));
    std::fs::create_dir_all(&ctx)?;
    for (path, text) in files {
        std::fs::write(ctx.join(path), text)?;
    }
    std::fs::write(ctx.join("Containerfile"), containerfile)?;
    let storage = dir.join("buildah");
    let buildah = |args: &[&str]| -> Result<()> {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .context("buildah (./scripts/setup.sh installs it)")?;
        anyhow::ensure!(out.status.success(), "buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    let tag = format!("{address}/{name}:1");
    let ctx_arg = ctx.to_string_lossy();
    buildah(&["bud", "--isolation", "chroot", "--tls-verify=false", "--quiet", "-t", &tag, &ctx_arg])?;
    buildah(&["push", "--tls-verify=false", "--quiet", &tag, &format!("docker://{tag}")])?;
    Ok(format!("docker://{tag}"))
}

/// `cairn build --from` with the dev spec (a console shell for the test), making a release too.
fn build_from(out: &Path, from: &str) -> Result<BuildReport> {
    let (feed, _) = cairn_tests::test_tuf_repository()?;
    let opts = BuildOptions {
        from: Some(from.into()),
        trust_root: Some(feed.join("metadata/1.root.json")),
        ..cairn_tests::build_options("images/dev.toml", "1.0.1", out.into())
    };
    cairn_image::build::build(&opts)
}

fn derive_and_build_from(dir: &Path, address: &str, base: &str) -> Result<()> {
    let base = base.trim_start_matches("docker://");
    let service = r#"description = "added by a Containerfile"
command = ["/usr/bin/busybox", "sh", "-c", "cat /usr/share/hello/hello.txt; exec sleep 1000000"]
restart = "always"
"#;
    let derived = derive(
        dir,
        address,
        "cairn-derived",
        &format!(
            "FROM {base}\nCOPY hello.txt /usr/share/hello/hello.txt\nCOPY hello.toml /usr/lib/cairn/services/hello.toml\n"
        ),
        &[("hello.txt", "hello from a Containerfile\n"), ("hello.toml", service)],
    )?;
    let digest =
        skopeo(&["inspect", "--tls-verify=false", &derived])?["Digest"].as_str().context("no digest")?.to_string();

    // The figure of the issue's target: a build from the (cached) image against a warm build of
    // the same spec from its packages, same run.
    let (feed, _) = cairn_tests::test_tuf_repository()?;
    let spec = || BuildOptions {
        trust_root: Some(feed.join("metadata/1.root.json")),
        ..cairn_tests::build_options("images/dev.toml", "1.0.1", dir.join("from-spec"))
    };
    cairn_image::build::build(&spec())?;
    let spec_started = Instant::now();
    cairn_image::build::build(&spec())?;
    let warm_spec = spec_started.elapsed();
    let first = Instant::now();
    let report = build_from(&dir.join("from-image"), &derived)?;
    let first = first.elapsed();
    let cached = Instant::now();
    let again = build_from(&dir.join("from-image"), &derived)?;
    let cached = cached.elapsed();
    println!(
        "build --from: first {:.1} s, with the image cached {:.1} s; warm build from the spec {:.1} s ({:.2}x)",
        first.as_secs_f64(),
        cached.as_secs_f64(),
        warm_spec.as_secs_f64(),
        cached.as_secs_f64() / warm_spec.as_secs_f64()
    );
    let from = report.from.as_ref().context("build.json names no source image")?;
    assert_eq!(from.digest, digest, "the build records another image");
    assert_eq!(again.usr.root_hash, report.usr.root_hash, "a second build from the same image differs");
    let recorded = BuildReport::load(&dir.join("from-image/build.json"))?;
    assert_eq!(recorded["from"]["digest"], digest);
    let release: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("from-image/release/release.json"))?)?;
    assert_eq!(release["source_image"]["digest"], digest, "the release metadata does not name the image");

    let mut vm = cairn_qemu::Vm::start(&cairn_qemu::VmConfig::uefi(dir.join("from-image/disk.raw")))?;
    vm.wait_for_line("cairn: ready", 0, READY)?;
    assert_eq!(vm.run_ok("cat /usr/share/hello/hello.txt", CMD)?.trim(), "hello from a Containerfile");
    // Read through dm-verity: /usr is the verity device.
    let mounts = vm.run_ok("grep ' /usr ' /proc/mounts", CMD)?;
    assert!(mounts.contains("/dev/mapper/") || mounts.contains("/dev/dm-"), "/usr: {mounts}");
    let wait = "for i in $(seq 60); do grep -q 'hello from a Containerfile' /var/log/cairn/hello.log && exit 0; sleep 1; done; exit 1";
    if vm.run(wait, CMD)?.status != 0 {
        let why = vm.run("cairnctl status; cat /var/log/cairn/hello.log", CMD)?;
        panic!("the derived image's service did not run:\n{}", why.output);
    }
    let os_release = vm.run_ok("cat /usr/lib/os-release", CMD)?;
    assert!(os_release.contains("VERSION_ID=1.0.1"), "{os_release}");

    // A derived image replacing PID 1 is refused, naming the path.
    let evil = derive(
        dir,
        address,
        "cairn-evil",
        &format!("FROM {base}\nCOPY init /usr/sbin/cairn-init\n"),
        &[("init", "#!/bin/sh\n")],
    )?;
    let err =
        format!("{:#}", build_from(&dir.join("evil"), &evil).err().context("an image replacing cairn-init was built")?);
    assert!(err.contains("/usr/sbin/cairn-init"), "{err}");
    Ok(())
}

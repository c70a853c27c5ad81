//! Checks of a built disk with the tools users would use: sgdisk, fsck.vfat, fsck.erofs,
//! veritysetup. And reproducibility: the same inputs give the same bytes.

use anyhow::{Context, Result, bail};
use cairn_tests::*;
use std::path::Path;
use std::process::Command;

fn tool(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {:?} (is it installed? see README)", cmd.get_program()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{:?} failed ({}): {text}", cmd.get_program(), out.status);
    }
    Ok(text)
}

/// Extracts a partition to its own file.
fn extract(img: &Image, label: &str, dest: &Path) -> Result<()> {
    let (off, size) = img.partition(label)?;
    tool(
        Command::new("dd")
            .arg(format!("if={}", img.raw().display()))
            .arg(format!("of={}", dest.display()))
            .args(["bs=1M", "status=none", "conv=sparse"])
            .arg(format!("skip={}", off >> 20))
            .arg(format!("count={}", size >> 20)),
    )?;
    Ok(())
}

#[test]
fn sgdisk_lists_the_architecture_layout() -> Result<()> {
    let img = default_image()?;
    let text = tool(Command::new("sgdisk").arg("-p").arg(img.raw()))?;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 7 && w[0].parse::<u32>().is_ok())
        .collect();
    let summary: Vec<(String, String, String)> =
        rows.iter().map(|w| (w[0].to_string(), w[5].to_string(), w[6].to_string())).collect();
    let expect = |n: &str, code: &str, name: &str| (n.to_string(), code.to_string(), name.to_string());
    assert_eq!(
        summary,
        vec![
            expect("1", "EF00", "EFI-SYSTEM"),
            expect("2", "8314", "USR-A"),
            expect("3", "8314", "USR-B"),
            expect("5", "8300", "ROOT"),
        ],
        "{text}"
    );
    // 8314 is sgdisk's code for the Discoverable Partitions x86-64 /usr type; check the GUID too.
    let info = tool(Command::new("sgdisk").arg("-i").arg("2").arg(img.raw()))?;
    assert!(info.contains("8484680C-9521-48C6-9C11-B0720656F69E"), "{info}");
    let uuid = img.report["usr"]["partition_uuid"].as_str().context("partition_uuid")?;
    let root_hash = img.report["usr"]["root_hash"].as_str().context("root_hash")?;
    assert_eq!(uuid.replace('-', ""), root_hash[..32], "USR-A's UUID is the first half of the root hash");
    assert!(info.to_lowercase().contains(uuid), "{info}");
    Ok(())
}

#[test]
fn esp_passes_fsck_vfat() -> Result<()> {
    let img = default_image()?;
    let dir = tempfile::tempdir()?;
    let esp = dir.path().join("esp.img");
    extract(&img, "EFI-SYSTEM", &esp)?;
    tool(Command::new("fsck.vfat").arg("-n").arg(&esp))?;
    let (off, size) = img.partition("EFI-SYSTEM")?;
    assert_eq!(esp_listing(&img.raw(), off, size, "EFI/BOOT")?, vec!["BOOTX64.EFI".to_string()]);
    assert_eq!(esp_listing(&img.raw(), off, size, "loader")?, vec!["loader.conf".to_string()]);
    Ok(())
}

#[test]
fn usr_passes_fsck_erofs_and_veritysetup_verify() -> Result<()> {
    let img = default_image()?;
    let dir = tempfile::tempdir()?;
    let usr = dir.path().join("usr.img");
    extract(&img, "USR-A", &usr)?;
    tool(Command::new("fsck.erofs").arg(&usr))?;
    let root_hash = img.report["usr"]["root_hash"].as_str().context("root_hash")?;
    let offset = img.report["usr"]["hash_offset"].as_u64().context("hash_offset")?;
    tool(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&usr)
            .arg(&usr)
            .arg(root_hash)
            .arg(format!("--hash-offset={offset}")),
    )?;

    // And veritysetup refuses it once one byte of the file system changes.
    flip_byte(&usr, offset / 2)?;
    let refused = Command::new("veritysetup")
        .arg("verify")
        .arg(&usr)
        .arg(&usr)
        .arg(root_hash)
        .arg(format!("--hash-offset={offset}"))
        .output()?;
    assert!(!refused.status.success(), "veritysetup accepted a tampered image");
    Ok(())
}

/// Issue 21: B is built from a second checkout at another path (this checkout's tracked files
/// as they are), with another cargo home (crates fetched and unpacked again there), another
/// target directory and an empty build cache but for the downloaded packages: the same disk and
/// verity root hash as A, built here. The second builder's directories are kept under the test
/// images so later runs build incrementally.
#[test]
fn same_inputs_give_the_same_disk() -> Result<()> {
    let a = image("repro-a", "images/default.toml", "1.0.0")?;
    let place = images_dir().join("second-builder");
    let checkout = place.join("checkout");
    copy_tracked_files(&workspace(), &checkout)?;
    let dir = tempfile::tempdir()?;
    let cache = fresh_cache_sharing_downloads(dir.path())?;
    let out = dir.path().join("repro-b");
    // The second cargo home fetches its crates again; it takes the first one's settings (a
    // registry mirror, say), which name no path that reaches a binary.
    let cargo_home = place.join("cargo-home");
    std::fs::create_dir_all(&cargo_home)?;
    for config in ["config.toml", "config"] {
        if let Some(from) = cairn_image::binaries::default_cargo_home().map(|h| h.join(config)).filter(|p| p.is_file())
        {
            std::fs::copy(from, cargo_home.join(config))?;
        }
    }
    let binaries = cairn_image::binaries::Source::Cargo {
        workspace: checkout.clone(),
        target_dir: place.join("target"),
        cargo_home: Some(cargo_home),
    };
    let report = cairn_image::build::build(&cairn_image::build::BuildOptions {
        cache,
        binaries,
        spec_path: checkout.join("images/default.toml"),
        ..build_options("images/default.toml", "1.0.0", out.clone())
    })?;
    let b = serde_json::to_value(&report)?;
    let cached = |report: &serde_json::Value, step: &str| {
        report["steps"].as_array().into_iter().flatten().any(|s| s["name"] == step && s["cached"] == true)
    };
    assert!(!cached(&b, "/usr erofs + verity"), "build B reused a cached /usr");
    let sha = |report: &serde_json::Value| report["outputs"]["disk.raw"]["sha256"].as_str().map(str::to_string);
    assert!(sha(&a.report).is_some());
    assert_eq!(sha(&a.report), sha(&b), "disk.raw differs between the two builders");
    assert_eq!(a.report["usr"]["root_hash"], b["usr"]["root_hash"]);
    // The recorded hash is the file's.
    assert_eq!(sha(&a.report).unwrap(), cairn_image::apt::sha256_file(&a.raw())?);
    Ok(())
}

/// The files git tracks in `from`, as they are in its work tree, copied to `to` with their
/// times (so cargo sees unchanged sources as unchanged). `to` is made afresh: a file since
/// deleted or moved in the repository must not linger there from an earlier run.
fn copy_tracked_files(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    let listed = Command::new("git").arg("-C").arg(from).args(["ls-files", "-z"]).output()?;
    anyhow::ensure!(listed.status.success(), "git ls-files in {}", from.display());
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name)?;
        let status = Command::new("cp").arg("-a").arg("--parents").arg(name).arg(to).current_dir(from).status()?;
        anyhow::ensure!(status.success(), "copying {name}");
    }
    Ok(())
}

/// `cairn build --trust-root`: the root goes into `/usr` (where verity protects it), build.json
/// names its version, and the release directory is what `cairn release publish` signs; a
/// directory whose artifact does not match its release.json is refused, naming the file.
#[test]
fn a_build_trusting_a_root_ships_it_and_writes_a_publishable_release() -> Result<()> {
    let img = tuf_image("update-2", "images/dev.toml", "2")?;
    assert_eq!(img.report["tuf_root_version"], 1);
    let release_dir = img.dir.join("release");
    let manifest = std::fs::read(release_dir.join("release.json"))?;
    let release = cairn_release::manifest::Release::parse_trusted(&manifest)?;
    assert_eq!(release.version, "2");
    let usr = release.artifact(cairn_release::manifest::ArtifactKind::Usr);
    assert_eq!(usr.verity.as_ref().map(|v| v.root_hash.as_str()), img.report["usr"]["root_hash"].as_str());
    let listing =
        tool(Command::new("dump.erofs").args(["--ls", "--path=/share/cairn/tuf"]).arg(img.dir.join("usr.img")))?;
    assert!(listing.contains("root.json"), "{listing}");
    let t = tempfile::tempdir()?;
    let repo = TufCopy::new(&t.path().join("repo"))?;
    repo.publish_image(&img)?;
    // The same release with its UKI altered: nothing is signed.
    let altered = t.path().join("altered");
    copy_dir(&release_dir, &altered)?;
    let uki = release.artifact(cairn_release::manifest::ArtifactKind::Uki).name.clone();
    std::fs::write(altered.join(&uki), b"not the UKI release.json names")?;
    let before = std::fs::read(repo.feed.join("metadata/timestamp.json"))?;
    let err = repo.publish(&altered, &["stable"]).unwrap_err();
    assert!(format!("{err:#}").contains(&uki), "{err:#}");
    assert_eq!(std::fs::read(repo.feed.join("metadata/timestamp.json"))?, before, "nothing signed");
    Ok(())
}

/// Cairn's binaries in `/usr` carry no path of the machine that built them (its cargo home, the
/// checkout, the target directory): another builder elsewhere makes the same bytes.
#[test]
fn binaries_in_usr_carry_no_build_machine_paths() -> Result<()> {
    let img = default_image()?;
    let dir = tempfile::tempdir()?;
    let usr = dir.path().join("usr.img");
    extract(&img, "USR-A", &usr)?;
    let tree = dir.path().join("tree");
    tool(Command::new("fsck.erofs").arg(format!("--extract={}", tree.display())).arg(&usr))?;
    let workspace = workspace();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    let mut build_paths = vec![workspace.clone(), target];
    build_paths.extend(cairn_image::binaries::default_cargo_home());
    let build_paths: Vec<String> =
        build_paths.iter().map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()).display().to_string()).collect();
    let mut checked = 0;
    for name in ["cairn-init", "cairn-agent", "updatectl", "cairn-cloud-config"] {
        let bytes = std::fs::read(tree.join("sbin").join(name))
            .or_else(|_| std::fs::read(tree.join("usr/sbin").join(name)))
            .with_context(|| format!("{name} in /usr/sbin"))?;
        for path in &build_paths {
            let hits = bytes.windows(path.len()).filter(|w| *w == path.as_bytes()).count();
            assert_eq!(hits, 0, "{name} names {path} {hits} times");
        }
        // The remapped prefixes are what it carries instead.
        assert!(bytes.windows(8).any(|w| w == b"/cargo/r"), "{name}: no remapped cargo path at all");
        checked += 1;
    }
    assert_eq!(checked, 4);
    Ok(())
}

/// Issue 21's lock: a spec's lock is written, then taken as it is; a locked version the archive
/// and the cache do not have fails `--locked` naming it (nothing else is taken), while an
/// unlocked build resolves again and says what it changed; a lock made for other packages
/// fails `--locked` too.
#[test]
fn a_locked_build_takes_only_locked_packages_and_names_what_it_cannot_get() -> Result<()> {
    use cairn_image::build::lock_spec;
    use cairn_image::lock::{Lock, LockMode};
    const RUSTC: &str = "rustc 1.0.0 (the lock's)";
    let t = tempfile::tempdir()?;
    let spec = t.path().join("spec.toml");
    let base = workspace().join("images/default.toml");
    std::fs::write(&spec, format!("extends = {:?}\n", base.display().to_string()))?;
    let cache = cairn_image::default_cache_dir();
    let lock_path = t.path().join("spec.lock");

    let (written, changes) = lock_spec(&spec, &cache, LockMode::Use, Some(RUSTC))?;
    assert!(lock_path.exists() && !changes.is_empty(), "a first build writes the lock: {changes:?}");
    let busybox = written.packages.iter().find(|p| p.name == "busybox").context("busybox locked")?.clone();
    let (again, changes) = lock_spec(&spec, &cache, LockMode::Locked, Some(RUSTC))?;
    assert_eq!((again, changes.len()), (written.clone(), 0), "the lock is taken as it is");

    // A version that exists nowhere (as if the archive had moved on since the lock was made).
    let bogus = "1:0.0-not-in-any-archive";
    let mut edited = written.clone();
    let entry = edited.packages.iter_mut().find(|p| p.name == "busybox").context("busybox")?;
    entry.version = bogus.into();
    entry.filename = format!("busybox_{}_amd64.deb", bogus.replace(':', "%3a"));
    entry.sha256 = "00".repeat(32);
    std::fs::write(&lock_path, edited.to_text())?;
    let e = format!("{:#}", lock_spec(&spec, &cache, LockMode::Locked, Some(RUSTC)).unwrap_err());
    assert!(
        e.contains("--locked") && e.contains(&format!("busybox {bogus}: in neither the cache nor the archive")),
        "{e}"
    );
    assert!(std::fs::read_to_string(&lock_path)?.contains(bogus), "--locked never writes the lock");
    let (moved, changes) = lock_spec(&spec, &cache, LockMode::Use, Some(RUSTC))?;
    assert_eq!(changes, [format!("~ busybox {bogus} -> {}", busybox.version)]);
    assert_eq!(moved, written);
    assert_eq!(Lock::read(&lock_path)?, Some(written));

    // Another compiler: --locked refuses it, an unlocked build records it.
    let e = format!("{:#}", lock_spec(&spec, &cache, LockMode::Locked, Some("rustc 9.9.9")).unwrap_err());
    assert!(e.contains(&format!("was made with {RUSTC}, this build's compiler is rustc 9.9.9")), "{e}");
    let (_, changes) = lock_spec(&spec, &cache, LockMode::Use, Some("rustc 9.9.9"))?;
    assert_eq!(changes, [format!("~ toolchain {RUSTC} -> rustc 9.9.9")]);

    // The spec asks for more than the lock was made for.
    std::fs::write(&spec, format!("extends = {:?}\n[packages]\nextra = [\"jq\"]\n", base.display().to_string()))?;
    let e = format!("{:#}", lock_spec(&spec, &cache, LockMode::Locked, Some(RUSTC)).unwrap_err());
    assert!(e.contains("--update-lock"), "{e}");
    Ok(())
}

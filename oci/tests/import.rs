//! The way back: an exported image, and images derived from it with a Containerfile by
//! `buildah` (a second implementation of the layers on top), imported through ostree-ext and
//! checked. Derived content under /usr comes through; a derived image that replaces PID 1,
//! removes the trusted keys (a whiteout) or puts files where a host never sees them is refused
//! with the path named.

use cairn_oci::import::{check, checkout, import};
use cairn_oci::{Export, export, owners::Owners};
use std::path::{Path, PathBuf};
use std::process::Command;

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// What a derived image may not change, as the builder names it.
fn protected() -> Vec<String> {
    ["usr/sbin/cairn-init", "usr/lib/os-release", "usr/share/cairn/tuf"].map(String::from).to_vec()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    base: String,
}

/// A small Cairn-like tree exported as `oci:ROOT/oci:base`.
fn fixture() -> Fixture {
    let dir = tempfile::Builder::new().prefix("cairn-oci-import").tempdir_in("/var/tmp").unwrap();
    let root = dir.path().to_path_buf();
    let tree = root.join("tree");
    write(&tree, "usr/sbin/cairn-init", &b"init ".repeat(1000));
    write(&tree, "usr/lib/os-release", b"ID=cairn\n");
    write(&tree, "usr/share/cairn/tuf/root.json", b"{\"signed\":{}}");
    write(&tree, "usr/bin/busybox", &b"busybox ".repeat(1000));
    std::os::unix::fs::symlink("cairn-init", tree.join("usr/sbin/init")).unwrap();
    let base = format!("oci:{}:base", root.join("oci").display());
    export(&Export {
        tree: &tree,
        owners: &Owners::from([("usr/bin/busybox".into(), "busybox".into())]),
        repo: &root.join("export-repo"),
        os_id: "cairn",
        version: "1.0.0",
        root_hash: &"ab".repeat(32),
        kernel: "linux-image-test=1",
        epoch: 1_700_000_000,
        dest: &base,
    })
    .unwrap();
    Fixture { _dir: dir, root, base }
}

const BASE_NAME: &str = "localhost/cairn-base:1";

/// `buildah bud` of a Containerfile FROM the base adding `files` (context path, content),
/// written to `oci:ROOT/oci:TAG`; returns that reference.
fn derive(f: &Fixture, tag: &str, containerfile: &str, files: &[(&str, &[u8])]) -> String {
    let ctx = f.root.join(format!("ctx-{tag}"));
    for (path, data) in files {
        write(&ctx, path, data);
    }
    std::fs::write(ctx.join("Containerfile"), containerfile.replace("BASE", BASE_NAME)).unwrap();
    let storage = f.root.join("buildah");
    let buildah = |args: &[&str]| {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("buildah (./scripts/setup.sh installs it)");
        assert!(out.status.success(), "buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // A Containerfile's FROM takes a name: the exported image is copied into buildah's storage
    // under one.
    let store = format!(
        "containers-storage:[vfs@{}+{}]{BASE_NAME}",
        storage.join("root").display(),
        storage.join("run").display()
    );
    let out = Command::new("skopeo").args(["copy", "--quiet", &f.base, &store]).output().expect("skopeo");
    assert!(out.status.success(), "skopeo copy to buildah's storage: {}", String::from_utf8_lossy(&out.stderr));
    let name = format!("localhost/derived:{tag}");
    buildah(&[
        "bud",
        "--isolation",
        "chroot",
        "--quiet",
        "-t",
        &name,
        "-f",
        &ctx.join("Containerfile").to_string_lossy(),
        &ctx.to_string_lossy(),
    ]);
    let dest = format!("oci:{}:{tag}", f.root.join("oci").display());
    buildah(&["push", "--quiet", &name, &dest]);
    dest
}

#[test]
fn a_derived_image_under_usr_imports_and_its_base_is_checked_out_with_it() {
    let f = fixture();
    let containerfile =
        "FROM BASE\nCOPY hello.txt /usr/share/hello/hello.txt\nCOPY hello.toml /usr/lib/cairn/services/hello.toml\n";
    let derived = derive(
        &f,
        "good",
        containerfile,
        &[("hello.txt", b"hello from a Containerfile\n"), ("hello.toml", b"command = [\"/usr/bin/true\"]\n")],
    );
    let repo = f.root.join("import-repo");
    let image = import(&derived, &repo).unwrap();
    assert!(image.fetched);
    assert_eq!(image.labels.get(cairn_oci::LABEL_OS).map(String::as_str), Some("cairn"), "{:?}", image.labels);
    assert_ne!(image.base, image.merged, "the derived layer made no merge");
    check(&repo, &image, &derived, &protected()).unwrap();

    let tree = f.root.join("checkout");
    checkout(&repo, &image.merged, &tree).unwrap();
    let read = |p: &str| std::fs::read(tree.join(p)).unwrap();
    assert_eq!(read("usr/share/hello/hello.txt"), b"hello from a Containerfile\n");
    assert_eq!(read("usr/sbin/cairn-init"), b"init ".repeat(1000));
    assert_eq!(std::fs::read_link(tree.join("usr/sbin/init")).unwrap(), Path::new("cairn-init"));

    // Again: every layer is in the cache, nothing is fetched, the same commit.
    let again = import(&derived, &repo).unwrap();
    assert!(!again.fetched);
    assert_eq!(again.merged, image.merged);
    assert_eq!(again.digest, image.digest);
}

#[test]
fn a_derived_image_replacing_pid1_or_putting_files_outside_usr_is_refused_by_path() {
    let f = fixture();
    let repo = f.root.join("import-repo");
    let refused = |derived: &str| {
        let image = import(derived, &repo).unwrap();
        format!("{:#}", check(&repo, &image, derived, &protected()).unwrap_err())
    };
    let init = derive(&f, "init", "FROM BASE\nCOPY evil /usr/sbin/cairn-init\n", &[("evil", b"#!/bin/sh\n")]);
    let err = refused(&init);
    assert!(err.contains("/usr/sbin/cairn-init") && err.contains("boot depends on"), "{err}");

    let etc = derive(&f, "etc", "FROM BASE\nCOPY motd /etc/motd\n", &[("motd", b"hi\n")]);
    let err = refused(&etc);
    assert!(err.contains("/etc") && err.contains("outside /usr"), "{err}");

    let opt = derive(&f, "opt", "FROM BASE\nCOPY tool /opt/tool\n", &[("tool", b"x")]);
    let err = refused(&opt);
    assert!(err.contains("/opt") && err.contains("outside /usr"), "{err}");
}

#[test]
fn a_derived_image_removing_the_trusted_keys_is_refused() {
    // A Containerfile cannot remove a file without RUN (the image has no /bin/sh), so the layer
    // with the whiteout is written directly.
    use ocidir::OciDir;
    use ocidir::cap_std::{ambient_authority, fs::Dir};
    use ocidir::oci_spec::image::{ImageConfiguration, ImageManifest};
    let f = fixture();
    let oci = OciDir::open(&Dir::open_ambient_dir(f.root.join("oci"), ambient_authority()).unwrap()).unwrap();
    let index = oci.read_index().unwrap().unwrap();
    let desc = index.manifests()[0].clone();
    let mut manifest: ImageManifest = oci.read_json_blob(&desc).unwrap();
    let mut config: ImageConfiguration = oci.read_json_blob(manifest.config()).unwrap();
    let mut layer = oci.create_layer(None).unwrap();
    // Parent directories first, as image builders write them.
    for dir in ["usr/", "usr/share/", "usr/share/cairn/", "usr/share/cairn/tuf/"] {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Directory);
        layer.append_data(&mut header, dir, std::io::empty()).unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    layer.append_data(&mut header, "usr/share/cairn/tuf/.wh.root.json", std::io::empty()).unwrap();
    let layer = layer.into_inner().unwrap().complete().unwrap();
    oci.push_layer(&mut manifest, &mut config, layer, "remove the keys", None);
    oci.insert_manifest_and_config(manifest, config, Some("nokeys"), Default::default()).unwrap();

    let derived = format!("oci:{}:nokeys", f.root.join("oci").display());
    let repo = f.root.join("import-repo");
    let image = import(&derived, &repo).unwrap();
    let err = format!("{:#}", check(&repo, &image, &derived, &protected()).unwrap_err());
    assert!(err.contains("/usr/share/cairn/tuf"), "{err}");
}

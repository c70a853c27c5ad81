//! A small tree exported twice through ostree-ext and read back by `skopeo`, a second
//! implementation: the same digest both times, the labels, a layer per component.

use cairn_oci::{Export, LABEL_ROOT_HASH, LABEL_VERSION, export, owners::Owners};
use std::path::Path;
use std::process::Command;

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn skopeo_inspect(args: &[&str]) -> serde_json::Value {
    let out =
        Command::new("skopeo").arg("inspect").args(args).output().expect("skopeo (./scripts/setup.sh installs it)");
    assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_export_is_reproducible_labelled_and_layered_by_package() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    write(&tree, "usr/bin/runc", &b"runc binary ".repeat(1000));
    write(&tree, "usr/share/doc/runc/copyright", b"Apache-2.0");
    write(&tree, "usr/bin/busybox", &b"busybox binary ".repeat(1000));
    write(&tree, "usr/lib/os-release", b"ID=cairn\n");
    std::os::unix::fs::symlink("busybox", tree.join("usr/bin/sh")).unwrap();
    let owners = Owners::from([
        ("usr/bin/runc".into(), "runc".into()),
        ("usr/share/doc/runc/copyright".into(), "runc".into()),
        ("usr/bin/busybox".into(), "busybox".into()),
        ("usr/bin/sh".into(), "busybox".into()),
    ]);
    let oci = t.path().join("oci");
    let mut digests = Vec::new();
    for (i, tag) in ["first", "second"].iter().enumerate() {
        let dest = format!("oci:{}:{tag}", oci.display());
        let e = Export {
            tree: &tree,
            owners: &owners,
            repo: &t.path().join(format!("repo{i}")),
            os_id: "cairn",
            version: "1.2.3",
            root_hash: &"ab".repeat(32),
            kernel: "linux-image-test=1",
            epoch: 1_700_000_000,
            dest: &dest,
        };
        digests.push(export(&e).unwrap());
    }
    assert_eq!(digests[0], digests[1], "two exports of the same tree differ");

    let inspected = skopeo_inspect(&[&format!("oci:{}:first", oci.display())]);
    assert_eq!(inspected["Labels"][LABEL_VERSION], "1.2.3");
    assert_eq!(inspected["Labels"][LABEL_ROOT_HASH], "ab".repeat(32));
    assert_eq!(inspected["Digest"], digests[0]);
    // Every time in the image is the build's, none the export's.
    let config = skopeo_inspect(&["--config", &format!("oci:{}:first", oci.display())]);
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let history = config["history"].as_array().unwrap();
    assert!(!history.is_empty() && history.iter().all(|h| h["created"] == "2023-11-14T22:13:20Z"), "{history:?}");
    let layers = inspected["Layers"].as_array().unwrap().len();
    // ostree-ext's commit layer, then busybox, runc and what no package holds.
    assert!(layers >= 3, "{layers} layers: {inspected}");

    // runc changes: its layer changes, and the commit's (the first); the others stay.
    write(&tree, "usr/bin/runc", &b"runc binary, patched ".repeat(1000));
    let dest = format!("oci:{}:patched", oci.display());
    let repo = t.path().join("repo0");
    let e = Export {
        tree: &tree,
        owners: &owners,
        repo: &repo,
        os_id: "cairn",
        version: "1.2.4",
        root_hash: &"cd".repeat(32),
        kernel: "linux-image-test=1",
        epoch: 1_700_000_000,
        dest: &dest,
    };
    export(&e).unwrap();
    let patched = skopeo_inspect(&[&dest]);
    let before: Vec<&str> = inspected["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let after: Vec<&str> = patched["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let changed: Vec<&&str> = after.iter().filter(|l| !before.contains(l)).collect();
    println!("{layers} layers; after a change to runc, new: {changed:?}");
    assert_eq!(after.len(), before.len());
    assert_eq!(changed.len(), 2, "{before:?} -> {after:?}");
    assert!(!before.contains(&after[0]), "the commit layer comes first and changes with any change");
}

#[test]
fn a_tree_no_package_holds_exports_as_one_component() {
    // One component asks ostree-ext for fewer layers than it packs into; the export still works.
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    write(&tree, "usr/bin/hello", b"hello");
    let dest = format!("oci:{}:one", t.path().join("oci").display());
    let e = Export {
        tree: &tree,
        owners: &Owners::new(),
        repo: &t.path().join("repo"),
        os_id: "cairn",
        version: "1",
        root_hash: &"00".repeat(32),
        kernel: "linux-image-test=1",
        epoch: 1_700_000_000,
        dest: &dest,
    };
    let digest = export(&e).unwrap();
    assert_eq!(skopeo_inspect(&[&dest])["Digest"], digest);
}

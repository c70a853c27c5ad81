//! A local user against cloud-config apply, which runs as root at every boot and writes into
//! the user's home: links planted where apply writes must never be followed. Run as root (CI
//! does) in a scratch root; `tests/` has the same attack by a real user in a VM.

use super::*;
use crate::apply::testing::host;
use crate::document::{Parsed, parse};
use std::os::unix::fs::MetadataExt;

const OPS: &str = "#cloud-config
users:
  - name: ops
    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@example]
";

fn config(text: &str) -> CloudConfig {
    match parse(text.as_bytes()) {
        Parsed::Config(c, _) => *c,
        other => panic!("{other:?}"),
    }
}

/// A host where ops exists with a home and `.ssh` (the first apply), as ops would find it.
fn host_with_ops() -> (tempfile::TempDir, Host) {
    let (t, h) = host();
    assert!(h.chown, "the attacks are about owners: run as root");
    apply(&config(OPS), &h).unwrap();
    (t, h)
}

/// The root-owned file a user wants to own: init runs every service file as root.
fn plant_target(t: &tempfile::TempDir) -> std::path::PathBuf {
    let target = t.path().join("etc/cairn/services/x.toml");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, "command = [\"/bin/true\"]\n").unwrap();
    target
}

fn assert_untouched(target: &std::path::Path) {
    let m = std::fs::symlink_metadata(target).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0), "still root's");
    assert_eq!(std::fs::read_to_string(target).unwrap(), "command = [\"/bin/true\"]\n", "contents untouched");
}

#[test]
fn a_symlinked_authorized_keys_is_replaced_not_followed() {
    let (t, h) = host_with_ops();
    let target = plant_target(&t);
    let keys = t.path().join("home/ops/.ssh/authorized_keys");
    std::fs::remove_file(&keys).unwrap();
    std::os::unix::fs::symlink(&target, &keys).unwrap();
    let changed = apply(&config(OPS), &h).unwrap();
    assert!(changed.iter().any(|c| c.ends_with("authorized_keys")), "{changed:?}");
    assert_untouched(&target);
    let m = std::fs::symlink_metadata(&keys).unwrap();
    assert!(m.is_file(), "the link itself was replaced by a regular file");
    assert_eq!(m.uid(), 1000, "ops's");
}

#[test]
fn a_hardlinked_authorized_keys_is_replaced_not_written_through() {
    let (t, h) = host_with_ops();
    let target = plant_target(&t);
    let keys = t.path().join("home/ops/.ssh/authorized_keys");
    std::fs::remove_file(&keys).unwrap();
    std::fs::hard_link(&target, &keys).unwrap();
    apply(&config(OPS), &h).unwrap();
    assert_untouched(&target);
    assert_eq!(std::fs::metadata(&target).unwrap().nlink(), 1, "the link to it is gone from ~/.ssh");
    assert!(std::fs::read_to_string(&keys).unwrap().contains("ops@example"));
}

#[test]
fn a_symlinked_ssh_directory_is_refused_and_nothing_is_written() {
    let (t, h) = host_with_ops();
    let target = plant_target(&t);
    let ssh = t.path().join("home/ops/.ssh");
    std::fs::remove_dir_all(&ssh).unwrap();
    std::os::unix::fs::symlink(t.path().join("etc/cairn/services"), &ssh).unwrap();
    let doc = format!("{OPS}hostname: changed\n");
    let err = apply(&config(&doc), &h).unwrap_err().to_string();
    assert!(err.contains("home/ops/.ssh") && err.contains("symbolic link"), "{err}");
    assert_untouched(&target);
    let names: Vec<_> = std::fs::read_dir(target.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["x.toml"], "nothing new in the services directory");
    assert!(!t.path().join("etc/hostname").exists(), "the document applied nothing");
}

#[test]
fn a_symlinked_home_is_refused() {
    let (t, h) = host_with_ops();
    let home = t.path().join("home/ops");
    std::fs::remove_dir_all(&home).unwrap();
    std::fs::create_dir_all(t.path().join("etc/cairn")).unwrap();
    std::os::unix::fs::symlink(t.path().join("etc/cairn"), &home).unwrap();
    let err = apply(&config(OPS), &h).unwrap_err().to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!t.path().join("etc/cairn/.ssh").exists());
}

#[test]
fn an_absolute_symlink_out_of_the_root_is_refused() {
    let (t, h) = host_with_ops();
    let outside = tempfile::tempdir().unwrap();
    let ssh = t.path().join("home/ops/.ssh");
    std::fs::remove_dir_all(&ssh).unwrap();
    std::os::unix::fs::symlink(outside.path(), &ssh).unwrap();
    assert!(apply(&config(OPS), &h).is_err());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside the root");
}

#[test]
fn a_fifo_where_a_file_goes_does_not_hang_apply() {
    let (t, h) = host_with_ops();
    let keys = t.path().join("home/ops/.ssh/authorized_keys");
    std::fs::remove_file(&keys).unwrap();
    nix::unistd::mkfifo(&keys, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    apply(&config(OPS), &h).unwrap();
    assert!(std::fs::symlink_metadata(&keys).unwrap().is_file());
}

#[test]
fn write_files_through_a_users_symlink_are_refused() {
    let (t, h) = host_with_ops();
    let target = plant_target(&t);
    std::os::unix::fs::symlink(t.path().join("etc/cairn/services"), t.path().join("home/ops/conf")).unwrap();
    let doc = format!("{OPS}write_files:\n  - {{path: /home/ops/conf/x.toml, owner: ops, content: evil}}\n");
    let err = apply(&config(&doc), &h).unwrap_err().to_string();
    assert!(err.contains("/home/ops/conf/x.toml") && err.contains("symbolic link"), "{err}");
    assert_untouched(&target);
}

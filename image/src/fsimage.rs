//! File system images made by Debian's tools, rootless and reproducibly: erofs for `/usr`,
//! ext4 for ROOT.

use crate::tools::run;
use anyhow::{Context, Result};
use cairn_release::gpt::Guid;
use std::path::Path;
use std::process::Command;

/// mkfs.erofs options besides times and UUID (part of the /usr cache key).
pub const EROFS_OPTIONS: &[&str] = &["-zlz4hc", "--all-root", "-x-1"];

/// `mkfs.erofs` of `tree` (the future `/usr`): every file owned by root, every time set to
/// `epoch`, a fixed UUID.
pub fn erofs(tree: &Path, out: &Path, uuid: Guid, epoch: u64) -> Result<()> {
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .args(EROFS_OPTIONS)
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{uuid}"))
        .arg(out)
        .arg(tree))
    .context("making the /usr erofs image")?;
    Ok(())
}

/// An empty ext4 for ROOT, its times from `epoch` (E2FSPROGS_FAKE_TIME).
pub fn ext4(out: &Path, size_bytes: u64, label: &str, uuid: Guid, epoch: u64) -> Result<()> {
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("MKE2FS_DEVICE_SECTSIZE", "512")
        .args(["-q", "-F", "-b", "4096", "-I", "256", "-L", label])
        .arg("-U")
        .arg(uuid.to_string())
        .arg("-E")
        .arg(format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=1"))
        .arg(out)
        .arg(format!("{}k", size_bytes / 1024)))
    .context("making the ROOT ext4 image")?;
    Ok(())
}

/// Sets one file's times to `epoch`.
pub fn set_times(path: &Path, epoch: u64) -> Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    let t = nix::sys::time::TimeSpec::new(epoch as i64, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .with_context(|| format!("setting times of {}", path.display()))
}

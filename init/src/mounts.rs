//! Mounts of both stages, seeding `/etc`, and switching root out of the initramfs.

use cairn_release::layout::{ROOT_DIRS, ROOT_LINKS};
use nix::mount::{MsFlags, mount};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| format!("mounting {fstype} {src} on {target}: {e}"))
}

pub fn mount_api_filesystems() -> Result<(), String> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid_nodev_noexec, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None)?;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mnt("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    Ok(())
}

pub fn mount_root(dev: &Path, target: &str) -> Result<(), String> {
    let dev = dev.to_string_lossy();
    mnt(&dev, target, "ext4", MsFlags::MS_NOATIME, None)
}

pub fn mount_usr(dev: &str, target: &str) -> Result<(), String> {
    mnt(dev, target, "erofs", MsFlags::MS_RDONLY | MsFlags::MS_NODEV, None)
}

/// Makes ROOT a Cairn root: its directories and the merged-/usr links, whatever state it is in.
pub fn prepare_root(root: &str) -> Result<(), String> {
    for (d, mode) in ROOT_DIRS {
        let p = Path::new(root).join(d);
        if !p.is_dir() {
            std::fs::create_dir_all(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| format!("chmod {}: {e}", p.display()))?;
        }
    }
    for (link, target) in ROOT_LINKS {
        let p = Path::new(root).join(link);
        if std::fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(target, &p).map_err(|e| format!("linking {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

const SEEDED_MARK: &str = "etc/.cairn-factory-seeded";

/// Copies `/usr/share/factory/etc` into `/etc` once. Files that exist are kept (the user's
/// changes win); the mark is written last, so an interrupted seeding is redone next boot.
pub fn seed_etc(root: &str) -> Result<(), String> {
    let root = Path::new(root);
    if root.join(SEEDED_MARK).exists() {
        return Ok(());
    }
    copy_missing(&root.join("usr/share/factory/etc"), &root.join("etc"))?;
    nix::unistd::sync();
    std::fs::write(root.join(SEEDED_MARK), b"").map_err(|e| format!("marking /etc seeded: {e}"))?;
    nix::unistd::sync();
    Ok(())
}

fn copy_missing(src: &Path, dest: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let (s, d) = (e.path(), dest.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&s).map_err(|e| format!("{}: {e}", s.display()))?;
        let err = |e: std::io::Error| format!("seeding {}: {e}", d.display());
        if meta.is_dir() {
            if !d.exists() {
                std::fs::create_dir(&d).map_err(err)?;
                std::fs::set_permissions(&d, meta.permissions()).map_err(err)?;
            }
            copy_missing(&s, &d)?;
        } else if std::fs::symlink_metadata(&d).is_err() {
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&s).map_err(err)?, &d).map_err(err)?;
            } else {
                std::fs::copy(&s, &d).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// Moves the API mounts into `new_root`, frees the initramfs, makes `new_root` the root and
/// executes stage 2 there.
pub fn switch_root(new_root: &str, init: &str) -> Result<std::convert::Infallible, String> {
    for m in ["/proc", "/sys", "/dev", "/run"] {
        let target = format!("{new_root}{m}");
        mount(Some(m), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| format!("moving {m} to {target}: {e}"))?;
    }
    nix::unistd::chdir(new_root).map_err(|e| format!("chdir {new_root}: {e}"))?;
    // The initramfs lives in memory until its files are gone.
    free_initramfs(Path::new("/"), new_root);
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {new_root} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    let path = std::ffi::CString::new(init).expect("no NUL");
    let argv = [std::ffi::CString::new("cairn-init").expect("no NUL")];
    match nix::unistd::execv(&path, &argv) {
        Err(e) => Err(format!("executing {init}: {e}")),
    }
}

fn free_initramfs(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p == Path::new(keep) || ["/proc", "/sys", "/dev", "/run"].iter().any(|m| p == Path::new(m)) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let _ = std::fs::remove_dir_all(&p);
            }
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

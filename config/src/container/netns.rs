//! Network namespaces of containers, pinned by a bind mount under `/run/cairn/netns` so they
//! outlive the thread that made them: the CNI plugins configure one by its path, and the
//! container's spec joins it by the same path.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use std::path::{Path, PathBuf};

/// Where the namespaces are pinned (tmpfs: none outlives a boot).
pub const DIR: &str = "/run/cairn/netns";

/// A new network namespace pinned at `DIR/name`.
pub fn create(name: &str) -> Result<PathBuf, String> {
    let path = Path::new(DIR).join(name);
    std::fs::create_dir_all(DIR).map_err(|e| format!("creating {DIR}: {e}"))?;
    std::fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let target = path.clone();
    // A thread of its own enters the new namespace, so the runner's threads stay in the host's.
    let pinned = std::thread::spawn(move || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("a new network namespace: {e}"))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(Some(own.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("pinning it at {}: {e}", target.display()))
    })
    .join()
    .unwrap_or_else(|_| Err("making a network namespace panicked".into()));
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Unpins the namespace at `path` (it goes once no process is in it); gone already is fine.
pub fn remove(path: &Path) -> Result<(), String> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(format!("unpinning {}: {e}", path.display())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing {}: {e}", path.display())),
        _ => Ok(()),
    }
}

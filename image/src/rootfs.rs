//! Staging the `/usr` tree: package contents merged into `/usr` (merged-/usr), package `/etc`
//! files kept as factory defaults, Cairn's binaries, os-release and the factory `/etc`.

use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Counts of what merging packages did, for the build report.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct MergeStats {
    pub files: u64,
    pub bytes: u64,
    /// Paths outside /usr, /etc and the merged-/usr directories (e.g. /var), left out.
    pub skipped: u64,
}

/// Where a path of a package lands in the staged tree (relative to the tree root, which holds
/// `usr/`), or `None` when it is left out.
pub fn destination(rel: &Path) -> Option<PathBuf> {
    let mut comps = rel.components();
    let first = comps.next()?.as_os_str().to_str()?.to_string();
    let rest = comps.as_path();
    match first.as_str() {
        "usr" => Some(Path::new("usr").join(rest)),
        "bin" | "sbin" | "lib" | "lib64" | "lib32" | "libx32" => Some(Path::new("usr").join(&first).join(rest)),
        "etc" => Some(Path::new("usr/share/factory/etc").join(rest)),
        _ => None,
    }
}

/// Hard-links (or copies across file systems) an unpacked package into the staged tree.
/// A later package's file replaces an earlier one's at the same path.
pub fn merge_package(unpacked: &Path, tree: &Path, stats: &mut MergeStats) -> Result<()> {
    merge_dir(unpacked, unpacked, tree, &destination, stats)
}

/// Records `owner` for each file and symlink `src` places in the tree (at `map` of its path
/// under `src`), over what an earlier call recorded, as a later merge replaces an earlier one's
/// files: which package each path of the tree came from.
pub fn claim(
    src: &Path,
    map: &dyn Fn(&Path) -> Option<PathBuf>,
    owner: &str,
    owners: &mut std::collections::BTreeMap<String, String>,
) -> Result<()> {
    fn walk(
        root: &Path,
        dir: &Path,
        map: &dyn Fn(&Path) -> Option<PathBuf>,
        owner: &str,
        owners: &mut std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let Some(dest) = map(path.strip_prefix(root).expect("under root")) else { continue };
            if entry.file_type()?.is_dir() {
                walk(root, &path, map, owner, owners)?;
            } else {
                owners.insert(dest.to_string_lossy().into_owned(), owner.to_string());
            }
        }
        Ok(())
    }
    walk(src, src, map, owner, owners)
}

/// Hard-links (or copies) the tree `src` to `dest` as it is.
pub fn link_tree(src: &Path, dest: &Path, stats: &mut MergeStats) -> Result<()> {
    ensure_dir(dest, 0o755)?;
    merge_dir(src, src, dest, &|rel: &Path| Some(rel.to_path_buf()), stats)
}

type Mapping<'a> = &'a dyn Fn(&Path) -> Option<PathBuf>;

fn merge_dir(root: &Path, dir: &Path, tree: &Path, map: Mapping, stats: &mut MergeStats) -> Result<()> {
    let mut entries: Vec<_> =
        fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let src = entry.path();
        let rel = src.strip_prefix(root).expect("under root");
        let ft = entry.file_type()?;
        let Some(dest_rel) = map(rel) else {
            stats.skipped += 1;
            continue;
        };
        let dest = tree.join(&dest_rel);
        if ft.is_dir() {
            ensure_dir(&dest, fs::metadata(&src)?.permissions().mode() & 0o7777)?;
            merge_dir(root, &src, tree, map, stats)?;
        } else if ft.is_symlink() {
            replace(&dest)?;
            symlink(fs::read_link(&src)?, &dest).with_context(|| format!("linking {}", dest.display()))?;
        } else if ft.is_file() {
            replace(&dest)?;
            if fs::hard_link(&src, &dest).is_err() {
                fs::copy(&src, &dest).with_context(|| format!("copying to {}", dest.display()))?;
            }
            stats.files += 1;
            stats.bytes += entry.metadata()?.len();
        }
    }
    Ok(())
}

fn replace(dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent()
        && !parent.is_dir()
    {
        ensure_dir(parent, 0o755)?;
    }
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dest)?,
        Ok(_) => fs::remove_file(dest)?,
        Err(_) => {}
    }
    Ok(())
}

/// Removes the spec's `packages.exclude` paths (absolute, under `/usr`) from the merged tree.
pub fn exclude(tree: &Path, paths: &[String]) -> Result<()> {
    for p in paths {
        let rel = p.strip_prefix("/usr/").filter(|r| !r.is_empty() && !r.split('/').any(|c| c == ".." || c == "."));
        let Some(rel) = rel else {
            anyhow::bail!("packages.exclude: {p:?} is not a path under /usr/");
        };
        let path = tree.join("usr").join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path)?,
            Ok(_) => fs::remove_file(&path)?,
            Err(_) => anyhow::bail!("packages.exclude: {p} is in none of the packages"),
        }
    }
    Ok(())
}

/// Creates a directory (and parents) with an explicit mode, independent of the umask.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    if !path.is_dir() {
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            ensure_dir(parent, 0o755)?;
        }
        fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes a file with an explicit mode, creating parents.
pub fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        ensure_dir(parent, 0o755)?;
    }
    replace(path)?;
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Overlay trees may only add to `/usr` (everything else of the image is made at boot).
pub fn check_overlay(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading overlay {}", dir.display()))? {
        let name = e?.file_name();
        if name != "usr" {
            anyhow::bail!("overlay {}: only usr/ may appear at its top, not {:?}", dir.display(), name);
        }
    }
    Ok(())
}

/// The regular files under `dir` and their bytes (as a merge counts them).
pub fn tree_stats(dir: &Path) -> Result<MergeStats> {
    let mut stats = MergeStats::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file() {
                stats.files += 1;
                stats.bytes += e.metadata()?.len();
            }
        }
    }
    Ok(stats)
}

/// A digest of a tree's paths, modes, link targets and contents, in path order.
pub fn tree_digest(dir: &Path) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if fs::symlink_metadata(&p)?.is_dir() {
                stack.push(p.clone());
            }
            files.push(p);
        }
    }
    files.sort();
    for p in files {
        let m = fs::symlink_metadata(&p)?;
        h.update(p.strip_prefix(dir).expect("under dir").to_string_lossy().as_bytes());
        h.update(m.permissions().mode().to_le_bytes());
        if m.is_symlink() {
            h.update(fs::read_link(&p)?.to_string_lossy().as_bytes());
        } else if m.is_file() {
            h.update(fs::read(&p)?);
        }
    }
    Ok(h.finalize().into())
}

/// Links every applet of the image's busybox that no package provides (`ls`, `ip`, `sh`...).
/// The image's busybox is static, so the build machine can ask it for its list.
pub fn busybox_links(tree: &Path) -> Result<usize> {
    let busybox = tree.join("usr/bin/busybox");
    if !busybox.is_file() {
        return Ok(0);
    }
    let out = crate::tools::run(std::process::Command::new(&busybox).arg("--list-full"))
        .context("listing busybox applets")?;
    let mut n = 0;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(dest) = destination(Path::new(applet)) else { continue };
        let dest = tree.join(dest);
        if applet.ends_with("/init") || applet == "linuxrc" || fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        if let Some(parent) = dest.parent() {
            ensure_dir(parent, 0o755)?;
        }
        symlink("/usr/bin/busybox", &dest).with_context(|| format!("linking {}", dest.display()))?;
        n += 1;
    }
    Ok(n)
}

pub fn os_release(id: &str, name: &str, version: &str) -> String {
    format!(
        "NAME=\"{name}\"\nID={id}\nVERSION=\"{version}\"\nVERSION_ID={version}\nPRETTY_NAME=\"{name} {version}\"\n\
         HOME_URL=\"https://github.com/cairn-os/cairn\"\nIMAGE_ID={id}\nIMAGE_VERSION={version}\n"
    )
}

/// The factory `/etc` that stage 1 seeds ROOT's `/etc` from (on top of packages' `/etc` files).
pub fn write_factory_etc(tree: &Path, os_id: &str) -> Result<()> {
    let etc = tree.join("usr/share/factory/etc");
    ensure_dir(&etc, 0o755)?;
    write_file(&etc.join("hostname"), format!("{os_id}\n").as_bytes(), 0o644)?;
    write_file(
        &etc.join("passwd"),
        b"root:x:0:0:root:/root:/bin/sh\n\
          messagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n\
          _chrony:x:998:998:chrony:/var/lib/chrony:/usr/sbin/nologin\n\
          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        0o644,
    )?;
    write_file(&etc.join("group"), b"root:x:0:\nmessagebus:x:101:\n_chrony:x:998:\nnogroup:x:65534:\n", 0o644)?;
    // Locked: no password works; access is by key.
    write_file(
        &etc.join("shadow"),
        b"root:*:1::::::\nmessagebus:*:1::::::\n_chrony:*:1::::::\nnobody:*:1::::::\n",
        0o600,
    )?;
    write_file(&etc.join("hosts"), b"127.0.0.1 localhost\n::1 localhost\n", 0o644)?;
    let os_release = etc.join("os-release");
    replace(&os_release)?;
    symlink("../usr/lib/os-release", &os_release)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_mapping() {
        let d = |p: &str| destination(Path::new(p)).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(d("bin/busybox").as_deref(), Some("usr/bin/busybox"));
        assert_eq!(d("lib64/ld-linux-x86-64.so.2").as_deref(), Some("usr/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(d("usr/bin/ctr").as_deref(), Some("usr/bin/ctr"));
        assert_eq!(d("etc/containerd/config.toml").as_deref(), Some("usr/share/factory/etc/containerd/config.toml"));
        assert_eq!(d("var/lib/x"), None);
    }

    #[test]
    fn excluded_paths_go_and_a_missing_one_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        write_file(&t.path().join("usr/lib/cni/dhcp"), b"x", 0o755).unwrap();
        write_file(&t.path().join("usr/lib/cni/bridge"), b"x", 0o755).unwrap();
        write_file(&t.path().join("usr/share/doc/a/README"), b"x", 0o644).unwrap();
        exclude(t.path(), &["/usr/lib/cni/dhcp".into(), "/usr/share/doc".into()]).unwrap();
        assert!(!t.path().join("usr/lib/cni/dhcp").exists());
        assert!(!t.path().join("usr/share/doc").exists());
        assert!(t.path().join("usr/lib/cni/bridge").exists());
        let e = exclude(t.path(), &["/usr/lib/cni/dchp".into()]).unwrap_err();
        assert!(e.to_string().contains("/usr/lib/cni/dchp is in none of the packages"), "{e}");
        for bad in ["/etc/passwd", "/usr/", "/usr/../etc", "usr/lib"] {
            assert!(exclude(t.path(), &[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn later_package_wins_and_var_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let (p1, p2, tree) = (t.path().join("p1"), t.path().join("p2"), t.path().join("tree"));
        write_file(&p1.join("bin/tool"), b"one", 0o755).unwrap();
        write_file(&p1.join("var/lib/state"), b"x", 0o644).unwrap();
        write_file(&p2.join("usr/bin/tool"), b"two", 0o755).unwrap();
        let mut s = MergeStats::default();
        merge_package(&p1, &tree, &mut s).unwrap();
        merge_package(&p2, &tree, &mut s).unwrap();
        assert_eq!(fs::read(tree.join("usr/bin/tool")).unwrap(), b"two");
        assert_eq!(s.skipped, 1);
        assert!(!tree.join("var").exists());
    }
}

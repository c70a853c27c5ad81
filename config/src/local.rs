//! User data the machine carries: QEMU's fw_cfg entry, and volumes labelled `config-2`
//! (OpenStack config drive: `openstack/latest/user_data`) or `cidata` (NoCloud: `user-data`).
//! Volumes (FAT, or ISO 9660 as OpenStack and `cloud-localds` make them) are found by reading
//! their labels from the block devices and read in user space (the `fatfs` and `hadris-iso`
//! crates): nothing is mounted, no file system module is needed.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where fw_cfg entries appear (the kernel's `qemu_fw_cfg` module).
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// The fw_cfg entry Cairn hosts read user data from (`-fw_cfg name=...,file=...`).
pub const FW_CFG_NAME: &str = "opt/cairn/user-data";
/// An OpenStack config drive: its label and where the user data is on it.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
pub const CONFIG_DRIVE_USER_DATA: &str = "openstack/latest/user_data";
pub const CONFIG_DRIVE_META_DATA: &str = "openstack/latest/meta_data.json";
pub const CONFIG_DRIVE_NETWORK_DATA: &str = "openstack/latest/network_data.json";
/// A NoCloud volume: its label and where the user data is on it.
pub const NOCLOUD_LABEL: &str = "cidata";
pub const NOCLOUD_USER_DATA: &str = "user-data";
pub const NOCLOUD_META_DATA: &str = "meta-data";
pub const NOCLOUD_NETWORK_CONFIG: &str = "network-config";

/// The user data in fw_cfg entry `name` under `dir`; `None` if there is no such entry.
pub fn fw_cfg(dir: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let raw = dir.join(name).join("raw");
    match std::fs::File::open(&raw) {
        Ok(f) => {
            let mut data = Vec::new();
            f.take(crate::document::MAX_SIZE + 1).read_to_end(&mut data)?;
            if data.len() as u64 > crate::document::MAX_SIZE {
                return Err(std::io::Error::other(format!("{}: over 16 MiB", raw.display())));
            }
            Ok(Some(data))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The label of a FAT volume (from its boot sector), if `dev` holds one.
pub fn fat_label(dev: &mut (impl Read + Seek)) -> Option<String> {
    let mut boot = [0u8; 512];
    dev.seek(SeekFrom::Start(0)).ok()?;
    dev.read_exact(&mut boot).ok()?;
    if boot[510..512] != [0x55, 0xaa] {
        return None;
    }
    // FAT32 keeps its extended boot record (signature 0x29, then id, label) at 0x42; FAT12/16 at 0x26.
    let at = if &boot[0x52..0x5a] == b"FAT32   " { 0x42 } else { 0x26 };
    if boot[at] != 0x29 {
        return None;
    }
    let label = String::from_utf8_lossy(&boot[at + 5..at + 16]).trim_end().to_string();
    (!label.is_empty()).then_some(label)
}

/// Reads `path` from the FAT volume on `dev`.
pub fn fat_file(dev: std::fs::File, path: &str) -> std::io::Result<Option<Vec<u8>>> {
    let fs = fatfs::FileSystem::new(dev, fatfs::FsOptions::new())?;
    let mut file = match fs.root_dir().open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    (&mut file).take(crate::document::MAX_SIZE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > crate::document::MAX_SIZE {
        return Err(std::io::Error::other(format!("{path}: over 16 MiB")));
    }
    Ok(Some(data))
}

/// ISO 9660: the primary volume descriptor is sector 16 (2048-byte sectors).
const ISO_PVD: u64 = 16 * 2048;

/// The volume identifier of an ISO 9660 file system (its label), if `dev` holds one.
pub fn iso_label(dev: &mut (impl Read + Seek)) -> Option<String> {
    let mut pvd = [0u8; 72];
    dev.seek(SeekFrom::Start(ISO_PVD)).ok()?;
    dev.read_exact(&mut pvd).ok()?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    let label = String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string();
    (!label.is_empty()).then_some(label)
}

/// Reads `path` from the ISO 9660 file system on `dev`: by its Rock Ridge or Joliet name (as
/// `genisoimage -r` / `-J` write them), trying each directory tree the image has.
pub fn iso_file(dev: std::fs::File, path: &str) -> std::io::Result<Option<Vec<u8>>> {
    use hadris_iso::sync::read::IsoImage;
    let bad = |e: hadris_iso::sync::Error| std::io::Error::other(format!("ISO 9660: {e:?}"));
    let image = IsoImage::open(dev).map_err(bad)?;
    let parts: Vec<&str> = path.split('/').collect();
    for root in image.root_dirs().iter() {
        let mut dir = root.dir_ref();
        for (i, part) in parts.iter().enumerate() {
            let mut found = None;
            for e in image.open_dir(dir).entries() {
                let e = e.map_err(bad)?;
                if !e.is_special() && e.matches_name(part) {
                    found = Some(e);
                    break;
                }
            }
            let Some(e) = found else { break };
            if i + 1 < parts.len() {
                if !e.is_directory() {
                    break;
                }
                dir = e.as_dir_ref(&image).map_err(bad)?;
                continue;
            }
            if e.is_directory() {
                break;
            }
            if e.total_size() > crate::document::MAX_SIZE {
                return Err(std::io::Error::other(format!("{path}: over 16 MiB")));
            }
            return image.read_file(&e).map(Some).map_err(bad);
        }
    }
    Ok(None)
}

/// The block devices to look at: whole disks and partitions under `/sys/class/block`, as
/// `/dev` paths (`dev_dir` and `sys_dir` are seams for tests).
pub fn block_devices(sys_dir: &Path, dev_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        // Not loop, RAM or device-mapper devices: a config volume is a disk or a partition.
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("dm-"))
        .map(|n| dev_dir.join(n))
        .collect();
    out.sort();
    out
}

/// The first device among `devices` whose FAT or ISO 9660 label is `label` (case-insensitive:
/// FAT labels are stored upper-case), and the files `paths` on it (`None` for one it lacks).
/// `None` if no such volume.
pub fn labelled_volume(devices: &[PathBuf], label: &str, paths: &[&str]) -> std::io::Result<Option<(PathBuf, Files)>> {
    let is = |l: Option<String>| l.is_some_and(|l| l.eq_ignore_ascii_case(label));
    for dev in devices {
        let Ok(mut f) = std::fs::File::open(dev) else { continue };
        let read: fn(std::fs::File, &str) -> std::io::Result<Option<Vec<u8>>> = if is(fat_label(&mut f)) {
            fat_file
        } else if is(iso_label(&mut f)) {
            iso_file
        } else {
            continue;
        };
        let mut files = Vec::new();
        for path in paths {
            let mut handle = f.try_clone()?;
            handle.seek(SeekFrom::Start(0))?;
            files.push(read(handle, path)?);
        }
        return Ok(Some((dev.clone(), files)));
    }
    Ok(None)
}

/// The contents of the files asked for, in order.
pub type Files = Vec<Option<Vec<u8>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A FAT volume labelled `label` holding `files`, as mkfs.vfat and mtools make it.
    fn volume(dir: &Path, name: &str, label: &str, size_mib: u64, fat32: bool, files: &[(&str, &str)]) -> PathBuf {
        let img = dir.join(name);
        std::fs::File::create(&img).unwrap().set_len(size_mib << 20).unwrap();
        let mut mkfs = Command::new("mkfs.vfat");
        if fat32 {
            mkfs.args(["-F", "32"]);
        }
        if !label.is_empty() {
            mkfs.args(["-n", label]);
        }
        assert!(mkfs.arg(&img).output().unwrap().status.success());
        for (path, content) in files {
            let src = dir.join("src");
            std::fs::write(&src, content).unwrap();
            let mut parent = String::new();
            for part in path.split('/').rev().skip(1).collect::<Vec<_>>().into_iter().rev() {
                parent = if parent.is_empty() { part.to_string() } else { format!("{parent}/{part}") };
                let _ = Command::new("mmd")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(&img)
                    .arg(format!("::/{parent}"))
                    .output();
            }
            let out = Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&img)
                .arg(&src)
                .arg(format!("::/{path}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        img
    }

    #[test]
    fn finds_config_drives_and_nocloud_volumes_by_label() {
        let t = tempfile::tempdir().unwrap();
        let other = volume(t.path(), "a-esp", "EFI-SYSTEM", 40, true, &[("x", "y")]);
        let drive = volume(
            t.path(),
            "b-drive",
            "config-2",
            2,
            false,
            &[("openstack/latest/user_data", "#cloud-config\nhostname: d\n")],
        );
        let nocloud = volume(t.path(), "c-cidata", "cidata", 2, false, &[("meta-data", "instance-id: i-1\n")]);
        let devices = vec![other.clone(), drive.clone(), nocloud.clone()];
        assert_eq!(fat_label(&mut std::fs::File::open(&other).unwrap()).as_deref(), Some("EFI-SYSTEM"), "FAT32");
        let (dev, data) = labelled_volume(&devices, "config-2", &["openstack/latest/user_data"]).unwrap().unwrap();
        assert_eq!((dev, data), (drive, vec![Some(b"#cloud-config\nhostname: d\n".to_vec())]));
        let (dev, data) = labelled_volume(&devices, "cidata", &["user-data", "meta-data"]).unwrap().unwrap();
        assert_eq!((dev, data), (nocloud, vec![None, Some(b"instance-id: i-1\n".to_vec())]), "no user-data");
        assert!(labelled_volume(&devices[..1], "config-2", &["x"]).unwrap().is_none());
        // Labelled afterwards with mlabel, as `cairn run --config-drive` does.
        let relabelled = volume(t.path(), "d-mlabel", "", 2, false, &[]);
        let out = Command::new("mlabel")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&relabelled)
            .arg("::config-2")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(fat_label(&mut std::fs::File::open(&relabelled).unwrap()).as_deref(), Some("config-2"));
        let not_fat = t.path().join("zeros");
        std::fs::write(&not_fat, vec![0u8; 4096]).unwrap();
        assert_eq!(fat_label(&mut std::fs::File::open(&not_fat).unwrap()), None);
    }

    /// An ISO 9660 volume made by genisoimage with `flags`, holding `files`.
    fn iso(dir: &Path, name: &str, flags: &[&str], files: &[(&str, &str)]) -> PathBuf {
        let tree = dir.join(format!("{name}.tree"));
        for (path, content) in files {
            std::fs::create_dir_all(tree.join(path).parent().unwrap()).unwrap();
            std::fs::write(tree.join(path), content).unwrap();
        }
        std::fs::create_dir_all(&tree).unwrap();
        let img = dir.join(name);
        let out = Command::new("genisoimage")
            .arg("-quiet")
            .args(flags)
            .arg("-o")
            .arg(&img)
            .arg(&tree)
            .output()
            .expect("genisoimage (package genisoimage; ./scripts/setup.sh installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        img
    }

    #[test]
    fn finds_iso9660_config_drives_as_openstack_and_cloud_localds_write_them() {
        let t = tempfile::tempdir().unwrap();
        let user_data = "#cloud-config\nhostname: iso\n";
        // Nova's flags; cloud-localds's; Rock Ridge only; Joliet only.
        let nova = ["-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-J", "-r", "-V", "config-2"];
        let drive = iso(t.path(), "nova.iso", &nova, &[("openstack/latest/user_data", user_data)]);
        let seed = [("user-data", user_data), ("meta-data", "instance-id: i-1\n")];
        let localds = iso(t.path(), "localds.iso", &["-volid", "cidata", "-joliet", "-rock"], &seed);
        let rock = iso(t.path(), "rock.iso", &["-V", "cidata", "-r"], &seed);
        let joliet = iso(t.path(), "joliet.iso", &["-V", "CIDATA", "-J"], &seed);
        assert_eq!(iso_label(&mut std::fs::File::open(&drive).unwrap()).as_deref(), Some("config-2"));
        let (dev, data) =
            labelled_volume(std::slice::from_ref(&drive), "config-2", &[CONFIG_DRIVE_USER_DATA]).unwrap().unwrap();
        assert_eq!((dev, data), (drive, vec![Some(user_data.as_bytes().to_vec())]));
        for v in [localds, rock, joliet] {
            let paths = [NOCLOUD_USER_DATA, "vendor-data", NOCLOUD_META_DATA];
            let (_, data) = labelled_volume(std::slice::from_ref(&v), NOCLOUD_LABEL, &paths).unwrap().unwrap();
            let want = vec![Some(user_data.as_bytes().to_vec()), None, Some(b"instance-id: i-1\n".to_vec())];
            assert_eq!(data, want, "{}", v.display());
        }
        let fat = volume(t.path(), "fat", "config-2", 2, false, &[]);
        assert_eq!(iso_label(&mut std::fs::File::open(&fat).unwrap()), None);
    }

    #[test]
    fn reads_fw_cfg_entries() {
        let t = tempfile::tempdir().unwrap();
        let entry = t.path().join("opt/cairn/user-data");
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("raw"), "#cloud-config\n").unwrap();
        assert_eq!(fw_cfg(t.path(), "opt/cairn/user-data").unwrap().unwrap(), b"#cloud-config\n");
        assert_eq!(fw_cfg(t.path(), "opt/other").unwrap(), None);
    }
}

//! Azure's provisioning media: a DVD (UDF, as WALinuxAgent and cloud-init mount it; ISO 9660
//! read too) holding `ovf-env.xml`. UDF has no reader in user space here, so the kernel mounts
//! it: read-only, without devices, set-id or execution, on a directory made fresh for it, and
//! unmounted before the step goes on.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const OVF_ENV: &str = "ovf-env.xml";

/// Whether `dev` starts like a CD/DVD file system: a volume descriptor (`CD001`, ISO 9660) or a
/// UDF volume recognition sequence entry (`BEA01`, `NSR02`, `NSR03`) in the 2 KiB sectors from
/// 16 on, where both standards put them.
pub fn looks_optical(dev: &mut (impl Read + Seek)) -> bool {
    let mut sector = [0u8; 2048];
    (16..24).any(|n| {
        dev.seek(SeekFrom::Start(n * 2048)).is_ok()
            && dev.read_exact(&mut sector).is_ok()
            && matches!(&sector[1..6], b"CD001" | b"BEA01" | b"NSR02" | b"NSR03")
    })
}

/// `ovf-env.xml` from the first of `devices` that looks optical and has one, mounted under
/// `mount_dir` (created, and removed afterwards); `None` if none has it.
pub fn read_ovf_env(devices: &[PathBuf], mount_dir: &Path) -> std::io::Result<Option<(PathBuf, Vec<u8>)>> {
    for dev in devices {
        let optical = std::fs::File::open(dev).map(|mut f| looks_optical(&mut f)).unwrap_or(false);
        if !optical {
            continue;
        }
        if let Some(data) = read_from(dev, mount_dir)? {
            return Ok(Some((dev.clone(), data)));
        }
    }
    Ok(None)
}

fn read_from(dev: &Path, mount_dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    if let Some(parent) = mount_dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A directory of our own, not one somebody left there (a link would redirect the mount).
    std::fs::create_dir(mount_dir)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted =
        ["udf", "iso9660"].iter().any(|fs| mount(Some(dev), mount_dir, Some(*fs), flags, None::<&str>).is_ok());
    let result = if mounted {
        let read = read_capped(&mount_dir.join(OVF_ENV));
        if let Err(e) = umount2(mount_dir, MntFlags::empty()) {
            // Busy (it should not be): detach it, so the directory can go.
            let _ = umount2(mount_dir, MntFlags::MNT_DETACH);
            eprintln!("unmounting {}: {e}", mount_dir.display());
        }
        read
    } else {
        Ok(None)
    };
    std::fs::remove_dir(mount_dir)?;
    result
}

/// The file, unless it is missing; a link or an oversized file is an error.
fn read_capped(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file =
        match std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
    let mut data = Vec::new();
    file.take(super::ovf::MAX_BYTES + 1).read_to_end(&mut data)?;
    if data.len() as u64 > super::ovf::MAX_BYTES {
        return Err(std::io::Error::other(format!("{}: over {} KiB", path.display(), super::ovf::MAX_BYTES >> 10)));
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn iso9660_and_udf_signatures_are_recognised_and_other_disks_are_not() {
        let at = |sector: usize, id: &[u8]| {
            let mut disk = vec![0u8; 32 * 2048];
            disk[sector * 2048 + 1..sector * 2048 + 6].copy_from_slice(id);
            Cursor::new(disk)
        };
        assert!(looks_optical(&mut at(16, b"CD001")));
        assert!(looks_optical(&mut at(17, b"NSR02")));
        assert!(looks_optical(&mut at(18, b"BEA01")));
        assert!(!looks_optical(&mut at(16, b"EXT4!")));
        assert!(!looks_optical(&mut Cursor::new(vec![0u8; 4096])));
    }
}

//! Growing ROOT to the end of its disk: the partition in the GPT (both headers), the kernel's
//! view of it (BLKPG), then ext4 online (EXT4_IOC_RESIZE_FS). Each part checks what is already
//! done, so a boot interrupted anywhere finishes the job on the next boot.

#![allow(unsafe_code)] // BLKPG and EXT4_IOC_RESIZE_FS ioctls.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

const SECTOR: u64 = 512;
const ALIGN_SECTORS: u64 = 2048;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
/// _IOW('f', 16, __u64)
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Growth {
    pub old_bytes: u64,
    pub new_bytes: u64,
}

/// The new last sector of a partition that ends the disk, or None if it cannot grow by at
/// least one alignment unit.
pub fn grown_end(current_end: u64, last_usable: u64) -> Option<u64> {
    let new_end = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS - 1;
    (new_end >= current_end + ALIGN_SECTORS).then_some(new_end)
}

/// `partition` is e.g. `/dev/vda5`; ext4 on it is mounted at `mountpoint`.
pub fn grow_root(partition: &Path, mountpoint: &Path) -> Result<Option<Growth>, String> {
    let name = partition.file_name().and_then(|n| n.to_str()).ok_or("bad partition path")?;
    let sys = Path::new("/sys/class/block").join(name);
    let number: u32 = read_trim(&sys.join("partition"))?.parse().map_err(|_| "bad partition number")?;
    let disk_name = std::fs::canonicalize(&sys)
        .map_err(|e| e.to_string())?
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("no parent disk")?;
    let disk_path = Path::new("/dev").join(&disk_name);
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| format!("opening {}: {e}", disk_path.display()))?;
    let mut gpt = gptman::GPT::find_from(&mut disk).map_err(|e| format!("reading the GPT: {e}"))?;
    let disk_sectors = disk.seek(SeekFrom::End(0)).map_err(|e| e.to_string())? / SECTOR;

    let entry = gpt[number].clone();
    let later = gpt.iter().any(|(n, e)| n != number && e.is_used() && e.starting_lba > entry.starting_lba);
    let old_bytes = (entry.ending_lba - entry.starting_lba + 1) * SECTOR;
    let mut growth = None;
    // A disk larger than the image: the backup header must move to the new end first.
    let header_stale = gpt.header.backup_lba != disk_sectors - 1 || !backup_header_present(&mut disk, disk_sectors - 1);
    if !later {
        if header_stale {
            gpt.header.update_from(&mut disk, SECTOR).map_err(|e| format!("sizing the GPT: {e}"))?;
        }
        let new_end = grown_end(entry.ending_lba, gpt.header.last_usable_lba);
        if let Some(end) = new_end {
            gpt[number].ending_lba = end;
        }
        if header_stale || new_end.is_some() {
            // Primary then backup, each with its CRC: a crash between leaves a valid primary.
            gpt.write_into(&mut disk).map_err(|e| format!("writing the GPT: {e}"))?;
            disk.sync_all().map_err(|e| e.to_string())?;
        }
    }
    let entry = &gpt[number];
    let part_bytes = (entry.ending_lba - entry.starting_lba + 1) * SECTOR;

    // The kernel keeps the old size until told; BLKRRPART would fail while ROOT is mounted.
    let kernel_bytes = read_trim(&sys.join("size"))?.parse::<u64>().map_err(|_| "bad size")? * SECTOR;
    if kernel_bytes < part_bytes {
        let mut p = BlkpgPartition {
            start: (entry.starting_lba * SECTOR) as i64,
            length: part_bytes as i64,
            pno: number as i32,
            devname: [0; 64],
            volname: [0; 64],
        };
        let arg = BlkpgIoctlArg {
            op: BLKPG_RESIZE_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as i32,
            data: &mut p as *mut BlkpgPartition as *mut libc::c_void,
        };
        // SAFETY: arg points to a valid blkpg_partition for the duration of the call.
        if unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &arg) } < 0 {
            return Err(format!("telling the kernel about the new ROOT size: {}", std::io::Error::last_os_error()));
        }
        growth = Some(Growth { old_bytes, new_bytes: part_bytes });
    }

    // Online ext4 resize; a no-op when the file system already fills the partition.
    let root = File::open(mountpoint).map_err(|e| e.to_string())?;
    let blocks: u64 = part_bytes / 4096;
    // SAFETY: the ioctl reads one u64.
    if unsafe { libc::ioctl(root.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks) } < 0 {
        return Err(format!("growing ext4: {}", std::io::Error::last_os_error()));
    }
    Ok(growth)
}

fn backup_header_present(disk: &mut File, lba: u64) -> bool {
    let mut sig = [0u8; 8];
    disk.seek(SeekFrom::Start(lba * SECTOR)).and_then(|_| disk.read_exact(&mut sig)).is_ok() && &sig == b"EFI PART"
}

fn read_trim(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).map_err(|e| format!("reading {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_last_aligned_sector() {
        // 4 GiB disk: 8388608 sectors, last usable = 8388608 - 34.
        let last_usable = 8_388_608 - 34;
        assert_eq!(grown_end(2_492_415, last_usable), Some(8_386_559));
        // Already at the end: nothing to do.
        assert_eq!(grown_end(8_386_559, last_usable), None);
    }

    #[test]
    fn ioctl_numbers() {
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 8 + 8 + 4 + 64 + 64 + 4);
        assert_eq!(EXT4_IOC_RESIZE_FS, (1 << 30) | (8 << 16) | ((b'f' as libc::c_ulong) << 8) | 16);
    }
}

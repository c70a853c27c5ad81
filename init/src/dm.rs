//! Device-mapper through its ioctl interface (linux/dm-ioctl.h): create a device, load one
//! target, resume it. Enough for a read-only verity device; no libdevmapper, no udev.

#![allow(unsafe_code)] // ioctls on /dev/mapper/control with a buffer laid out as the kernel's ABI.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
/// sizeof(struct dm_ioctl)
const DM_IOCTL_SIZE: usize = 312;
/// sizeof(struct dm_target_spec)
const TARGET_SPEC_SIZE: usize = 40;
const DM_READONLY_FLAG: u32 = 1 << 0;

const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`
fn request(nr: u8) -> libc::c_ulong {
    const IOC_READ_WRITE: libc::c_ulong = 3;
    (IOC_READ_WRITE << 30) | ((DM_IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | nr as libc::c_ulong
}

/// A `struct dm_ioctl` followed by its payload, 8-byte aligned.
struct Buffer(Vec<u64>);

impl Buffer {
    fn new(name: &str, uuid: &str, payload: &[u8], flags: u32, target_count: u32) -> io::Result<Buffer> {
        if name.len() >= DM_NAME_LEN || uuid.len() >= DM_UUID_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "device-mapper name or uuid too long"));
        }
        let total = (DM_IOCTL_SIZE + payload.len()).div_ceil(8) * 8;
        let mut words = vec![0u64; total / 8];
        let b = bytes_mut(&mut words);
        put_u32(b, 0, 4); // interface version 4.0.0
        put_u32(b, 12, total as u32); // data_size
        put_u32(b, 16, DM_IOCTL_SIZE as u32); // data_start
        put_u32(b, 20, target_count);
        put_u32(b, 28, flags);
        b[48..48 + name.len()].copy_from_slice(name.as_bytes());
        b[176..176 + uuid.len()].copy_from_slice(uuid.as_bytes());
        b[DM_IOCTL_SIZE..DM_IOCTL_SIZE + payload.len()].copy_from_slice(payload);
        Ok(Buffer(words))
    }

    fn ioctl(&mut self, control: &File, nr: u8) -> io::Result<()> {
        // SAFETY: the buffer is at least DM_IOCTL_SIZE bytes, 8-byte aligned, and its data_size
        // field tells the kernel its true length.
        let r = unsafe { libc::ioctl(control.as_raw_fd(), request(nr), self.0.as_mut_ptr()) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    fn dev(&self) -> u64 {
        let b = bytes(&self.0);
        u64::from_le_bytes(b[40..48].try_into().expect("8 bytes"))
    }
}

fn bytes_mut(w: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 storage reinterpreted as bytes; alignment only decreases.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr() as *mut u8, w.len() * 8) }
}

fn bytes(w: &[u64]) -> &[u8] {
    // SAFETY: as above, read-only.
    unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, w.len() * 8) }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// One target line of a table: start and length in 512-byte sectors, type, parameters.
pub struct Target<'a> {
    pub start: u64,
    pub sectors: u64,
    pub kind: &'a str,
    pub params: &'a str,
}

fn target_payload(t: &Target) -> Vec<u8> {
    let params_len = (t.params.len() + 1).div_ceil(8) * 8;
    let mut p = vec![0u8; TARGET_SPEC_SIZE + params_len];
    p[0..8].copy_from_slice(&t.start.to_le_bytes());
    p[8..16].copy_from_slice(&t.sectors.to_le_bytes());
    put_u32(&mut p, 20, (TARGET_SPEC_SIZE + params_len) as u32); // next
    let kind = t.kind.as_bytes();
    p[24..24 + kind.len().min(15)].copy_from_slice(&kind[..kind.len().min(15)]);
    p[TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + t.params.len()].copy_from_slice(t.params.as_bytes());
    p
}

/// Creates a read-only device `name` with one target and activates it. Returns its minor
/// number: the node is `/dev/dm-<minor>`.
pub fn create_readonly(name: &str, uuid: &str, target: &Target) -> io::Result<u32> {
    let control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/mapper/control")?;
    let mut create = Buffer::new(name, uuid, &[], 0, 0)?;
    create.ioctl(&control, DM_DEV_CREATE).map_err(|e| ctx(e, "DM_DEV_CREATE"))?;
    let dev = create.dev();
    let mut load = Buffer::new(name, "", &target_payload(target), DM_READONLY_FLAG, 1)?;
    load.ioctl(&control, DM_TABLE_LOAD).map_err(|e| ctx(e, "DM_TABLE_LOAD (the kernel log says why)"))?;
    let mut resume = Buffer::new(name, "", &[], 0, 0)?;
    resume.ioctl(&control, DM_DEV_SUSPEND).map_err(|e| ctx(e, "resuming the device"))?;
    // The kernel's huge_encode_dev: minor in bits 0-7 and 20-31.
    Ok(((dev & 0xff) | ((dev >> 12) & !0xff)) as u32)
}

/// Removes device `name` (it must not be open or mounted).
pub fn remove(name: &str) -> io::Result<()> {
    let control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/mapper/control")?;
    Buffer::new(name, "", &[], 0, 0)?.ioctl(&control, DM_DEV_REMOVE).map_err(|e| ctx(e, "DM_DEV_REMOVE"))
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // DM_DEV_CREATE = _IOWR(0xfd, 3, struct dm_ioctl) = 0xc138fd03
        assert_eq!(request(DM_DEV_CREATE), 0xc138_fd03);
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
    }

    #[test]
    fn buffer_layout() {
        let t = Target { start: 0, sectors: 8, kind: "verity", params: "1 a b" };
        let payload = target_payload(&t);
        assert_eq!(payload.len(), 48);
        let b = Buffer::new("usr", "CAIRN", &payload, DM_READONLY_FLAG, 1).unwrap();
        let raw = bytes(&b.0);
        assert_eq!(&raw[48..51], b"usr");
        assert_eq!(u32::from_le_bytes(raw[12..16].try_into().unwrap()) as usize, raw.len());
        assert_eq!(&raw[DM_IOCTL_SIZE + 24..DM_IOCTL_SIZE + 30], b"verity");
        assert_eq!(&raw[DM_IOCTL_SIZE + 40..DM_IOCTL_SIZE + 45], b"1 a b");
    }
}

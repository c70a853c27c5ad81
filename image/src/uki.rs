//! Unified kernel images: the systemd EFI stub with `.osrel`, `.cmdline`, `.uname`, `.initrd`
//! and `.linux` sections added by objcopy, each placed past the stub's last section on a 4 KiB
//! boundary (`.linux` last, as systemd's ukify does).

use crate::tools::run;
use anyhow::{Context, Result, bail};
use cairn_release::durable::write_atomic;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
use std::path::Path;
use std::process::Command;

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const ALIGN: u64 = 4096;

pub struct UkiInputs<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub os_release: &'a str,
    pub uname: &'a str,
    /// SOURCE_DATE_EPOCH, for the PE timestamp.
    pub epoch: u64,
}

/// Image base and the first free virtual address past the stub's sections.
fn stub_layout(stub: &[u8]) -> Result<(u64, u64)> {
    let pe = PeFile64::parse(stub).context("parsing the EFI stub as PE32+")?;
    let base = pe.nt_headers().optional_header().image_base();
    let mut end = 0u64;
    for s in pe.section_table().iter() {
        let va = s.virtual_address.get(object::LittleEndian) as u64;
        let size = s.virtual_size.get(object::LittleEndian) as u64;
        end = end.max(va + size);
    }
    if end == 0 {
        bail!("the EFI stub has no sections");
    }
    Ok((base, end.div_ceil(ALIGN) * ALIGN))
}

pub fn build(inputs: &UkiInputs, work: &Path, out: &Path) -> Result<()> {
    let stub = std::fs::read(inputs.stub).with_context(|| format!("reading {}", inputs.stub.display()))?;
    let (base, mut next) = stub_layout(&stub)?;
    std::fs::create_dir_all(work)?;
    let osrel = work.join("osrel");
    let cmdline = work.join("cmdline");
    let uname = work.join("uname");
    std::fs::write(&osrel, inputs.os_release)?;
    std::fs::write(&cmdline, inputs.cmdline)?;
    std::fs::write(&uname, inputs.uname)?;
    let sections: [(&str, &Path); 5] = [
        (".osrel", &osrel),
        (".cmdline", &cmdline),
        (".uname", &uname),
        (".initrd", inputs.initrd),
        (".linux", inputs.kernel),
    ];
    let mut cmd = Command::new("objcopy");
    for (name, file) in sections {
        let size = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
        cmd.arg("--add-section").arg(format!("{name}={}", file.display()));
        cmd.arg("--change-section-vma").arg(format!("{name}={:#x}", base + next));
        next += size.div_ceil(ALIGN) * ALIGN;
    }
    cmd.arg(inputs.stub).arg(out);
    run(&mut cmd).context("assembling the UKI with objcopy")?;
    let mut pe = std::fs::read(out)?;
    pin_timestamp(&mut pe, inputs.epoch)?;
    write_atomic(out, &pe, 0o644).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// objcopy stamps the PE header with the current time (it ignores SOURCE_DATE_EPOCH): set
/// TimeDateStamp to `epoch` and recompute the PE checksum so the image stays consistent.
pub fn pin_timestamp(pe: &mut [u8], epoch: u64) -> Result<()> {
    if pe.len() < 0x40 || &pe[..2] != b"MZ" {
        bail!("not a PE image");
    }
    let nt = u32::from_le_bytes(pe[0x3c..0x40].try_into()?) as usize;
    let checksum_at = nt + 4 + 20 + 64;
    if pe.len() < checksum_at + 4 || &pe[nt..nt + 4] != b"PE\0\0" {
        bail!("PE header out of range");
    }
    pe[nt + 8..nt + 12].copy_from_slice(&(epoch.min(u32::MAX as u64) as u32).to_le_bytes());
    pe[checksum_at..checksum_at + 4].fill(0);
    let checksum = pe_checksum(pe, checksum_at);
    pe[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
    Ok(())
}

/// The PE optional header checksum: 16-bit one's-complement-style sum plus the file length.
fn pe_checksum(pe: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in pe.chunks(2).enumerate() {
        let off = i * 2;
        if off >= checksum_at && off < checksum_at + 4 {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u64;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_sets_the_timestamp_and_a_valid_checksum() {
        let mut stub = std::fs::read(STUB).expect("systemd-boot-efi's stub is installed");
        let nt = u32::from_le_bytes(stub[0x3c..0x40].try_into().unwrap()) as usize;
        pin_timestamp(&mut stub, 1_700_000_000).unwrap();
        assert_eq!(u32::from_le_bytes(stub[nt + 8..nt + 12].try_into().unwrap()), 1_700_000_000);
        let at = nt + 88;
        let stored = u32::from_le_bytes(stub[at..at + 4].try_into().unwrap());
        assert_eq!(stored, pe_checksum(&stub, at));
        let again = {
            let mut s = stub.clone();
            pin_timestamp(&mut s, 1_700_000_000).unwrap();
            s
        };
        assert_eq!(again, stub);
    }

    #[test]
    fn checksum_of_known_bytes() {
        // Words 0x0201 + 0x0403 (checksum field at 4..8 skipped) + length 8.
        let pe = [1u8, 2, 3, 4, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(pe_checksum(&pe, 4), 0x0201 + 0x0403 + 8);
    }
}

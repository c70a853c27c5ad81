//! The EFI system partition: FAT32 made by `mkfs.vfat` and filled by mtools (no mounts, no
//! root), as systemd-repart does. Both honour SOURCE_DATE_EPOCH; the volume id is derived from
//! the build, so the same inputs give the same bytes.

use crate::tools::run;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

pub const LOADER_CONF: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n";

/// A file to put on the ESP: its path inside it (`EFI/Linux/x.efi`) and where to read it from.
pub struct EspFile<'a> {
    pub path: &'a str,
    pub source: &'a Path,
}

/// Writes a FAT32 file system of `size` bytes to `out` holding `files`. Each file's
/// modification time is kept, so sources should have pinned times.
pub fn build(out: &Path, size: u64, volume_id: u32, epoch: u64, files: &[EspFile]) -> Result<()> {
    build_fat(out, size, Some(32), "EFI-SYSTEM", volume_id, epoch, files)
}

/// A FAT file system labelled `label` (FAT12/16/32 by `fat_bits`, or mkfs.vfat's choice for
/// the size), reproducible like the ESP.
pub fn build_fat(
    out: &Path,
    size: u64,
    fat_bits: Option<u8>,
    label: &str,
    volume_id: u32,
    epoch: u64,
    files: &[EspFile],
) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let img = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    img.set_len(size)?;
    drop(img);
    let epoch = epoch.to_string();
    // No -n: mkfs.vfat stamps the label's directory entry with the wall clock; mlabel below
    // honours SOURCE_DATE_EPOCH.
    let mut mkfs = Command::new("mkfs.vfat");
    mkfs.env("SOURCE_DATE_EPOCH", &epoch);
    if let Some(bits) = fat_bits {
        mkfs.arg("-F").arg(bits.to_string());
    }
    run(mkfs.arg("-i").arg(format!("{volume_id:08x}")).arg(out)).with_context(|| format!("formatting {label}"))?;

    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        let mut acc = String::new();
        for part in f.path.split('/').rev().skip(1).collect::<Vec<_>>().into_iter().rev() {
            acc = if acc.is_empty() { part.to_string() } else { format!("{acc}/{part}") };
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
            }
        }
    }
    let mtools = |program: &str| {
        let mut c = Command::new(program);
        c.env("SOURCE_DATE_EPOCH", &epoch).env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(out);
        c
    };
    run(mtools("mlabel").arg(format!("::{label}"))).with_context(|| format!("labelling {label}"))?;
    if !dirs.is_empty() {
        run(mtools("mmd").args(dirs.iter().map(|d| format!("::/{d}")))).context("creating directories")?;
    }
    for f in files {
        // -m: the entry's time is the source's, which callers pin to SOURCE_DATE_EPOCH.
        run(mtools("mcopy").arg("-m").arg(f.source).arg(format!("::/{}", f.path)))
            .with_context(|| format!("copying {} to {label}", f.path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reproducible_fat32_that_fsck_accepts() {
        let t = tempfile::tempdir().unwrap();
        let conf = t.path().join("loader.conf");
        std::fs::write(&conf, LOADER_CONF).unwrap();
        let files = [
            EspFile { path: "loader/loader.conf", source: &conf },
            EspFile { path: "EFI/Linux/cairn-1.efi", source: &conf },
        ];
        let a = t.path().join("a.img");
        let b = t.path().join("b.img");
        build(&a, 64 << 20, 0x1234_5678, 1_700_000_000, &files).unwrap();
        // FAT times have 2-second steps: a wall-clock leak shows across this pause.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        build(&b, 64 << 20, 0x1234_5678, 1_700_000_000, &files).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "ESP bytes differ between identical builds");
        let fsck = Command::new("fsck.vfat").arg("-n").arg(&a).output().expect("fsck.vfat (dosfstools) is installed");
        assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
        let dir = Command::new("mdir").args(["-b", "-i"]).arg(&a).arg("::/EFI/Linux").output().unwrap();
        assert!(String::from_utf8_lossy(&dir.stdout).contains("cairn-1.efi"));
    }
}

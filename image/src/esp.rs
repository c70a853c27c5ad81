//! The EFI system partition: FAT32 written in-process (no mounts, no root), with every
//! timestamp set from SOURCE_DATE_EPOCH and a volume id derived from the build.

use anyhow::{Context, Result};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

pub const LOADER_CONF: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n";

/// A file to put on the ESP: path inside it (`EFI/Linux/x.efi`) and where to read it from.
pub struct EspFile<'a> {
    pub path: &'a str,
    pub source: EspSource<'a>,
}

pub enum EspSource<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// Civil date of a Unix time (UTC), clamped to FAT's 1980..=2107 range.
pub fn fat_datetime(epoch: u64) -> fatfs::DateTime {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    let (year, month, day) = if year < 1980 { (1980, 1, 1) } else { (year.min(2107), month, day) };
    fatfs::DateTime {
        date: fatfs::Date { year, month, day },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Writes a FAT32 file system of `size` bytes to `out` holding `files`.
pub fn build(out: &Path, size: u64, volume_id: u32, epoch: u64, files: &[EspFile]) -> Result<()> {
    let mut img = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    img.set_len(size)?;
    let mut label = [b' '; 11];
    label[..10].copy_from_slice(b"EFI-SYSTEM");
    fatfs::format_volume(
        &mut img,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(label),
    )
    .context("formatting the ESP as FAT32")?;
    img.seek(SeekFrom::Start(0))?;
    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_datetime(epoch))));
    let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new().time_provider(time))
        .context("opening the new ESP")?;
    let root = fs.root_dir();
    for f in files {
        let mut dir = root.clone();
        let (parents, name) = f.path.rsplit_once('/').unwrap_or(("", f.path));
        for part in parents.split('/').filter(|p| !p.is_empty()) {
            dir = match dir.open_dir(part) {
                Ok(d) => d,
                Err(_) => dir.create_dir(part).with_context(|| format!("creating ESP directory {part}"))?,
            };
        }
        let mut file = dir.create_file(name).with_context(|| format!("creating ESP file {}", f.path))?;
        file.truncate()?;
        match f.source {
            EspSource::Bytes(b) => file.write_all(b)?,
            EspSource::File(p) => {
                let mut src = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
                std::io::copy(&mut src, &mut file).with_context(|| format!("writing ESP file {}", f.path))?;
            }
        }
        file.flush()?;
    }
    drop(root);
    fs.unmount().context("closing the ESP")?;
    img.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let d = fat_datetime(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((d.date.year, d.date.month, d.date.day), (2023, 11, 14));
        assert_eq!((d.time.hour, d.time.min, d.time.sec), (22, 13, 20));
        let d = fat_datetime(0);
        assert_eq!((d.date.year, d.date.month, d.date.day), (1980, 1, 1));
    }

    #[test]
    fn writes_readable_fat32() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("esp.img");
        let files = [
            EspFile { path: "loader/loader.conf", source: EspSource::Bytes(LOADER_CONF.as_bytes()) },
            EspFile { path: "EFI/Linux/cairn-1.efi", source: EspSource::Bytes(b"uki") },
        ];
        build(&img, 64 << 20, 0x1234_5678, 1_700_000_000, &files).unwrap();
        let first = std::fs::read(&img).unwrap();
        build(&img, 64 << 20, 0x1234_5678, 1_700_000_000, &files).unwrap();
        assert!(first == std::fs::read(&img).unwrap(), "ESP bytes differ between identical builds");

        let f = std::fs::File::open(&img).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let mut s = String::new();
        use std::io::Read;
        fs.root_dir().open_file("EFI/Linux/cairn-1.efi").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "uki");
    }
}

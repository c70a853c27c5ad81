//! The disk image's formats for where it boots: raw (always made: the others are converted
//! from it), qcow2 (QEMU), a fixed VHD (Azure: its virtual size a whole MiB), a
//! stream-optimized VMDK (VMware, AWS import) and GCE's `disk.tar.gz` (`disk.raw` alone in a
//! gzip'd tar of GNU format). `qemu-img` and `tar` do the work they already do well.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    Vhd,
    Vmdk,
    Gce,
}

impl Format {
    pub const NAMES: &[&str] = &["raw", "qcow2", "vhd", "vmdk", "gce"];

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            "vhd" => Some(Format::Vhd),
            "vmdk" => Some(Format::Vmdk),
            "gce" => Some(Format::Gce),
            _ => None,
        }
    }

    /// The file it is written to in the output directory (and its name in `build.json`).
    pub fn file_name(&self) -> &'static str {
        match self {
            Format::Raw => "disk.raw",
            Format::Qcow2 => "disk.qcow2",
            Format::Vhd => "disk.vhd",
            Format::Vmdk => "disk.vmdk",
            Format::Gce => "disk.tar.gz",
        }
    }

    /// `qemu-img convert` options that make it from the raw disk (`None`: not qemu-img's).
    pub fn qemu_img_args(&self) -> Option<&'static [&'static str]> {
        match self {
            Format::Raw | Format::Gce => None,
            Format::Qcow2 => Some(&["-O", "qcow2", "-c"]),
            // force_size keeps the raw disk's size (a whole MiB) instead of a CHS rounding.
            Format::Vhd => Some(&["-O", "vpc", "-o", "subformat=fixed,force_size=on"]),
            Format::Vmdk => Some(&["-O", "vmdk", "-o", "subformat=streamOptimized"]),
        }
    }
}

/// A comma-separated list (`raw,qcow2,vhd`), as `cairn build --format` takes it; raw is always
/// made, so it is there whether named or not. Sorted, without repeats.
pub fn parse_list(list: &str) -> Result<Vec<Format>> {
    let mut formats = vec![Format::Raw];
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Format::parse(name) {
            Some(f) => formats.push(f),
            None => bail!("unknown disk format {name:?}: one of {}", Format::NAMES.join(", ")),
        }
    }
    formats.sort();
    formats.dedup();
    Ok(formats)
}

/// Writes `format` of the raw disk into `out_dir` (through a temporary name: whole or not at
/// all); `epoch` dates the GCE archive's entry. Returns the file.
pub fn convert(raw: &Path, format: Format, out_dir: &Path, epoch: u64) -> Result<PathBuf> {
    let out = out_dir.join(format.file_name());
    if format == Format::Raw {
        return Ok(raw.to_path_buf());
    }
    let tmp = out_dir.join(format!(".{}.tmp", format.file_name()));
    let _ = std::fs::remove_file(&tmp);
    if let Some(args) = format.qemu_img_args() {
        crate::tools::run(Command::new("qemu-img").args(["convert", "-f", "raw"]).args(args).arg(raw).arg(&tmp))
            .with_context(|| format!("converting the disk to {}", format.file_name()))?;
    } else {
        gce_archive(raw, &tmp, epoch)?;
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
}

/// GCE's image archive: `disk.raw` alone, sparse, in a GNU-format tar, gzip'd with no name or
/// time of its own (the same disk makes the same archive).
fn gce_archive(raw: &Path, out: &Path, epoch: u64) -> Result<()> {
    let dir = raw.parent().context("the raw disk's directory")?;
    let name = raw.file_name().context("the raw disk's name")?;
    if name != "disk.raw" {
        bail!("GCE wants its disk named disk.raw, not {}", raw.display());
    }
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tar = Command::new("tar")
        .args(["--format=oldgnu", "--sparse", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{epoch}"))
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "disk.raw"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let gzip = Command::new("gzip")
        .args(["-n", "-6"])
        .stdin(tar.stdout.take().expect("piped"))
        .stdout(file)
        .status()
        .context("running gzip")?;
    let tar = tar.wait()?;
    if !tar.success() || !gzip.success() {
        bail!("making {}: tar {tar}, gzip {gzip}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_always_hold_raw_once_and_name_unknown_formats() {
        assert_eq!(parse_list("qcow2").unwrap(), [Format::Raw, Format::Qcow2]);
        assert_eq!(
            parse_list("gce, vmdk,raw,vhd,vmdk").unwrap(),
            [Format::Raw, Format::Vhd, Format::Vmdk, Format::Gce]
        );
        assert_eq!(parse_list("").unwrap(), [Format::Raw]);
        let e = parse_list("qcow2,vdi").unwrap_err().to_string();
        assert!(e.contains("\"vdi\"") && e.contains("raw, qcow2, vhd, vmdk, gce"), "{e}");
        assert_eq!(Format::Gce.file_name(), "disk.tar.gz");
    }
}

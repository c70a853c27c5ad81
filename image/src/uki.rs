//! Unified kernel images: the systemd EFI stub with `.osrel`, `.cmdline`, `.uname`, `.initrd`
//! and `.linux` sections added by objcopy, each placed past the stub's last section on a 4 KiB
//! boundary (`.linux` last, as systemd's ukify does).

use crate::tools::run;
use anyhow::{Context, Result, bail};
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
    Ok(())
}

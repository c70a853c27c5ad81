//! The disk in every format `cairn build --format` writes, read by qemu-img and tar (tools
//! nobody here wrote), and the VHD and the VMDK booted to ready in QEMU.

use anyhow::{Context, Result, bail};
use cairn_image::formats::{Format, parse_list};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::*;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn qemu_img(args: &[&str]) -> Result<String> {
    let out = Command::new("qemu-img").args(args).output().context("running qemu-img")?;
    if !out.status.success() {
        bail!("qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn every_format_is_what_qemu_img_and_tar_say_and_the_vhd_and_vmdk_boot() -> Result<()> {
    let formats = parse_list("qcow2,vhd,vmdk,gce")?;
    let img = image_in_formats("formats", "images/default.toml", "1.0.0", &formats)?;
    let raw_size = std::fs::metadata(img.raw())?.len();
    assert_eq!(raw_size % MIB, 0, "the raw disk is a whole MiB");
    let outputs = &img.report["outputs"];

    for (format, qemu_name) in [(Format::Qcow2, "qcow2"), (Format::Vhd, "vpc"), (Format::Vmdk, "vmdk")] {
        let path = img.dir.join(format.file_name());
        let path_arg = path.display().to_string();
        // A fixed VHD has its footer at the end and nothing at the start: qemu-img reads it as
        // raw unless told (a VHD reader looks at the end).
        let mut args = vec!["info", "--output=json"];
        if format == Format::Vhd {
            args.extend(["-f", "vpc"]);
        }
        args.push(&path_arg);
        let info: serde_json::Value = serde_json::from_str(&qemu_img(&args)?)?;
        assert_eq!(info["format"], qemu_name, "{}: {info}", format.file_name());
        assert_eq!(info["virtual-size"].as_u64(), Some(raw_size), "{}: {info}", format.file_name());
        if format != Format::Vhd {
            // (qemu-img has no check for VHD.)
            qemu_img(&["check", &path_arg])?;
        }
        let listed = &outputs[format.file_name()];
        assert_eq!(listed["size"].as_u64(), Some(std::fs::metadata(&path)?.len()), "{listed}");
        assert_eq!(listed["sha256"].as_str().map(str::len), Some(64), "{listed}");
    }
    let vhd = std::fs::metadata(img.dir.join("disk.vhd"))?.len();
    assert_eq!(vhd, raw_size + 512, "a fixed VHD is the disk and its 512-byte footer");
    let vmdk = std::fs::read(img.dir.join("disk.vmdk"))?;
    assert!(
        String::from_utf8_lossy(&vmdk[..4096]).contains("createType=\"streamOptimized\""),
        "a stream-optimized VMDK"
    );

    // GCE: disk.raw alone, in a GNU tar, gzip'd.
    let gce = img.dir.join(Format::Gce.file_name());
    let list = Command::new("tar").arg("-tvzf").arg(&gce).output()?;
    let list = String::from_utf8(list.stdout)?;
    let entries: Vec<&str> = list.lines().collect();
    assert_eq!(entries.len(), 1, "{list}");
    assert!(entries[0].ends_with(" disk.raw") && entries[0].contains(&raw_size.to_string()), "{list}");
    let header = Command::new("sh").arg("-c").arg(format!("gzip -dc {} | head -c 512", gce.display())).output()?;
    assert_eq!(&header.stdout[257..265], b"ustar  \0", "an old GNU tar header");
    let listed = &outputs["disk.tar.gz"];
    assert_eq!(listed["size"].as_u64(), Some(std::fs::metadata(&gce)?.len()), "{listed}");

    // The VHD and the VMDK boot to ready, side by side (each under a throwaway overlay).
    let mut vms = Vec::new();
    for format in [Format::Vhd, Format::Vmdk] {
        vms.push((format, Vm::start(&VmConfig::uefi(img.dir.join(format.file_name())))?));
    }
    for (format, vm) in &mut vms {
        vm.wait_for_line("cairn: ready", 0, Duration::from_secs(300))
            .with_context(|| format!("booting {}", format.file_name()))?;
    }
    Ok(())
}

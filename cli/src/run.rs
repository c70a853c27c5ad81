//! `cairn run`: boots an image in QEMU with the console on this terminal, optionally handing it
//! a `#cloud-config` through fw_cfg or a config-2 drive.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct RunOptions {
    pub mem: u32,
    pub cpus: u32,
    pub ssh_port: Option<u16>,
    /// Host loopback ports forwarded to the guest's (published container ports).
    pub forwards: Vec<cairn_qemu::Forward>,
    pub disk_bus: cairn_qemu::DiskBus,
    pub nic: cairn_qemu::Nic,
    /// More disks (seeds, config drives, data).
    pub attach: Vec<PathBuf>,
    /// DVDs (provisioning media).
    pub cdrom: Vec<PathBuf>,
    pub snapshot: bool,
    pub exit_on_ready: bool,
    pub timeout: Duration,
}

/// `--config FILE [--config-drive]`.
pub struct UserData {
    pub file: PathBuf,
    pub drive: bool,
}

/// Shows what the host will think of the user data; it is handed over either way (the host
/// refuses a bad document itself, which is worth being able to try).
fn check_user_data(file: &Path) -> Result<()> {
    let data = std::fs::read(file).with_context(|| format!("--config {}", file.display()))?;
    let parsed = cairn_config::parse(&data);
    if parsed.is_refused() {
        eprintln!("cairn run: {} will be refused by the host:", file.display());
    }
    for d in parsed.into_diagnostics() {
        eprintln!("{}:{d}", file.display());
    }
    Ok(())
}

pub fn run_vm(image: PathBuf, o: RunOptions, user_data: Option<UserData>) -> Result<()> {
    if !image.exists() {
        bail!("no image at {} (build one with `cairn build`)", image.display());
    }
    let mut cfg = cairn_qemu::VmConfig::uefi(&image);
    cfg.persistent = !o.snapshot;
    cfg.mem_mib = o.mem;
    cfg.cpus = o.cpus;
    cfg.ssh_port = o.ssh_port;
    cfg.forwards = o.forwards.clone();
    cfg.disk_bus = o.disk_bus;
    cfg.nic = o.nic;
    for file in &o.attach {
        if !file.exists() {
            bail!("--attach {}: no such file", file.display());
        }
        cfg.extra_disks.push(file.clone());
    }
    for file in &o.cdrom {
        if !file.exists() {
            bail!("--cdrom {}: no such file", file.display());
        }
        cfg.cdroms.push(file.clone());
    }
    cfg.echo_console = true;
    // Lives until QEMU exits (it reads the drive while the guest runs).
    let scratch = tempfile::tempdir()?;
    if let Some(UserData { file, drive }) = user_data {
        check_user_data(&file)?;
        if drive {
            let img = scratch.path().join("config-2.img");
            cairn_image::configdrive::build(&file, &img)?;
            cfg.extra_disks.push(img);
        } else {
            cfg.fw_cfg.push((cairn_config::local::FW_CFG_NAME.to_string(), file));
        }
    }
    let mut vm = cairn_qemu::Vm::start(&cfg)?;
    eprintln!("cairn run: {} with {} acceleration; Ctrl-C powers it off", image.display(), vm.accel().qemu_name());
    cairn_qemu::attended::run(&mut vm, o.exit_on_ready, o.timeout)
}

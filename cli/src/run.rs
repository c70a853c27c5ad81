//! `cairn run`: boots an image in QEMU with the console on this terminal, optionally handing it
//! a `#cloud-config` through fw_cfg or a config-2 drive.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How `cairn run` boots the image (its command-line options).
#[derive(clap::Args, Debug)]
pub struct RunOptions {
    /// Guest memory: MiB, or with a unit (512M, 2G).
    #[arg(long, default_value = "1G", value_parser = crate::parse_mem_mib)]
    pub mem: u32,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Forward 127.0.0.1:N on this host to the guest's ssh port.
    #[arg(long)]
    pub ssh_port: Option<u16>,
    /// Forward 127.0.0.1:HOST on this host to the guest's port GUEST (a published container
    /// port); `/udp` for UDP. Repeatable.
    #[arg(long = "forward", value_name = "HOST:GUEST[/udp]")]
    pub forwards: Vec<cairn_qemu::Forward>,
    /// The boot disk's bus: virtio (virtio-blk), scsi (virtio-scsi) or nvme, as clouds' VMs
    /// have them, or ahci (SATA; needs a kernel with the ahci driver).
    #[arg(long, default_value = "virtio", value_parser = crate::parse_disk_bus)]
    pub disk_bus: cairn_qemu::DiskBus,
    /// The network card: virtio (virtio-net), e1000e or e1000.
    #[arg(long, default_value = "virtio", value_parser = crate::parse_nic)]
    pub nic: cairn_qemu::Nic,
    /// Attach FILE, read-only and raw, as another virtio disk (a NoCloud seed from
    /// `cloud-localds`, a config drive). Repeatable.
    #[arg(long = "attach", value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Insert FILE (an ISO 9660 or UDF image) as a DVD in a SATA drive: provisioning
    /// media such as Azure's `ovf-env.xml`. Repeatable.
    #[arg(long = "cdrom", value_name = "FILE")]
    pub cdrom: Vec<PathBuf>,
    /// Keep the image unchanged: the VM writes to a throwaway overlay.
    #[arg(long)]
    pub snapshot: bool,
    /// Power off once the host reports ready (for scripts and the smoke test).
    #[arg(long)]
    pub exit_on_ready: bool,
    /// Give up if the host is not ready within this many seconds (with --exit-on-ready).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
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
    cairn_qemu::attended::run(&mut vm, o.exit_on_ready, Duration::from_secs(o.timeout))
}

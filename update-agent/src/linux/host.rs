//! The host as the agent sees it: which release and slot are running (os-release and what
//! stage 1 recorded in /run/cairn/boot.env), the block devices of the other slot and the ESP
//! (from the GPT of the disk the running `/usr` is on), the ESP mounted only while an entry
//! is written, and cairn-init for health and reboots.

use super::initctl;
use crate::ports::{Esp, EspError, Host, HostError, Running, TargetDevice};
use crate::slots;
use cairn_release::gpt::{self, Guid};
use cairn_release::layout::{BOOT_ENV, OS_RELEASE, env_value};
use nix::mount::{MntFlags, MsFlags};
use std::path::{Path, PathBuf};

const ESP_MOUNT: &str = "/run/cairn/esp";

/// The running release, from os-release and what stage 1 recorded.
pub fn detect_running() -> Result<Running, HostError> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(HostError::io(format!("reading {p}")));
    let (os, boot) = (read(OS_RELEASE)?, read(BOOT_ENV)?);
    let need = |text: &str, file: &str, key: &str| {
        env_value(text, key).ok_or_else(|| HostError::Layout(format!("{file} has no {key}=")))
    };
    let slot_letter = need(&boot, BOOT_ENV, "SLOT")?;
    let slot = cairn_release::gpt::Slot::from_label(&format!("USR-{}", slot_letter.to_uppercase()))
        .ok_or_else(|| HostError::Layout(format!("{BOOT_ENV}: SLOT={slot_letter} is not a or b")))?;
    Ok(Running {
        os_id: need(&os, OS_RELEASE, "ID")?,
        version: need(&os, OS_RELEASE, "VERSION_ID")?,
        slot,
        usr_partition: need(&boot, BOOT_ENV, "USR_PARTITION")?.into(),
        usr_device: env_value(&boot, "USR_DEVICE").map(PathBuf::from),
    })
}

/// The whole disk holding partition `part` (`/dev/vda2` -> `/dev/vda`), by sysfs.
fn disk_of(part: &Path) -> Result<PathBuf, HostError> {
    let name = part.file_name().ok_or_else(|| HostError::Layout(format!("{} is not a device", part.display())))?;
    let sys = Path::new("/sys/class/block").join(name);
    let real = std::fs::canonicalize(&sys).map_err(HostError::io(sys.display().to_string()))?;
    let disk = (real.parent().and_then(Path::file_name))
        .ok_or_else(|| HostError::Layout(format!("{}: no parent disk", real.display())))?;
    Ok(Path::new("/dev").join(disk))
}

/// The device of partition `number` of `disk` (`/dev/vda`, 3 -> `/dev/vda3`; nvme0n1p3 too).
fn partition_device(disk: &Path, number: u32) -> Result<PathBuf, HostError> {
    let name = disk.file_name().ok_or_else(|| HostError::Layout(format!("{} is not a device", disk.display())))?;
    let sys = Path::new("/sys/class/block").join(name);
    let real = std::fs::canonicalize(&sys).map_err(HostError::io(sys.display().to_string()))?;
    for e in std::fs::read_dir(&real).map_err(HostError::io(real.display().to_string()))?.flatten() {
        let n = std::fs::read_to_string(e.path().join("partition")).unwrap_or_default();
        if n.trim() == number.to_string() {
            return Ok(Path::new("/dev").join(e.file_name()));
        }
    }
    Err(HostError::Layout(format!("{} has no partition {number}", disk.display())))
}

pub struct LinuxHost {
    pub running: Running,
    pub control_socket: PathBuf,
    disk: PathBuf,
    esp: LinuxEsp,
}

impl LinuxHost {
    pub fn new(running: Running) -> Result<LinuxHost, HostError> {
        let disk = disk_of(&running.usr_partition)?;
        let mut f = std::fs::File::open(&disk).map_err(HostError::io(format!("opening {}", disk.display())))?;
        let table = gptman::GPT::find_from(&mut f)
            .map_err(|e| HostError::Layout(format!("reading the GPT of {}: {e}", disk.display())))?;
        let (number, _) = table
            .iter()
            .find(|(_, e)| e.is_used() && Guid::from_gpt_bytes(e.partition_type_guid) == gpt::TYPE_ESP)
            .ok_or_else(|| HostError::Layout(format!("{} has no EFI system partition", disk.display())))?;
        let esp = LinuxEsp { device: partition_device(&disk, number)?, mount_point: PathBuf::from(ESP_MOUNT) };
        Ok(LinuxHost { running, control_socket: PathBuf::from(cairn_release::control::SOCKET), disk, esp })
    }

    pub fn target(&self) -> Result<TargetDevice, HostError> {
        let mut f =
            std::fs::File::open(&self.disk).map_err(HostError::io(format!("opening {}", self.disk.display())))?;
        let slot = self.running.slot.other();
        let p = slots::find(&mut f, slot).map_err(|e| HostError::Layout(e.to_string()))?;
        let partition = partition_device(&self.disk, p.number)?;
        Ok(TargetDevice { disk: self.disk.clone(), partition, offset: 0, size: p.size, slot })
    }
}

impl Host for LinuxHost {
    fn running(&self) -> &Running {
        &self.running
    }
    fn healthy(&self) -> Result<bool, HostError> {
        initctl::healthy(&self.control_socket)
    }
    fn reboot(&self) -> Result<(), HostError> {
        initctl::reboot(&self.control_socket)
    }
    fn target(&self) -> Result<TargetDevice, HostError> {
        LinuxHost::target(self)
    }
    fn esp(&self) -> &dyn Esp {
        &self.esp
    }
}

/// The ESP, mounted at /run/cairn/esp for one operation and unmounted again, so a crash or a
/// power cut outside those moments finds it clean.
pub struct LinuxEsp {
    pub device: PathBuf,
    pub mount_point: PathBuf,
}

impl Esp for LinuxEsp {
    fn with_entries(&self, f: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> Result<(), EspError> {
        let mp = &self.mount_point;
        let entries = mp.join("EFI/Linux");
        let io = |source| EspError::Io { dir: entries.display().to_string(), source };
        std::fs::create_dir_all(mp).map_err(io)?;
        // Left mounted by an agent that died: start from a fresh mount.
        let _ = nix::mount::umount2(mp, MntFlags::MNT_DETACH);
        nix::mount::mount(
            Some(&self.device),
            mp,
            Some("vfat"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("umask=0077"),
        )
        .map_err(|source| EspError::Mount {
            what: format!("mounting the ESP {} at {}", self.device.display(), mp.display()),
            source,
        })?;
        let result = f(&entries);
        let unmounted = nix::mount::umount(mp);
        result.map_err(io)?;
        unmounted.map_err(|source| EspError::Mount { what: "unmounting the ESP".into(), source })
    }
}

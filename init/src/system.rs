//! Stage 2's system set-up, every boot: mounts, clock sanity, hostname, machine-id, loopback,
//! kernel modules from modules-load.d.

use crate::say;
use nix::mount::{MsFlags, mount};
use std::path::Path;

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    match mount(Some(src), target, Some(fstype), flags, Some(data)) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mounting {fstype} on {target}: {e}")),
    }
}

pub fn mount_all() -> Result<(), String> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mnt("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777")?;
    mnt("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "mode=0620,ptmxmode=0666")?;
    mnt("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777")?;
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_nodev | MsFlags::MS_NOEXEC, "nsdelegate")?;
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    Ok(())
}

/// Kernel settings every host runs with, set before any user's process exists: links and
/// FIFOs in world-writable sticky directories (`/tmp`) are followed or opened only by their
/// owner, and hardlinks only to files the linker may write, so a root process is not turned
/// by a planted name (what systemd's `50-default.conf` sets).
pub const SYSCTLS: &[(&str, &str)] = &[
    ("fs/protected_symlinks", "1"),
    ("fs/protected_hardlinks", "1"),
    ("fs/protected_fifos", "1"),
    ("fs/protected_regular", "2"),
];

pub fn harden() {
    for (key, value) in SYSCTLS {
        if let Err(e) = std::fs::write(Path::new("/proc/sys").join(key), value) {
            say!("sysctl {}: {e}", key.replace('/', "."));
        }
    }
}

/// A clock before the image was built is certainly wrong (no RTC, dead battery): move it to
/// the build time, which every file of `/usr` carries.
pub fn clock_sanity() {
    let Ok(built) = std::fs::metadata("/usr/lib/os-release").and_then(|m| m.modified()) else { return };
    if std::time::SystemTime::now() < built {
        let secs = built.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let ts = nix::sys::time::TimeSpec::new(secs as i64, 0);
        if nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).is_ok() {
            say!("clock was before the image's build time; set to {secs}");
        }
    }
}

pub fn set_hostname() -> String {
    let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let name = if name.is_empty() { "cairn".to_string() } else { name };
    if let Err(e) = nix::unistd::sethostname(&name) {
        say!("setting hostname {name}: {e}");
    }
    name
}

/// `/etc/machine-id`, generated once from the kernel's random source and kept.
pub fn ensure_machine_id() -> Result<String, String> {
    let path = Path::new("/etc/machine-id");
    if let Ok(id) = std::fs::read_to_string(path) {
        let id = id.trim();
        if id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").map_err(|e| e.to_string())?, &mut bytes)
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    // RFC 4122 version 4, as systemd does.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let id = hex::encode(bytes);
    cairn_release::durable::write_atomic(path, format!("{id}\n").as_bytes(), 0o444)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(id)
}

#[allow(unsafe_code)] // SIOCGIFFLAGS/SIOCSIFFLAGS with a struct ifreq.
pub fn loopback_up() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    // SAFETY: ifreq is plain data; the name is NUL-terminated; the ioctls read/write it.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The buses whose devices get their drivers at boot: disks and NICs on every hypervisor and
/// cloud (PCI, virtio, Hyper-V's VMBus, Xen, SCSI). CPU features and ACPI devices are left to
/// `modules-load.d` (the power button is loaded by name), which keeps boot short.
const COLDPLUG_BUSES: &[&str] = &["pci", "virtio", "vmbus", "xen", "scsi"];

/// Loads the drivers of the devices present from `/usr`'s `modules.alias`, again while
/// loading one makes new devices (a bus driver), at most a few rounds.
pub fn load_device_drivers() {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut coldplug =
        match crate::modules::Coldplug::new(&Path::new("/usr/lib/modules").join(&release), Some(COLDPLUG_BUSES)) {
            Ok(c) => c,
            Err(e) => {
                say!("device drivers: {e}");
                return;
            }
        };
    let mut all = Vec::new();
    for _ in 0..4 {
        let (loaded, errors) = coldplug.step();
        for e in errors {
            say!("device drivers: {e}");
        }
        if loaded.is_empty() {
            break;
        }
        all.extend(loaded);
    }
    if !all.is_empty() {
        say!("drivers for the devices present: {}", all.join(" "));
    }
}

/// Loads the modules named in `modules-load.d` files (image, then user).
pub fn load_listed_modules() {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let dir = Path::new("/usr/lib/modules").join(&release);
    let mut names = Vec::new();
    for d in ["/usr/lib/modules-load.d", "/etc/modules-load.d"] {
        let Ok(rd) = std::fs::read_dir(d) else { continue };
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "conf")) {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            names.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
                    .map(str::to_string),
            );
        }
    }
    for n in names {
        if let Err(e) = crate::modules::load_by_name(&dir, &[n.as_str()]) {
            say!("module {n}: {e}");
        }
    }
}

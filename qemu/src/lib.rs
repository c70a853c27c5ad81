//! The QEMU harness shared by `cairn run`, the VM tests and the benchmarks: start a VM from an
//! image (through a copy-on-write overlay, so the image is never modified), capture its serial
//! console, wait for a console line with a deadline, power it off, kill it, and always clean up.

pub mod accel;
pub mod attended;
mod console;
mod qmp;

pub use accel::Accel;
pub use console::{Console, ConsoleWriter};

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const QEMU: &str = "qemu-system-x86_64";

/// How the VM boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// UEFI firmware (OVMF) from a disk image.
    Uefi { image: PathBuf },
    /// A kernel and initramfs loaded by QEMU itself (no firmware, no disk): the boot-time floor.
    Kernel { kernel: PathBuf, initrd: PathBuf, append: String },
}

/// A port of the host's loopback (127.0.0.1: never another address) forwarded to the guest's
/// through QEMU's user network: `HOST:GUEST`, `HOST:GUEST/udp` (`cairn run --forward`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    pub host: u16,
    pub guest: u16,
}

impl Forward {
    pub fn tcp(host: u16, guest: u16) -> Forward {
        Forward { udp: false, host, guest }
    }

    /// QEMU's `hostfwd=` value.
    fn hostfwd(&self) -> String {
        let proto = if self.udp { "udp" } else { "tcp" };
        format!("{proto}:127.0.0.1:{}-:{}", self.host, self.guest)
    }
}

impl std::str::FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Forward, String> {
        let (ports, udp) = match s.rsplit_once('/') {
            Some((p, "udp")) => (p, true),
            Some((p, "tcp")) => (p, false),
            Some((_, other)) => return Err(format!("{s:?}: {other:?} is not tcp or udp")),
            None => (s, false),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0);
        match ports.split_once(':').map(|(h, g)| (port(h), port(g))) {
            Some((Some(host), Some(guest))) => Ok(Forward { udp, host, guest }),
            _ => Err(format!("{s:?}: HOST:GUEST ports (1-65535), with /udp for UDP")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub boot: Boot,
    /// Write to the image itself instead of an overlay (`cairn run` without `--snapshot`).
    pub persistent: bool,
    pub mem_mib: u32,
    pub cpus: u32,
    /// Forward this host loopback port to the guest's port 22.
    pub ssh_port: Option<u16>,
    /// Ports of the host's loopback forwarded to the guest's.
    pub forwards: Vec<Forward>,
    /// More options of the user-mode network (`net=...`, `guestfwd=...`).
    pub net_options: Vec<String>,
    /// Copy the console to our stdout as it arrives (also when `CAIRN_ECHO_CONSOLE` is set: a
    /// debugging aid for tests that fail in a way their console tail does not explain).
    pub echo_console: bool,
    /// Let QEMU exit instead of resetting when the guest reboots.
    pub no_reboot: bool,
    pub accel: Option<Accel>,
    /// Size of the overlay disk the guest sees (larger than the image: the disk grew).
    pub disk_size: Option<u64>,
    /// More disks (raw, read-only), e.g. an archive handed to the guest as /dev/vdb.
    pub extra_disks: Vec<PathBuf>,
    /// DVDs (ISO 9660 or UDF images) in SATA drives on q35's AHCI controller, as clouds hand
    /// provisioning media (Azure's `ovf-env.xml`) to a VM.
    pub cdroms: Vec<PathBuf>,
    /// fw_cfg entries the guest reads under /sys/firmware/qemu_fw_cfg: (name, file).
    pub fw_cfg: Vec<(String, PathBuf)>,
    pub extra_args: Vec<String>,
    /// The bus the boot disk is on (clouds' VMs have NVMe or SCSI disks).
    pub disk_bus: DiskBus,
    pub nic: Nic,
}

/// The guest's network card.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nic {
    #[default]
    Virtio,
    /// Intel's 82574 (e1000e), what VMware and many hypervisors offer by default.
    E1000e,
    /// Intel's 82540 (e1000), older hypervisors' default.
    E1000,
}

impl Nic {
    pub const NAMES: &[&str] = &["virtio", "e1000e", "e1000"];

    pub fn parse(s: &str) -> Option<Nic> {
        match s {
            "virtio" => Some(Nic::Virtio),
            "e1000e" => Some(Nic::E1000e),
            "e1000" => Some(Nic::E1000),
            _ => None,
        }
    }

    /// QEMU's device model.
    pub fn device(&self) -> &'static str {
        match self {
            Nic::Virtio => "virtio-net-pci",
            Nic::E1000e => "e1000e",
            Nic::E1000 => "e1000",
        }
    }
}

/// The controller of the boot disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskBus {
    #[default]
    Virtio,
    /// virtio-scsi (GCE's and many clouds' SCSI disks).
    Scsi,
    /// NVMe (AWS Nitro, Azure's newer sizes, GCE's NVMe).
    Nvme,
    /// SATA on the q35 machine's own AHCI controller (VMware, VirtualBox, bare metal).
    Ahci,
}

impl DiskBus {
    pub const NAMES: &[&str] = &["virtio", "scsi", "nvme", "ahci"];

    pub fn parse(s: &str) -> Option<DiskBus> {
        match s {
            "virtio" => Some(DiskBus::Virtio),
            "scsi" => Some(DiskBus::Scsi),
            "nvme" => Some(DiskBus::Nvme),
            "ahci" => Some(DiskBus::Ahci),
            _ => None,
        }
    }

    /// QEMU's arguments that attach `file` (of `format`) as the boot disk on this bus.
    pub fn qemu_args(&self, format: &str, file: &Path) -> Vec<String> {
        let drive = |iface: &str| format!("if={iface},format={format},file={},id=disk0", file.display());
        match self {
            DiskBus::Virtio => vec!["-drive".into(), drive("virtio")],
            DiskBus::Scsi => vec![
                "-device".into(),
                "virtio-scsi-pci,id=scsi0".into(),
                "-drive".into(),
                drive("none"),
                "-device".into(),
                "scsi-hd,drive=disk0,bus=scsi0.0".into(),
            ],
            DiskBus::Nvme => {
                vec!["-drive".into(), drive("none"), "-device".into(), "nvme,drive=disk0,serial=cairn0".into()]
            }
            DiskBus::Ahci => {
                vec!["-drive".into(), drive("none"), "-device".into(), "ide-hd,drive=disk0,bus=ide.0".into()]
            }
        }
    }
}

impl VmConfig {
    pub fn uefi(image: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            boot: Boot::Uefi { image: image.into() },
            persistent: false,
            mem_mib: 1024,
            cpus: 1,
            ssh_port: None,
            forwards: Vec::new(),
            net_options: Vec::new(),
            echo_console: false,
            no_reboot: false,
            accel: None,
            disk_size: None,
            extra_disks: Vec::new(),
            cdroms: Vec::new(),
            fw_cfg: Vec::new(),
            extra_args: Vec::new(),
            disk_bus: DiskBus::Virtio,
            nic: Nic::Virtio,
        }
    }
}

/// A running VM. Dropping it kills QEMU and removes its overlay, vars store and sockets.
pub struct Vm {
    child: Option<Child>,
    dir: tempfile::TempDir,
    console: Arc<Console>,
    started: Instant,
    accel: Accel,
    overlay: Option<PathBuf>,
    commands: u32,
}

/// What a console command printed (stdout and stderr together) and its exit status.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub output: String,
    pub status: i32,
}

/// The lines of `console` between a command's `begin` and `end` markers. Init's announcements
/// (`cairn: network up at ...`), which it writes to the same console whenever they happen, are
/// left out: they are not the command's.
fn command_output(console: &str, begin: &str, end: &str) -> String {
    console
        .split('\n')
        .skip_while(|l| !l.trim_end_matches('\r').ends_with(begin))
        .skip(1)
        .take_while(|l| !l.contains(end))
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.starts_with("cairn: "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Missing tools are named with the package that provides them.
pub fn check_prerequisites(uefi: bool) -> Result<()> {
    let mut missing = Vec::new();
    if which(QEMU).is_none() {
        missing.push(("qemu-system-x86_64", "qemu-system-x86"));
    }
    if which("qemu-img").is_none() {
        missing.push(("qemu-img", "qemu-utils"));
    }
    if uefi && (!Path::new(OVMF_CODE).exists() || !Path::new(OVMF_VARS).exists()) {
        missing.push((OVMF_CODE, "ovmf"));
    }
    if !missing.is_empty() {
        let names: Vec<_> = missing.iter().map(|m| m.0).collect();
        let pkgs: Vec<_> = missing.iter().map(|m| m.1).collect();
        bail!("missing {}; install with: sudo apt-get install -y {}", names.join(", "), pkgs.join(" "));
    }
    Ok(())
}

fn which(p: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(p)).find(|p| p.is_file())
}

/// The disk's format for QEMU, by its magic: qcow2 and VMDK at the start, a VHD's footer
/// (`conectix`) in its last 512 bytes; anything else is raw.
fn image_format(path: &Path) -> Result<&'static str> {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 8];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening image {}", path.display()))?;
    let n = f.read(&mut magic)?;
    if n >= 4 && &magic[..4] == b"QFI\xfb" {
        return Ok("qcow2");
    }
    if n >= 4 && &magic[..4] == b"KDMV" {
        return Ok("vmdk");
    }
    if f.metadata()?.len() >= 512 {
        f.seek(SeekFrom::End(-512))?;
        if f.read(&mut magic)? == 8 && &magic == b"conectix" {
            return Ok("vpc");
        }
    }
    Ok("raw")
}

impl Vm {
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        check_prerequisites(matches!(cfg.boot, Boot::Uefi { .. }))?;
        let dir = tempfile::Builder::new().prefix("cairn-vm-").tempdir()?;
        let accel = cfg.accel.unwrap_or_else(accel::detect);
        let mut cmd = Command::new(QEMU);
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35"]);
        cmd.args(["-accel", accel.qemu_name(), "-cpu", &accel.cpu_model()]);
        cmd.arg("-m").arg(cfg.mem_mib.to_string());
        cmd.arg("-smp").arg(cfg.cpus.to_string());
        let console_sock = dir.path().join("console.sock");
        cmd.arg("-chardev").arg(format!("socket,id=con0,path={},server=on,wait=on", console_sock.display()));
        cmd.args(["-serial", "chardev:con0"]);
        let qmp_sock = dir.path().join("qmp.sock");
        cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp_sock.display()));
        cmd.args(["-device", "virtio-rng-pci"]);
        let mut netdev = "user,id=net0".to_string();
        if let Some(p) = cfg.ssh_port {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
        }
        for f in &cfg.forwards {
            netdev.push_str(&format!(",hostfwd={}", f.hostfwd()));
        }
        for option in &cfg.net_options {
            netdev.push(',');
            netdev.push_str(option);
        }
        // No option ROM (iPXE): nothing boots from the network, and loading it cost about 1.5 s
        // of each boot under TCG.
        cmd.arg("-netdev").arg(netdev).arg("-device").arg(format!("{},netdev=net0,romfile=", cfg.nic.device()));
        if cfg.no_reboot {
            cmd.arg("-no-reboot");
        }
        let mut overlay = None;
        match &cfg.boot {
            Boot::Uefi { image } => {
                let vars = dir.path().join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars).context("copying the OVMF vars store")?;
                cmd.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"));
                cmd.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
                let image = std::fs::canonicalize(image).with_context(|| format!("image {}", image.display()))?;
                let fmt = image_format(&image)?;
                let disk = if cfg.persistent {
                    (image.clone(), fmt)
                } else {
                    let o = dir.path().join("overlay.qcow2");
                    let mut create = Command::new("qemu-img");
                    create.args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"]).arg(&image).arg(&o);
                    if let Some(size) = cfg.disk_size {
                        create.arg(size.to_string());
                    }
                    let out = create.output().context("running qemu-img create")?;
                    if !out.status.success() {
                        bail!("qemu-img create failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    overlay = Some(o.clone());
                    (o, "qcow2")
                };
                cmd.args(cfg.disk_bus.qemu_args(disk.1, &disk.0));
            }
            Boot::Kernel { kernel, initrd, append } => {
                cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).arg("-append").arg(append);
            }
        }
        for (i, d) in cfg.extra_disks.iter().enumerate() {
            cmd.arg("-drive").arg(format!("if=virtio,format=raw,readonly=on,file={},id=extra{i}", d.display()));
        }
        // Ports 2 and up: the boot disk may be on port 0 (`DiskBus::Ahci`).
        for (i, d) in cfg.cdroms.iter().enumerate() {
            cmd.arg("-drive").arg(format!("if=none,media=cdrom,readonly=on,file={},id=cdrom{i}", d.display()));
            cmd.arg("-device").arg(format!("ide-cd,drive=cdrom{i},bus=ide.{}", i + 2));
        }
        for (name, file) in &cfg.fw_cfg {
            cmd.arg("-fw_cfg").arg(format!("name={name},file={}", file.display()));
        }
        cmd.args(&cfg.extra_args);
        let log = std::fs::File::create(dir.path().join("qemu.log"))?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // Own process group: a Ctrl-C on the terminal reaches us, and we power the guest off.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[allow(unsafe_code)]
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, sigprocmask).
        unsafe {
            cmd.pre_exec(|| {
                // QEMU dies with the thread that started it: a crashed test or a killed
                // `cairn run` never leaves a VM behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Callers may block signals to handle them in a thread; QEMU starts clean.
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;

        let console_log = dir.path().join("console.log");
        let console = match console::connect(&console_sock, &console_log, echo_console(cfg), &mut child) {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
                return Err(e.context(format!("QEMU did not start: {}", log.trim())));
            }
        };
        Ok(Vm { child: Some(child), dir, console, started, accel, overlay, commands: 0 })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    /// The overlay holding this VM's writes (kept until the Vm is dropped).
    pub fn overlay(&self) -> Option<&Path> {
        self.overlay.as_deref()
    }

    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits for a console line containing `needle`, printed after byte `from` of the console.
    /// Fails at the deadline, or at once when QEMU exits, with the console's tail.
    pub fn wait_for_line(&mut self, needle: &str, from: usize, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[needle], from, timeout).map(|(_, line)| line)
    }

    /// Like [`Vm::wait_for_line`] for several needles; returns which one matched first.
    pub fn wait_for_any(&mut self, needles: &[&str], from: usize, timeout: Duration) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.console.find_line(needles, from) {
                return Ok(found);
            }
            if let Some(status) = self.try_exit_status()? {
                // The last bytes may still be in flight from the reader thread.
                self.console.wait_closed(Duration::from_secs(2));
                if let Some(found) = self.console.find_line(needles, from) {
                    return Ok(found);
                }
                bail!(
                    "QEMU exited ({status}) before the console showed {needles:?}; console tail:\n{}",
                    self.console.tail(40)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no console line with {needles:?} within {:.0?} (accel {}); console tail:\n{}",
                    timeout,
                    self.accel.qemu_name(),
                    self.console.tail(40)
                );
            }
            self.console.wait_change(deadline.min(now + Duration::from_millis(200)) - now);
        }
    }

    /// A handle for writing to the console from another thread.
    pub fn console_writer(&self) -> ConsoleWriter {
        self.console.writer()
    }

    /// Writes bytes to the serial console.
    pub fn send(&self, bytes: &[u8]) -> Result<()> {
        self.console.send(bytes)
    }

    /// Runs a shell command on the serial console (images with `cairn.autologin`) and returns
    /// its combined output and exit status. Fails at the deadline with the console's tail.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput> {
        self.commands += 1;
        let n = self.commands;
        // The markers are split with '' so the terminal's echo of the typed line never matches.
        let (begin, end) = (format!("__CAIRN_{n}_BEGIN__"), format!("__CAIRN_{n}_END__"));
        let line = format!("echo __CAIRN_{n}_BEG''IN__; ( {command} ) </dev/null 2>&1; echo __CAIRN_{n}_E''ND__ $?\n");
        let from = self.console.mark();
        self.send(line.as_bytes())?;
        let end_line = self.wait_for_line(&end, from, timeout).with_context(|| format!("running `{command}`"))?;
        let status: i32 = end_line
            .split(&end)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no exit status in {end_line:?}"))?;
        let output = command_output(&self.console.text_from(from), &begin, &end);
        Ok(CommandOutput { output, status })
    }

    /// [`Vm::run`], failing unless the command exits 0; returns its output.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let out = self.run(command, timeout)?;
        if out.status != 0 {
            bail!("`{command}` exited {}:\n{}", out.status, out.output);
        }
        Ok(out.output)
    }

    /// Asks the guest to power off (ACPI power button).
    pub fn powerdown(&self) -> Result<()> {
        qmp::execute(&self.dir.path().join("qmp.sock"), "system_powerdown")
    }

    /// Stops QEMU at once without the guest's involvement.
    pub fn quit(&self) -> Result<()> {
        qmp::execute(&self.dir.path().join("qmp.sock"), "quit")
    }

    fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("VM already reaped"),
        }
    }

    /// Waits for QEMU to exit on its own (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status()? {
                self.console.wait_closed(Duration::from_secs(2));
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("QEMU still running {timeout:.0?} after; console tail:\n{}", self.console.tail(20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Powers the guest off, waiting up to `timeout`; kills QEMU if it does not stop by then.
    /// Returns whether the guest powered off by itself.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<bool> {
        if self.try_exit_status()?.is_some() {
            return Ok(true);
        }
        self.powerdown()?;
        match self.wait_exit(timeout) {
            Ok(_) => Ok(true),
            Err(_) => {
                self.kill();
                Ok(false)
            }
        }
    }

    pub fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn echo_console(cfg: &VmConfig) -> bool {
    cfg.echo_console || std::env::var_os("CAIRN_ECHO_CONSOLE").is_some()
}

#[cfg(test)]
mod tests {
    use super::{Forward, command_output};

    #[test]
    fn a_commands_output_is_between_its_markers_without_inits_announcements() {
        let console = "echo __B''__; ls\r\n__B__\r\ncairn: network up at 14438 ms\r\ne1000e\r\n  cairn: indented\r\n__E__ 0\r\nafter";
        assert_eq!(command_output(console, "__B__", "__E__"), "e1000e\n  cairn: indented");
        assert_eq!(command_output("__B__\n__E__ 1", "__B__", "__E__"), "");
    }

    #[test]
    fn forwards_are_loopback_ports_tcp_unless_udp_is_said() {
        let f: Forward = "8080:80".parse().unwrap();
        assert_eq!((f, f.hostfwd()), (Forward::tcp(8080, 80), "tcp:127.0.0.1:8080-:80".to_string()));
        let u: Forward = "5353:53/udp".parse().unwrap();
        assert_eq!(u.hostfwd(), "udp:127.0.0.1:5353-:53");
        for bad in ["8080", "0:80", "8080:70000", "a:b", "8080:80/sctp", "1.2.3.4:8080:80"] {
            assert!(bad.parse::<Forward>().is_err(), "{bad}");
        }
    }
}

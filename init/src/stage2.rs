//! Stage 2, PID 1 of the booted host: set the system up, supervise services, serve the
//! control socket, print the ready line when every required service is ready, enforce the boot
//! deadline, and shut down cleanly on request, SIGTERM, Ctrl-Alt-Del or the power button.

use crate::control::{self, Request, Response};
use crate::power::{self, Action};
use crate::service::spawn::ProcessSpawner;
use crate::service::spec::{self, Ready, Restart, ServiceSpec};
use crate::service::supervisor::{ExitHow, Supervisor};
use crate::{cloudconfig, firstboot, say, system};
use cairn_release::cmdline;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

const DEFAULT_BOOT_DEADLINE: Duration = Duration::from_secs(120);

pub fn run() -> Result<std::convert::Infallible, String> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGPWR] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;
    let _ = nix::sys::reboot::set_cad_enabled(false);

    let boot = read_env(crate::stage1::BOOT_ENV);
    let kernel_cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let ms_now = crate::console::boot_ms;
    let stage2_start = ms_now();
    // A clock in boot time: Instant is CLOCK_MONOTONIC, which does not count suspend; fine here.
    let boot_start = Instant::now() - Duration::from_millis(stage2_start);
    let deadline = cmdline::value(&kernel_cmdline, "cairn.boot_deadline")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_BOOT_DEADLINE);

    system::harden();
    system::mount_all()?;
    system::clock_sanity();
    let first_boot_start = ms_now();
    if let Some(root) = boot.get("ROOT_PARTITION") {
        match firstboot::grow_root(Path::new(root), Path::new("/")) {
            Ok(Some(g)) => say!("grew ROOT from {} to {} MiB", g.old_bytes >> 20, g.new_bytes >> 20),
            Ok(None) => {}
            // Not fatal: the host works on the smaller ROOT, and the next boot tries again.
            Err(e) => say!("growing ROOT: {e}"),
        }
    }
    if let Err(e) = system::ensure_machine_id() {
        say!("machine-id: {e}");
    }
    let first_boot_ms = ms_now() - first_boot_start;
    if let Err(e) = system::loopback_up() {
        say!("loopback: {e}");
    }
    system::load_device_drivers();
    system::load_listed_modules();
    // Before the hostname and the services: cloud-config may set both. Time spent waiting on a
    // platform's metadata service is not the release's fault: it does not count against the
    // boot deadline (the step is bounded on its own).
    let config_start = Instant::now();
    cloudconfig::run();
    let ready_by = deadline + config_start.elapsed();
    system::set_hostname();

    let (mut specs, errors) = spec::load(&[Path::new(spec::IMAGE_DIR), Path::new(spec::USER_DIR)]);
    for e in &errors {
        say!("service {} disabled: {e}", e.name);
    }
    specs.extend(network_services());
    if cmdline::flag(&kernel_cmdline, "cairn.autologin") {
        specs.push(console_shell(&kernel_cmdline));
    }
    let mut sup = Supervisor::new(specs, errors, Path::new(crate::service::log::LOG_DIR));
    let mut spawner = ProcessSpawner;

    let _ = std::fs::remove_file(control::SOCKET);
    let listener = UnixListener::bind(control::SOCKET).map_err(|e| format!("binding {}: {e}", control::SOCKET))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let _ = std::fs::set_permissions(control::SOCKET, std::os::unix::fs::PermissionsExt::from_mode(0o600));

    let mut buttons = power_buttons();
    let services_start = ms_now();
    let mut ready_printed = false;
    let mut network_up_ms: Option<u64> = None;
    let mut ready_times: Vec<String> = Vec::new();
    let version = os_release_value(cairn_release::layout::OS_RELEASE, "VERSION_ID").unwrap_or_else(|| "unknown".into());
    let slot = boot.get("SLOT").cloned().unwrap_or_else(|| "?".into());

    loop {
        let now = Instant::now();
        for name in sup.tick(now, &mut spawner, &probe) {
            if !ready_printed {
                ready_times.push(format!("{name}={}", ms_now() - services_start));
            }
        }
        if network_up_ms.is_none() && default_route() {
            network_up_ms = Some(ms_now());
            say!("network up at {} ms", ms_now());
        }
        if !ready_printed && sup.required_ready() {
            ready_printed = true;
            let ms = |k: &str| boot.get(k).cloned().unwrap_or_else(|| "?".into());
            say!(
                "boot timing (ms): kernel->init={} stage1={} first_boot={first_boot_ms} services={} ({}) network={}",
                ms("INIT_START_MS"),
                boot.get("STAGE1_MS")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    .saturating_sub(boot.get("INIT_START_MS").and_then(|v| v.parse().ok()).unwrap_or(0)),
                ms_now() - services_start,
                ready_times.join(" "),
                network_up_ms.map(|n| n.to_string()).unwrap_or_else(|| "pending".into()),
            );
            say!("ready version={version} slot={slot} boot_ms={}", ms_now());
        }
        if !ready_printed && now.duration_since(boot_start) > ready_by {
            say!("boot failed: not ready within {} s; waiting for: {}", deadline.as_secs(), sup.not_ready().join(", "));
            power::shutdown(&mut sup, Action::Reboot);
        }

        let mut timeout = sup.next_wakeup(now).unwrap_or(Duration::from_secs(60));
        if !ready_printed {
            timeout = timeout.min((boot_start + ready_by).saturating_duration_since(now) + Duration::from_millis(1));
        }
        if network_up_ms.is_none() && now.duration_since(boot_start) < Duration::from_secs(120) {
            timeout = timeout.min(Duration::from_millis(100));
        }

        let outputs: Vec<(usize, std::os::fd::BorrowedFd)> =
            sup.output_fds().into_iter().map(|(i, fd)| (i, fd.as_fd())).collect();
        let mut fds =
            vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN), PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        fds.extend(buttons.iter().map(|b| PollFd::new(b.as_fd(), PollFlags::POLLIN)));
        let first_output = fds.len();
        fds.extend(outputs.iter().map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)));
        let ms = timeout.as_millis().min(60_000) as u16;
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let readable = |f: &PollFd| f.revents().is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP));
        let signal_ready = readable(&fds[0]);
        let control_ready = readable(&fds[1]);
        let pressed: Vec<usize> = (0..buttons.len()).filter(|i| readable(&fds[2 + i])).collect();
        let drained: Vec<usize> = outputs
            .iter()
            .enumerate()
            .filter(|(k, _)| readable(&fds[first_output + k]))
            .map(|(_, (i, _))| *i)
            .collect();
        drop(fds);
        drop(outputs);

        for i in drained {
            sup.drain_output(i);
        }
        for i in pressed {
            if power_key_pressed(&mut buttons[i]) {
                say!("power button pressed: powering off");
                power::shutdown(&mut sup, Action::PowerOff);
            }
        }
        if signal_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => reap(&mut sup),
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGPWR) | Ok(Signal::SIGUSR2) => {
                        power::shutdown(&mut sup, Action::PowerOff)
                    }
                    Ok(Signal::SIGINT) => power::shutdown(&mut sup, Action::Reboot),
                    _ => {}
                }
            }
        }
        if control_ready {
            while let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                let (response, then) = match control::read_request(&stream) {
                    Ok(req) => handle(&mut sup, &mut spawner, req),
                    Err(e) => (Response::err(e), None),
                };
                control::write_response(&stream, &response);
                drop(stream);
                if let Some(action) = then {
                    power::shutdown(&mut sup, action);
                }
            }
        }
    }
}

fn handle(sup: &mut Supervisor, spawner: &mut ProcessSpawner, req: Request) -> (Response, Option<Action>) {
    let now = Instant::now();
    let done = |r: Result<(), String>| match r {
        Ok(()) => Response::ok(),
        Err(e) => Response::err(e),
    };
    match req {
        Request::Status => {
            let mut r = Response::ok();
            r.services = serde_json::to_value(sup.status(now)).ok();
            (r, None)
        }
        Request::Start { service } => (done(sup.request_start(&service, now, spawner)), None),
        Request::Stop { service } => (done(sup.request_stop(&service)), None),
        Request::Restart { service } => (done(sup.request_restart(&service, now, spawner)), None),
        Request::Log { service, lines } => match sup.log_path(&service) {
            Some(path) => {
                let mut r = Response::ok();
                r.log = Some(crate::service::log::tail(&path, lines.min(10_000)));
                (r, None)
            }
            None => (Response::err(format!("no service {service}")), None),
        },
        Request::Reboot => (Response::ok(), Some(Action::Reboot)),
        Request::Poweroff => (Response::ok(), Some(Action::PowerOff)),
    }
}

fn reap(sup: &mut Supervisor) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                sup.on_exit(pid, ExitHow::Code(code), Instant::now());
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                sup.on_exit(pid, ExitHow::Signal(sig as i32), Instant::now());
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

fn probe(ready: &Ready) -> bool {
    match ready {
        Ready::Process => true,
        Ready::UnixSocket(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
        Ready::TcpPort(port) => std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
            Duration::from_millis(50),
        )
        .is_ok(),
    }
}

/// Whether the kernel has an IPv4 default route (DHCP has configured something).
fn default_route() -> bool {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| t.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some("00000000")))
        .unwrap_or(false)
}

/// One DHCP client per Ethernet interface whose network configuration does not turn DHCP off
/// (busybox udhcpc: leases, renewal, routes, resolv.conf).
fn network_services() -> Vec<ServiceSpec> {
    let script = cairn_release::net::DHCP_SCRIPT;
    if !Path::new(script).exists() {
        return Vec::new();
    }
    cairn_release::net::ethernet_interfaces(Path::new(cairn_release::net::SYS_CLASS_NET))
        .into_iter()
        .filter(|iface| !cairn_release::net::dhcp_off(Path::new(cairn_release::net::RUN_DIR), iface))
        .map(|iface| {
            let mut s = ServiceSpec::placeholder(&format!("dhcp-{iface}"), Path::new("(built in)"));
            s.description = format!("DHCP on {iface}");
            // -O ntpsrv: ask for the NTP servers too (the script hands them to chronyd).
            s.command = ["/usr/bin/busybox", "udhcpc", "-f", "-R", "-O", "ntpsrv", "-i", &iface, "-s", script]
                .iter()
                .map(|s| s.to_string())
                .collect();
            s.restart = Restart::Always;
            s.enabled = true;
            s
        })
        .collect()
}

/// A root shell on the serial console, for development images (`cairn.autologin`).
fn console_shell(kernel_cmdline: &str) -> ServiceSpec {
    let tty = cmdline::value(kernel_cmdline, "console")
        .map(|c| c.split(',').next().unwrap_or("ttyS0").to_string())
        .unwrap_or_else(|| "ttyS0".into());
    let mut s = ServiceSpec::placeholder("console-shell", Path::new("(cairn.autologin)"));
    s.description = format!("root shell on /dev/{tty}");
    s.command = vec!["/usr/bin/busybox".into(), "sh".into(), "-l".into()];
    s.tty = Some(Path::new("/dev").join(tty));
    s.environment.insert("PS1".into(), "cairn# ".into());
    s.restart = Restart::Always;
    s.restart_delay = Duration::from_millis(200);
    // An interactive shell ignores SIGTERM; it gets SIGHUP too, and little time.
    s.stop_timeout = Duration::from_secs(1);
    s.enabled = true;
    s
}

fn read_env(path: &str) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn os_release_value(path: &str, key: &str) -> Option<String> {
    cairn_release::layout::env_value(&std::fs::read_to_string(path).ok()?, key)
}

/// Event devices of ACPI power buttons (the button and evdev modules are loaded from
/// modules-load.d before this).
fn power_buttons() -> Vec<std::fs::File> {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let dir = Path::new("/usr/lib/modules").join(&release);
    if let Err(e) = crate::modules::load_by_name(&dir, &["evdev", "button"]) {
        say!("no power button support: {e}");
        return Vec::new();
    }
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/input") {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let dev_name = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
            if name.starts_with("event")
                && dev_name.contains("Power Button")
                && let Ok(f) = std::fs::File::open(Path::new("/dev/input").join(&name))
            {
                found.push(f);
            }
        }
    }
    if found.is_empty() {
        say!("no ACPI power button found; power off with `poweroff` or SIGTERM to PID 1");
    }
    found
}

/// Reads one `struct input_event` (24 bytes on 64-bit); true for KEY_POWER pressed.
fn power_key_pressed(dev: &mut std::fs::File) -> bool {
    let mut ev = [0u8; 24];
    if dev.read_exact(&mut ev).is_err() {
        return false;
    }
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    kind == EV_KEY && code == KEY_POWER && value == 1
}

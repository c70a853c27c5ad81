//! Stage 2, PID 1 of the booted host. In this slice: announce readiness, reap zombies, and
//! power off or reboot cleanly on SIGTERM, Ctrl-Alt-Del or the ACPI power button.

use crate::{power, say};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

pub fn run() -> Result<std::convert::Infallible, String> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGPWR] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC).map_err(|e| format!("signalfd: {e}"))?;
    // Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reset.
    let _ = nix::sys::reboot::set_cad_enabled(false);

    let boot = read_env(crate::stage1::BOOT_ENV);
    let version = os_release_value("/usr/lib/os-release", "VERSION_ID").unwrap_or_else(|| "unknown".into());
    let slot = boot.get("SLOT").cloned().unwrap_or_else(|| "?".into());
    // Listening to the power button is part of being ready: a press must not be lost.
    let mut buttons = power_buttons();
    if buttons.is_empty() {
        say!("no ACPI power button found; power off with SIGTERM to PID 1");
    }
    let ms = |k: &str| boot.get(k).map(String::as_str).unwrap_or("?").to_string();
    say!(
        "boot timing (ms since kernel start): init={} modules={} disk={} verity={} switch_root={} stage2={}",
        ms("INIT_START_MS"),
        ms("MODULES_MS"),
        ms("DISK_MS"),
        ms("VERITY_MS"),
        ms("STAGE1_MS"),
        crate::console::boot_ms()
    );
    say!("ready version={version} slot={slot} boot_ms={}", crate::console::boot_ms());
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        fds.extend(buttons.iter().map(|b| PollFd::new(b.as_fd(), PollFlags::POLLIN)));
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let pressed: Vec<bool> =
            fds[1..].iter().map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN))).collect();
        let signal_ready = fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        for (i, ready) in pressed.iter().enumerate() {
            if *ready && power_key_pressed(&mut buttons[i]) {
                say!("power button pressed: powering off");
                power::shutdown(power::Action::PowerOff);
            }
        }
        if signal_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => reap(),
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGPWR) | Ok(Signal::SIGUSR2) => {
                        power::shutdown(power::Action::PowerOff)
                    }
                    Ok(Signal::SIGINT) => power::shutdown(power::Action::Reboot),
                    _ => {}
                }
            }
        }
    }
}

fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if matches!(status, WaitStatus::StillAlive) {
            break;
        }
    }
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
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k == key).then(|| v.trim_matches('"').to_string())
    })
}

/// Event devices of ACPI power buttons. The button driver is a module; loading it (and evdev)
/// makes the devices appear.
fn power_buttons() -> Vec<std::fs::File> {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let dir = Path::new("/usr/lib/modules").join(&release);
    if let Err(e) = crate::modules::load_by_name(&dir, &["evdev", "button"]) {
        say!("no power button support: {e}");
        return Vec::new();
    }
    let mut found = Vec::new();
    // The input devices are registered while the modules load; a short wait catches stragglers.
    for _ in 0..50 {
        found.clear();
        if let Ok(rd) = std::fs::read_dir("/sys/class/input") {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("event") {
                    continue;
                }
                let dev_name = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
                if dev_name.contains("Power Button")
                    && let Ok(f) = std::fs::File::open(Path::new("/dev/input").join(&name))
                {
                    found.push(f);
                }
            }
        }
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
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

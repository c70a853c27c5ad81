//! `cairn-cloud-config`: cloud-config on a Cairn host.
//!
//! - `boot`: run once by cairn-init before services start: find the user data, apply it (or
//!   keep the last good config when it has errors), say so on the console, and leave the
//!   report for `updatectl status` in `/run/cairn/cloud-config.json`.
//! - `container NAME`: run container NAME of `cairn.containers` (the init service
//!   `container-NAME`), see `cairn_config::container`.

use cairn_config::apply::Host;
use cairn_config::boot::{Machine, configure, find};
use cairn_config::container;
use cairn_config::platform::Platform;
use cairn_release::config_status;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a network source (and bringing the network up for it) may take.
const NETWORK_DEADLINE: Duration = Duration::from_secs(30);

/// Each boot's lines are also appended here (beside init's service logs), kept to about
/// `LOG_MAX` plus one older file.
const LOG: &str = "/var/log/cairn/cloud-config.log";
const LOG_MAX: u64 = 256 << 10;

/// The console (and, at the end, the log).
struct Say(Vec<String>);

impl Say {
    fn line(&mut self, msg: &str) {
        println!("cairn: cloud-config: {msg}");
        self.0.push(msg.to_string());
    }

    fn keep(&self) -> std::io::Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        cairn_config::boot::append_log(Path::new(LOG), LOG_MAX, now, &self.0)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["boot"] => boot(),
        ["container", name] => container::run::run(name),
        _ => {
            eprintln!("usage: cairn-cloud-config boot | container NAME");
            2
        }
    };
    std::process::exit(code);
}

fn boot() -> i32 {
    let mut say = Say(Vec::new());
    let machine = Machine::this_host();
    let platform = Platform::detect(&machine.cmdline, &machine.dmi);
    let start = Instant::now();
    let (found, attempts) = find(&machine, NETWORK_DEADLINE, &mut dhcp);
    let find_ms = start.elapsed().as_millis() as u64;
    for a in &attempts {
        say.line(&format!("{}: {} ({} ms)", a.source, a.result, a.elapsed.as_millis()));
    }
    let report = configure(&Host { root: "/".into(), chown: true }, found, find_ms);
    for line in &report.lines {
        say.line(line);
    }
    // The interfaces as the applied (or last good) config says, before init starts DHCP.
    match cairn_config::network::apply::load(Path::new("/")) {
        Ok(net) => {
            for line in cairn_config::network::apply::configure(&net) {
                say.line(&line);
            }
        }
        Err(e) => say.line(&format!("network: {e}; DHCP on every interface")),
    }
    // Clouds that wait to hear the VM is up (Azure) are told so, whatever the config's fate:
    // the host is running and reachable.
    let until = Instant::now() + NETWORK_DEADLINE;
    for ds in platform.datasources(&machine) {
        match ds.report_ready(until) {
            Ok(Some(done)) => say.line(&format!("{}: {done}", ds.name())),
            Ok(None) => {}
            Err(e) => say.line(&format!("{}: reporting ready: {e}", ds.name())),
        }
    }
    if let Err(e) = platform_time_sources(platform) {
        say.line(&format!("time sources: {e}"));
    }
    let s = &report.status;
    say.line(&format!(
        "platform={} source={} outcome={} find_ms={} apply_ms={}",
        platform.name(),
        attempts.last().filter(|_| !s.source.is_empty()).map_or("none", |a| a.source),
        serde_json::to_value(s.outcome).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        s.find_ms,
        s.apply_ms
    ));
    let path = Path::new(config_status::PATH);
    let written = std::fs::create_dir_all(path.parent().expect("a parent")).and_then(|()| {
        cairn_release::durable::write_atomic(path, &serde_json::to_vec_pretty(s).expect("serializes"), 0o644)
    });
    if let Err(e) = written {
        say.line(&format!("writing {}: {e}", path.display()));
    }
    if let Err(e) = say.keep() {
        say.line(&format!("writing {LOG}: {e}"));
    }
    0
}

/// The platform's time source for chronyd, unless cloud-config names the sources
/// (`cairn_config::ntp`). Made at every boot: the platform is the one this boot runs on.
fn platform_time_sources(platform: Platform) -> std::io::Result<()> {
    let dir = Path::new(cairn_config::ntp::RUNTIME_DIR);
    std::fs::create_dir_all(dir)?;
    let file = dir.join("platform.sources");
    if Path::new(cairn_config::ntp::CONFIG_SOURCES).exists() {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    cairn_release::durable::write_atomic(&file, cairn_config::ntp::platform_sources(platform).as_bytes(), 0o644)
}

/// Brings the first Ethernet interface up with a DHCP lease (busybox udhcpc, which quits once
/// it has one; init's DHCP service takes over later) before `until`.
fn dhcp(until: Instant) -> Result<(), String> {
    let iface = cairn_release::net::ethernet_interfaces(Path::new(cairn_release::net::SYS_CLASS_NET))
        .into_iter()
        .next()
        .ok_or("no Ethernet interface")?;
    let mut child = Command::new("/usr/bin/busybox")
        .args([
            "udhcpc",
            "-q",
            "-n",
            "-f",
            "-t",
            "30",
            "-T",
            "1",
            "-O",
            "ntpsrv",
            "-i",
            &iface,
            "-s",
            cairn_release::net::DHCP_SCRIPT,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting udhcpc: {e}"))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() { Ok(()) } else { Err(format!("no DHCP lease on {iface}")) };
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no DHCP lease on {iface} before the deadline"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

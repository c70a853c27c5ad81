//! A host's cloud-config at boot: find the user data (the platform's sources in order, each
//! within the deadline), then apply it, or, when it has errors, apply nothing from it and
//! re-apply the last good document kept on ROOT instead. What happened is returned as console
//! lines and a [`ConfigStatus`] for `updatectl status`.
//!
//! The machine (firmware tables, block devices, the metadata address, the clock) sits behind
//! [`Machine`] so tests run all of this against a temporary directory and loopback servers.

use crate::apply::{Host, apply};
pub use crate::datasource::Found;
use crate::datasource::{DatasourceError, NetworkData, NetworkFormat};
use crate::diag::Severity;
use crate::document::{CloudConfig, Parsed, parse};
pub use crate::platform::Machine;
use crate::platform::Platform;
use cairn_release::config_status::{ConfigStatus, Outcome};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the last document that applied cleanly is kept (under the host's root, on ROOT).
pub const LAST_GOOD: &str = "var/lib/cairn/cloud-config/user-data";
/// Where it came from, beside it.
pub const LAST_GOOD_SOURCE: &str = "var/lib/cairn/cloud-config/source";
/// The network file found with it: its format's name on the first line, then its content.
pub const LAST_GOOD_NETWORK: &str = "var/lib/cairn/cloud-config/network";

/// One source tried: what it said and how long it took.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The datasource's name.
    pub source: &'static str,
    pub result: String,
    pub elapsed: Duration,
}

/// Tries the platform's sources in order until one has user data. Each network source gets
/// `deadline` (from when it is tried); `network_up` is called once, before the first of them,
/// to bring an interface up within its deadline. A source that fails is noted and the next is
/// tried: a broken config drive must not hide the metadata service behind it.
pub fn find(
    m: &Machine,
    deadline: Duration,
    network_up: &mut dyn FnMut(Instant) -> Result<(), String>,
) -> (Option<Found>, Vec<Attempt>) {
    let platform = Platform::detect(&m.cmdline, &m.dmi);
    let mut attempts = Vec::new();
    let mut network: Option<Result<(), String>> = None;
    for ds in platform.datasources(m) {
        let start = Instant::now();
        let until = start + deadline;
        // The network comes up once, for the first source that needs it.
        let result = match ds.needs_network() {
            true => match network.get_or_insert_with(|| network_up(until)) {
                Err(e) => Err(DatasourceError::NoNetwork(e.clone())),
                Ok(()) => ds.fetch(until),
            },
            false => ds.fetch(until),
        };
        let (source, elapsed) = (ds.name(), start.elapsed());
        match result {
            Ok(Some(found)) => {
                attempts.push(Attempt { source, result: "user data".into(), elapsed });
                return (Some(found), attempts);
            }
            Ok(None) => attempts.push(Attempt { source, result: "no user data".into(), elapsed }),
            Err(e @ DatasourceError::NoNetwork(_)) => attempts.push(Attempt { source, result: e.to_string(), elapsed }),
            Err(e) => attempts.push(Attempt { source, result: format!("error: {e}"), elapsed }),
        }
    }
    (None, attempts)
}

/// What configuring did: the lines for the console, and the status for `updatectl`.
#[derive(Clone, Debug)]
pub struct Report {
    pub lines: Vec<String>,
    pub status: ConfigStatus,
}

/// Applies `found` (or, when it is refused, the last good document) to `host`, with the
/// instance's metadata added either way.
pub fn configure(host: &Host, found: Option<Found>, find_ms: u64) -> Report {
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut status = ConfigStatus {
        outcome: Outcome::None,
        source: String::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
        last_good: None,
        find_ms,
        apply_ms: 0,
    };
    let Some(found) = found else {
        lines.push("no user data: nothing to apply".to_string());
        return Report { lines, status };
    };
    status.source = found.source.clone();
    let src = &found.source;
    for w in &found.warnings {
        lines.push(format!("{src}: warning: {w}"));
        status.warnings.push(w.clone());
    }
    let with_instance = |mut c: CloudConfig| {
        found.instance.merge_into(&mut c);
        c
    };
    let instance_only = (!found.instance.is_empty()).then(|| with_instance(CloudConfig::default()));
    // What to apply, what to call it, and whether it becomes the last good document.
    let (config, what, keep) = match read(&found) {
        Parsed::Empty => (instance_only, "instance metadata".to_string(), false),
        Parsed::Config(config, warnings) => {
            for w in &warnings {
                lines.push(format!("{src}: {w}"));
                status.warnings.push(w.to_string());
            }
            (Some(with_instance(*config)), src.clone(), true)
        }
        Parsed::Invalid(diagnostics) => {
            status.outcome = Outcome::Refused;
            let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
            lines.push(format!("{src}: refused, {errors} error(s); nothing from it is applied"));
            for d in &diagnostics {
                lines.push(format!("{src}: {d}"));
                let kind = if d.severity == Severity::Error { &mut status.errors } else { &mut status.warnings };
                kind.push(d.to_string());
            }
            match load_last_good(&host.root) {
                Some(last) => {
                    let what = format!("the last good config (from {})", last.source);
                    status.last_good = Some(what.clone());
                    match read(&last) {
                        Parsed::Config(config, _) => (Some(with_instance(*config)), what, false),
                        _ => {
                            lines.push(format!("{what} no longer parses; left as it is"));
                            (instance_only, "instance metadata".to_string(), false)
                        }
                    }
                }
                None => {
                    lines.push("no earlier good config".to_string());
                    (instance_only, "instance metadata".to_string(), false)
                }
            }
        }
    };
    match config {
        None if status.outcome == Outcome::Refused => lines.push("the host keeps what it has".to_string()),
        None => lines.push(format!("{src}: empty user data: nothing to apply")),
        Some(config) => match apply(&config, host) {
            Ok(changed) if status.outcome == Outcome::Refused => {
                lines.push(format!("{what} stays in effect ({})", changes(&changed)))
            }
            Ok(changed) => {
                status.outcome = Outcome::Applied;
                lines.push(format!("{what}: applied ({})", changes(&changed)));
                if keep && let Err(e) = save_last_good(&host.root, &found) {
                    lines.push(format!("keeping the config as the last good one: {e}"));
                }
            }
            Err(e) if status.outcome == Outcome::Refused => lines.push(format!("applying {what}: {e}")),
            Err(e) => {
                status.outcome = Outcome::Failed;
                status.errors.push(e.to_string());
                lines.push(format!("{src}: applying failed: {e}"));
            }
        },
    }
    status.apply_ms = start.elapsed().as_millis() as u64;
    Report { lines, status }
}

/// Appends one boot's `lines` to the log at `path` under a header with the time; a log over
/// `max` bytes becomes `path.1` first (one older file is kept).
pub fn append_log(path: &Path, max: u64, unix_now: u64, lines: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > max) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    let mut text = format!("== boot at unix {unix_now}\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn changes(changed: &[String]) -> String {
    match changed.len() {
        0 => "no changes".to_string(),
        n => format!("{n} change(s): {}", changed.join(", ")),
    }
}

/// The user data and the network file beside it, read as one: either one invalid refuses both.
/// `cairn.network` in the user data wins over the datasource's file.
fn read(found: &Found) -> Parsed {
    let parsed = parse(&found.data);
    let Some(network) = &found.network else { return parsed };
    match (parsed, network.parse()) {
        (Parsed::Invalid(mut d), Err(n)) => {
            d.extend(n);
            Parsed::Invalid(d)
        }
        (Parsed::Invalid(d), Ok(_)) => Parsed::Invalid(d),
        (_, Err(n)) => Parsed::Invalid(n),
        (Parsed::Empty, Ok((net, warnings))) => {
            Parsed::Config(Box::new(CloudConfig { network: Some(net), ..Default::default() }), warnings)
        }
        (Parsed::Config(mut c, mut warnings), Ok((net, more))) => {
            c.network.get_or_insert(net);
            warnings.extend(more);
            Parsed::Config(c, warnings)
        }
    }
}

fn save_last_good(root: &Path, found: &Found) -> std::io::Result<()> {
    let network = root.join(LAST_GOOD_NETWORK);
    let network_text = found.network.as_ref().map(|n| [n.format.name().as_bytes(), b"\n", &n.data].concat());
    match &network_text {
        Some(t) if std::fs::read(&network).ok().as_ref() != Some(t) => {
            std::fs::create_dir_all(network.parent().expect("a parent"))?;
            cairn_release::durable::write_atomic(&network, t, 0o600)?
        }
        Some(_) => {}
        None => match std::fs::remove_file(&network) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    let data = root.join(LAST_GOOD);
    std::fs::create_dir_all(data.parent().expect("a parent"))?;
    let source = root.join(LAST_GOOD_SOURCE);
    if std::fs::read(&data).is_ok_and(|d| d == found.data)
        && std::fs::read_to_string(&source).is_ok_and(|s| s == found.source)
    {
        return Ok(());
    }
    // The data first: a crash between the two leaves a good document with a stale label.
    cairn_release::durable::write_atomic(&data, &found.data, 0o600)?;
    cairn_release::durable::write_atomic(&source, found.source.as_bytes(), 0o600)
}

fn load_last_good(root: &Path) -> Option<Found> {
    let data = std::fs::read(root.join(LAST_GOOD)).ok()?;
    let source = std::fs::read_to_string(root.join(LAST_GOOD_SOURCE)).unwrap_or_else(|_| "unknown".into());
    let mut found = Found::user_data(source, data);
    if let Ok(text) = std::fs::read(root.join(LAST_GOOD_NETWORK))
        && let Some(newline) = text.iter().position(|b| *b == b'\n')
        && let Some(format) = std::str::from_utf8(&text[..newline]).ok().and_then(NetworkFormat::from_name)
    {
        found.network = Some(NetworkData { format, data: text[newline + 1..].to_vec() });
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::apply::testing::host;

    fn found(text: &str) -> Option<Found> {
        Some(Found::user_data("fw_cfg test".into(), text.as_bytes().to_vec()))
    }

    #[test]
    fn a_refused_document_changes_nothing_and_the_last_good_one_stays() {
        let (t, h) = host();
        let good = "#cloud-config\nhostname: good\nssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 good@x]\n";
        let r = configure(&h, found(good), 1);
        assert_eq!(r.status.outcome, Outcome::Applied, "{:?}", r.lines);
        let bad = "#cloud-config\nhostname: bad\nssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 bad@x]\nusers: {name: x}\n";
        let r = configure(&h, found(bad), 1);
        assert_eq!(r.status.outcome, Outcome::Refused);
        assert!(r.lines.iter().any(|l| l.contains("4:8: error: users: ")), "{:?}", r.lines);
        assert!(r.status.summary().contains("4:8: error: users:"), "{}", r.status.summary());
        assert!(r.status.summary().contains("in effect: the last good config (from fw_cfg test)"));
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "good\n");
        assert!(read("home/core/.ssh/authorized_keys").contains("good@x"));
        assert_eq!(read(LAST_GOOD), good, "the refused document is not kept");
    }

    /// A seed whose network-config is wrong is refused whole (its user data too), and the
    /// network of the last good seed stays: a typo never costs the host its address.
    #[test]
    fn a_bad_network_config_refuses_the_seed_and_the_last_good_network_stays() {
        let (t, h) = host();
        let seed = |hostname: &str, network: &str| {
            let mut f = Found::user_data(
                "cidata /dev/sr0".into(),
                format!("#cloud-config\nhostname: {hostname}\n").into_bytes(),
            );
            f.network = Some(NetworkData { format: NetworkFormat::NoCloud, data: network.as_bytes().to_vec() });
            Some(f)
        };
        let good = "version: 2\nethernets:\n  eth0: {addresses: [10.0.2.15/24], gateway4: 10.0.2.2}\n";
        let r = configure(&h, seed("good", good), 1);
        assert_eq!(r.status.outcome, Outcome::Applied, "{:?}", r.lines);
        let saved = crate::network::apply::load(t.path()).unwrap();
        assert_eq!(saved.interfaces[0].addresses[0].to_string(), "10.0.2.15/24");
        assert!(!saved.interfaces[0].dhcp4);

        let typo = "version: 2\nethernets:\n  eth0: {addresses: [10.0.2.15/244], gateway4: 10.0.2.2}\n";
        let r = configure(&h, seed("other", typo), 1);
        assert_eq!(r.status.outcome, Outcome::Refused);
        assert!(
            r.lines.iter().any(|l| l.contains("3:22: error: network-config.ethernets.eth0.addresses[0]")),
            "{:?}",
            r.lines
        );
        assert_eq!(std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(), "good\n");
        assert_eq!(crate::network::apply::load(t.path()).unwrap(), saved);

        // cairn.network in the user data wins over the seed's file; without either, DHCP.
        let mut f = seed("good", good).unwrap();
        f.data = b"#cloud-config\ncairn:\n  network:\n    interfaces: [{match: {name: eth1}}]\n".to_vec();
        configure(&h, Some(f), 1);
        assert_eq!(crate::network::apply::load(t.path()).unwrap().interfaces[0].matching.name.as_deref(), Some("eth1"));
        configure(&h, found("#cloud-config\nhostname: plain\n"), 1);
        assert_eq!(crate::network::apply::load(t.path()).unwrap(), crate::network::NetworkConfig::default());
    }

    #[test]
    fn the_last_good_config_is_reapplied_when_a_refused_one_arrives() {
        let (t, h) = host();
        configure(&h, found("#cloud-config\nhostname: good\n"), 1);
        // Someone changed the hostname by hand; a refused config does not leave it so.
        std::fs::write(t.path().join("etc/hostname"), "drifted\n").unwrap();
        let r = configure(&h, found("#cloud-config\nhostname: [not, a, name]\n"), 1);
        assert_eq!(r.status.outcome, Outcome::Refused);
        assert_eq!(std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(), "good\n");
    }

    #[test]
    fn without_a_last_good_config_a_refused_one_applies_nothing() {
        let (t, h) = host();
        let r =
            configure(&h, found("#cloud-config\nhostname: 7\nwrite_files: [{path: /etc/x, content: y}]\nbad: 1\n"), 1);
        assert_eq!(r.status.outcome, Outcome::Applied, "an unknown key is a warning: {:?}", r.lines);
        let (t2, h2) = host();
        let r = configure(&h2, found("#cloud-config\nwrite_files: [{path: relative, content: y}]\nhostnme: x\n"), 1);
        assert_eq!(r.status.outcome, Outcome::Refused);
        assert_eq!((r.status.errors.len(), r.status.warnings.len()), (1, 1), "{:?}", r.status);
        assert!(!r.status.summary().contains("hostnme"), "warnings stay out of the summary");
        assert!(r.status.summary().contains("nothing (no earlier good config)"), "{}", r.status.summary());
        assert!(!t2.path().join(LAST_GOOD).exists());
        drop(t);
    }

    const CLOUD_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 launch@cloud";

    fn with_instance(text: &str) -> Option<Found> {
        let mut f = found(text)?;
        f.instance = InstanceMetadata { hostname: Some("from-cloud".into()), ssh_keys: vec![CLOUD_KEY.into()] };
        Some(f)
    }

    #[test]
    fn the_platforms_keys_and_hostname_apply_with_or_without_user_data() {
        let (t, h) = host();
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap_or_default();
        // Only metadata (an EC2 key pair, no user data): the key for core, the cloud's hostname.
        let r = configure(&h, with_instance(""), 0);
        assert_eq!(r.status.outcome, Outcome::Applied, "{:?}", r.lines);
        assert_eq!(read("etc/hostname"), "from-cloud\n");
        assert!(read("home/core/.ssh/authorized_keys").contains("launch@cloud"));
        assert!(!t.path().join(LAST_GOOD).exists(), "metadata alone is not a last good document");
        // User data names a hostname: it wins; the key is still added.
        configure(&h, with_instance("#cloud-config\nhostname: mine\n"), 0);
        assert_eq!(read("etc/hostname"), "mine\n");
        assert!(read("home/core/.ssh/authorized_keys").contains("launch@cloud"));
    }

    #[test]
    fn a_refused_document_without_a_last_good_one_still_gets_the_launch_key() {
        let (t, h) = host();
        let r = configure(&h, with_instance("#cloud-config\nhostname: [x]\n"), 0);
        assert_eq!(r.status.outcome, Outcome::Refused);
        assert!(
            std::fs::read_to_string(t.path().join("home/core/.ssh/authorized_keys")).unwrap().contains("launch@cloud")
        );
        assert_eq!(std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(), "from-cloud\n");
    }

    #[test]
    fn no_source_and_empty_user_data_apply_nothing() {
        let (t, h) = host();
        assert_eq!(configure(&h, None, 0).status.outcome, Outcome::None);
        let r = configure(&h, found(""), 0);
        assert_eq!(r.status.outcome, Outcome::None, "{:?}", r.lines);
        assert!(!t.path().join("etc/hostname").exists());
    }

    #[test]
    fn each_boot_is_appended_to_the_log_and_a_full_log_rolls_over() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("log/cloud-config.log");
        append_log(&log, 100, 1, &["first".into()]).unwrap();
        append_log(&log, 100, 2, &["second".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "== boot at unix 1\nfirst\n== boot at unix 2\nsecond\n");
        append_log(&log, 10, 3, &["third".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "== boot at unix 3\nthird\n");
        assert!(std::fs::read_to_string(t.path().join("log/cloud-config.log.1")).unwrap().contains("second"));
    }

    use crate::instance::InstanceMetadata;
    use crate::local;
    use crate::platform::Dmi;

    fn machine(dir: &Path, cmdline: &str) -> Machine {
        Machine {
            cmdline: cmdline.into(),
            dmi: Dmi::default(),
            fw_cfg_dir: dir.join("fw_cfg"),
            sys_block: dir.join("sys"),
            dev: dir.join("dev"),
            metadata_base: "http://127.0.0.1:9".into(),
            azure_media_mount: dir.join("azure-media"),
        }
    }

    #[test]
    fn fw_cfg_is_found_first_on_qemu() {
        let t = tempfile::tempdir().unwrap();
        let entry = t.path().join("fw_cfg").join(local::FW_CFG_NAME);
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("raw"), "#cloud-config\n").unwrap();
        let mut network = |_| -> Result<(), String> { panic!("a local source needs no network") };
        let (found, attempts) = find(&machine(t.path(), "cairn.platform=qemu"), Duration::from_secs(1), &mut network);
        assert_eq!(found.unwrap().source, "fw_cfg opt/cairn/user-data");
        assert_eq!(attempts.len(), 1);
    }

    #[test]
    fn nothing_anywhere_is_not_an_error_and_an_unreachable_network_costs_its_deadline() {
        let t = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let mut network = |_| -> Result<(), String> {
            calls += 1;
            Err("no interface".into())
        };
        let (found, attempts) = find(
            &machine(t.path(), "cairn.platform=ec2 cairn.config_url=http://127.0.0.1:9/u"),
            Duration::from_millis(200),
            &mut network,
        );
        assert!(found.is_none());
        assert_eq!(calls, 1, "the network is brought up once");
        let sources: Vec<_> = attempts.iter().map(|a| (a.source, a.result.as_str())).collect();
        assert_eq!(sources, [("url", "no network: no interface"), ("ec2", "no network: no interface")]);
    }
}

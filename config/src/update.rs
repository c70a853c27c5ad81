//! The update agent's settings from `coreos.update`, `coreos.locksmith` and `cairn.update`
//! (whose keys win), checked as the agent will check them.

use crate::walk::{At, Fields, Value, Walker};
use cairn_release::maintenance::{MaintenanceSettings, WindowSettings};
use cairn_release::update_config::{Secret, Strategy, UpdateSettings};

pub const COREOS_UPDATE_KEYS: &[&str] = &["reboot_strategy", "group", "server"];
pub const LOCKSMITH_KEYS: &[&str] = &[
    "endpoint",
    "group",
    "window_start",
    "window_length",
    "etcd_cafile",
    "etcd_certfile",
    "etcd_keyfile",
    "etcd_username",
    "etcd_password",
];
pub const CAIRN_UPDATE_KEYS: &[&str] = &[
    "source",
    "channel",
    "strategy",
    "interval",
    "bless_after",
    "server",
    "group",
    "lock_server",
    "lock_group",
    "lock_retry",
    "enrollment_token",
    "lock_token",
    "insecure",
    "ca_bundle",
    "download_timeout",
    "maintenance",
];
pub const MAINTENANCE_KEYS: &[&str] = &["time_zone", "window"];
pub const WINDOW_KEYS: &[&str] = &["days", "start_time", "length_minutes"];

/// CoreOS's and Fedora CoreOS's reboot strategies, as Cairn's.
fn strategy(w: &mut Walker, v: Value, path: &str) -> Option<Strategy> {
    let s = w.string(v, path)?;
    match s.replace('-', "_").as_str() {
        "reboot" | "immediate" | "best_effort" => Some(Strategy::Immediate),
        "off" | "false" => Some(Strategy::Off),
        "etcd_lock" | "fleet_lock" | "fleetlock" => Some(Strategy::FleetLock),
        "periodic" => {
            w.error(v.at, path, "\"periodic\": give cairn.update.maintenance windows and strategy \"immediate\"");
            None
        }
        _ => {
            w.error(
                v.at,
                path,
                format!("{s:?} is not a strategy (immediate, off, fleetlock; or CoreOS's reboot, etcd-lock)"),
            );
            None
        }
    }
}

pub fn coreos_update(w: &mut Walker, f: &Fields, into: &mut UpdateSettings) {
    if let Some((v, p)) = f.get("reboot_strategy") {
        into.strategy = strategy(w, v, &p);
    }
    if let Some((v, p)) = f.get("group") {
        into.group = w.text(v, &p);
    }
    if let Some((v, p)) = f.get("server") {
        into.server = w.text(v, &p);
    }
}

/// `window_start: "Sun 05:30"` or `"05:30"`, `window_length: "1h30m"`.
fn locksmith_window(
    w: &mut Walker,
    start: Value,
    start_path: &str,
    length: Option<(Value, String)>,
) -> Option<WindowSettings> {
    let text = w.text(start, start_path)?;
    let (days, time) = match text.split_once(' ') {
        Some((day, time)) => (vec![day.to_string()], time.trim().to_string()),
        None => (["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].map(String::from).to_vec(), text.clone()),
    };
    // locksmith took `1:00`; windows want `01:00`.
    let time = match time.split_once(':') {
        Some((h, m)) if h.len() == 1 => format!("0{h}:{m}"),
        _ => time,
    };
    let Some((v, p)) = length else {
        w.error(start.at, start_path, "needs window_length beside it");
        return None;
    };
    let length_text = w.text(v, &p)?;
    let minutes = go_duration_minutes(&length_text);
    let Some(minutes) = minutes.filter(|m| *m > 0) else {
        w.error(v.at, &p, format!("{length_text:?} is not a duration like \"1h30m\""));
        return None;
    };
    Some(WindowSettings { days, start_time: time, length_minutes: minutes })
}

/// Go's duration syntax as locksmith took it: `1h30m`, `45m`, `2h`.
fn go_duration_minutes(text: &str) -> Option<u32> {
    let mut minutes = 0u32;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u32 = number.parse().ok()?;
        number.clear();
        minutes = minutes.checked_add(match c {
            'h' => n.checked_mul(60)?,
            'm' => n,
            _ => return None,
        })?;
    }
    number.is_empty().then_some(minutes)
}

pub fn locksmith(w: &mut Walker, f: &Fields, into: &mut UpdateSettings) {
    if let Some((v, p)) = f.get("endpoint") {
        w.warn(
            v.at,
            &p,
            "an etcd endpoint: Cairn hosts take the reboot lock from a FleetLock server; set cairn.update.lock_server \
             (cairn-server serves FleetLock, and with --etcd keeps the semaphores in etcd); ignored",
        );
    }
    for key in ["etcd_cafile", "etcd_certfile", "etcd_keyfile", "etcd_username", "etcd_password"] {
        if let Some((v, p)) = f.get(key) {
            w.warn(v.at, &p, "etcd credentials are not used by Cairn hosts (they speak FleetLock); ignored");
        }
    }
    if let Some((v, p)) = f.get("group") {
        into.lock_group = w.text(v, &p);
    }
    match (f.get("window_start"), f.get("window_length")) {
        (Some((start, p)), length) => {
            if let Some(window) = locksmith_window(w, start, &p, length) {
                into.maintenance = Some(MaintenanceSettings { time_zone: None, windows: vec![window] });
            }
        }
        (None, Some((v, p))) => w.error(v.at, &p, "needs window_start beside it"),
        (None, None) => {}
    }
}

/// The windows, checked as the agent will; a problem is reported at the key it names.
fn maintenance(w: &mut Walker, v: Value, path: &str) -> Option<MaintenanceSettings> {
    let (m, nodes) = maintenance_fields(w, v, path)?;
    let Err(e) = m.resolve() else { return Some(m) };
    let at = nodes.iter().find(|(k, _)| *k == e.key).map_or(v.at, |(_, at)| *at);
    let key_path = if e.key.is_empty() { path.to_string() } else { crate::walk::child(path, &e.key) };
    w.error(at, &key_path, e.message);
    None
}

/// The settings as written, and where each key is (`window[0].days` -> position).
fn maintenance_fields(w: &mut Walker, v: Value, path: &str) -> Option<(MaintenanceSettings, Vec<(String, At)>)> {
    let f = w.mapping(v, path, MAINTENANCE_KEYS)?;
    let mut m = MaintenanceSettings::default();
    let mut nodes = Vec::new();
    if let Some((v, p)) = f.get("time_zone") {
        m.time_zone = w.text(v, &p);
        nodes.push(("time_zone".to_string(), v.at));
    }
    if let Some((v, p)) = f.get("window") {
        nodes.push(("window".to_string(), v.at));
        for (i, (item, item_path)) in w.list(v, &p)?.into_iter().enumerate() {
            let Some(wf) = w.mapping(item, &item_path, WINDOW_KEYS) else { continue };
            for key in WINDOW_KEYS {
                if let Some((kv, _)) = wf.get(key) {
                    nodes.push((format!("window[{i}].{key}"), kv.at));
                }
            }
            let days = wf.get("days").and_then(|(v, p)| w.strings(v, &p));
            let start = wf.get("start_time").and_then(|(v, p)| w.text(v, &p));
            let length = wf.get("length_minutes").and_then(|(v, p)| w.u32(v, &p));
            match (days, start, length) {
                (Some(days), Some(start_time), Some(length_minutes)) => {
                    m.windows.push(WindowSettings { days, start_time, length_minutes })
                }
                _ => w.error(item.at, &item_path, "a window needs days, start_time and length_minutes"),
            }
        }
    }
    Some((m, nodes))
}

pub fn cairn_update(w: &mut Walker, f: &Fields, into: &mut UpdateSettings) {
    let text = |w: &mut Walker, key: &str, slot: &mut Option<String>| {
        if let Some((v, p)) = f.get(key) {
            *slot = w.text(v, &p);
        }
    };
    text(w, "source", &mut into.source);
    text(w, "channel", &mut into.channel);
    text(w, "server", &mut into.server);
    text(w, "group", &mut into.group);
    text(w, "lock_server", &mut into.lock_server);
    text(w, "lock_group", &mut into.lock_group);
    if let Some((v, p)) = f.get("ca_bundle") {
        into.ca_bundle = w.absolute_path(v, &p);
    }
    for (key, slot) in [("enrollment_token", &mut into.enrollment_token), ("lock_token", &mut into.lock_token)] {
        if let Some((v, p)) = f.get(key) {
            *slot = w.text(v, &p).map(Secret);
        }
    }
    if let Some((v, p)) = f.get("insecure") {
        into.insecure = w.bool(v, &p);
    }
    for (key, slot) in [
        ("interval", &mut into.interval),
        ("bless_after", &mut into.bless_after),
        ("lock_retry", &mut into.lock_retry),
        ("download_timeout", &mut into.download_timeout),
    ] {
        if let Some((v, p)) = f.get(key)
            && let Some(d) = w.duration(v, &p)
        {
            *slot = Some(d);
        }
    }
    if let Some((v, p)) = f.get("strategy") {
        into.strategy = strategy(w, v, &p);
    }
    if let Some((v, p)) = f.get("maintenance") {
        into.maintenance = maintenance(w, v, &p);
    }
}

/// The agent's own check of the merged settings (what the keys' own checks cannot see, like
/// fleetlock without a lock server); its message names the key. The image's update.toml lies
/// under these settings, so a rollout server it may name is assumed here. Skipped when a key
/// was already refused: the document is refused anyway.
pub fn check(w: &mut Walker, settings: &UpdateSettings, at: At, path: &str) {
    if crate::diag::has_errors(&w.diagnostics) {
        return;
    }
    let mut checked = settings.clone();
    if checked.server.is_none() && checked.lock_server.is_none() && checked.strategy == Some(Strategy::FleetLock) {
        w.warn(
            at,
            path,
            "strategy fleetlock with no lock_server or server here: the image's update.toml must name one",
        );
        checked.server = Some("https://image.invalid".into());
    }
    if let Err(e) = checked.resolve() {
        w.error(at, path, e.to_string());
    }
}

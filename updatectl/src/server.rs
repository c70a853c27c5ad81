//! The rollout server's admin API (`cairn-server`), with a bearer token. Tables for people,
//! `--json` for scripts; exit codes say what kind of failure happened (see [`Failure`]).

use crate::table::{self, age, or_dash};
use cairn_release::admin::{Channel, EventRecord, Group, Instance, LockGroup, Package, RolloutStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a command failed, as its exit code tells scripts.
#[derive(Debug)]
pub enum Failure {
    /// 1: the server refused the request (bad input, conflict).
    Refused(String),
    /// 3: the server could not be reached, or failed.
    Unavailable(String),
    /// 4: no token, or a token the server does not accept.
    Unauthorized(String),
    /// 5: what was named does not exist.
    NotFound(String),
    /// 2: the command line or the local configuration is wrong.
    Usage(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unavailable(_) => 3,
            Failure::Unauthorized(_) => 4,
            Failure::NotFound(_) => 5,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Refused(m)
            | Failure::Unavailable(m)
            | Failure::Unauthorized(m)
            | Failure::NotFound(m)
            | Failure::Usage(m) => m,
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// Where the server is and how to authenticate: flags, then the environment, then the config
/// file. The token never comes from the command line.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/cairn/updatectl.toml` or `~/.config/cairn/updatectl.toml`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("cairn/updatectl.toml"))
}

/// The first line of a token file.
fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(Failure::Usage(format!("{}: no token in it", path.display())));
    }
    Ok(token)
}

impl Settings {
    pub fn load(server: Option<String>, token_file: Option<PathBuf>) -> Result<Settings> {
        let mut file = Settings::default();
        if let Some(path) = config_path()
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            file = toml::from_str(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        }
        let token = match (token_file, std::env::var("CAIRN_TOKEN").ok().filter(|t| !t.is_empty())) {
            (Some(path), _) => Some(read_token(&path)?),
            (None, Some(token)) => Some(token),
            (None, None) => match (&file.token, &file.token_file) {
                (Some(token), _) => Some(token.clone()),
                (None, Some(path)) => Some(read_token(path)?),
                (None, None) => None,
            },
        };
        Ok(Settings { server: server.or(file.server), token, token_file: None })
    }
}

pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn new(settings: Settings) -> Result<Client> {
        let base = settings.server.ok_or_else(|| {
            Failure::Usage(
                "no server: give --server URL, set CAIRN_SERVER, or server = \"...\" in the config file".into(),
            )
        })?;
        let token = settings.token.ok_or_else(|| {
            Failure::Unauthorized(
                "no admin token: give --token-file FILE, set CAIRN_TOKEN, or token_file = \"...\" in the config file"
                    .into(),
            )
        })?;
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http })
    }

    fn send(&self, method: reqwest::Method, path: &str, body: Option<reqwest::blocking::Body>) -> Result<Value> {
        let url = format!("{}/v1/admin{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().map_err(|e| Failure::Unavailable(format!("{url}: {e}")))?;
        let status = resp.status();
        let text = resp.text().map_err(|e| Failure::Unavailable(format!("{url}: {e}")))?;
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"].as_str().map_or_else(|| format!("{status}: {value}"), str::to_string);
        Err(match status.as_u16() {
            401 | 403 => Failure::Unauthorized(message),
            404 => Failure::NotFound(message),
            400..500 => Failure::Refused(message),
            _ => Failure::Unavailable(format!("{url}: {status}: {message}")),
        })
    }

    /// The answer read as the admin API's type for it (`cairn_release::admin`).
    fn typed<T: DeserializeOwned>(path: &str, value: Value) -> Result<T> {
        serde_json::from_value(value).map_err(|e| {
            Failure::Unavailable(format!("{path}: the server's answer is not what this updatectl reads: {e}"))
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::typed(path, self.send(reqwest::Method::GET, path, None)?)
    }

    /// Sends `body` as JSON; the answer as `T` (`Value` for whatever it is).
    pub fn call<B: Serialize, T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, body: &B) -> Result<T> {
        let value = self.send(method, path, Some(serde_json::to_vec(body).expect("JSON").into()))?;
        Self::typed(path, value)
    }
}

/// Prints `value` as JSON (`--json`) or with `human`.
pub fn output<T: Serialize>(value: &T, as_json: bool, human: impl FnOnce(&T)) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value).expect("JSON"));
    } else {
        human(value);
    }
}

/// GETs a list and prints it with `human` (`--json`: as JSON).
pub fn show_list<T: DeserializeOwned + Serialize>(
    client: &Client,
    path: &str,
    as_json: bool,
    human: fn(&[T]),
) -> Result<()> {
    let items: Vec<T> = client.get(path)?;
    output(&items, as_json, |v| human(v));
    Ok(())
}

fn opt(v: &Option<impl ToString>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

pub fn print_channels(channels: &[Channel]) {
    let rows: Vec<Vec<String>> =
        channels.iter().map(|c| vec![c.name.clone(), opt(&c.version), age(c.updated_at)]).collect();
    table::print(&["CHANNEL", "VERSION", "UPDATED"], &rows);
}

pub fn print_packages(packages: &[Package]) {
    let rows: Vec<Vec<String>> = packages
        .iter()
        .map(|p| vec![p.version.clone(), p.channels.join(","), p.size.to_string(), p.manifest_sha256[..12].to_string()])
        .collect();
    table::print(&["VERSION", "CHANNELS", "BYTES", "RELEASE.JSON SHA256"], &rows);
}

pub fn print_groups(groups: &[Group]) {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let p = &g.policy;
            let state = if g.halted {
                "halted"
            } else if !p.updates_enabled {
                "paused"
            } else {
                "active"
            };
            let version = match &p.pinned_version {
                Some(pin) => format!("{pin} (pinned)"),
                None => opt(&g.channel_version),
            };
            vec![
                g.name.clone(),
                g.channel.clone(),
                version,
                state.into(),
                format!("{}/{}", p.max_per_period, humanize_s(p.period_s)),
                yes_no(p.safe_mode),
                p.halt_after.to_string(),
                format!("{}%", p.percentage),
            ]
        })
        .collect();
    table::print(&["GROUP", "CHANNEL", "VERSION", "STATE", "RATE", "SAFE MODE", "HALT AFTER", "SHARE"], &rows);
}

fn humanize_s(s: u64) -> String {
    match s {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn print_instances(instances: &[Instance]) {
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.group.clone(),
                i.version.clone(),
                i.slot.clone(),
                i.state.clone(),
                age(i.last_checkin),
                or_dash(i.last_error.as_deref()),
            ]
        })
        .collect();
    table::print(&["INSTANCE", "GROUP", "VERSION", "SLOT", "STATE", "LAST CHECK-IN", "LAST ERROR"], &rows);
}

pub fn print_events(events: &[EventRecord]) {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                age(e.at),
                e.instance_id.clone(),
                opt(&e.group),
                e.kind.clone(),
                e.version.clone(),
                or_dash(e.error.as_deref()),
            ]
        })
        .collect();
    table::print(&["WHEN", "INSTANCE", "GROUP", "EVENT", "VERSION", "ERROR"], &rows);
}

pub fn print_rollout(groups: &[RolloutStatus]) {
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let state = if g.halted {
            format!("HALTED ({})", or_dash(g.halted_reason.as_deref()))
        } else if g.paused {
            "paused".into()
        } else {
            "active".into()
        };
        println!("Group {} (channel {}): target {}, {}", g.group, g.channel, opt(&g.target_version), state);
        println!(
            "  rollout of the target: {} succeeded, {} in progress, {} failed, {} granted this period",
            g.succeeded, g.in_progress, g.failed, g.granted_in_period
        );
        let pairs = |list: &[(String, i64)]| -> String {
            let list: Vec<String> = list.iter().map(|(k, n)| format!("{k} {n}")).collect();
            if list.is_empty() { "-".into() } else { list.join(", ") }
        };
        println!("  hosts: {} (by version: {}; by state: {})", g.hosts, pairs(&g.versions), pairs(&g.states));
    }
}

pub fn print_locks(groups: &[LockGroup]) {
    let mut rows_out = Vec::new();
    for g in groups {
        let token = yes_no(g.token_required);
        let anonymous = yes_no(g.anonymous);
        let used = format!("{}/{}", g.holders.len(), g.slots);
        let row = |holder: String, since: String| {
            vec![g.group.clone(), used.clone(), token.clone(), anonymous.clone(), holder, since]
        };
        if g.holders.is_empty() {
            rows_out.push(row("-".into(), "-".into()));
        }
        for h in &g.holders {
            rows_out.push(row(h.id.clone(), age(h.since)));
        }
    }
    table::print(&["GROUP", "HELD", "TOKEN", "ANONYMOUS", "HOLDER", "SINCE"], &rows_out);
}

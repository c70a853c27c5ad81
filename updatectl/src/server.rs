//! The rollout server's admin API (`cairn-server`), with a bearer token. Tables for people,
//! `--json` for scripts; exit codes say what kind of failure happened (see [`Failure`]).

use crate::table::{self, age, or_dash};
use serde_json::{Value, json};
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

/// Where the server is and how to authenticate: flags, then the environment (both through
/// clap), then the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: Option<String>,
    pub token: Option<String>,
}

/// `$XDG_CONFIG_HOME/cairn/updatectl.toml` or `~/.config/cairn/updatectl.toml`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("cairn/updatectl.toml"))
}

impl Settings {
    pub fn load(server: Option<String>, token: Option<String>) -> Result<Settings> {
        let mut file = Settings::default();
        if let Some(path) = config_path()
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            file = toml::from_str(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        }
        Ok(Settings { server: server.or(file.server), token: token.or(file.token) })
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
                "no admin token: give --token, set CAIRN_TOKEN, or token = \"...\" in the config file".into(),
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

    pub fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None)
    }

    pub fn json(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value> {
        self.send(method, path, Some(serde_json::to_vec(body).expect("JSON").into()))
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints `value` as JSON (`--json`) or with `human`.
pub fn output(value: &Value, as_json: bool, human: impl FnOnce(&Value)) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value).expect("JSON"));
    } else {
        human(value);
    }
}

fn rows(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

pub fn print_channels(v: &Value) {
    let rows: Vec<Vec<String>> = rows(v)
        .iter()
        .map(|c| vec![s(&c["name"]), s(&c["version"]), age(c["updated_at"].as_i64().unwrap_or(0))])
        .collect();
    table::print(&["CHANNEL", "VERSION", "UPDATED"], &rows);
}

pub fn print_packages(v: &Value) {
    let rows: Vec<Vec<String>> = rows(v)
        .iter()
        .map(|p| {
            vec![
                s(&p["version"]),
                s(&p["os_id"]),
                if p["complete"] == json!(true) { "yes".into() } else { "no".into() },
                s(&p["signed_by"]),
                or_dash(p["base_url"].as_str()),
                age(p["created_at"].as_i64().unwrap_or(0)),
            ]
        })
        .collect();
    table::print(&["VERSION", "OS", "COMPLETE", "SIGNED BY", "ARTIFACTS AT", "ADDED"], &rows);
}

pub fn print_groups(v: &Value) {
    let list = if v.is_array() { rows(v).to_vec() } else { vec![v.clone()] };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|g| {
            let state = if g["halted"] == json!(true) {
                "halted"
            } else if g["updates_enabled"] == json!(false) {
                "paused"
            } else {
                "active"
            };
            vec![
                s(&g["name"]),
                s(&g["channel"]),
                s(&g["pinned_version"]
                    .as_str()
                    .map_or(g["channel_version"].clone(), |p| json!(format!("{p} (pinned)")))),
                state.into(),
                format!("{}/{}", s(&g["max_per_period"]), humanize_s(g["period_s"].as_u64().unwrap_or(0))),
                if g["safe_mode"] == json!(true) { "yes".into() } else { "no".into() },
                s(&g["halt_after"]),
                format!("{}%", s(&g["percentage"])),
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

pub fn print_instances(v: &Value) {
    let rows: Vec<Vec<String>> = rows(v)
        .iter()
        .map(|i| {
            vec![
                s(&i["id"]),
                s(&i["group"]),
                s(&i["version"]),
                s(&i["slot"]),
                s(&i["state"]),
                age(i["last_checkin"].as_i64().unwrap_or(0)),
                or_dash(i["last_error"].as_str()),
            ]
        })
        .collect();
    table::print(&["INSTANCE", "GROUP", "VERSION", "SLOT", "STATE", "LAST CHECK-IN", "LAST ERROR"], &rows);
}

pub fn print_events(v: &Value) {
    let rows: Vec<Vec<String>> = rows(v)
        .iter()
        .map(|e| {
            vec![
                age(e["at"].as_i64().unwrap_or(0)),
                s(&e["instance_id"]),
                s(&e["group"]),
                s(&e["kind"]),
                s(&e["version"]),
                or_dash(e["error"].as_str()),
            ]
        })
        .collect();
    table::print(&["WHEN", "INSTANCE", "GROUP", "EVENT", "VERSION", "ERROR"], &rows);
}

pub fn print_rollout(v: &Value) {
    for (i, g) in rows(v).iter().enumerate() {
        if i > 0 {
            println!();
        }
        let state = if g["halted"] == json!(true) {
            format!("HALTED ({})", or_dash(g["halted_reason"].as_str()))
        } else if g["paused"] == json!(true) {
            "paused".into()
        } else {
            "active".into()
        };
        println!(
            "Group {} (channel {}): target {}, {}",
            s(&g["group"]),
            s(&g["channel"]),
            s(&g["target_version"]),
            state
        );
        println!(
            "  rollout of the target: {} succeeded, {} in progress, {} failed, {} granted this period",
            s(&g["succeeded"]),
            s(&g["in_progress"]),
            s(&g["failed"]),
            s(&g["granted_in_period"])
        );
        let pairs = |key: &str| -> String {
            let list: Vec<String> = rows(&g[key]).iter().map(|p| format!("{} {}", s(&p[0]), s(&p[1]))).collect();
            if list.is_empty() { "-".into() } else { list.join(", ") }
        };
        println!("  hosts: {} (by version: {}; by state: {})", s(&g["hosts"]), pairs("versions"), pairs("states"));
    }
}

pub fn print_locks(v: &Value) {
    let mut rows_out = Vec::new();
    for g in rows(v) {
        let holders = rows(&g["holders"]);
        let token = if g["token_required"] == json!(true) { "yes" } else { "no" };
        let used = format!("{}/{}", holders.len(), s(&g["slots"]));
        if holders.is_empty() {
            rows_out.push(vec![s(&g["group"]), used.clone(), token.into(), "-".into(), "-".into()]);
        }
        for h in holders {
            rows_out.push(vec![
                s(&g["group"]),
                used.clone(),
                token.into(),
                s(&h["id"]),
                age(h["since"].as_i64().unwrap_or(0)),
            ]);
        }
    }
    table::print(&["GROUP", "HELD", "TOKEN", "HOLDER", "SINCE"], &rows_out);
}

/// Uploads the release in `dir`: its signed documents, then each artifact the server is
/// missing, with a progress bar.
pub fn upload(client: &Client, dir: &Path, base_url: Option<&str>, quiet: bool) -> Result<Value> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| Failure::Usage(format!("{}: {e}", dir.join(name).display())))
    };
    let manifest = read("release.json")?;
    let signature = read("release.json.sig")?;
    let mut status = client.json(
        reqwest::Method::POST,
        "/packages",
        &json!({"manifest": manifest, "signature": signature, "base_url": base_url}),
    )?;
    let version = s(&status["version"]);
    for missing in rows(&status["missing"].clone()) {
        let name = s(&missing[0]);
        let path = dir.join(&name);
        let file = std::fs::File::open(&path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        let size = file.metadata().map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?.len();
        let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(size) };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:20} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("template"),
        );
        bar.set_message(name.clone());
        let body = reqwest::blocking::Body::sized(bar.wrap_read(file), size);
        status = client.send(reqwest::Method::PUT, &format!("/packages/{version}/artifacts/{name}"), Some(body))?;
        bar.finish();
    }
    Ok(status)
}

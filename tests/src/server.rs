//! Helpers for rollout-server tests and benchmarks: a PostgreSQL started in a temporary
//! directory, `cairn-server` as a process or in-process, small releases in a TUF repository, and
//! a JSON client.

use crate::etcd::Etcd;
use anyhow::{Context, Result, anyhow, bail};
use cairn_server::clock::{Clock, ManualClock, SystemClock};
use cairn_server::db::Db;
use cairn_server::locks::{self, Locks, etcd::EtcdSemaphores};
use cairn_server::rollout::Server;
use cairn_server::serve::{self, Running};
use serde_json::Value;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A PostgreSQL server of its own: data in a temporary directory, listening on 127.0.0.1 on a
/// free port and on a socket in that directory; stopped (immediately) on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn postgres_bin() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (/usr/lib/postgresql): run ./scripts/setup.sh (apt package postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| anyhow!("no initdb under /usr/lib/postgresql/*/bin: install the postgresql package"))
}

pub use crate::free_port;

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let bin = postgres_bin()?;
        let dir = tempfile::Builder::new().prefix("cairn-pg").tempdir()?;
        let root = nix::unistd::geteuid().is_root();
        // PostgreSQL refuses to run as root: as root, run it as the package's postgres user.
        if root {
            let pg = nix::unistd::User::from_name("postgres")?.ok_or_else(|| anyhow!("no postgres user"))?;
            nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid))?;
        }
        let run = |program: &str, args: &[&str]| -> Result<()> {
            let mut cmd = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            let out = cmd.args(args).output().with_context(|| format!("running {program}"))?;
            if !out.status.success() {
                bail!(
                    "{program} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        let data = dir.path().join("data");
        let data_s = data.to_str().expect("utf-8 temp path");
        run("initdb", &["-D", data_s, "-U", "cairn", "--auth=trust", "-E", "UTF8", "--no-sync"])?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=100",
            dir.path().display()
        );
        let log = dir.path().join("log");
        run("pg_ctl", &["-D", data_s, "-l", log.to_str().expect("utf-8"), "-o", &options, "-w", "-t", "60", "start"])?;
        run("createdb", &["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "cairn", "cairn"])?;
        Ok(Postgres { dir, bin, port })
    }

    pub fn url(&self) -> String {
        format!("postgres://cairn@127.0.0.1:{}/cairn", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd.args(["-D"]).arg(&data).args(["-m", "immediate", "stop"]).output();
    }
}

/// The `cairn-server` binary of this workspace, built if needed (same profile as the tests).
pub fn server_binary() -> Result<PathBuf> {
    workspace_binary("cairn-server", "cairn-server")
}

/// A binary of this workspace, built if needed with the profile of the running test or bench.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/PROFILE/deps/TEST for tests, target/PROFILE/BIN for benchmarks.
    let mut profile_dir = exe.parent().ok_or_else(|| anyhow!("odd binary path"))?;
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().ok_or_else(|| anyhow!("odd test binary path"))?;
    }
    let path = profile_dir.join(bin);
    // `cargo test --workspace` has just built it: use it as is. Asking cargo again would rebuild
    // its dependencies with `-p`'s narrower feature set (minutes, in CI).
    if is_newer_than_sources(&path, package)? {
        return Ok(path);
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", package, "--bin", bin]).current_dir(crate::workspace());
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().with_context(|| format!("cargo build -p {package}"))?;
    if !status.success() || !path.exists() {
        bail!("could not build {}", path.display());
    }
    Ok(path)
}

/// Whether `bin` exists and is newer than every source of `package` and of `cairn-release`
/// and `cairn-tuf` (their workspace dependencies) and than Cargo.lock: what make would decide.
fn is_newer_than_sources(bin: &Path, package: &str) -> Result<bool> {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else { return Ok(false) };
    let dir = match package {
        "cairn-server" => "server",
        "cairn-tests" => "tests",
        other => other,
    };
    let root = crate::workspace();
    let mut newest = std::fs::metadata(root.join("Cargo.lock"))?.modified()?;
    let mut pending = vec![root.join(dir), root.join("release"), root.join("tuf")];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                newest = newest.max(meta.modified()?);
            }
        }
    }
    Ok(built > newest)
}

/// `cairn-server serve` as a process; killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
}

impl ServerProcess {
    /// Starts `cairn-server serve ARGS --listen 127.0.0.1:0` and waits for its address.
    pub fn spawn(args: &[String]) -> Result<ServerProcess> {
        Self::spawn_logging(args, "info,sqlx=warn")
    }

    /// With a log filter (`warn` under load: a line per event is thousands a second).
    pub fn spawn_logging(args: &[String], filter: &str) -> Result<ServerProcess> {
        let mut child = Command::new(server_binary()?)
            .env("CAIRN_LOG", std::env::var("CAIRN_LOG").unwrap_or_else(|_| filter.to_string()))
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting cairn-server")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("cairn-server listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Ok(ServerProcess { child, url }),
            Err(_) => {
                let _ = child.kill();
                bail!("cairn-server did not say where it listens within 60 s")
            }
        }
    }

    pub fn sigkill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("cairn-server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cairn-server token create ARGS`: the token it prints.
pub fn create_token(store_args: &[String]) -> Result<String> {
    let out = Command::new(server_binary()?).args(["token", "create"]).args(store_args).output()?;
    if !out.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A small release in `dir/VERSION/`: release.json and two artifacts of bytes made from the
/// version. Enough for a server and an agent's fetch, which check sizes and hashes, not contents.
pub fn fake_release(dir: &Path, version: &str) -> Result<PathBuf> {
    let out = dir.join(version);
    // Bytes that do not compress away (xorshift seeded by the version): the stored zstd file
    // stays about as large, so ranges of it can be asked for.
    let usr = cairn_tuf::releases::incompressible(130_000, 0x9e3779b97f4a7c15 ^ u64::from(version.as_bytes()[0]));
    cairn_tuf::releases::example_release(&out, version, &usr)?;
    Ok(out)
}

/// A JSON client of the server's API. An agent client (`Api::agent`) speaks for any number of
/// hosts: a check-in enrolls its host first (creating the group's enrollment token with the
/// admin token when needed), and check-ins and events carry their host's credential, as the
/// agent's would. Requests for hosts that cannot enroll go without one.
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    client: reqwest::blocking::Client,
    hosts: Option<Hosts>,
}

/// What an agent client knows: the admin token and hosts' credentials.
struct Hosts {
    admin_token: String,
    /// instance id -> (group, credential)
    credentials: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

/// Groups' enrollment tokens by `(server URL, group)`, shared by every agent client of the
/// process: creating a token replaces the group's last one, so clients on several threads must
/// not each make their own.
static GROUP_TOKENS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<(String, String), String>>> =
    std::sync::LazyLock::new(Default::default);

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            client: reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client"),
            hosts: None,
        }
    }

    /// A client for hosts, enrolling them on the way with `admin_token`'s help.
    pub fn agent(base: &str, admin_token: &str) -> Api {
        let hosts = Hosts { admin_token: admin_token.to_string(), credentials: Default::default() };
        Api { hosts: Some(hosts), ..Api::new(base, None) }
    }

    /// The group's enrollment token, created on first use; `None` for a group the server does
    /// not know.
    pub fn enrollment_token(&self, group: &str) -> Result<Option<String>> {
        let hosts = self.hosts.as_ref().ok_or_else(|| anyhow!("not an agent client"))?;
        let key = (self.base.clone(), group.to_string());
        let mut tokens = GROUP_TOKENS.lock().unwrap();
        if let Some(t) = tokens.get(&key) {
            return Ok(Some(t.clone()));
        }
        let admin = Api::new(&self.base, Some(&hosts.admin_token));
        let (code, reply) = admin.send("POST", &format!("/v1/admin/groups/{group}/enrollment-token"), &Value::Null)?;
        match code {
            200 => {
                let token = reply["token"].as_str().ok_or_else(|| anyhow!("no token in {reply}"))?.to_string();
                tokens.insert(key, token.clone());
                Ok(Some(token))
            }
            404 => Ok(None),
            _ => bail!("creating group {group}'s enrollment token: {code} {reply}"),
        }
    }

    /// Host `id`'s credential for `group` (enrolling it, or moving it there); `None` when it
    /// cannot enroll (an unknown group, an id the server refuses).
    pub fn credential(&self, id: &str, group: &str) -> Result<Option<String>> {
        let hosts = self.hosts.as_ref().ok_or_else(|| anyhow!("not an agent client"))?;
        let current = hosts.credentials.lock().unwrap().get(id).cloned();
        if let Some((g, c)) = &current
            && g == group
        {
            return Ok(Some(c.clone()));
        }
        let enroll = |token: String| -> Result<(u16, Value)> {
            let mut req = json!({"format": 1, "instance_id": id, "group": group, "token": token});
            if let Some((_, c)) = &current {
                req["current"] = json!(c);
            }
            Api::new(&self.base, None).send("POST", "/v1/enroll", &req)
        };
        let Some(token) = self.enrollment_token(group)? else { return Ok(None) };
        let (mut code, mut reply) = enroll(token)?;
        if code == 401 || code == 403 {
            // The token remembered for this address may be an earlier server's (which this
            // one refuses, or whose group has no token here yet): tests in one process start
            // servers on ports the system hands out again.
            GROUP_TOKENS.lock().unwrap().remove(&(self.base.clone(), group.to_string()));
            let Some(token) = self.enrollment_token(group)? else { return Ok(None) };
            (code, reply) = enroll(token)?;
        }
        if code != 200 {
            return Ok(None);
        }
        let credential = reply["credential"].as_str().ok_or_else(|| anyhow!("no credential in {reply}"))?.to_string();
        hosts.credentials.lock().unwrap().insert(id.to_string(), (group.to_string(), credential.clone()));
        Ok(Some(credential))
    }

    /// The bearer token a request carries: an agent's host credential, or the client's token.
    fn bearer_for(&self, path: &str, body: Option<&[u8]>) -> Result<Option<String>> {
        let Some(hosts) = &self.hosts else { return Ok(self.token.clone()) };
        let doc: Value = body.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
        let id = doc["instance_id"].as_str().unwrap_or_default();
        match path {
            "/v1/checkin" => match doc["group"].as_str() {
                Some(group) if !id.is_empty() => self.credential(id, group),
                _ => Ok(None),
            },
            "/v1/events" => Ok(hosts.credentials.lock().unwrap().get(id).map(|(_, c)| c.clone())),
            _ => Ok(None),
        }
    }

    /// `(status, body as JSON or Null)`.
    pub fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Value)> {
        let bearer = self.bearer_for(path, body.as_deref())?;
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let text = resp.text()?;
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok((status, value))
    }

    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.call("GET", path, None)
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.call(method, path, Some(serde_json::to_vec(body)?))
    }

    /// Like `send`, but fails unless the status is 2xx.
    pub fn ok(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let (status, value) = self.send(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }
}

/// A check-in document.
pub fn checkin(id: &str, group: &str, version: &str) -> Value {
    serde_json::json!({
        "format": 1, "instance_id": id, "group": group, "os_id": "cairn",
        "version": version, "slot": "a", "state": "idle", "rolled_back": []
    })
}

pub fn event(id: &str, kind: &str, version: &str) -> Value {
    serde_json::json!({"format": 1, "instance_id": id, "kind": kind, "version": version})
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// SQLite for the rollout data, etcd for the FleetLock semaphores.
    Etcd,
}

/// How an in-process server is set up beyond its store.
#[derive(Default)]
pub struct Options {
    pub lock_groups_on_first_use: bool,
    /// Rate limits (default: none).
    pub limits: Option<cairn_server::identity::Limits>,
    pub settings: Option<serve::Settings>,
}

/// A server in this process (so the test owns its clock), on a real socket.
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    pub running: Option<Running>,
    pub clock: Arc<ManualClock>,
    pub url: String,
    pub token: String,
    pub tmp: tempfile::TempDir,
    /// The server's TUF repository (a copy of the test one): releases are published into it.
    pub repo: crate::TufCopy,
    pub tuf: Arc<cairn_server::tuf::TufRepository>,
    /// The etcd of `Backend::Etcd`, for tests that restart it.
    pub etcd: Option<Etcd>,
    _pg: Option<Postgres>,
}

impl InProcess {
    pub fn start(backend: Backend) -> Result<InProcess> {
        InProcess::start_with(backend, Options::default())
    }

    pub fn start_with(backend: Backend, options: Options) -> Result<InProcess> {
        let tmp = tempfile::tempdir()?;
        let pg = match backend {
            Backend::Postgres => Some(Postgres::start()?),
            Backend::Sqlite | Backend::Etcd => None,
        };
        let etcd = match backend {
            Backend::Etcd => Some(Etcd::start()?),
            Backend::Sqlite | Backend::Postgres => None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let data = tmp.path().join("data");
        let token = cairn_server::tokens::generate()?;
        let repo = crate::TufCopy::new(&tmp.path().join("tuf"))?;
        let tuf = Arc::new(cairn_server::tuf::TufRepository::open(&repo.feed, &repo.online, 86400)?);
        let running = rt.block_on(async {
            let db = match &pg {
                None => Db::sqlite(&data).await?,
                Some(pg) => Db::postgres(&pg.url()).await?,
            };
            cairn_server::store::insert_token(&db, &cairn_server::tokens::hash(&token), "test", 0, None).await?;
            let store = match &etcd {
                Some(etcd) => locks::Store::Etcd(Box::new(EtcdSemaphores::connect(&[etcd.url()]).await?)),
                None => locks::Store::Database,
            };
            let locks = Locks { store, create_on_first_use: options.lock_groups_on_first_use };
            let server = Server::new(db, clock.clone())
                .with_tuf(Some(tuf.clone()))
                .with_locks(locks)
                // Tests simulate many hosts from one address: no rate limits unless asked for.
                .with_limits(options.limits.unwrap_or_else(cairn_server::identity::Limits::unlimited));
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            serve::start(Arc::new(server), listener, None, options.settings.unwrap_or_default())
        })?;
        let url = format!("http://{}", running.addr);
        Ok(InProcess { rt, running: Some(running), clock, url, token, tmp, repo, tuf, etcd, _pg: pg })
    }

    pub fn admin(&self) -> Api {
        Api::new(&self.url, Some(&self.token))
    }

    /// A client for hosts, enrolling them as they first check in.
    pub fn agent(&self) -> Api {
        Api::agent(&self.url, &self.token)
    }

    /// Publishes release `version` into the server's TUF repository and makes it the channel's.
    pub fn release(&self, version: &str, channel: &str) -> Result<()> {
        self.repo.publish(&fake_release(&self.tmp.path().join("releases"), version)?, &["stable"])?;
        self.admin().ok("PUT", &format!("/v1/admin/channels/{channel}"), &json!({"version": version}))?;
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = self.rt.block_on(r.shutdown());
        }
    }
}

//! The FleetLock protocol of cairn-server against real databases over real HTTP on loopback:
//! exact statuses and error kinds, recursive lock and unlock, idempotent retries, operator
//! recovery, who may lock and release (hosts by their credentials, the group's token, groups
//! open to anonymous clients), and a safety test where 50 clients hammer the semaphore while an
//! observer checks that the holders never outnumber the slots.

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cairn_server::identity::Limits;
use cairn_tests::server::{Backend, InProcess, Options};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A FleetLock client: `(status, body)` of `pre-reboot` or `steady-state`; anonymous (as
/// Zincati without a token) or with a bearer token (a host's credential, a group's token).
struct Client {
    base: String,
    http: reqwest::blocking::Client,
    bearer: Option<String>,
}

impl Client {
    fn new(base: &str) -> Client {
        Client { base: base.to_string(), http: reqwest::blocking::Client::new(), bearer: None }
    }

    fn with_bearer(base: &str, bearer: &str) -> Client {
        Client { bearer: Some(bearer.to_string()), ..Client::new(base) }
    }

    fn raw(&self, op: &str, header: Option<&str>, body: Vec<u8>, token: Option<&str>) -> Result<(u16, Value)> {
        let mut req = self.http.post(format!("{}/v1/{op}", self.base)).body(body);
        if let Some(h) = header {
            req = req.header("fleet-lock-protocol", h);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        Ok((status, serde_json::from_str(&resp.text()?).unwrap_or(Value::Null)))
    }

    fn call(&self, op: &str, id: &str, group: &str) -> Result<(u16, Value)> {
        let body = json!({"client_params": {"id": id, "group": group}});
        self.raw(op, Some("true"), serde_json::to_vec(&body)?, self.bearer.as_deref())
    }

    fn lock(&self, id: &str, group: &str) -> Result<(u16, Value)> {
        self.call("pre-reboot", id, group)
    }

    fn unlock(&self, id: &str, group: &str) -> Result<(u16, Value)> {
        self.call("steady-state", id, group)
    }
}

fn kind(reply: &(u16, Value)) -> (u16, &str) {
    (reply.0, reply.1["kind"].as_str().unwrap_or(""))
}

/// Lets clients that cannot authenticate use `group`'s lock (or no longer).
fn open_to_anonymous(s: &InProcess, group: &str, anonymous: bool) -> Result<()> {
    s.admin().ok("PUT", &format!("/v1/admin/locks/{group}/anonymous"), &json!({"anonymous": anonymous}))?;
    Ok(())
}

fn holders(s: &InProcess, group: &str) -> Result<Vec<String>> {
    let status = s.admin().ok("GET", &format!("/v1/admin/locks?group={group}"), &Value::Null)?;
    Ok(status[0]["holders"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap().to_string()).collect())
}

fn protocol(backend: Backend) -> Result<()> {
    let s = InProcess::start(backend)?;
    open_to_anonymous(&s, "default", true)?;
    let c = Client::new(&s.url);
    let body =
        |id: &str, group: &str| serde_json::to_vec(&json!({"client_params": {"id": id, "group": group}})).unwrap();

    // Malformed requests.
    assert_eq!(kind(&c.raw("pre-reboot", None, body("a", "default"), None)?), (400, "invalid_request"));
    assert_eq!(kind(&c.raw("pre-reboot", Some("false"), body("a", "default"), None)?), (400, "invalid_request"));
    assert_eq!(kind(&c.raw("pre-reboot", Some("true"), b"{".to_vec(), None)?), (400, "invalid_request"));
    assert_eq!(
        kind(&c.raw("steady-state", Some("true"), b"{\"client_params\":{}}".to_vec(), None)?),
        (400, "invalid_request")
    );
    assert_eq!(kind(&c.lock("", "default")?), (400, "invalid_client_identity"));
    assert_eq!(kind(&c.lock("a", "bad_group")?), (400, "invalid_client_identity"));
    assert_eq!(kind(&c.lock("a", "")?), (400, "invalid_client_identity"));
    let unknown = c.lock("a", "nope")?;
    assert_eq!(kind(&unknown), (400, "unknown_group"));
    assert!(unknown.1["value"].as_str().unwrap().contains("nope"));
    assert_eq!(kind(&c.unlock("a", "nope")?), (400, "unknown_group"));
    assert!(holders(&s, "default")?.is_empty(), "bad requests changed nothing");

    // One slot: recursive lock, full semaphore, idempotent unlock.
    assert_eq!(c.lock("host-A", "default")?.0, 200);
    assert_eq!(c.lock("host-A", "default")?.0, 200, "recursive");
    let full = c.lock("host-b", "default")?;
    assert_eq!(kind(&full), (500, "failed_lock"));
    assert!(!full.1["value"].as_str().unwrap().contains("host-A"), "holders are not told anonymously: {}", full.1);
    assert_eq!(c.lock("host-a", "default")?.0, 500, "ids are case-sensitive");
    assert_eq!(c.unlock("host-b", "default")?.0, 200, "releasing what you do not hold succeeds");
    assert_eq!(holders(&s, "default")?, ["host-A"]);
    assert_eq!(c.unlock("host-A", "default")?.0, 200);
    assert_eq!(c.unlock("host-A", "default")?.0, 200, "idempotent");
    assert_eq!(c.lock("host-b", "default")?.0, 200);

    // The operator: more slots at any time, a new group, recovery of a dead holder.
    let admin = s.admin();
    admin.ok("PUT", "/v1/admin/locks/default", &json!({"slots": 2}))?;
    assert_eq!(c.lock("host-c", "default")?.0, 200);
    assert_eq!(kind(&c.lock("host-d", "default")?), (500, "failed_lock"));
    assert_eq!(holders(&s, "default")?, ["host-b", "host-c"]);
    admin.ok("POST", "/v1/admin/locks/default/release", &json!({"id": "host-b"}))?;
    let (code, _) = admin.send("POST", "/v1/admin/locks/default/release", &json!({"id": "host-b"}))?;
    assert_eq!(code, 404, "nothing to release");
    assert_eq!(c.lock("host-d", "default")?.0, 200);
    let (code, _) = admin.send("PUT", "/v1/admin/locks/bad_name", &json!({"slots": 1}))?;
    assert_eq!(code, 400);
    admin.ok("PUT", "/v1/admin/locks/workers.eu-1", &json!({"slots": 1}))?;
    assert_eq!(kind(&c.lock("w1", "workers.eu-1")?), (401, "unauthorized"), "a new group is closed");
    open_to_anonymous(&s, "workers.eu-1", true)?;
    assert_eq!(c.lock("w1", "workers.eu-1")?.0, 200);

    // A group with a token, closed again: refused without it, taken with it.
    let token =
        admin.ok("POST", "/v1/admin/locks/workers.eu-1/token", &Value::Null)?["token"].as_str().unwrap().to_string();
    open_to_anonymous(&s, "workers.eu-1", false)?;
    assert_eq!(kind(&c.raw("steady-state", Some("true"), body("w1", "workers.eu-1"), None)?), (401, "unauthorized"));
    assert_eq!(
        kind(&c.raw("steady-state", Some("true"), body("w1", "workers.eu-1"), Some("cairn_x"))?),
        (401, "unauthorized")
    );
    assert_eq!(c.raw("steady-state", Some("true"), body("w1", "workers.eu-1"), Some(&token))?.0, 200);
    assert_eq!(c.lock("host-c", "default")?.0, 200, "an open group needs no token");

    // The timeline.
    let events = admin.ok("GET", "/v1/admin/events?group=default&limit=100", &Value::Null)?;
    let timeline: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["kind"].as_str().unwrap(), e["instance_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        timeline,
        [
            "pre-reboot host-A",
            "steady-state host-A",
            "pre-reboot host-b",
            "pre-reboot host-c",
            "lock-released host-b",
            "pre-reboot host-d"
        ]
    );
    Ok(())
}

#[test]
fn fleetlock_protocol_on_sqlite() -> Result<()> {
    protocol(Backend::Sqlite)
}

#[test]
fn fleetlock_protocol_on_postgres() -> Result<()> {
    protocol(Backend::Postgres)
}

#[test]
fn fleetlock_protocol_on_etcd() -> Result<()> {
    protocol(Backend::Etcd)
}

/// Retries `call` while the server answers `internal` (its store is down), until `deadline`.
fn through_outage(deadline: Instant, call: impl Fn() -> Result<(u16, Value)>) -> Result<(u16, Value)> {
    loop {
        let reply = call()?;
        if kind(&reply) != (500, "internal") || Instant::now() > deadline {
            return Ok(reply);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 50 clients take and give back slots for a while; in their critical section each counts
/// itself and checks that the server lists it as a holder, and an observer polls the server:
/// neither ever sees more holders than slots. With `restart_etcd`, etcd is killed and started
/// again in the middle: clients ride through the outage (an `internal` answer to pre-reboot
/// leaves them unsure, so they ask again), no holder is lost and no slot granted twice.
fn hammer(backend: Backend, slots: usize, restart_etcd: bool) -> Result<()> {
    // The clients retry every few milliseconds from one address: no rate limit here.
    let options = Options { limits: Some(Limits::unlimited()), ..Options::default() };
    let mut s = InProcess::start_with(backend, options)?;
    s.admin().ok("PUT", "/v1/admin/locks/default", &json!({"slots": slots}))?;
    open_to_anonymous(&s, "default", true)?;
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let acquired = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(if restart_etcd { 8 } else { 4 });
    let deadline = Instant::now() + run_for;
    // How long a client rides through an outage before it gives up (etcd starts in seconds).
    let patience = deadline + Duration::from_secs(60);
    // The clients run for `run_for` and until the semaphore was taken this often (a loaded
    // machine may need longer), so the checks below always see real contention; only a
    // semaphore that stopped granting runs into `patience`.
    const ENOUGH: usize = 40;
    let clients: Vec<_> = (0..50)
        .map(|n| {
            let (url, inside, most_inside, acquired, admin) =
                (s.url.clone(), inside.clone(), most_inside.clone(), acquired.clone(), s.admin());
            std::thread::spawn(move || -> Result<()> {
                let c = Client::new(&url);
                let id = format!("host-{n}");
                // ... and until every slot was held at once, seen from the clients' side, so the
                // check that it happened cannot fail on a machine too loaded to overlap them in
                // `run_for`.
                while (Instant::now() < deadline
                    || acquired.load(Ordering::SeqCst) < ENOUGH
                    || most_inside.load(Ordering::SeqCst) < slots)
                    && Instant::now() < patience
                {
                    let (code, body) = through_outage(patience, || c.lock(&id, "default"))?;
                    match code {
                        200 => {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most_inside.fetch_max(now, Ordering::SeqCst);
                            acquired.fetch_add(1, Ordering::SeqCst);
                            // The server must list this holder (not lose it) while it holds; the
                            // check also keeps the slot long enough that holders would overlap.
                            let listed = loop {
                                let (code, status) =
                                    admin.send("GET", "/v1/admin/locks?group=default", &Value::Null)?;
                                if code == 200 {
                                    break status[0]["holders"].as_array().unwrap().iter().any(|h| h["id"] == id);
                                }
                                anyhow::ensure!(Instant::now() < patience, "lock status: {code} {status}");
                                std::thread::sleep(Duration::from_millis(50));
                            };
                            anyhow::ensure!(listed, "{id} holds a slot the server does not list");
                            std::thread::sleep(Duration::from_millis(10));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            let (code, body) = through_outage(patience, || c.unlock(&id, "default"))?;
                            anyhow::ensure!(code == 200, "steady-state: {code} {body}");
                        }
                        // Retry soon (Zincati waits minutes), spread so the clients do not march in step.
                        500 if body["kind"] == "failed_lock" => {
                            std::thread::sleep(Duration::from_millis(5 + n as u64 % 10))
                        }
                        _ => anyhow::bail!("pre-reboot: {code} {body}"),
                    }
                }
                Ok(())
            })
        })
        .collect();
    let observer = {
        let (stop, admin) = (stop.clone(), s.admin());
        std::thread::spawn(move || -> Result<(usize, usize)> {
            let (mut most, mut reads) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                // Often enough to catch an overlap, not so often that it starves the clients.
                std::thread::sleep(Duration::from_millis(1));
                let (code, status) = admin.send("GET", "/v1/admin/locks?group=default", &Value::Null)?;
                if code == 200 {
                    most = most.max(status[0]["holders"].as_array().map_or(0, Vec::len));
                    reads += 1;
                }
            }
            Ok((most, reads))
        })
    };
    let mut after_restart = None;
    if restart_etcd {
        std::thread::sleep(run_for / 3);
        let before = acquired.load(Ordering::SeqCst);
        s.etcd.as_mut().expect("an etcd backend").restart()?;
        eprintln!("etcd restarted after {before} acquisitions");
        after_restart = Some(acquired.load(Ordering::SeqCst));
    }
    for c in clients {
        c.join().expect("client thread")?;
    }
    stop.store(true, Ordering::SeqCst);
    let (observed, reads) = observer.join().expect("observer thread")?;
    let (most, total) = (most_inside.load(Ordering::SeqCst), acquired.load(Ordering::SeqCst));
    eprintln!(
        "{backend:?}, {slots} slot(s): {total} acquisitions; at most {most} inside at once, {observed} holders seen \
         in {reads} reads"
    );
    assert!(
        total >= ENOUGH,
        "the semaphore stopped granting: {total} acquisitions in {:?}",
        patience - deadline + run_for
    );
    assert!(most <= slots && observed <= slots, "more holders than slots: {most} inside, {observed} seen");
    assert_eq!(most, slots, "the slots were all used at some point (the test could see a violation)");
    if let Some(at) = after_restart {
        assert!(total >= at + 10, "little progress after etcd's restart: {} acquisitions", total - at);
    }
    assert!(holders(&s, "default")?.is_empty());
    Ok(())
}

#[test]
fn fifty_clients_never_exceed_the_slots_on_sqlite() -> Result<()> {
    hammer(Backend::Sqlite, 1, false)?;
    hammer(Backend::Sqlite, 3, false)
}

#[test]
fn fifty_clients_never_exceed_the_slots_on_postgres() -> Result<()> {
    hammer(Backend::Postgres, 1, false)?;
    hammer(Backend::Postgres, 3, false)
}

#[test]
fn fifty_clients_never_exceed_the_slots_on_etcd_through_a_restart() -> Result<()> {
    hammer(Backend::Etcd, 1, true)?;
    hammer(Backend::Etcd, 3, true)
}

/// `updatectl lock status|slots|release|token` against a server.
#[test]
fn updatectl_shows_and_fixes_the_reboot_lock() -> Result<()> {
    let s = InProcess::start(Backend::Sqlite)?;
    let updatectl = cairn_tests::server::workspace_binary("updatectl", "updatectl")?;
    let run = |args: &[&str]| -> Result<(i32, String, String)> {
        let out = std::process::Command::new(&updatectl)
            .args(args)
            .env("CAIRN_SERVER", &s.url)
            .env("CAIRN_TOKEN", &s.token)
            .env("XDG_CONFIG_HOME", s.tmp.path().join("no-config"))
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, out, err) = run(&["lock", "slots", "default", "2"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0/2"), "{out}");
    let (code, out, err) = run(&["lock", "anonymous", "default", "on"])?;
    assert_eq!(code, 0, "{out}{err}");
    let row: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row, ["default", "0/2", "no", "yes", "-", "-"], "{out}");
    let c = Client::new(&s.url);
    assert_eq!(c.lock("node-1", "default")?.0, 200);
    let (_, out, _) = run(&["lock", "status"])?;
    let line = out.lines().find(|l| l.starts_with("default")).unwrap_or_default().to_string();
    assert!(line.contains("1/2") && line.contains("node-1") && line.contains(" ago"), "{out}");
    let (_, out, _) = run(&["--json", "lock", "status", "--group", "default"])?;
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(status[0]["holders"][0]["id"], "node-1");
    let (code, out, err) = run(&["lock", "release", "node-1", "--group", "default"])?;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(&["lock", "release", "node-1", "--group", "default"])?;
    assert_eq!((code, err.contains("holds no reboot slot")), (5, true), "{err}");
    let (code, _, _) = run(&["lock", "status", "--group", "nope"])?;
    assert_eq!(code, 5);
    let (code, out, _) = run(&["lock", "token", "default"])?;
    assert!(code == 0 && out.trim().starts_with("cairn_"), "{out}");
    let (code, _, _) = run(&["lock", "anonymous", "default", "off"])?;
    assert_eq!(code, 0);
    assert_eq!(kind(&c.lock("node-1", "default")?), (401, "unauthorized"));
    assert_eq!(Client::with_bearer(&s.url, out.trim()).lock("node-1", "default")?.0, 200, "with the token");
    let (code, _, _) = run(&["lock", "token", "default", "--remove"])?;
    assert_eq!(code, 0);
    assert_eq!(kind(&c.lock("node-1", "default")?), (401, "unauthorized"), "closed, and no token any more");
    Ok(())
}

/// The agent's FleetLock client against the server, each host with the credential it enrolled
/// for (the agent's own enrollment code, its file in a temporary directory).
#[test]
fn the_agent_client_takes_and_gives_back_slots() -> Result<()> {
    use cairn_agent::credential::Credentials;
    use cairn_agent::fleetlock::{FleetLockClient, LockAuth};
    use cairn_agent::http::{ClientOptions, client};
    use cairn_agent::ports::{LockError, RebootLock};
    use cairn_release::update_config::Secret;
    let s = InProcess::start(Backend::Sqlite)?;
    let http = client(&ClientOptions::insecure(Duration::from_secs(10)))?;
    let token = s.agent().enrollment_token("default")?.expect("the default group");
    let host = |id: &str, lock_group: &str| {
        let credentials = Credentials::load(
            s.tmp.path().join(format!("{id}.json")),
            &s.url,
            id,
            "default",
            Some(Secret(token.clone())),
            http.clone(),
        );
        FleetLockClient::new(&s.url, id, lock_group, http.clone(), LockAuth::Host(Arc::new(credentials)))
    };
    let (a, b) = (host("host-a", "default"), host("host-b", "default"));
    a.lock()?;
    let refused = b.lock().unwrap_err();
    assert!(
        matches!(&refused, LockError::Refused { kind, value, .. } if kind == "failed_lock" && value.contains("host-a")),
        "an authenticated host learns who holds the slot: {refused}"
    );
    a.unlock()?;
    b.lock()?;
    let nowhere = host("host-c", "nope");
    assert!(matches!(nowhere.lock(), Err(LockError::Refused { kind, .. }) if kind == "unknown_group"));
    let credential_file: Value = serde_json::from_slice(&std::fs::read(s.tmp.path().join("host-a.json"))?)?;
    assert_eq!(credential_file["group"], "default");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.tmp.path().join("host-a.json"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the credential is root's alone");
    Ok(())
}

/// A closed group (the default) refuses anyone without a credential or its token; a host may
/// release only its own slot; who holds the slots is told only to authenticated callers.
#[test]
fn only_hosts_with_credentials_lock_and_only_the_holder_releases() -> Result<()> {
    let s = InProcess::start(Backend::Sqlite)?;
    let agent = s.agent();
    let credential = |id: &str| agent.credential(id, "default").map(|c| c.expect("enrolled"));
    let (a, b) =
        (Client::with_bearer(&s.url, &credential("host-a")?), Client::with_bearer(&s.url, &credential("host-b")?));
    let anonymous = Client::new(&s.url);
    let refused = anonymous.lock("host-x", "default")?;
    assert_eq!(kind(&refused), (401, "unauthorized"), "{}", refused.1);
    assert_eq!(a.lock("host-a", "default")?.0, 200);
    assert_eq!(kind(&anonymous.unlock("host-a", "default")?), (401, "unauthorized"));
    let forged = b.unlock("host-a", "default")?;
    assert_eq!(kind(&forged), (403, "unauthorized"), "host-b releasing host-a's slot: {}", forged.1);
    assert_eq!(kind(&b.lock("host-a", "default")?), (403, "unauthorized"), "host-b taking a slot as host-a");
    assert_eq!(kind(&Client::with_bearer(&s.url, "cairn_forged").lock("host-a", "default")?), (401, "unauthorized"));
    assert_eq!(holders(&s, "default")?, ["host-a"], "nothing changed");

    let full = b.lock("host-b", "default")?;
    assert_eq!(kind(&full), (500, "failed_lock"));
    assert!(full.1["value"].as_str().unwrap().contains("host-a"), "a host sees the holders: {}", full.1);
    open_to_anonymous(&s, "default", true)?;
    let full = anonymous.lock("host-x", "default")?;
    assert_eq!(kind(&full), (500, "failed_lock"));
    assert!(!full.1.to_string().contains("host-a"), "an anonymous caller learns nothing of holders: {}", full.1);
    open_to_anonymous(&s, "default", false)?;
    assert_eq!(a.unlock("host-a", "default")?.0, 200, "the holder releases its own slot");
    assert!(holders(&s, "default")?.is_empty());
    Ok(())
}

/// etcd's JSON gateway (`/v3/kv/...`), to read and write keys as another client would.
struct EtcdKeys {
    url: String,
    http: reqwest::blocking::Client,
}

impl EtcdKeys {
    fn call(&self, op: &str, body: Value) -> Result<Value> {
        let reply = self.http.post(format!("{}/v3/kv/{op}", self.url)).body(body.to_string()).send()?;
        Ok(serde_json::from_str(&reply.error_for_status()?.text()?)?)
    }

    fn put(&self, key: &str, value: &str) -> Result<()> {
        self.call("put", json!({"key": B64.encode(key), "value": B64.encode(value)}))?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Value> {
        let reply = self.call("range", json!({"key": B64.encode(key)}))?;
        let value = reply["kvs"][0]["value"].as_str().ok_or_else(|| anyhow::anyhow!("no key {key}: {reply}"))?;
        Ok(serde_json::from_slice(&B64.decode(value)?)?)
    }
}

fn semaphore_key(group: &str) -> String {
    format!("com.coreos.airlock/groups/{group}/v1/semaphore")
}

/// airlock's layout both ways: a group airlock created in etcd is served with its holders,
/// and what Cairn writes (a new key, a slot change, a lock) is what airlock reads.
#[test]
fn etcd_semaphores_are_airlocks() -> Result<()> {
    let s = InProcess::start(Backend::Etcd)?;
    let keys = EtcdKeys { url: s.etcd.as_ref().expect("etcd").url(), http: reqwest::blocking::Client::new() };
    let c = Client::new(&s.url);
    open_to_anonymous(&s, "default", true)?;

    keys.put(&semaphore_key("legacy"), r#"{"total_slots":2,"holders":["old-host"]}"#)?;
    assert_eq!(kind(&c.lock("new-host", "legacy")?), (401, "unauthorized"), "airlock's group is closed to anonymous");
    open_to_anonymous(&s, "legacy", true)?;
    assert_eq!(c.lock("new-host", "legacy")?.0, 200);
    let full = c.lock("third", "legacy")?;
    assert_eq!(kind(&full), (500, "failed_lock"), "{}", full.1);
    let written = keys.get(&semaphore_key("legacy"))?;
    assert_eq!(written["total_slots"], 2);
    assert_eq!(written["holders"], json!(["old-host", "new-host"]));
    let status = s.admin().ok("GET", "/v1/admin/locks", &Value::Null)?;
    let groups: Vec<(&str, i64)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group"].as_str().unwrap(), g["slots"].as_i64().unwrap()))
        .collect();
    assert_eq!(groups, [("default", 1), ("legacy", 2)]);
    assert_eq!(holders(&s, "legacy")?, ["old-host", "new-host"], "airlock's holder has no time: listed first");

    // The default group's key appears on first use, with the registered slot count.
    assert_eq!(c.lock("a", "default")?.0, 200);
    assert_eq!(keys.get(&semaphore_key("default"))?["holders"], json!(["a"]));
    s.admin().ok("PUT", "/v1/admin/locks/default", &json!({"slots": 4}))?;
    assert_eq!(keys.get(&semaphore_key("default"))?["total_slots"], 4);
    assert_eq!(c.unlock("a", "default")?.0, 200);
    assert_eq!(keys.get(&semaphore_key("default"))?, json!({"total_slots": 4, "holders": []}));

    // An operator's release of airlock's stuck holder.
    s.admin().ok("POST", "/v1/admin/locks/legacy/release", &json!({"id": "old-host"}))?;
    assert_eq!(keys.get(&semaphore_key("legacy"))?["holders"], json!(["new-host"]));
    Ok(())
}

/// With `--lock-groups-on-first-use`, a host's first pre-reboot creates its group (1 slot,
/// closed: hosts use their credentials).
#[test]
fn lock_groups_are_created_on_first_use_when_allowed() -> Result<()> {
    let s = InProcess::start_with(Backend::Sqlite, Options { lock_groups_on_first_use: true, ..Options::default() })?;
    let agent = s.agent();
    let host = |id: &str| -> Result<Client> {
        Ok(Client::with_bearer(&s.url, &agent.credential(id, "default")?.expect("enrolled")))
    };
    let (c, b) = (host("a")?, host("b")?);
    assert_eq!(kind(&Client::new(&s.url).lock("a", "edge-7")?), (401, "unauthorized"));
    assert_eq!(c.lock("a", "edge-7")?.0, 200);
    assert_eq!(kind(&b.lock("b", "edge-7")?), (500, "failed_lock"));
    assert_eq!(holders(&s, "edge-7")?, ["a"]);
    assert_eq!(b.unlock("b", "edge-9")?.0, 200, "steady-state creates a group too: nothing to release");
    assert_eq!(kind(&c.lock("a", "bad_name")?), (400, "invalid_client_identity"));
    let status = s.admin().ok("GET", "/v1/admin/locks", &Value::Null)?;
    let groups: Vec<&str> = status.as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap()).collect();
    assert_eq!(groups, ["default", "edge-7", "edge-9"]);
    Ok(())
}

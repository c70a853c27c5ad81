//! cairn-server against real databases (SQLite in a temporary directory, PostgreSQL started by
//! the test) over real HTTP on loopback: the admin and agent APIs, refusals of bad input, the
//! rollout policy with many simulated agents and an injected clock, and durability across
//! SIGKILL and clean shutdowns.

use anyhow::Result;
use cairn_server::clock::{Clock, ManualClock, SystemClock};
use cairn_server::db::Db;
use cairn_server::rollout::Server;
use cairn_server::serve;
use cairn_tests::TufCopy;
use cairn_tests::server::{
    Api, Backend, InProcess, Options, Postgres, ServerProcess, checkin, create_token, event, fake_release,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_else(|| panic!("no JSON error in {v}")).to_string()
}

/// Every admin and agent endpoint, and a refusal of each kind of bad input with nothing changed.
fn api_scenario(backend: Backend) -> Result<()> {
    let s = InProcess::start(backend)?;
    let admin = s.admin();
    let agent = s.agent();

    // Tokens.
    let (code, body) = agent.get("/v1/admin/groups")?;
    assert_eq!(code, 401);
    assert!(error_of(&body).contains("token is required"));
    let (code, body) = Api::new(&s.url, Some("cairn_wrong")).get("/v1/admin/groups")?;
    assert_eq!((code, error_of(&body).contains("not valid")), (401, true));

    // The default group follows the channel stable from the start.
    let groups = admin.ok("GET", "/v1/admin/groups", &Value::Null)?;
    assert_eq!(groups[0]["name"], "default");
    assert_eq!(groups[0]["channel"], "stable");
    assert_eq!(groups[0]["channel_version"], Value::Null);

    // Releases come from the server's TUF repository: a channel names only one it has.
    assert_eq!(admin.ok("GET", "/v1/admin/packages", &Value::Null)?, json!([]));
    let (code, body) = admin.send("PUT", "/v1/admin/channels/stable", &json!({"version": "2"}))?;
    assert_eq!((code, error_of(&body).contains("no release \"2\" in the TUF repository")), (400, true), "{body}");
    let releases = s.tmp.path().join("releases");
    let dir = fake_release(&releases, "2")?;
    s.repo.publish(&dir, &["stable"])?;
    let manifest = std::fs::read_to_string(dir.join("release.json"))?;
    let packages = admin.ok("GET", "/v1/admin/packages", &Value::Null)?;
    assert_eq!(packages[0]["version"], "2", "published a moment ago, listed at once: {packages}");
    assert_eq!(packages[0]["manifest"], "2-release.json");
    assert_eq!(packages[0]["channels"], json!(["stable"]));
    let (code, body) = admin.send("PUT", "/v1/admin/channels/stable", &json!({"version": "9"}))?;
    assert_eq!((code, error_of(&body).contains("no release \"9\"")), (400, true), "{body}");

    // Before the channel has a version, hosts are told why there is nothing.
    let reply = agent.ok("POST", "/v1/checkin", &checkin("h1", "default", "1"))?;
    assert_eq!(reply["update"], Value::Null);
    assert!(reply["reason"].as_str().unwrap_or_default().contains("no version yet"), "{reply}");
    admin.ok("PUT", "/v1/admin/channels/stable", &json!({"version": "2"}))?;

    // Malformed check-ins, from h1 with its credential.
    let h1 = Api::new(&s.url, agent.credential("h1", "default")?.as_deref());
    let (code, body) = h1.call("POST", "/v1/checkin", Some(b"{".to_vec()))?;
    assert_eq!(code, 400);
    assert!(error_of(&body).starts_with("check-in:"), "{body}");
    let mut typo = checkin("h1", "default", "1");
    typo["slott"] = json!("a");
    let (code, body) = agent.send("POST", "/v1/checkin", &typo)?;
    assert_eq!((code, error_of(&body).contains("slott")), (400, true), "{body}");
    // A host that cannot enroll (a bad id) is refused before its body is read.
    let (code, body) = agent.send("POST", "/v1/checkin", &checkin("../../etc", "default", "1"))?;
    assert_eq!((code, error_of(&body).contains("credential is required")), (401, true), "{body}");
    let (code, body) = h1.send("POST", "/v1/checkin", &checkin("h1", "nope", "1"))?;
    assert_eq!((code, error_of(&body).contains("enrolled in group \"default\"")), (403, true), "{body}");

    // A host behind the channel is offered the release's manifest target; the repository
    // serves it and the artifacts (byte ranges too), and nothing outside metadata/ and targets/.
    let reply = agent.ok("POST", "/v1/checkin", &checkin("h1", "default", "1"))?;
    let offer = &reply["update"];
    assert_eq!(offer["version"], "2", "{reply}");
    assert_eq!(offer["path"], "2-release.json");
    let manifest_sha256 = hex::encode(Sha256::digest(manifest.as_bytes()));
    assert_eq!(offer["manifest_sha256"], manifest_sha256);
    let http = reqwest::blocking::Client::new();
    let target = |name: &str| -> Result<String> {
        let sha = hex::encode(Sha256::digest(std::fs::read(dir.join(name))?));
        Ok(format!("{}/v1/tuf/targets/{sha}.2-{name}", s.url))
    };
    let got = http.get(target("release.json")?).send()?.bytes()?;
    assert_eq!(&got[..], manifest.as_bytes());
    let usr = std::fs::read(dir.join("usr.img.zst"))?;
    let part = http.get(target("usr.img.zst")?).header("range", "bytes=1000-1999").send()?;
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(&part.bytes()?[..], &usr[1000..2000]);
    for path in
        ["/v1/tuf/targets/..%2F..%2Fdata%2Fcairn-server.db", "/v1/tuf/online/timestamp-1.pk8", "/v1/packages/2/x"]
    {
        let (code, _) = agent.get(path)?;
        assert_eq!(code, 404, "{path}");
    }

    // Events: only a host's own, with its credential.
    let (code, body) = agent.send("POST", "/v1/events", &event("stranger", "staged", "2"))?;
    assert_eq!((code, error_of(&body).contains("credential is required")), (401, true), "{body}");
    let h2 = Api::new(&s.url, agent.credential("h2", "default")?.as_deref());
    let (code, body) = h2.send("POST", "/v1/events", &event("h1", "failed", "2"))?;
    assert_eq!((code, error_of(&body).contains("not \"h1\"'s")), (403, true), "h2 forging h1's failure: {body}");
    let (code, body) = h2.send("POST", "/v1/checkin", &checkin("h1", "default", "1"))?;
    assert_eq!(code, 403, "h2 checking in as h1: {body}");
    let (code, body) = agent.send(
        "POST",
        "/v1/events",
        &json!({"format": 1, "instance_id": "h1", "kind": "exploded", "version": "2"}),
    )?;
    assert_eq!(code, 400, "{body}");
    for kind in ["staged", "blessed"] {
        let (code, body) = agent.send("POST", "/v1/events", &event("h1", kind, "2"))?;
        assert_eq!(code, 204, "{body}");
    }
    // Blessed: the host runs 2 in its other slot, before it even checks in again.
    let h1 = admin.ok("GET", "/v1/admin/instances?group=default", &Value::Null)?;
    assert_eq!(
        (h1[0]["version"].as_str(), h1[0]["slot"].as_str(), h1[0]["state"].as_str()),
        (Some("2"), Some("b"), Some("blessed"))
    );
    agent.ok("POST", "/v1/checkin", &checkin("h1", "default", "2"))?;
    let events = admin.ok("GET", "/v1/admin/events?instance=h1", &Value::Null)?;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["granted", "staged", "blessed"]);
    let rollout = admin.ok("GET", "/v1/admin/rollout?group=default", &Value::Null)?;
    assert_eq!(rollout[0]["versions"], json!([["2", 1]]), "{rollout}");
    assert_eq!((rollout[0]["succeeded"].as_u64(), rollout[0]["halted"].as_bool()), (Some(1), Some(false)));
    let instances = admin.ok("GET", "/v1/admin/instances?version=2", &Value::Null)?;
    assert_eq!(instances[0]["id"], "h1");
    let (code, _) = admin.get("/v1/admin/rollout?group=nope")?;
    assert_eq!(code, 404);

    // Groups and channels: bad settings refused.
    for (body, expect) in [
        (json!({"name": "canary", "percentage": 150}), "percentage"),
        (json!({"name": "canary", "channel": "nightly"}), "unknown channel"),
        (json!({"name": "Canary"}), "group"),
        (json!({"name": "canary", "max_per_perod": 3}), "max_per_perod"),
    ] {
        let (code, reply) = admin.send("POST", "/v1/admin/groups", &body)?;
        assert_eq!(code, 400, "{body} -> {reply}");
        assert!(error_of(&reply).contains(expect), "{body} -> {reply}");
    }
    let (code, _) = admin.send("POST", "/v1/admin/groups", &json!({"name": "default"}))?;
    assert_eq!(code, 409);
    assert_eq!(admin.ok("GET", "/v1/admin/groups", &Value::Null)?.as_array().map(Vec::len), Some(1));
    // A group pinned to another release of the repository is offered that one.
    s.repo.publish(&fake_release(&releases, "3")?, &["beta"])?;
    admin.ok("POST", "/v1/admin/groups", &json!({"name": "edge", "pinned_version": "3"}))?;
    let reply = agent.ok("POST", "/v1/checkin", &checkin("h9", "edge", "1"))?;
    assert_eq!(reply["update"]["path"], "3-release.json", "{reply}");
    admin.ok("PATCH", "/v1/admin/groups/edge", &json!({"pinned_version": ""}))?;

    // Metrics.
    let text = http.get(format!("{}/metrics", s.url)).send()?.text()?;
    assert!(text.contains("cairn_server_checkins_total{result=\"offer\"} 2"), "{text}");
    assert!(text.contains("cairn_server_grants_total 2"), "{text}");
    assert!(text.contains("cairn_server_instances{group=\"default\",version=\"2\",state=\"idle\"} 1"), "{text}");
    Ok(())
}

#[test]
fn api_on_sqlite() -> Result<()> {
    api_scenario(Backend::Sqlite)
}

#[test]
fn api_on_postgres() -> Result<()> {
    api_scenario(Backend::Postgres)
}

fn offered(reply: &Value) -> bool {
    !reply["update"].is_null()
}

/// With at most 2 per hour, 50 agents checking in every minute get exactly 2 grants in the first
/// hour, and 2 more in the next; safe mode grants one until it succeeds; 3 rollbacks halt.
fn policy_scenario(backend: Backend) -> Result<()> {
    let s = InProcess::start(backend)?;
    let (admin, agent) = (s.admin(), s.agent());
    s.release("2", "stable")?;
    admin.ok(
        "POST",
        "/v1/admin/groups",
        &json!({"name": "fleet", "max_per_period": 2, "period_s": 3600, "halt_after": 0}),
    )?;
    let mut granted = BTreeSet::new();
    for _minute in 0..60 {
        for h in 0..50 {
            let id = format!("host-{h}");
            if offered(&agent.ok("POST", "/v1/checkin", &checkin(&id, "fleet", "1"))?) {
                granted.insert(id);
            }
        }
        s.clock.advance_s(60);
    }
    assert_eq!(granted.len(), 2, "first hour: {granted:?}");
    let status = admin.ok("GET", "/v1/admin/rollout?group=fleet", &Value::Null)?;
    assert_eq!(status[0]["hosts"], 50, "{status}");
    // The next hour: 2 new grants (the first two timed out unreported, so they count as failed
    // and those hosts may be granted again).
    let mut second_hour = 0;
    for h in 0..50 {
        if offered(&agent.ok("POST", "/v1/checkin", &checkin(&format!("host-{h}"), "fleet", "1"))?) {
            second_hour += 1;
        }
    }
    assert_eq!(second_hour, 2);
    let status = admin.ok("GET", "/v1/admin/rollout?group=fleet", &Value::Null)?;
    assert_eq!((status[0]["granted_in_period"].as_u64(), status[0]["failed"].as_u64()), (Some(2), Some(2)), "{status}");
    let events = admin.ok("GET", "/v1/admin/events?group=fleet&limit=1000", &Value::Null)?;
    assert_eq!(events.as_array().unwrap().iter().filter(|e| e["kind"] == "granted").count(), 4, "{events}");

    // Safe mode.
    admin.ok("POST", "/v1/admin/groups", &json!({"name": "canary", "safe_mode": true, "max_per_period": 100}))?;
    assert!(offered(&agent.ok("POST", "/v1/checkin", &checkin("c-a", "canary", "1"))?));
    let reply = agent.ok("POST", "/v1/checkin", &checkin("c-b", "canary", "1"))?;
    assert!(reply["reason"].as_str().unwrap_or_default().contains("safe mode"), "{reply}");
    assert!(
        offered(&agent.ok("POST", "/v1/checkin", &checkin("c-a", "canary", "1"))?),
        "the granted host keeps its offer"
    );
    agent.ok("POST", "/v1/events", &event("c-a", "blessed", "2"))?;
    assert!(offered(&agent.ok("POST", "/v1/checkin", &checkin("c-b", "canary", "1"))?));
    assert!(offered(&agent.ok("POST", "/v1/checkin", &checkin("c-c", "canary", "1"))?));

    // Three rollbacks halt the group by themselves; resuming forgives them.
    admin.ok("POST", "/v1/admin/groups", &json!({"name": "edge", "halt_after": 3, "max_per_period": 100}))?;
    for h in ["e-a", "e-b", "e-c", "e-d"] {
        assert!(offered(&agent.ok("POST", "/v1/checkin", &checkin(h, "edge", "1"))?));
    }
    for h in ["e-a", "e-b", "e-c"] {
        agent.ok(
            "POST",
            "/v1/events",
            &json!({"format": 1, "instance_id": h, "kind": "rolled-back", "version": "2", "error": "did not boot"}),
        )?;
    }
    let status = admin.ok("GET", "/v1/admin/rollout?group=edge", &Value::Null)?;
    assert_eq!(status[0]["halted"], json!(true), "{status}");
    assert_eq!(status[0]["failed"], json!(3), "{status}");
    assert!(status[0]["halted_reason"].as_str().unwrap_or_default().contains("3 failures"), "{status}");
    let reply = agent.ok("POST", "/v1/checkin", &checkin("e-e", "edge", "1"))?;
    assert!(reply["reason"].as_str().unwrap_or_default().contains("halted"), "{reply}");
    let instance = admin.ok("GET", "/v1/admin/instances?group=edge", &Value::Null)?;
    assert!(instance[0]["last_error"].as_str().unwrap_or_default().contains("did not boot"), "{instance}");
    admin.ok("PATCH", "/v1/admin/groups/edge", &json!({"halted": false}))?;
    assert!(offered(&agent.ok("POST", "/v1/checkin", &checkin("e-e", "edge", "1"))?));
    // Pause.
    admin.ok("PATCH", "/v1/admin/groups/edge", &json!({"updates_enabled": false}))?;
    let reply = agent.ok("POST", "/v1/checkin", &checkin("e-f", "edge", "1"))?;
    assert!(reply["reason"].as_str().unwrap_or_default().contains("paused"), "{reply}");
    Ok(())
}

#[test]
fn policy_with_simulated_agents_on_sqlite() -> Result<()> {
    policy_scenario(Backend::Sqlite)
}

#[test]
fn policy_with_simulated_agents_on_postgres() -> Result<()> {
    policy_scenario(Backend::Postgres)
}

/// `serve` arguments for tests that enroll many hosts fast from one address.
fn unlimited() -> Vec<String> {
    ["--enroll-rate", "0", "--rate-limit", "0"].map(String::from).to_vec()
}

/// `serve` arguments for a server with its data in `data` and the repository `repo`.
fn process_args(data: &Path, repo: &TufCopy) -> Vec<String> {
    [vec!["--data".to_string(), data.display().to_string()], repo.serve_args(), unlimited()].concat()
}

fn setup_process(data: &Path, repo: &TufCopy) -> Result<(ServerProcess, Api)> {
    let token = create_token(&["--data".to_string(), data.display().to_string()])?;
    let server = ServerProcess::spawn(&process_args(data, repo))?;
    let api = Api::new(&server.url, Some(&token));
    Ok((server, api))
}

/// Killed with SIGKILL mid-rollout, the server comes back with every grant and event it
/// acknowledged; stopped with SIGTERM, with every heartbeat.
#[test]
fn acknowledged_grants_and_events_survive_sigkill_and_shutdown() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let repo = TufCopy::new(&tmp.path().join("tuf"))?;
    repo.publish(&fake_release(&tmp.path().join("releases"), "2")?, &["stable"])?;
    let (mut server, admin) = setup_process(&data, &repo)?;
    admin.ok("PUT", "/v1/admin/channels/stable", &json!({"version": "2"}))?;
    admin.ok("PATCH", "/v1/admin/groups/default", &json!({"max_per_period": 100000, "halt_after": 0}))?;

    // Clean shutdown: a heartbeat (a check-in that changes nothing) is written at stop.
    let token = admin.token.clone().expect("an admin token");
    let agent = Api::agent(&server.url, &token);
    agent.ok("POST", "/v1/checkin", &checkin("steady", "default", "2"))?;
    let before = SystemClock.now_ms();
    agent.ok("POST", "/v1/checkin", &checkin("steady", "default", "2"))?;
    assert!(server.stop()?.success());
    let mut server = ServerProcess::spawn(&process_args(&data, &repo))?;
    let admin = Api::new(&server.url, admin.token.as_deref());
    let steady = admin.ok("GET", "/v1/admin/instances?version=2", &Value::Null)?;
    assert!(steady[0]["last_checkin"].as_i64().unwrap_or(0) >= before, "heartbeat lost at shutdown: {steady}");

    // A rollout from 4 threads; SIGKILL once 150 operations were acknowledged.
    let url = server.url.clone();
    let acked = Arc::new(std::sync::Mutex::new((HashSet::new(), HashSet::new())));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (url, acked, stop, token) = (url.clone(), acked.clone(), stop.clone(), token.clone());
            std::thread::spawn(move || {
                let agent = Api::agent(&url, &token);
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let id = format!("t{t}-{i}");
                    let Ok((200, reply)) = agent.send("POST", "/v1/checkin", &checkin(&id, "default", "1")) else {
                        return;
                    };
                    if offered(&reply) {
                        acked.lock().unwrap().0.insert(id.clone());
                    }
                    let kind = if i % 3 == 0 { "failed" } else { "staged" };
                    let Ok((204, _)) = agent.send("POST", "/v1/events", &event(&id, kind, "2")) else { return };
                    acked.lock().unwrap().1.insert((id, kind));
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while acked.lock().unwrap().1.len() < 150 {
        assert!(std::time::Instant::now() < deadline, "the simulated rollout made no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.sigkill()?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.join().expect("worker");
    }
    let (grants, events) = acked.lock().unwrap().clone();
    assert!(grants.len() >= 150, "{} grants", grants.len());

    let server = ServerProcess::spawn(&process_args(&data, &repo))?;
    let admin = Api::new(&server.url, admin.token.as_deref());
    let stored = admin.ok("GET", "/v1/admin/events?limit=100000", &Value::Null)?;
    let stored: HashSet<(String, String)> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["instance_id"].as_str().unwrap().to_string(), e["kind"].as_str().unwrap().to_string()))
        .collect();
    for id in &grants {
        assert!(stored.contains(&(id.clone(), "granted".into())), "acknowledged grant to {id} lost");
    }
    for (id, kind) in &events {
        assert!(stored.contains(&(id.clone(), kind.to_string())), "acknowledged event {kind} of {id} lost");
    }
    let rollout = admin.ok("GET", "/v1/admin/rollout?group=default", &Value::Null)?;
    let failed = events.iter().filter(|(_, k)| *k == "failed").count() as u64;
    assert!(rollout[0]["failed"].as_u64().unwrap_or(0) >= failed, "{rollout}");
    eprintln!("after SIGKILL: {} acknowledged grants and {} events all present", grants.len(), events.len());
    Ok(())
}

/// `updatectl` against a server: every fleet command, tables and JSON, and exit codes scripts
/// can rely on (1 refused, 3 unreachable, 4 not authorized, 5 not found).
#[test]
fn updatectl_manages_channels_packages_groups_and_rollouts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let repo = TufCopy::new(&tmp.path().join("tuf"))?;
    let (server, admin) = setup_process(&data, &repo)?;
    let token = admin.token.clone().unwrap_or_default();
    let updatectl = cairn_tests::server::workspace_binary("updatectl", "updatectl")?;
    let run = |args: &[&str], token: Option<&str>, url: &str| -> Result<(i32, String, String)> {
        let mut cmd = std::process::Command::new(&updatectl);
        cmd.args(args).env("CAIRN_SERVER", url).env("XDG_CONFIG_HOME", tmp.path().join("no-config"));
        match token {
            Some(t) => cmd.env("CAIRN_TOKEN", t),
            None => cmd.env_remove("CAIRN_TOKEN"),
        };
        let out = cmd.output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let ok = |args: &[&str]| -> Result<String> {
        let (code, out, err) = run(args, Some(&token), &server.url)?;
        assert_eq!(code, 0, "updatectl {args:?}: {out}{err}");
        Ok(out)
    };
    let fails = |args: &[&str], expect: i32, message: &str| -> Result<()> {
        let (code, out, err) = run(args, Some(&token), &server.url)?;
        assert_eq!(code, expect, "updatectl {args:?}: {out}{err}");
        assert!(err.contains(message), "updatectl {args:?}: {err}");
        Ok(())
    };

    let (code, _, err) = run(&["group", "list"], None, &server.url)?;
    assert_eq!((code, err.contains("no admin token")), (4, true), "{err}");
    let (code, _, err) = run(&["group", "list"], Some("cairn_nope"), &server.url)?;
    assert_eq!((code, err.contains("not valid")), (4, true), "{err}");
    let (code, _, err) = run(&["group", "list"], Some(&token), "http://127.0.0.1:9")?;
    assert_eq!(code, 3, "{err}");

    // Published offline into the repository the server serves: listed, and a channel may name it.
    repo.publish(&fake_release(&tmp.path().join("releases"), "2")?, &["stable"])?;
    let packages: Value = serde_json::from_str(&ok(&["--json", "package", "list"])?)?;
    assert_eq!(packages[0]["version"], "2");
    let table = ok(&["package", "list"])?;
    assert!(table.lines().nth(1).unwrap_or_default().starts_with("2 ") && table.contains("stable"), "{table}");
    fails(&["channel", "set-version", "stable", "9"], 1, "no release \"9\"")?;
    ok(&["channel", "set-version", "stable", "2"])?;
    assert!(ok(&["channel", "list"])?.lines().any(|l| l.starts_with("stable") && l.contains(" 2 ")));

    ok(&[
        "group",
        "create",
        "canary",
        "--channel",
        "stable",
        "--max-per-period",
        "2",
        "--period",
        "1h",
        "--safe-mode",
        "--halt-after",
        "3",
    ])?;
    let groups = ok(&["group", "list"])?;
    let canary = groups.lines().find(|l| l.starts_with("canary")).unwrap_or_default().to_string();
    assert!(canary.contains("2/1h") && canary.contains("yes") && canary.contains("active"), "{groups}");
    fails(&["group", "update", "nope", "--halt-after", "1"], 5, "unknown group")?;
    fails(&["group", "create", "other", "--percentage", "101"], 1, "percentage")?;
    fails(&["group", "create", "other", "--period", "soon"], 2, "--period")?;
    ok(&["group", "pause", "canary"])?;
    let agent = Api::agent(&server.url, &token);
    let reply = agent.ok("POST", "/v1/checkin", &checkin("h-1", "canary", "1"))?;
    assert!(reply["reason"].as_str().unwrap_or_default().contains("paused"), "{reply}");
    ok(&["group", "resume", "canary"])?;
    assert!(offered(&agent.ok("POST", "/v1/checkin", &checkin("h-1", "canary", "1"))?));
    agent.ok("POST", "/v1/events", &event("h-1", "staged", "2"))?;

    let instances = ok(&["instance", "list", "--group", "canary"])?;
    assert!(instances.lines().nth(1).unwrap_or_default().starts_with("h-1"), "{instances}");
    let events = ok(&["events", "--instance", "h-1", "--since", "1h"])?;
    assert!(events.contains("granted") && events.contains("staged"), "{events}");
    let status: Value = serde_json::from_str(&ok(&["--json", "rollout", "status", "--group", "canary"])?)?;
    assert_eq!(
        (status[0]["in_progress"].as_u64(), status[0]["target_version"].as_str()),
        (Some(1), Some("2")),
        "{status}"
    );
    let human = ok(&["rollout", "status"])?;
    assert!(human.contains("Group canary (channel stable): target 2, active"), "{human}");
    Ok(())
}

/// The agent's side of the protocol (enrollment, check-in, events) against a real server.
#[test]
fn the_agent_client_checks_in_fetches_verified_releases_and_reports() -> Result<()> {
    use cairn_agent::credential::Credentials;
    use cairn_agent::http::{ClientOptions, client};
    use cairn_agent::ports::RolloutServer;
    use cairn_agent::server::HttpRolloutServer;
    use cairn_release::checkin::{Event, EventKind, Transfer};
    use cairn_release::update_config::Secret;
    let s = InProcess::start(Backend::Sqlite)?;
    s.release("2", "stable")?;
    let http = client(&ClientOptions::insecure(std::time::Duration::from_secs(10)))?;
    let instance_id = "0123456789abcdef0123456789abcdef";
    let credential_file = s.tmp.path().join("agent/credential.json");
    let credentials = |token: Option<String>| {
        Arc::new(Credentials::load(
            credential_file.clone(),
            &s.url,
            instance_id,
            "default",
            token.map(Secret),
            http.clone(),
        ))
    };
    let checkin = idle_checkin(instance_id);
    // Without an enrollment token the host cannot check in, and says why.
    let unenrolled = HttpRolloutServer::new(&s.url, http.clone(), credentials(None));
    let e = unenrolled.check_in(&checkin);
    assert!(e.unwrap_err().to_string().contains("no enrollment_token"));
    let token = s.agent().enrollment_token("default")?;
    let wrong = HttpRolloutServer::new(&s.url, http.clone(), credentials(Some("cairn_guess".into())));
    let e = wrong.report(&Event {
        format: 1,
        instance_id: instance_id.into(),
        kind: EventKind::Staged,
        version: "2".into(),
        error: None,
        transfer: None,
    });
    let e = e.unwrap_err().to_string();
    assert!(e.contains("401"), "a wrong enrollment token: {e}");
    assert!(!credential_file.exists());
    let server = Arc::new(HttpRolloutServer::new(&s.url, http.clone(), credentials(token)));
    // The offer names the release's manifest target (verified by the agent: the next test).
    let reply = server.check_in(&checkin)?;
    let offer = reply.update.ok_or_else(|| anyhow::anyhow!("no offer: {:?}", reply.reason))?;
    assert_eq!((offer.version.as_str(), offer.path.as_str()), ("2", "2-release.json"));
    let event = Event {
        format: 1,
        instance_id: checkin.instance_id.clone(),
        kind: EventKind::Staged,
        version: "2".into(),
        error: None,
        transfer: Some(Transfer { image: 160_000_000, downloaded: 4_000_000, reused: 150_000_000 }),
    };
    server.report(&event)?;
    // The fleet's download savings, summed from the staged events.
    let text = http.get(format!("{}/metrics", s.url)).send()?.text()?;
    assert!(text.contains("cairn_server_update_bytes_total{how=\"downloaded\"} 4000000"), "{text}");
    assert!(text.contains("cairn_server_update_bytes_total{how=\"reused\"} 150000000"), "{text}");
    let unknown = Event { instance_id: "nobody".into(), ..event };
    let e = server.report(&unknown).unwrap_err();
    assert!(e.to_string().contains("403") && !e.is_transient(), "another host's event: {e}");
    assert!(credential_file.exists(), "the credential is kept");
    let events = s.admin().ok("GET", "/v1/admin/events", &Value::Null)?;
    assert_eq!(events.as_array().map(Vec::len), Some(2), "granted + staged: {events}");
    Ok(())
}

/// With a certificate, the server speaks HTTPS (and nothing else) on its port.
#[test]
fn serves_https_when_given_a_certificate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    anyhow::ensure!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let server = ServerProcess::spawn(&[
        "--data".into(),
        tmp.path().join("data").display().to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ])?;
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&cert)?)?)
        .build()?;
    let body = client.get(format!("{}/healthz", server.url)).send()?.text()?;
    assert_eq!(body, "ok\n");
    // Plain HTTP to the same port gets no answer it could take for one.
    let plain = server.url.replace("https://", "http://");
    assert!(reqwest::blocking::get(format!("{plain}/healthz")).and_then(|r| r.text()).map_or(true, |t| t != "ok\n"));
    // And a client that does not trust the certificate refuses the connection.
    assert!(reqwest::blocking::get(format!("{}/healthz", server.url)).is_err());
    // The agent trusts a private CA given as its ca_bundle, and refuses plain http unless
    // insecure.
    use cairn_agent::http::{ClientOptions, client as agent_client};
    let options = |ca: Option<&Path>, insecure: bool| ClientOptions {
        read_timeout: std::time::Duration::from_secs(10),
        insecure,
        ca_bundle: ca.map(Path::to_path_buf),
    };
    let agent = agent_client(&options(Some(&cert), false))?;
    assert_eq!(agent.get(format!("{}/healthz", server.url)).send()?.text()?, "ok\n");
    assert!(agent_client(&options(None, false))?.get(format!("{}/healthz", server.url)).send().is_err());
    let http = agent.get(format!("{plain}/healthz")).send();
    assert!(http.is_err(), "plain http without insecure");
    let not_pem = tmp.path().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello")?;
    let e = agent_client(&options(Some(&not_pem), false)).unwrap_err().to_string();
    assert!(e.contains("ca_bundle") && e.contains("not-a-certificate.pem"), "{e}");
    Ok(())
}

/// Two replicas sharing one PostgreSQL: 50 agents checking in at once through both never get
/// more grants than the group's rate allows.
#[test]
fn replicas_sharing_postgres_never_grant_more_than_the_rate() -> Result<()> {
    let pg = Postgres::start()?;
    let tmp = tempfile::tempdir()?;
    let repo = TufCopy::new(&tmp.path().join("tuf"))?;
    repo.publish(&fake_release(tmp.path(), "2")?, &["stable"])?;
    let tuf = Arc::new(cairn_server::tuf::TufRepository::open(&repo.feed, &repo.online, 86400)?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let token = cairn_server::tokens::generate()?;
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let replicas = rt.block_on(async {
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let db = Db::postgres(&pg.url()).await?;
            let server = Server::new(db, clock.clone())
                .with_tuf(Some(tuf.clone()))
                .with_limits(cairn_server::identity::Limits::unlimited());
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            replicas.push(serve::start(Arc::new(server), listener, None, serve::Settings::default())?);
        }
        let db = &replicas[0].server.db;
        cairn_server::store::insert_token(db, &cairn_server::tokens::hash(&token), "t", 0, None).await?;
        anyhow::Ok(replicas)
    })?;
    let urls: Vec<String> = replicas.iter().map(|r| format!("http://{}", r.addr)).collect();
    let admin = Api::new(&urls[0], Some(&token));
    admin.ok("PUT", "/v1/admin/channels/stable", &json!({"version": "2"}))?;
    // Half of them may be granted: enough grant transactions overlap that any gap in the
    // locking shows.
    admin.ok("PATCH", "/v1/admin/groups/default", &json!({"max_per_period": 25}))?;

    let barrier = Arc::new(std::sync::Barrier::new(50));
    let enroller = Api::agent(&urls[0], &token);
    let offers: Vec<bool> = (0..50)
        .map(|h| {
            // Enrolled before the race: the check-ins race, not the enrollments.
            let credential =
                enroller.credential(&format!("r-{h}"), "default").expect("enrolled").expect("a credential");
            let (url, barrier) = (urls[h % 2].clone(), barrier.clone());
            std::thread::spawn(move || {
                let agent = Api::new(&url, Some(&credential));
                barrier.wait();
                offered(
                    &agent.ok("POST", "/v1/checkin", &checkin(&format!("r-{h}"), "default", "1")).expect("check-in"),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("agent thread"))
        .collect();
    assert_eq!(offers.iter().filter(|o| **o).count(), 25, "grants through both replicas");
    let events = Api::new(&urls[1], Some(&token)).ok("GET", "/v1/admin/events?limit=1000", &Value::Null)?;
    assert_eq!(events.as_array().map(|e| e.iter().filter(|e| e["kind"] == "granted").count()), Some(25));
    for r in replicas {
        rt.block_on(r.shutdown())?;
    }
    Ok(())
}

/// A server with a TUF repository (issue 15): a check-in's offer only names the release's
/// manifest target; the agent verifies it through the repository's metadata served at
/// `/v1/tuf/`, downloads artifacts as targets, refuses an offer the metadata does not back, and
/// keeps trusting the feed while the server signs new timestamps with its online key.
#[test]
fn a_server_with_a_tuf_repository_offers_targets_the_agent_verifies() -> Result<()> {
    use cairn_agent::credential::Credentials;
    use cairn_agent::http::{ClientOptions, HttpTransport, client};
    use cairn_agent::ports::{Offered, ReleaseSource};
    use cairn_agent::server::HttpRolloutServer;
    use cairn_agent::tuf_feed::{TufFeed, TufServerSource};
    use cairn_release::checkin::Offer;
    use cairn_release::update_config::Secret;

    let settings = serve::Settings { tuf_every: std::time::Duration::from_millis(200), ..Default::default() };
    let s = InProcess::start_with(Backend::Sqlite, Options { settings: Some(settings), ..Default::default() })?;
    let t = &s.tmp;
    s.repo.publish(&fake_release(&t.path().join("releases"), "2")?, &["stable"])?;
    let now = (SystemClock.now_ms() / 1000) as u64;
    s.admin().ok("PUT", "/v1/admin/channels/stable", &json!({"version": "2"}))?;

    let http = client(&ClientOptions::insecure(std::time::Duration::from_secs(10)))?;
    let instance_id = "0123456789abcdef0123456789abcdef";
    let token = s.agent().enrollment_token("default")?;
    let credentials = Arc::new(Credentials::load(
        t.path().join("credential.json"),
        &s.url,
        instance_id,
        "default",
        token.map(Secret),
        http.clone(),
    ));
    let server = Arc::new(HttpRolloutServer::new(&s.url, http.clone(), credentials));
    let transport = Arc::new(HttpTransport::new(&format!("{}/v1/tuf", s.url), http.clone()));
    let source = TufServerSource {
        server,
        feed: TufFeed::new(transport, s.repo.feed.join("metadata/1.root.json"), t.path().join("state"), "stable"),
    };
    let checkin = idle_checkin(instance_id);
    let Offered::Release(offer) = source.offer(&checkin, now)? else { anyhow::bail!("no offer") };
    assert_eq!((offer.version.as_str(), offer.path.as_str()), ("2", "2-release.json"));
    let candidate = source.fetch(&offer, "cairn", now)?;
    let usr = candidate.release.artifact(cairn_release::manifest::ArtifactKind::Usr).clone();
    let location = candidate.location(&usr).to_string();
    assert!(location.starts_with("targets/") && location.ends_with(".2-usr.img.zst"), "{location}");
    let bytes = source.transport().read_all(&location, usr.size)?;
    assert_eq!(hex::encode(Sha256::digest(&bytes)), usr.sha256);

    // An offer the metadata does not back: another manifest, or another target.
    let forged = Offer { manifest_sha256: "00".repeat(32), ..offer.clone() };
    let e = source.fetch(&forged, "cairn", now).unwrap_err().to_string();
    assert!(e.contains("does not match"), "{e}");
    let elsewhere = Offer { path: "3-release.json".into(), ..offer.clone() };
    assert!(source.fetch(&elsewhere, "cairn", now).unwrap_err().to_string().contains("no release manifest"));

    // Thirty hours on, the first timestamp has expired; the server signed new ones meanwhile.
    let timestamp_version = |s: &InProcess| -> Result<u64> {
        let doc: Value = get_json(&format!("{}/v1/tuf/metadata/timestamp.json", s.url))?;
        Ok(doc["signed"]["version"].as_u64().unwrap_or(0))
    };
    let before = timestamp_version(&s)?;
    s.clock.advance_s(30 * 3600);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while timestamp_version(&s)? == before {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the server signed no new timestamp");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    source.fetch(&offer, "cairn", now + 30 * 3600)?;
    Ok(())
}

/// What an idle host running 1 in slot a of group `default` says.
fn idle_checkin(instance_id: &str) -> cairn_release::checkin::CheckIn {
    serde_json::from_value(checkin(instance_id, "default", "1")).expect("a check-in")
}

/// GET `url` as JSON.
fn get_json(url: &str) -> Result<Value> {
    let http =
        cairn_agent::http::client(&cairn_agent::http::ClientOptions::insecure(std::time::Duration::from_secs(10)))?;
    Ok(serde_json::from_str(&http.get(url).send()?.error_for_status()?.text()?)?)
}

//! cairn-server under abuse, over real HTTP on loopback: forged and unauthenticated agent
//! requests, idle and slow connections, more connections than the cap, floods over the rate
//! limits, oversized and slow bodies, tokens that expired or were revoked, `/metrics` behind its
//! token, plain HTTP where it must not be served, and what hosts leave behind pruned. Each test
//! is a row of docs/security.md.

use anyhow::{Context, Result};
use cairn_server::identity::{Limits, Retention};
use cairn_server::ratelimit::RateLimiter;
use cairn_tests::server::{Api, Backend, InProcess, Options, ServerProcess, checkin, create_token, event};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

fn with_settings(settings: cairn_server::serve::Settings) -> Result<InProcess> {
    InProcess::start_with(Backend::Sqlite, Options { settings: Some(settings), ..Options::default() })
}

fn address(s: &InProcess) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Waits until the server closes `c` (a read returns 0 or fails); how long that took.
fn closed_within(c: &mut TcpStream, deadline: Duration) -> Result<Duration> {
    let start = Instant::now();
    c.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 512];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Ok(start.elapsed()),
        }
        anyhow::ensure!(start.elapsed() < deadline, "the server kept the connection open past {deadline:?}");
    }
}

/// 2,000 connections that never finish a header and one that sends a byte a second: real
/// check-ins are answered meanwhile, and the server closes the idle and the slow ones at its
/// header timeout.
#[test]
fn idle_and_slow_connections_are_cut_off_while_check_ins_go_on() -> Result<()> {
    cairn_tests::raise_open_files_limit();
    let settings = cairn_server::serve::Settings {
        header_timeout: Duration::from_secs(2),
        ..cairn_server::serve::Settings::default()
    };
    let s = with_settings(settings)?;
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        let mut c = TcpStream::connect(address(&s))?;
        c.write_all(b"POST /v1/checkin HTTP/1.1\r\n")?;
        idle.push(c);
    }
    let mut slow = TcpStream::connect(address(&s))?;
    let slow_started = Instant::now();
    let agent = s.agent();
    for i in 0..20 {
        agent.ok("POST", "/v1/checkin", &checkin(&format!("h{i}"), "default", "1"))?;
        if slow.write_all(b"P").is_err() {
            break;
        }
    }
    // The slow client keeps sending a byte a second: cut off at the header timeout anyway.
    let cut = loop {
        if slow.write_all(b"O").is_err() {
            break slow_started.elapsed();
        }
        let mut buf = [0u8; 64];
        slow.set_read_timeout(Some(Duration::from_secs(1)))?;
        if matches!(slow.read(&mut buf), Ok(0)) {
            break slow_started.elapsed();
        }
        anyhow::ensure!(slow_started.elapsed() < Duration::from_secs(30), "the slow client was never cut off");
    };
    assert!(cut >= Duration::from_secs(2), "cut after {cut:?}, before the header timeout");
    for c in idle.iter_mut().step_by(100) {
        closed_within(c, Duration::from_secs(30))?;
    }
    agent.ok("POST", "/v1/checkin", &checkin("after", "default", "1"))?;
    Ok(())
}

/// Over the connection cap, a connection is closed at once; those under it are served.
#[test]
fn connections_over_the_cap_are_closed_at_once() -> Result<()> {
    let settings = cairn_server::serve::Settings { max_connections: 10, ..cairn_server::serve::Settings::default() };
    let s = with_settings(settings)?;
    let held: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(address(&s))).collect::<Result<_, _>>()?;
    // Connections take their permits in tasks of their own: the server may not have counted
    // all ten yet when the eleventh arrives, so it is tried until one is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let took = loop {
        let mut extra = TcpStream::connect(address(&s))?;
        extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
        extra.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reply = [0u8; 256];
        let started = Instant::now();
        let n = extra.read(&mut reply).unwrap_or(0);
        if n == 0 {
            break started.elapsed();
        }
        let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
        anyhow::ensure!(Instant::now() < deadline, "the 11th connection was served: {reply}");
    };
    assert!(took < Duration::from_secs(4), "closed, not left waiting: {took:?}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::blocking::get(format!("{}/healthz", s.url)).map(|r| r.status().as_u16()).ok() != Some(200) {
        anyhow::ensure!(Instant::now() < deadline, "not served again once the others left");
    }
    Ok(())
}

/// Floods over the rate limits get 429 and change nothing; the limits are per client.
#[test]
fn floods_are_refused_over_the_rate_limits() -> Result<()> {
    let limits = Limits { enroll: RateLimiter::new(1.0, 3), per_client: RateLimiter::new(1.0, 5) };
    let s = InProcess::start_with(Backend::Sqlite, Options { limits: Some(limits), ..Options::default() })?;
    let agent = s.agent();
    let token = agent.enrollment_token("default")?.context("a token")?;
    let enroll = |id: &str| {
        Api::new(&s.url, None).send(
            "POST",
            "/v1/enroll",
            &json!({"format": 1, "instance_id": id, "group": "default", "token": token}),
        )
    };
    let replies: Vec<(u16, Value)> = (0..6).map(|i| enroll(&format!("e{i}"))).collect::<Result<_>>()?;
    let codes: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(&codes[..3], [200, 200, 200], "{codes:?}");
    assert!(codes[3..].iter().all(|c| *c == 429), "enrollments over the server's rate: {codes:?}");
    let credential = |i: usize| replies[i].1["credential"].as_str().map(str::to_string).context("a credential");
    // One host flooding check-ins is slowed; another host is not.
    let e0 = Api::new(&s.url, Some(&credential(0)?));
    let codes: Vec<u16> = (0..10)
        .map(|_| e0.send("POST", "/v1/checkin", &checkin("e0", "default", "1")).map(|r| r.0))
        .collect::<Result<_>>()?;
    assert!(codes.iter().filter(|c| **c == 429).count() >= 4, "{codes:?}");
    let (code, body) = e0.send("POST", "/v1/checkin", &checkin("e0", "default", "1"))?;
    assert_eq!((code, error_of(&body).contains("too many requests")), (429, true), "{body}");
    let e1 = Api::new(&s.url, Some(&credential(1)?));
    assert_eq!(e1.send("POST", "/v1/checkin", &checkin("e1", "default", "1"))?.0, 200, "another host is not limited");
    Ok(())
}

/// Forged agent requests: none, a made-up or another host's credential.
#[test]
fn forged_check_ins_and_events_are_refused() -> Result<()> {
    let s = InProcess::start(Backend::Sqlite)?;
    s.release("2", "stable")?;
    s.admin().ok("PATCH", "/v1/admin/groups/default", &json!({"halt_after": 1}))?;
    let agent = s.agent();
    agent.ok("POST", "/v1/checkin", &checkin("victim", "default", "1"))?;
    let anonymous = Api::new(&s.url, None);
    let made_up = Api::new(&s.url, Some("cairn_0000000000000000000000000000000000000000000000000000000000000000"));
    let mallory = Api::new(&s.url, agent.credential("mallory", "default")?.as_deref());
    for (who, api) in [("no credential", &anonymous), ("a made-up credential", &made_up)] {
        let (code, body) = api.send("POST", "/v1/checkin", &checkin("invented", "default", "1"))?;
        assert_eq!(code, 401, "{who}: {body}");
        let (code, body) = api.send("POST", "/v1/events", &event("victim", "failed", "2"))?;
        assert_eq!(code, 401, "{who}: {body}");
    }
    let (code, body) = mallory.send("POST", "/v1/events", &event("victim", "failed", "2"))?;
    assert_eq!(code, 403, "{body}");
    let (code, body) = mallory.send("POST", "/v1/events", &event("victim", "blessed", "2"))?;
    assert_eq!(code, 403, "{body}");
    let (code, body) = mallory.send("POST", "/v1/checkin", &checkin("victim", "default", "1"))?;
    assert_eq!(code, 403, "{body}");
    // Enrolling as the victim: its id is taken.
    let token = agent.enrollment_token("default")?.context("a token")?;
    let (code, body) = anonymous.send(
        "POST",
        "/v1/enroll",
        &json!({"format": 1, "instance_id": "victim", "group": "default", "token": token}),
    )?;
    assert_eq!((code, error_of(&body).contains("enrolled already")), (409, true), "{body}");
    let rollout = s.admin().ok("GET", "/v1/admin/rollout?group=default", &Value::Null)?;
    assert_eq!((rollout[0]["halted"].as_bool(), rollout[0]["failed"].as_u64()), (Some(false), Some(0)), "{rollout}");
    let instances = s.admin().ok("GET", "/v1/admin/instances", &Value::Null)?;
    let ids: Vec<&str> = instances.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["victim"], "no invented host was recorded");
    Ok(())
}

/// Bodies over the agent limit are refused before they are read whole; a body that trickles in
/// is cut off at the request timeout.
#[test]
fn oversized_and_slow_bodies_are_refused() -> Result<()> {
    let settings = cairn_server::serve::Settings {
        request_timeout: Duration::from_secs(2),
        ..cairn_server::serve::Settings::default()
    };
    let s = with_settings(settings)?;
    let agent = s.agent();
    let credential = agent.credential("h1", "default")?.context("h1")?;
    let big = Api::new(&s.url, Some(&credential)).call("POST", "/v1/checkin", Some(vec![b' '; 1 << 20]))?;
    assert_eq!(big.0, 413, "{}", big.1);
    let mut c = TcpStream::connect(address(&s))?;
    write!(
        c,
        "POST /v1/checkin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {credential}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )?;
    c.set_read_timeout(Some(Duration::from_millis(500)))?;
    let started = Instant::now();
    let mut reply = Vec::new();
    loop {
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {
                let _ = c.write_all(b" ");
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the trickling body was never cut off");
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    Ok(())
}

/// Hosts not seen for the retention are forgotten with their credentials (they enroll again
/// when they return); old events go too.
#[test]
fn hosts_and_events_past_the_retention_are_pruned() -> Result<()> {
    let s = InProcess::start(Backend::Sqlite)?;
    let agent = s.agent();
    agent.ok("POST", "/v1/checkin", &checkin("old", "default", "1"))?;
    agent.ok("POST", "/v1/events", &event("old", "staged", "1"))?;
    let old = Api::new(&s.url, agent.credential("old", "default")?.as_deref());
    s.clock.advance_s(40 * 86400);
    agent.ok("POST", "/v1/checkin", &checkin("recent", "default", "1"))?;
    s.clock.advance_s(60 * 86400);
    let keep = Retention { hosts: Duration::from_secs(90 * 86400), events: Duration::from_secs(90 * 86400) };
    let server = s.running.as_ref().context("running")?.server.clone();
    let pruned = s.rt.block_on(server.prune(keep)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!((pruned.instances, pruned.events), (1, 1), "{pruned:?}");
    let instances = s.admin().ok("GET", "/v1/admin/instances", &Value::Null)?;
    let ids: Vec<&str> = instances.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["recent"]);
    let (code, _) = old.send("POST", "/v1/checkin", &checkin("old", "default", "1"))?;
    assert_eq!(code, 401, "a forgotten host's credential no longer works");
    Ok(())
}

fn spawn(args: &[&str]) -> Result<ServerProcess> {
    ServerProcess::spawn(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
}

/// Admin tokens: one that expired or was revoked is refused; `token list` shows which is which
/// and never a token.
#[test]
fn admin_tokens_expire_and_are_revoked() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data").display().to_string();
    let store = ["--data".to_string(), data.clone()];
    let short =
        create_token(&[&store[..], &["--name".into(), "short".into(), "--expires".into(), "1s".into()]].concat())?;
    let ops = create_token(&[&store[..], &["--name".into(), "ops".into()]].concat())?;
    let server = spawn(&["--data", &data])?;
    let works = |token: &str| -> Result<u16> { Ok(Api::new(&server.url, Some(token)).get("/v1/admin/groups")?.0) };
    assert_eq!(works(&ops)?, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while works(&short)? == 200 {
        anyhow::ensure!(Instant::now() < deadline, "the 1 s token still works");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(works(&short)?, 401);
    let bin = cairn_tests::server::server_binary()?;
    let revoke = std::process::Command::new(&bin).args(["token", "revoke", "--data", &data, "ops"]).output()?;
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    assert_eq!(works(&ops)?, 401, "revoked");
    let list = std::process::Command::new(&bin).args(["token", "list", "--data", &data, "--json"]).output()?;
    let text = String::from_utf8(list.stdout)?;
    assert!(!text.contains(&ops[6..]) && !text.contains(&short[6..]), "a token in the list: {text}");
    let tokens: Value = serde_json::from_str(&text)?;
    let names: Vec<(&str, bool, bool)> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["expires_at"].is_null(), t["revoked_at"].is_null()))
        .collect();
    assert_eq!(names, [("short", false, true), ("ops", true, false)]);
    Ok(())
}

/// `/metrics` behind its own token; plain HTTP refused on a non-loopback address before anything
/// listens; the benchmark's unauthenticated mode refused there too.
#[test]
fn metrics_token_and_no_plain_http_off_loopback() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data").display().to_string();
    let token_file = tmp.path().join("metrics.token");
    std::fs::write(&token_file, "cairn_metrics_secret\n")?;
    let tf = token_file.to_str().context("path")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644))?;
    let bin = cairn_tests::server::server_binary()?;
    let serve = |extra: &[&str]| std::process::Command::new(&bin).args(["serve", "--data", &data]).args(extra).output();
    let out = serve(&["--listen", "127.0.0.1:0", "--metrics-token-file", tf])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by others"), "a world-readable token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let server = spawn(&["--data", &data, "--metrics-token-file", tf])?;
    let http = reqwest::blocking::Client::new();
    assert_eq!(http.get(format!("{}/metrics", server.url)).send()?.status().as_u16(), 401);
    let ok = http.get(format!("{}/metrics", server.url)).bearer_auth("cairn_metrics_secret").send()?;
    assert_eq!(ok.status().as_u16(), 200);
    drop(server);
    // 192.0.2.1 (TEST-NET-1) is on no interface here: had the check come after bind, the bind
    // would fail with another error.
    for (listen, extra, expect) in [
        ("0.0.0.0:0", None, "refusing to serve plain HTTP"),
        ("192.0.2.1:0", None, "refusing to serve plain HTTP"),
        ("0.0.0.0:0", Some("--insecure-no-agent-auth"), "refusing to serve plain HTTP"),
    ] {
        let mut args = vec!["--listen", listen];
        args.extend(extra);
        let out = serve(&args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{listen}: {err}");
    }
    let out = serve(&["--listen", "0.0.0.0:0", "--insecure-http", "--insecure-no-agent-auth"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("for benchmarks on a loopback address"));
    Ok(())
}

/// `updatectl` takes no token on its command line (others see it in `ps`): from a file or the
/// environment only.
#[test]
fn updatectl_reads_its_token_from_a_file_or_the_environment_only() -> Result<()> {
    let s = InProcess::start(Backend::Sqlite)?;
    let updatectl = cairn_tests::server::workspace_binary("updatectl", "updatectl")?;
    let run = |args: &[&str]| {
        std::process::Command::new(&updatectl)
            .args(args)
            .env("CAIRN_SERVER", &s.url)
            .env_remove("CAIRN_TOKEN")
            .env("XDG_CONFIG_HOME", s.tmp.path().join("no-config"))
            .output()
    };
    let out = run(&["--token", &s.token, "group", "list"])?;
    assert_eq!(out.status.code(), Some(2), "--token is not an argument any more");
    let file = s.tmp.path().join("token");
    std::fs::write(&file, format!("{}\n", s.token))?;
    let out = run(&["--token-file", file.to_str().context("path")?, "group", "list"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"));
    Ok(())
}

//! `cairn-bench-server`: check-ins per second of cairn-server with 100,000 registered hosts, on
//! SQLite and on PostgreSQL, with p50/p99 latency and the server's memory; and, in the same run,
//! the ceiling: a plain static file server answering every request with a file of the size of a
//! check-in reply, loaded by the same client.
//!
//! Every check-in and event carries its host's credential. In the same run, the same steady
//! workload is measured against the same database without authentication (the server's
//! `--insecure-no-agent-auth`, on loopback) to show what authentication costs, and once more
//! while `--idle` connections (2,000) sit open sending nothing and one client sends a header a
//! byte a second: the server must keep answering real check-ins meanwhile.
//!
//! The fleet: every host on version 1 while the channel offers 2 with at most 2 grants per hour,
//! so each check-in does the full work (the host's row, the rollout's counts, the policy) and
//! nearly all are answered "rate limit reached". The client keeps `--connections` requests in
//! flight over keep-alive connections, on the same 2 cores as the server.
//!
//! Usage: cargo run --release -p cairn-tests --bin cairn-bench-server [-- --seconds S]
//!        [--connections C] [--instances N] [--idle N] [--only sqlite|postgres]

use anyhow::{Context, Result, bail};
use cairn_server::db::Db;
use cairn_server::store::{self, Instance};
use cairn_tests::server::{Api, Postgres, ServerProcess, create_token, fake_release};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Options {
    seconds: u64,
    connections: usize,
    instances: usize,
    idle: usize,
    only: Option<String>,
}

fn options() -> Result<Options> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned());
    Ok(Options {
        seconds: value("--seconds").map(|v| v.parse()).transpose()?.unwrap_or(10),
        connections: value("--connections").map(|v| v.parse()).transpose()?.unwrap_or(32),
        instances: value("--instances").map(|v| v.parse()).transpose()?.unwrap_or(100_000),
        idle: value("--idle").map(|v| v.parse()).transpose()?.unwrap_or(2_000),
        only: value("--only"),
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("cairn-bench-server: error: {e:#}");
        std::process::exit(1);
    }
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// One request of a workload: a path under the base URL, for a POST its JSON body, and the
/// bearer credential it carries.
type Request = (&'static str, Option<Vec<u8>>, Option<String>);

/// The credential the benchmark gives host `i` (stored hashed, as enrollment would).
fn credential(i: usize) -> String {
    format!("cairn_bench_credential_{i:06}")
}

/// Keeps `connections` requests in flight for `seconds` (after 2 s of warm-up); `request_for`
/// makes the request from a pseudo-random number.
fn load(base: &str, request_for: impl Fn(usize) -> Request + Send + Sync + 'static, o: &Options) -> Result<Figures> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(o.connections).build()?;
    let request_for = Arc::new(request_for);
    let (warmup, measure) = (Duration::from_secs(2), Duration::from_secs(o.seconds));
    let results = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..o.connections)
            .map(|c| {
                let (client, base, request_for) = (client.clone(), base.to_string(), request_for.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = 0usize;
                    let mut n = c.wrapping_mul(7919);
                    while start.elapsed() < warmup + measure {
                        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let sent = Instant::now();
                        let (path, body, bearer) = request_for(n >> 20);
                        let url = format!("{base}{path}");
                        let mut request = match body {
                            Some(body) => client.post(&url).header("content-type", "application/json").body(body),
                            None => client.get(&url),
                        };
                        if let Some(bearer) = bearer {
                            request = request.bearer_auth(bearer);
                        }
                        let ok = match request.send().await {
                            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if sent.duration_since(start) >= warmup {
                            if ok {
                                latencies.push(sent.elapsed().as_secs_f64());
                            } else {
                                errors += 1;
                            }
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.expect("load task");
            all.extend(l);
            errors += e;
        }
        (all, errors)
    });
    let (mut latencies, errors) = results;
    if latencies.is_empty() {
        bail!("no request succeeded ({errors} errors)");
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] * 1000.0;
    Ok(Figures { per_second: latencies.len() as f64 / o.seconds as f64, p50_ms: pct(0.50), p99_ms: pct(0.99), errors })
}

fn rss_kb(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Registers `n` hosts directly in the database (what n enrollments and first check-ins would
/// have written).
fn register(store_args: &[String], n: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let db = match store_args[0].as_str() {
            "--data" => Db::sqlite(std::path::Path::new(&store_args[1])).await?,
            _ => Db::postgres(&store_args[1]).await?,
        };
        let now = cairn_server::clock::Clock::now_ms(&cairn_server::clock::SystemClock);
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let mut tx = db.write.begin().await?;
            for i in chunk {
                let instance = Instance {
                    id: format!("host-{i:06}"),
                    group: "default".into(),
                    os_id: "cairn".into(),
                    version: "1".into(),
                    slot: "a".into(),
                    state: "idle".into(),
                    rolled_back: vec![],
                    last_error: None,
                    first_seen: now,
                    last_checkin: now,
                };
                store::upsert_instance(&mut *tx, &instance).await?;
                let hash = cairn_server::tokens::hash(&credential(*i));
                store::hosts::insert_credential(&mut *tx, &instance.id, "default", &hash, now).await?;
            }
            tx.commit().await?;
        }
        db.close().await;
        anyhow::Ok(())
    })
}

/// Keeps `n` connections open that send part of a header and then nothing (reconnecting when
/// the server closes them), and one that sends a header a byte a second, until `stop`.
fn hold_idle_connections(
    base: &str,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("the server's address");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tasks = Vec::new();
            for _ in 0..n {
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let _ = c.write_all(b"POST /v1/checkin HTTP/1.1\r\n").await;
                        let mut buf = [0u8; 256];
                        // Until the server closes it (its header timeout) or the run ends.
                        let _ = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await;
                    }
                }));
            }
            let slow = tokio::spawn(async move {
                let request = b"POST /v1/checkin HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else { return };
                    for byte in request {
                        if stop.load(Ordering::Relaxed) || c.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
            for t in tasks {
                let _ = t.await;
            }
            let _ = slow.await;
        })
    })
}

/// The steady workload: hosts that report what the server holds, each with its credential
/// (`authenticated`) or none.
fn steady_request(n: usize, instances: usize, authenticated: bool) -> Request {
    let i = n % instances;
    let body =
        serde_json::to_vec(&cairn_tests::server::checkin(&format!("host-{i:06}"), "default", "1")).expect("json");
    (CHECKIN, Some(body), authenticated.then(|| credential(i)))
}

fn bench_server(name: &str, store_args: Vec<String>, o: &Options, work: &std::path::Path) -> Result<(Measured, u64)> {
    let repo = cairn_tests::TufCopy::new(&work.join(format!("{name}-tuf")))?;
    repo.publish(&fake_release(&work.join(format!("{name}-releases")), "2")?, &["stable"])?;
    let t = Instant::now();
    register(&store_args, o.instances)?;
    eprintln!("{name}: registered {} hosts in {:.1} s", o.instances, t.elapsed().as_secs_f64());
    let token = create_token(&store_args)?;
    let mut args = store_args.clone();
    // The load comes from one address at thousands a second: no per-client rate limit.
    args.extend(repo.serve_args());
    args.extend(["--rate-limit".into(), "0".into()]);
    let server = ServerProcess::spawn_logging(&args, "warn")?;
    let admin = Api::new(&server.url, Some(&token));
    admin.ok("PUT", "/v1/admin/channels/stable", &json!({"version": "2"}))?;
    admin.ok("PATCH", "/v1/admin/groups/default", &json!({"max_per_period": 2, "halt_after": 0}))?;
    let instances = o.instances;
    let steady = load(&server.url, move |n| steady_request(n, instances, true), o)?;
    let mixed = load(&server.url, move |n| mixed_request(n, instances), o)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idle = hold_idle_connections(&server.url, o.idle, stop.clone());
    // Let the idle connections pile up before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let under_idle = load(&server.url, move |n| steady_request(n, instances, true), o)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = idle.join();
    let (rss, hwm) = rss_kb(server.child.id())?;
    let rollout = admin.ok("GET", "/v1/admin/rollout?group=default", &serde_json::Value::Null)?;
    if rollout[0]["hosts"].as_u64() != Some(instances as u64) || rollout[0]["granted_in_period"].as_u64() != Some(2) {
        bail!("{name}: unexpected rollout state after the run: {rollout}");
    }
    eprintln!("{name}: server RSS {} MB now, {} MB peak", rss / 1024, hwm / 1024);
    drop(server);
    // The baseline: the same database and workload, without authentication.
    args.push("--insecure-no-agent-auth".into());
    let open = ServerProcess::spawn_logging(&args, "warn")?;
    let unauthenticated = load(&open.url, move |n| steady_request(n, instances, false), o)?;
    Ok((Measured { steady, mixed, under_idle, unauthenticated }, hwm))
}

const CHECKIN: &str = "/v1/checkin";
const EVENTS: &str = "/v1/events";

/// The mixed workload: of every ten requests, seven check-ins that change nothing, two from
/// hosts whose state changed (a row written; `assessing` and `waiting-to-reboot` hosts get no
/// grant), one event (a row inserted).
fn mixed_request(n: usize, instances: usize) -> Request {
    let id = format!("host-{:06}", n % instances);
    let json = |v: serde_json::Value| Some(serde_json::to_vec(&v).expect("json"));
    let bearer = Some(credential(n % instances));
    match (n / instances) % 10 {
        0 => (EVENTS, json(cairn_tests::server::event(&id, "staged", "2")), bearer),
        1 | 2 => {
            let mut c = cairn_tests::server::checkin(&id, "default", "1");
            c["state"] = ["assessing", "waiting-to-reboot", "blessed", "error"][n % 4].into();
            (CHECKIN, json(c), bearer)
        }
        _ => (CHECKIN, json(cairn_tests::server::checkin(&id, "default", "1")), bearer),
    }
}

/// One server's figures: hosts that report what the server holds, the mixed workload, the
/// steady one under idle and slow connections, and the steady one without authentication.
struct Measured {
    steady: Figures,
    mixed: Figures,
    under_idle: Figures,
    unauthenticated: Figures,
}

fn run() -> Result<()> {
    let o = options()?;
    cairn_tests::raise_open_files_limit();

    let work = tempfile::Builder::new().prefix("cairn-bench-server-").tempdir_in("/var/tmp")?;
    println!(
        "check-ins: {} registered hosts, {} connections, {} s measured after 2 s warm-up, {} cores",
        o.instances,
        o.connections,
        o.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // The reply hosts get, to size the static file.
    let sample = serde_json::to_vec(
        &json!({"format": 1, "update": null, "reason": "the group's rate limit is reached for this period"}),
    )?;
    let file = work.path().join("reply.json");
    std::fs::write(&file, &sample)?;
    let static_bin = cairn_tests::server::workspace_binary("cairn-tests", "cairn-bench-static")?;
    let mut static_server =
        Command::new(&static_bin).arg(&file).stdout(Stdio::piped()).spawn().context("cairn-bench-static")?;
    let line = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(static_server.stdout.take().expect("piped")).read_line(&mut line)?;
        line
    };
    let static_url =
        line.trim().strip_prefix("cairn-server listening on ").context("static server address")?.to_string();
    let ceiling = load(&static_url, |_| ("/reply.json", None, None), &o)?;
    let _ = static_server.kill();
    let _ = static_server.wait();
    let row = |name: &str, f: &Figures, extra: &str| {
        println!(
            "{name:<42} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   errors {}{extra}",
            f.per_second, f.p50_ms, f.p99_ms, f.errors
        )
    };
    row(&format!("static file ({} bytes, ceiling)", sample.len()), &ceiling, "");
    let rows = |db: &str, m: &Measured, hwm: u64| {
        let ratio = |f: &Figures| format!("   {:.2}x ceiling", f.per_second / ceiling.per_second);
        row(&format!("cairn-server, {db}, steady"), &m.steady, &ratio(&m.steady));
        let rss = format!("   peak RSS {:.1} MB", hwm as f64 / 1024.0);
        row(&format!("cairn-server, {db}, mixed"), &m.mixed, &format!("{}{rss}", ratio(&m.mixed)));
        let auth =
            format!("   authenticated/unauthenticated {:.2}", m.steady.per_second / m.unauthenticated.per_second);
        row(&format!("cairn-server, {db}, steady, no auth"), &m.unauthenticated, &auth);
        row(&format!("cairn-server, {db}, steady, {} idle", o.idle), &m.under_idle, "");
    };

    if o.only.as_deref() != Some("postgres") {
        let data = work.path().join("sqlite");
        let (m, hwm) = bench_server("sqlite", vec!["--data".into(), data.display().to_string()], &o, work.path())?;
        rows("SQLite", &m, hwm);
    }
    if o.only.as_deref() != Some("sqlite") {
        let pg = Postgres::start()?;
        let (m, hwm) = bench_server(
            "postgres",
            vec!["--database".into(), pg.url(), "--data".into(), work.path().join("pg-data").display().to_string()],
            &o,
            work.path(),
        )?;
        rows("PostgreSQL", &m, hwm);
    }
    Ok(())
}

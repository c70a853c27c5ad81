//! `cairn-server serve` and `cairn-server token create|list|revoke`.

use anyhow::{Context, Result, bail};
use cairn_server::clock::{Clock, SystemClock};
use cairn_server::db::Db;
use cairn_server::identity::{Limits, Retention};
use cairn_server::locks::{self, Locks, etcd::EtcdSemaphores};
use cairn_server::ratelimit::RateLimiter;
use cairn_server::rollout::Server;
use cairn_server::tuf::TufRepository;
use cairn_server::{serve, store, tokens};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "cairn-server", version, about = "Cairn's rollout server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the agent and admin APIs.
    Serve(Box<ServeArgs>),
    /// Admin tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an admin token and print it (once: only its hash is kept).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// What the token is for, shown in logs and `token list`.
        #[arg(long, default_value = "admin")]
        name: String,
        /// How long the token is valid (e.g. 90d, 12h); without it, until revoked.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List the admin tokens: name, id, created, expires, revoked (never the tokens).
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke the tokens with this name, or the one with this id (from `token list`).
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        name_or_id: String,
    },
}

#[derive(Args)]
struct StoreArgs {
    /// Keep the SQLite database (and uploaded artifacts) in DIR.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Use PostgreSQL (postgres://...) instead; with --data, artifacts are still stored in DIR.
    #[arg(long, value_name = "URL", env = "CAIRN_DATABASE", hide_env_values = true)]
    database: Option<String>,
}

impl StoreArgs {
    async fn open(&self) -> Result<Db> {
        match (&self.database, &self.data) {
            (Some(url), _) => Db::postgres(url).await,
            (None, Some(dir)) => Db::sqlite(dir).await,
            (None, None) => bail!("say where the data lives: --data DIR (SQLite) or --database postgres://..."),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8270")]
    listen: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Keep the FleetLock semaphores in etcd v3 (airlock's key layout) at these endpoints
    /// instead of the database, e.g. http://10.0.0.5:2379 (comma-separated or repeated).
    #[arg(long = "etcd", value_name = "URL", value_delimiter = ',', env = "CAIRN_ETCD")]
    etcd: Vec<String>,
    /// Create a FleetLock group (with 1 slot) the first time a host asks for its lock, instead
    /// of refusing it as `unknown_group`.
    #[arg(long)]
    lock_groups_on_first_use: bool,
    /// Serve plain HTTP on an address other than loopback (behind a proxy that terminates TLS).
    /// Without it, a non-loopback --listen needs --tls-cert and --tls-key.
    #[arg(long)]
    insecure_http: bool,
    /// Requests per second per client on the agent and FleetLock endpoints (a host by its
    /// credential, others by address); bursts of twice that. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 20.0)]
    rate_limit: f64,
    /// Enrollments per second, server-wide (bursts of 100). 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    enroll_rate: f64,
    /// Open connections at most; more are closed as they arrive.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// A request's headers must arrive within this, and an idle connection is closed after it.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    header_timeout: String,
    /// An agent or FleetLock request must be answered within this, its body included.
    #[arg(long, value_name = "DURATION", default_value = "15s")]
    request_timeout: String,
    /// Hosts not seen for this long are forgotten (they enroll again when they return).
    #[arg(long, value_name = "DURATION", default_value = "90d")]
    forget_hosts_after: String,
    /// Events older than this are deleted.
    #[arg(long, value_name = "DURATION", default_value = "90d")]
    keep_events: String,
    /// A TUF repository (`cairn release init`, releases added offline with `cairn release
    /// publish --keys`): served to agents under /v1/tuf/, its releases offered by name.
    #[arg(long, value_name = "DIR", requires = "tuf_keys")]
    tuf_repo: Option<PathBuf>,
    /// The repository's timestamp key (`timestamp-N.pk8`): the server signs a new timestamp
    /// whenever less than half of the last one's lifetime is left.
    #[arg(long, value_name = "DIR", requires = "tuf_repo")]
    tuf_keys: Option<PathBuf>,
    /// How long each timestamp the server signs is valid.
    #[arg(long, value_name = "DURATION", default_value = "1d")]
    tuf_timestamp_expires: String,
    /// `/metrics` needs `Authorization: Bearer` with the token in this file.
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Take check-ins and events without host credentials, on a loopback address only: the
    /// baseline `cairn-bench-server` measures authentication against. Never for a fleet.
    #[arg(long, hide = true)]
    insecure_no_agent_auth: bool,
}

fn duration(flag: &str, text: &str) -> Result<std::time::Duration> {
    cairn_release::duration::parse(text).with_context(|| format!("--{flag}"))
}

/// As many open files as the hard limit allows: every connection is one.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    init_logs(args.log_format);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls_config(cert, key).await?),
        _ => None,
    };
    let db = args.store.open().await?;
    let store = if args.etcd.is_empty() {
        locks::Store::Database
    } else {
        locks::Store::Etcd(Box::new(EtcdSemaphores::connect(&args.etcd).await?))
    };
    let locks = Locks { store, create_on_first_use: args.lock_groups_on_first_use };
    let limits = Limits {
        enroll: RateLimiter::new(args.enroll_rate, 100),
        per_client: RateLimiter::new(args.rate_limit, (args.rate_limit * 2.0).ceil() as u32),
    };
    let metrics_token = match &args.metrics_token_file {
        Some(path) => {
            Some(tokens::read_file(path).with_context(|| format!("--metrics-token-file {}", path.display()))?)
        }
        None => None,
    };
    let settings = serve::Settings {
        max_connections: args.max_connections,
        header_timeout: duration("header-timeout", &args.header_timeout)?,
        request_timeout: duration("request-timeout", &args.request_timeout)?,
        retention: Retention {
            hosts: duration("forget-hosts-after", &args.forget_hosts_after)?,
            events: duration("keep-events", &args.keep_events)?,
        },
        ..serve::Settings::default()
    };
    let tuf = match (&args.tuf_repo, &args.tuf_keys) {
        (Some(dir), Some(keys)) => {
            let lifetime = duration("tuf-timestamp-expires", &args.tuf_timestamp_expires)?.as_secs();
            let (dir, keys) = (dir.clone(), keys.clone());
            let repo = tokio::task::spawn_blocking(move || TufRepository::open(&dir, &keys, lifetime))
                .await?
                .context("--tuf-repo: this server cannot sign the repository's timestamps")?;
            Some(Arc::new(repo))
        }
        _ => None,
    };
    let mut server = Server::new(db, Arc::new(SystemClock))
        .with_tuf(tuf)
        .with_locks(locks)
        .with_limits(limits)
        .with_metrics_token(metrics_token.as_deref());
    // Decided before binding: nothing listens, even briefly, where it must not.
    let addresses: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&args.listen)
        .with_context(|| format!("--listen {}", args.listen))?
        .collect();
    let loopback = !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback());
    if tls.is_none() && !loopback && !args.insecure_http {
        bail!(
            "refusing to serve plain HTTP on {}: hosts' credentials and admin tokens would cross the network \
             in the clear. Give --tls-cert and --tls-key, or --insecure-http behind a proxy that terminates TLS",
            args.listen
        );
    }
    if args.insecure_no_agent_auth && !loopback {
        bail!("--insecure-no-agent-auth is for benchmarks on a loopback address, not {}", args.listen);
    }
    let listener = TcpListener::bind(&addresses[..]).with_context(|| format!("listening on {}", args.listen))?;
    if args.insecure_no_agent_auth {
        tracing::warn!("check-ins and events are taken WITHOUT host credentials (--insecure-no-agent-auth)");
        server = server.without_agent_auth();
    }
    raise_open_files_limit();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let running = serve::start(Arc::new(server), listener, tls, settings)?;
    // Tests and scripts read this line for the address (the port may have been 0).
    println!("cairn-server listening on {scheme}://{}", running.addr);
    tracing::info!(addr = %running.addr, scheme, "listening");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn create_token(store_args: StoreArgs, name: String, expires: Option<String>) -> Result<()> {
    let expires_at = match expires {
        Some(text) => Some(SystemClock.now_ms() + duration("expires", &text)?.as_millis() as i64),
        None => None,
    };
    let db = store_args.open().await?;
    let token = tokens::generate()?;
    store::insert_token(&db, &tokens::hash(&token), &name, SystemClock.now_ms(), expires_at).await?;
    db.close().await;
    println!("{token}");
    Ok(())
}

fn show_time(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_string(), |ms| format!("{}", ms / 1000))
}

async fn list_tokens(store_args: StoreArgs, json: bool) -> Result<()> {
    let db = store_args.open().await?;
    let tokens = store::tokens(&db).await?;
    db.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(());
    }
    let now = SystemClock.now_ms();
    println!("{:<20} {:<12} {:>12} {:>12} {:>12}  STATE", "NAME", "ID", "CREATED", "EXPIRES", "REVOKED");
    for t in tokens {
        let state = match (t.revoked_at, t.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if e <= now => "expired",
            _ => "valid",
        };
        println!(
            "{:<20} {:<12} {:>12} {:>12} {:>12}  {state}",
            t.name,
            t.id,
            show_time(Some(t.created_at)),
            show_time(t.expires_at),
            show_time(t.revoked_at)
        );
    }
    Ok(())
}

async fn revoke_tokens(store_args: StoreArgs, name_or_id: String) -> Result<()> {
    let db = store_args.open().await?;
    let revoked = store::revoke_tokens(&db, &name_or_id, SystemClock.now_ms()).await?;
    db.close().await;
    if revoked == 0 {
        bail!("no valid token has the name or id {name_or_id:?} (see `cairn-server token list`)");
    }
    println!("revoked {revoked} token(s)");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting tokio");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Token(TokenCommand::Create { store, name, expires }) => create_token(store, name, expires).await,
            Command::Token(TokenCommand::List { store, json }) => list_tokens(store, json).await,
            Command::Token(TokenCommand::Revoke { store, name_or_id }) => revoke_tokens(store, name_or_id).await,
        }
    });
    if let Err(e) = result {
        eprintln!("cairn-server: {e:#}");
        std::process::exit(1);
    }
}

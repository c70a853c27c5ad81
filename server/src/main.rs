//! `cairn-server serve` and `cairn-server token create`.

use anyhow::{Context, Result, bail};
use cairn_release::keys::PublicKey;
use cairn_server::clock::{Clock, SystemClock};
use cairn_server::db::Db;
use cairn_server::locks::{self, Locks, etcd::EtcdSemaphores};
use cairn_server::rollout::Server;
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
    Serve(ServeArgs),
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
        /// What the token is for, shown in logs.
        #[arg(long, default_value = "admin")]
        name: String,
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
    /// A release public key (file) accepted on package upload; repeat for several.
    #[arg(long = "trust", value_name = "PUB", required = true)]
    trust: Vec<PathBuf>,
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
    let mut trusted = Vec::new();
    for path in &args.trust {
        let text = std::fs::read_to_string(path).with_context(|| format!("--trust {}", path.display()))?;
        trusted.push(PublicKey::parse(&text).with_context(|| format!("--trust {}", path.display()))?);
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls_config(cert, key).await?),
        _ => None,
    };
    let db = args.store.open().await?;
    let data_dir = args.store.data.clone();
    let store = if args.etcd.is_empty() {
        locks::Store::Database
    } else {
        locks::Store::Etcd(Box::new(EtcdSemaphores::connect(&args.etcd).await?))
    };
    let locks = Locks { store, create_on_first_use: args.lock_groups_on_first_use };
    let server = Arc::new(Server::new(db, Arc::new(SystemClock), trusted, data_dir).with_locks(locks));
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let running = serve::start(server, listener, tls)?;
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

async fn create_token(store_args: StoreArgs, name: String) -> Result<()> {
    let db = store_args.open().await?;
    let token = tokens::generate()?;
    store::insert_token(&db, &tokens::hash(&token), &name, SystemClock.now_ms()).await?;
    db.close().await;
    println!("{token}");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting tokio");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Token(TokenCommand::Create { store, name }) => create_token(store, name).await,
        }
    });
    if let Err(e) = result {
        eprintln!("cairn-server: {e:#}");
        std::process::exit(1);
    }
}

//! Running the server: the HTTP(S) listener (with a cap on connections and a deadline for each
//! request's headers, which also closes idle connections), the heartbeat writer, the pruner,
//! and a shutdown that finishes in-flight requests and writes every pending heartbeat before
//! the database closes.

use crate::capped::Capped;
use crate::rollout::Server;
use anyhow::{Context, Result};
use axum_server::Handle;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const HEARTBEAT_FLUSH: Duration = Duration::from_secs(1);

/// How the listener holds up under many or slow clients, and what is kept how long.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// A request's headers must arrive within this; a connection idle this long is closed.
    pub header_timeout: Duration,
    /// An agent or FleetLock request must be answered within this, its body included.
    pub request_timeout: Duration,
    /// Hosts not seen and events older than this are pruned, once an hour.
    pub retention: crate::identity::Retention,
    /// How often the TUF repository is read again and its timestamp looked at.
    pub tuf_every: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            retention: crate::identity::Retention::default(),
            tuf_every: Duration::from_secs(60),
        }
    }
}

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct Running {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    handle: Handle,
    http: JoinHandle<std::io::Result<()>>,
    stop_flusher: watch::Sender<bool>,
    flusher: JoinHandle<()>,
}

pub async fn tls_config(cert: &Path, key: &Path) -> Result<RustlsConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| format!("loading the TLS certificate {} and key {}", cert.display(), key.display()))
}

/// Serves `server` on `listener` until [`Running::shutdown`].
pub fn start(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<RustlsConfig>,
    settings: Settings,
) -> Result<Running> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = Handle::new();
    let app = crate::api::router(server.clone(), settings.request_timeout)
        .into_make_service_with_connect_info::<SocketAddr>();
    let mut http_server = axum_server::from_tcp(listener).handle(handle.clone());
    http_server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(64 << 10);
    // TCP_NODELAY: replies are small; Nagle's algorithm would hold a body written apart from its
    // headers until the client's delayed ACK (40 ms).
    let http = match tls {
        Some(config) => {
            // rustls's handshake has a deadline of its own (10 s, axum-server's default).
            let tls = RustlsAcceptor::new(config).acceptor(NoDelayAcceptor::new());
            tokio::spawn(http_server.acceptor(Capped::new(tls, settings.max_connections)).serve(app))
        }
        None => {
            tokio::spawn(http_server.acceptor(Capped::new(NoDelayAcceptor::new(), settings.max_connections)).serve(app))
        }
    };
    let (stop_flusher, mut stop) = watch::channel(false);
    let flusher = tokio::spawn({
        let server = server.clone();
        async move {
            let mut tick = tokio::time::interval(HEARTBEAT_FLUSH);
            let mut pruned_at = tokio::time::Instant::now();
            let mut tuf_at: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = server.flush_heartbeats().await {
                    tracing::error!(error = format!("{e:#}"), "writing heartbeats");
                }
                if let Some(tuf) = server.tuf.clone()
                    && tuf_at.is_none_or(|at| at.elapsed() >= settings.tuf_every)
                {
                    tuf_at = Some(tokio::time::Instant::now());
                    maintain(&server, tuf).await;
                }
                if pruned_at.elapsed() >= PRUNE_EVERY {
                    pruned_at = tokio::time::Instant::now();
                    if let Err(e) = server.prune(settings.retention).await {
                        tracing::error!(error = format!("{e:?}"), "pruning");
                    }
                }
            }
        }
    });
    Ok(Running { addr, server, handle, http, stop_flusher, flusher })
}

/// A round of the TUF repository's upkeep (blocking: off the runtime's threads); a failure is
/// an error in the log every round, with when hosts will start refusing the feed.
async fn maintain(server: &Server, tuf: Arc<crate::tuf::TufRepository>) {
    let now = (server.now_ms() / 1000) as u64;
    let worker = tuf.clone();
    match tokio::task::spawn_blocking(move || worker.maintain(now)).await {
        Ok(Ok(crate::tuf::Maintained::Refreshed(version))) => tracing::info!(version, "signed a new TUF timestamp"),
        Ok(Ok(crate::tuf::Maintained::Fresh)) => {}
        Ok(Err(e)) => tracing::error!(
            error = %e,
            expires = tuf.timestamp_expires(),
            "cannot refresh the TUF timestamp: hosts refuse the feed once it expires"
        ),
        Err(e) => tracing::error!(error = %e, "the TUF upkeep task failed"),
    }
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to 10 s), writes what is pending and
    /// closes the database.
    pub async fn shutdown(self) -> Result<()> {
        self.handle.graceful_shutdown(Some(Duration::from_secs(10)));
        self.http.await.context("the HTTP task")?.context("serving HTTP")?;
        let _ = self.stop_flusher.send(true);
        let _ = self.flusher.await;
        let written = self.server.flush_heartbeats().await.context("writing the last heartbeats")?;
        self.server.db.close().await;
        tracing::info!(heartbeats = written, "stopped");
        Ok(())
    }
}

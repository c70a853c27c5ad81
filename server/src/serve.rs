//! Running the server: the HTTP(S) listener, the heartbeat writer, and a shutdown that finishes
//! in-flight requests and writes every pending heartbeat before the database closes.

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
pub fn start(server: Arc<Server>, listener: TcpListener, tls: Option<RustlsConfig>) -> Result<Running> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = Handle::new();
    let app = crate::api::router(server.clone()).into_make_service();
    // TCP_NODELAY: replies are small; Nagle's algorithm would hold a body written apart from its
    // headers until the client's delayed ACK (40 ms).
    let http_server = axum_server::from_tcp(listener).handle(handle.clone());
    let http = match tls {
        Some(config) => {
            tokio::spawn(http_server.acceptor(RustlsAcceptor::new(config).acceptor(NoDelayAcceptor::new())).serve(app))
        }
        None => tokio::spawn(http_server.acceptor(NoDelayAcceptor::new()).serve(app)),
    };
    let (stop_flusher, mut stop) = watch::channel(false);
    let flusher = tokio::spawn({
        let server = server.clone();
        async move {
            let mut tick = tokio::time::interval(HEARTBEAT_FLUSH);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = server.flush_heartbeats().await {
                    tracing::error!(error = format!("{e:#}"), "writing heartbeats");
                }
            }
        }
    });
    Ok(Running { addr, server, handle, http, stop_flusher, flusher })
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

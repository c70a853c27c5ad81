//! An etcd of its own (Debian's `etcd-server`): one member, data in a temporary directory,
//! client and peer URLs on 127.0.0.1 at free ports; killable and restartable on the same data.

use crate::free_port;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    pub fn start() -> Result<Etcd> {
        if !Path::new(ETCD).exists() {
            bail!("{ETCD} is missing: run ./scripts/setup.sh (apt package etcd-server)");
        }
        let dir = tempfile::Builder::new().prefix("cairn-etcd").tempdir()?;
        let mut etcd = Etcd { dir, client_port: free_port()?, peer_port: free_port()?, child: None };
        etcd.spawn()?;
        Ok(etcd)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("log"))?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD)
            .args(["--name", "cairn-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("cairn-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {ETCD}"))?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(60))
    }

    /// Polls `/health` until etcd answers `{"health":"true"}`, or fails with its log.
    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(reply) = http.get(format!("{}/health", self.url())).send()
                && reply.text().is_ok_and(|t| t.contains("\"health\":\"true\""))
            {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "etcd on {} did not become healthy ({}):\n{}",
                    self.url(),
                    exited.map_or("timed out".to_string(), |s| format!("exited: {s}")),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or power loss would stop it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Killed and started again on the same data and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

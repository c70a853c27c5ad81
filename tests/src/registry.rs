//! A container registry of the test's own: Debian's `docker-registry` (the CNCF distribution)
//! on the test machine's loopback with its storage in a temporary directory, optionally behind
//! htpasswd authentication; images pushed to it with `skopeo`. Stopped on drop.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `credentials`, every request needs them (HTTP basic auth).
    pub fn start(credentials: Option<(&str, &str)>) -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix("cairn-registry").tempdir()?;
        let port = crate::free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = credentials {
            let hash = bcrypt::hash(password, 5)?;
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log"))?)
            .spawn()
            .context("starting docker-registry (apt package docker-registry: ./scripts/setup.sh)")?;
        let mut registry = Registry { child, port, dir };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("docker-registry did not listen within 30 s: {}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`, as the test machine reaches it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the OCI archive `archive` as `name:tag` with skopeo (an open registry only); the
    /// manifest's digest (`sha256:...`) is returned.
    pub fn push(&self, archive: &Path, name: &str, tag: &str) -> Result<String> {
        let work = self.dir.path().join("push");
        std::fs::create_dir_all(&work)?;
        let digest_file = work.join(format!("{name}-{tag}.digest"));
        let dest = format!("docker://{}/{name}:{tag}", self.address());
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(&dest)
            .output()
            .context("running skopeo (apt package skopeo: ./scripts/setup.sh)")?;
        if !out.status.success() {
            bail!("skopeo copy to {dest}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(std::fs::read_to_string(digest_file)?.trim().to_string())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

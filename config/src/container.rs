//! Running a `cairn.containers` entry through containerd: `cairn-cloud-config container NAME`
//! is the init service `container-NAME`. It takes the OCI archive (a path, or a URL fetched
//! once and kept), imports it with `ctr` under a name of its own, removes what a crash left of
//! an earlier run, and becomes `ctr run` in the foreground: init supervises it, restarts it per
//! its `restart`, and stops it with SIGTERM, which `ctr` hands to the container.
//!
//! Containers share the host's network (there are no CNI plugins in the image): a container
//! that listens on a port listens on the host's.

use crate::cairn::Container;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The specs `apply` writes, one per container.
pub const SPECS_DIR: &str = "/etc/cairn/containers";
/// Archives fetched from URLs (on ROOT: fetched once, not at every start).
pub const IMAGES_DIR: &str = "/var/lib/cairn/images";
pub const CTR: &str = "/usr/bin/ctr";
/// The longest a fetch of an archive may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// The containerd image a container's archive is imported as: the archive's index under a name
/// of Cairn's, so any archive works whatever names it carries.
pub fn image_ref(name: &str) -> String {
    format!("cairn.local/{name}:latest")
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("fetching {image}: {message}")]
    Fetch { image: String, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

pub fn load(dir: &Path, name: &str) -> Result<Container, ContainerError> {
    let path = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).map_err(|source| ContainerError::Read { path: path.clone(), source })?;
    toml::from_str(&text).map_err(|source| ContainerError::Parse { path, source })
}

/// `ctr` arguments that import `archive` for container `name`.
pub fn import_args(name: &str, archive: &Path) -> Vec<String> {
    vec!["images".into(), "import".into(), "--index-name".into(), image_ref(name), archive.display().to_string()]
}

/// `ctr` argument lists that remove what an earlier run left (each may fail: nothing to remove).
pub fn cleanup_args(name: &str) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["tasks", "kill", "-s", "SIGKILL", name]),
        v(&["tasks", "delete", name]),
        v(&["containers", "delete", name]),
    ]
}

/// `ctr` arguments that run container `c` in the foreground.
pub fn run_args(c: &Container) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--net-host".into()];
    for (k, v) in &c.environment {
        args.push("--env".into());
        args.push(format!("{k}={v}"));
    }
    args.push(image_ref(&c.name));
    args.push(c.name.clone());
    args.extend(c.command.iter().cloned());
    args
}

/// The archive on this host: the path itself, or the URL's download under `images_dir`
/// (fetched when missing, checked against its `sha256` when one is given, written whole or
/// not at all).
pub fn archive(c: &Container, images_dir: &Path) -> Result<PathBuf, ContainerError> {
    let image = c.image.as_str();
    if !(image.starts_with("http://") || image.starts_with("https://")) {
        return Ok(PathBuf::from(image));
    }
    let what = |e: &dyn std::fmt::Display| ContainerError::Fetch { image: image.into(), message: e.to_string() };
    if image.starts_with("http://") && c.sha256.is_none() {
        return Err(what(&"a plain-http URL without a sha256 is not fetched"));
    }
    // The digest is part of the name: a new digest for the same URL is fetched again.
    let key = format!("{image}\n{}", c.sha256.as_deref().unwrap_or(""));
    let file = images_dir.join(format!("{}.tar", &hex::encode(Sha256::digest(key.as_bytes()))[..32]));
    if file.exists() {
        return Ok(file);
    }
    std::fs::create_dir_all(images_dir)
        .map_err(|source| ContainerError::Io { what: format!("creating {}", images_dir.display()), source })?;
    let client = reqwest::blocking::Client::builder().timeout(FETCH_TIMEOUT).build().map_err(|e| what(&e))?;
    let mut resp = client.get(image).send().map_err(|e| what(&e))?;
    if !resp.status().is_success() {
        return Err(what(&format!("HTTP {}", resp.status())));
    }
    let tmp = file.with_extension("partial");
    let mut out = HashingWriter { file: std::fs::File::create(&tmp).map_err(|e| what(&e))?, hash: Sha256::new() };
    std::io::copy(&mut resp, &mut out).map_err(|e| what(&e))?;
    let got = hex::encode(out.hash.finalize());
    if let Some(want) = &c.sha256
        && *want != got
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(what(&format!("the archive's sha256 is {got}, not {want}")));
    }
    out.file.sync_all().map_err(|e| what(&e))?;
    std::fs::rename(&tmp, &file).map_err(|e| what(&e))?;
    Ok(file)
}

/// A file that hashes what is written to it.
struct HashingWriter {
    file: std::fs::File,
    hash: Sha256,
}

impl std::io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_the_foreground_on_the_hosts_network_with_its_environment() {
        let c = Container {
            name: "web".into(),
            image: "/var/web.tar".into(),
            sha256: None,
            command: vec!["/bin/busybox".into(), "httpd".into(), "-f".into()],
            environment: [("A".to_string(), "1 2".to_string())].into(),
            restart: "always".into(),
        };
        assert_eq!(
            run_args(&c),
            [
                "run",
                "--rm",
                "--net-host",
                "--env",
                "A=1 2",
                "cairn.local/web:latest",
                "web",
                "/bin/busybox",
                "httpd",
                "-f"
            ]
        );
        assert_eq!(import_args("web", Path::new("/var/web.tar"))[3], "cairn.local/web:latest");
        assert_eq!(archive(&c, Path::new("/nonexistent")).unwrap(), Path::new("/var/web.tar"));
    }

    #[test]
    fn a_spec_written_by_apply_loads_back() {
        let t = tempfile::tempdir().unwrap();
        let c = Container {
            name: "web".into(),
            image: "https://example.com/web.tar".into(),
            sha256: Some("ab".repeat(32)),
            command: vec![],
            environment: Default::default(),
            restart: "on-failure".into(),
        };
        std::fs::write(t.path().join("web.toml"), format!("# a comment\n{}", toml::to_string(&c).unwrap())).unwrap();
        assert_eq!(load(t.path(), "web").unwrap(), c);
        assert!(load(t.path(), "nope").unwrap_err().to_string().contains("nope.toml"));
    }
}

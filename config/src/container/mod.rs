//! Running a `cairn.containers` entry through containerd's CRI (`run`: the init service
//! `container-NAME`). Its image is an OCI archive (a path, or a URL fetched once and kept),
//! imported with `ctr` under a name of its own, or a registry reference, pulled by containerd
//! (`crate::cri`) through the registry's `hosts.toml` and pinned: a tag is resolved when the
//! container's spec is new or changed, and every later start runs the same image
//! (`repo@sha256:...`) until the spec changes.

pub mod bridge;
pub mod cni;
pub mod health;
pub mod iptables;
pub mod netns;
pub mod network;
pub mod options;
pub mod passwd;
pub mod ports;
pub mod reference;
pub mod run;
pub mod seccomp;
pub mod spec;
pub mod task;

use crate::cairn::Container;
use crate::cri::{Cri, PullError};
use crate::registry::Credentials;
use oci_spec::distribution::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The specs `apply` writes, one per container.
pub const SPECS_DIR: &str = "/etc/cairn/containers";
/// Archives fetched from URLs (on ROOT: fetched once, not at every start).
pub const IMAGES_DIR: &str = "/var/lib/cairn/images";
/// What each container pulled from a registry, for which spec (on ROOT: kept across reboots).
pub const PULLED_DIR: &str = "/var/lib/cairn/containers";
pub const CTR: &str = "/usr/bin/ctr";
/// The longest a fetch of an archive may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// How long containerd's CRI may answer with errors before a start gives up (init retries it).
const CRI_UP: Duration = Duration::from_secs(30);

/// Where a container's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI archive on the host, or fetched from an http(s) URL.
    Archive,
    /// A registry reference, normalized as Docker does (`nginx` is
    /// `docker.io/library/nginx:latest`).
    Registry(Reference),
}

/// Whether `image` names an OCI archive (an absolute path or an http(s) URL) rather than a
/// registry reference, without parsing the reference (`source` does).
pub fn is_archive(image: &str) -> bool {
    image.starts_with('/') || image.starts_with("http://") || image.starts_with("https://")
}

/// Whether `image` names an archive or a registry reference, without oci-spec's parser (see
/// `reference`): what cloud-config's checks use.
pub fn check_image(image: &str) -> Result<(), String> {
    if is_archive(image) {
        return Ok(());
    }
    if [".tar", ".tar.gz", ".tgz"].iter().any(|x| image.ends_with(x)) {
        return Err(format!("{image:?} looks like an archive: its path must be absolute"));
    }
    reference::check(image).map_err(|e| {
        format!("{image:?} is neither a registry reference ({e}) nor an OCI archive's absolute path or http(s) URL")
    })
}

/// What `image` names: an absolute path or an http(s) URL is an archive; anything else must
/// be a registry reference. The first reference parsed compiles oci-spec's reference pattern
/// (Unicode classes: 0.13 s natively, half a second under emulation), so only a pull calls it.
pub fn source(image: &str) -> Result<Source, String> {
    check_image(image)?;
    if is_archive(image) {
        return Ok(Source::Archive);
    }
    image.parse::<Reference>().map(Source::Registry).map_err(|e| format!("{image:?}: {e}"))
}

/// The reference as containerd names the image (registry, repository, then tag or digest).
pub fn normalized(r: &Reference) -> String {
    let name = format!("{}/{}", r.registry(), r.repository());
    match (r.digest(), r.tag()) {
        (Some(d), _) => format!("{name}@{d}"),
        (None, Some(t)) => format!("{name}:{t}"),
        (None, None) => format!("{name}:latest"),
    }
}

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
    #[error("pulling {0}")]
    Pull(#[from] PullError),
}

pub fn load(dir: &Path, name: &str) -> Result<Container, ContainerError> {
    let path = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).map_err(|source| ContainerError::Read { path: path.clone(), source })?;
    toml::from_str(&text).map_err(|source| ContainerError::Parse { path, source })
}

/// `ctr` arguments that import `archive` for container `name`, where CRI finds it.
pub fn import_args(name: &str, archive: &Path) -> Vec<String> {
    let args = ["--namespace", crate::cri::NAMESPACE, "images", "import", "--index-name"];
    args.iter().map(|s| s.to_string()).chain([image_ref(name), archive.display().to_string()]).collect()
}

/// What a container pulled, for which spec: `PULLED_DIR/NAME.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    /// sha256 of the spec the image was resolved for.
    pub spec: String,
    /// The image as pulled, pinned: `repo@sha256:...`.
    pub image: String,
}

/// The sha256 of a container's spec: a changed spec resolves its tag again.
pub fn spec_digest(c: &Container) -> String {
    hex::encode(Sha256::digest(toml::to_string(c).expect("a container serializes").as_bytes()))
}

/// The pinned image to run, if the record is for this spec and containerd still has it.
pub fn reuse(record: Option<&Pulled>, spec: &str, present: impl FnOnce(&str) -> bool) -> Option<String> {
    record.filter(|r| r.spec == spec && present(&r.image)).map(|r| r.image.clone())
}

/// The repository of a normalized reference: without its tag or digest.
fn repository(reference: &str) -> &str {
    if let Some((repo, _)) = reference.split_once('@') {
        return repo;
    }
    match reference.rsplit_once(':') {
        // A colon before the last slash is a registry's port, not a tag.
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => reference,
    }
}

/// Of the names containerd pulled an image by, the `repo@sha256:...` of `reference`'s repository.
pub fn pinned(reference: &str, repo_digests: &[String]) -> Option<String> {
    let repo = repository(reference);
    repo_digests.iter().find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo)).cloned()
}

/// Whether containerd has `image`, asked again while its CRI answers with errors (its socket
/// accepts connections before the CRI service is up, just after a boot): an error taken for
/// "absent" would pull a pinned tag again.
fn has_image(images: &mut Cri, image: &str) -> Result<bool, PullError> {
    let until = std::time::Instant::now() + CRI_UP;
    loop {
        match images.status(image) {
            Ok(found) => return Ok(found.is_some()),
            Err(_) if std::time::Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e),
        }
    }
}

/// The registry image container `c` runs: the pinned one if its spec is unchanged and
/// containerd has it, else its reference pulled now (with the credentials `credentials` has
/// for its registry) and pinned. The reference is parsed only for a pull: a start with the
/// pinned image asks containerd one question and nothing else.
pub fn registry_image(
    c: &Container,
    credentials: impl FnOnce(&str) -> Option<Credentials>,
    images: &mut Cri,
    pulled_dir: &Path,
) -> Result<String, ContainerError> {
    let record_path = pulled_dir.join(format!("{}.toml", c.name));
    let record: Option<Pulled> = std::fs::read_to_string(&record_path).ok().and_then(|t| toml::from_str(&t).ok());
    let spec = spec_digest(c);
    let present = match record.as_ref().filter(|r| r.spec == spec) {
        Some(r) => has_image(images, &r.image)?,
        None => false,
    };
    if let Some(image) = reuse(record.as_ref(), &spec, |_| present) {
        return Ok(image);
    }
    let reference = match source(&c.image) {
        Ok(Source::Registry(r)) => r,
        Ok(Source::Archive) => {
            return Err(PullError::Other {
                image: c.image.clone(),
                detail: "an archive, not a registry reference".into(),
            }
            .into());
        }
        Err(detail) => return Err(PullError::Other { image: c.image.clone(), detail }.into()),
    };
    let credentials = credentials(reference.registry());
    let name = normalized(&reference);
    eprintln!("container {}: pulling {name}", c.name);
    images.pull(&name, credentials.as_ref())?;
    let info = images.status(&name)?.ok_or_else(|| PullError::Other {
        image: name.clone(),
        detail: "containerd does not have it after the pull".into(),
    })?;
    let image = pinned(&name, &info.repo_digests).unwrap_or(name);
    eprintln!("container {}: pulled {image}", c.name);
    let record = Pulled { spec, image: image.clone() };
    let io = |source| ContainerError::Io { what: format!("writing {}", record_path.display()), source };
    std::fs::create_dir_all(pulled_dir).map_err(io)?;
    cairn_release::durable::write_atomic(&record_path, toml::to_string(&record).expect("serializes").as_bytes(), 0o644)
        .map_err(io)?;
    Ok(image)
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
    fn an_archive_on_the_host_is_imported_where_cri_finds_it() {
        let c = Container { name: "web".into(), image: "/var/web.tar".into(), ..Container::default() };
        assert_eq!(
            import_args("web", Path::new("/var/web.tar")),
            ["--namespace", "k8s.io", "images", "import", "--index-name", "cairn.local/web:latest", "/var/web.tar"]
        );
        assert_eq!(archive(&c, Path::new("/nonexistent")).unwrap(), Path::new("/var/web.tar"));
    }

    #[test]
    fn images_are_archives_or_references_normalized_as_docker_does() {
        assert_eq!(source("/var/web.tar"), Ok(Source::Archive));
        assert_eq!(source("https://example.com/web.tar"), Ok(Source::Archive));
        let norm = |i: &str| match source(i).unwrap() {
            Source::Registry(r) => normalized(&r),
            Source::Archive => panic!("{i} is not an archive"),
        };
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("user/app:2"), "docker.io/user/app:2");
        assert_eq!(norm("10.0.2.2:5000/web:1"), "10.0.2.2:5000/web:1");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(norm(&format!("quay.io/org/app@{digest}")), format!("quay.io/org/app@{digest}"));
        for bad in ["web.tar", "Web", "a//b", "web:", "web:tag with space", "x@sha256:12"] {
            assert!(source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pinned_image_is_reused_only_for_the_same_spec_while_containerd_has_it() {
        let record = Pulled { spec: "s1".into(), image: "r/web@sha256:aa".into() };
        assert_eq!(reuse(Some(&record), "s1", |_| true), Some("r/web@sha256:aa".into()));
        assert_eq!(reuse(Some(&record), "s2", |_| true), None, "a changed spec resolves its tag again");
        assert_eq!(reuse(Some(&record), "s1", |_| false), None, "an image containerd lost is pulled again");
        assert_eq!(reuse(None, "s1", |_| true), None);
        let digests = ["10.0.2.2:5000/other@sha256:bb".to_string(), "10.0.2.2:5000/web@sha256:aa".to_string()];
        assert_eq!(pinned("10.0.2.2:5000/web:1", &digests), Some(digests[1].clone()));
        assert_eq!(pinned("10.0.2.2:5000/web@sha256:aa", &digests), Some(digests[1].clone()));
        assert_eq!(pinned("10.0.2.2:5000/none:1", &digests), None);
    }

    #[test]
    fn a_spec_written_by_apply_loads_back() {
        let t = tempfile::tempdir().unwrap();
        let c = Container {
            name: "web".into(),
            image: "https://example.com/web.tar".into(),
            sha256: Some("ab".repeat(32)),
            restart: "on-failure".into(),
            ports: vec!["8080:80".parse().unwrap()],
            volumes: vec!["data:/data:ro".parse().unwrap()],
            user: Some("1000".parse().unwrap()),
            ..Container::default()
        };
        std::fs::write(t.path().join("web.toml"), format!("# a comment\n{}", toml::to_string(&c).unwrap())).unwrap();
        assert_eq!(load(t.path(), "web").unwrap(), c);
        assert!(load(t.path(), "nope").unwrap_err().to_string().contains("nope.toml"));
    }
}

//! The image lock: `SPEC.lock` beside the spec (`images/default.lock` for
//! `images/default.toml`), in the spirit of `Cargo.lock`. It records what the spec asked for and
//! every Debian package apt resolved for it (exact version, architecture, file, size, sha256),
//! the versioned kernel package among them. A build with the lock takes exactly those packages
//! (from the cache by sha256, or from the archive while it still has that version); `--locked`
//! fails rather than take anything else, `--update-lock` resolves again. Pure: reading, writing
//! and comparing locks; the build does the fetching.

use crate::apt::Deb;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;

/// How a build treats its lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockMode {
    /// Use the lock while it matches the spec and its packages can be had; otherwise resolve
    /// again, write the new lock and say what changed.
    #[default]
    Use,
    /// Use the lock and nothing else: a missing or stale lock, or a package that cannot be had
    /// at its locked version, fails the build.
    Locked,
    /// Resolve again whatever the lock says, write it, say what changed.
    Update,
}

/// What the spec asks apt for: when it changes, the lock no longer answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requested {
    pub packages: Vec<String>,
    pub kernel: String,
    /// Dependencies apt takes as installed (`packages.without`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedDeb {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub requested: Requested,
    /// The versioned kernel package behind `requested.kernel`.
    pub kernel: LockedDeb,
    /// The meta package it was found through (`linux-image-cloud-amd64`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_meta: Option<LockedDeb>,
    /// The compiler of Cairn's static binaries (`rustc --version`): `--locked` refuses another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    /// The closure of `requested.packages`, by name.
    #[serde(rename = "package")]
    pub packages: Vec<LockedDeb>,
}

/// `images/default.toml` -> `images/default.lock`.
pub fn path_for(spec: &Path) -> PathBuf {
    spec.with_extension("lock")
}

/// `busybox_1%3a1.35.0-4+b3_amd64.deb` -> `amd64`.
fn architecture(filename: &str) -> String {
    filename.trim_end_matches(".deb").rsplit('_').next().unwrap_or_default().to_string()
}

impl From<&Deb> for LockedDeb {
    fn from(d: &Deb) -> LockedDeb {
        LockedDeb {
            name: d.package.clone(),
            version: d.version.clone(),
            architecture: architecture(&d.filename),
            filename: d.filename.clone(),
            size: d.size,
            sha256: d.sha256.clone(),
        }
    }
}

impl From<&LockedDeb> for Deb {
    fn from(d: &LockedDeb) -> Deb {
        Deb {
            package: d.name.clone(),
            version: d.version.clone(),
            filename: d.filename.clone(),
            size: d.size,
            sha256: d.sha256.clone(),
        }
    }
}

impl Lock {
    pub fn new(requested: Requested, packages: &[Deb], kernel: &Deb, kernel_meta: Option<&Deb>) -> Lock {
        let mut packages: Vec<LockedDeb> = packages.iter().map(LockedDeb::from).collect();
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Lock {
            format: FORMAT,
            requested,
            kernel: kernel.into(),
            kernel_meta: kernel_meta.map(LockedDeb::from),
            toolchain: None,
            packages,
        }
    }

    pub fn debs(&self) -> Vec<Deb> {
        self.packages.iter().map(Deb::from).collect()
    }

    /// Reads the lock at `path`, if there is one; a lock that does not parse is an error naming
    /// the file (it is never silently replaced).
    pub fn read(path: &Path) -> Result<Option<Lock>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let lock: Lock = toml::from_str(&text).with_context(|| format!("{}: not an image lock", path.display()))?;
        if lock.format != FORMAT {
            bail!("{}: lock format {} (this cairn reads {FORMAT})", path.display(), lock.format);
        }
        for d in lock.packages.iter().chain([&lock.kernel]).chain(&lock.kernel_meta) {
            let expected = format!("{}_{}_{}.deb", d.name, d.version.replace(':', "%3a"), d.architecture);
            if d.filename != expected {
                bail!(
                    "{}: package {} {}: file {:?} is not {expected:?}",
                    path.display(),
                    d.name,
                    d.version,
                    d.filename
                );
            }
        }
        Ok(Some(lock))
    }

    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).expect("a lock serializes");
        format!(
            "# Written by `cairn build`: the exact packages of this image. `cairn build --update-lock` moves it.\n{body}"
        )
    }

    /// A lock's sha256, for build.json.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.to_text().as_bytes()))
    }
}

/// What changed from `old` to `new`, a line per package: `+ name version`, `- name version`,
/// `~ name old -> new`.
pub fn changes(old: Option<&Lock>, new: &Lock) -> Vec<String> {
    let versions = |l: &Lock| -> BTreeMap<String, String> {
        l.packages.iter().chain([&l.kernel]).map(|d| (d.name.clone(), d.version.clone())).collect()
    };
    let before = old.map(versions).unwrap_or_default();
    let after = versions(new);
    let mut out = Vec::new();
    for (name, v) in &after {
        match before.get(name) {
            None => out.push(format!("+ {name} {v}")),
            Some(o) if o != v => out.push(format!("~ {name} {o} -> {v}")),
            Some(_) => {}
        }
    }
    for (name, v) in &before {
        if !after.contains_key(name) {
            out.push(format!("- {name} {v}"));
        }
    }
    let old_toolchain = old.and_then(|l| l.toolchain.as_deref());
    if let Some(t) = new.toolchain.as_deref()
        && old_toolchain != Some(t)
    {
        out.push(format!("~ toolchain {} -> {t}", old_toolchain.unwrap_or("(none)")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(name: &str, version: &str) -> Deb {
        Deb {
            package: name.into(),
            version: version.into(),
            filename: format!("{name}_{}_amd64.deb", version.replace(':', "%3a")),
            size: 10,
            sha256: "ab".repeat(32),
        }
    }

    fn requested() -> Requested {
        Requested { packages: vec!["busybox".into()], kernel: "linux-image-cloud-amd64".into(), without: Vec::new() }
    }

    #[test]
    fn a_lock_round_trips_through_its_text_and_names_the_architecture() {
        let kernel = deb("linux-image-6.1.0-40-cloud-amd64", "6.1.153-1");
        let lock = Lock::new(requested(), &[deb("zlib1g", "1:1.2.13"), deb("busybox", "1:1.35.0-4+b3")], &kernel, None);
        assert_eq!(lock.packages[0].name, "busybox", "sorted by name");
        assert_eq!(lock.packages[0].architecture, "amd64");
        let text = lock.to_text();
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("x.lock");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(Lock::read(&path).unwrap(), Some(lock.clone()));
        assert_eq!(Lock::read(&t.path().join("none.lock")).unwrap(), None);
        let edited = text.replacen("version = \"1:1.35.0-4+b3\"", "version = \"2\"", 1);
        std::fs::write(&path, edited).unwrap();
        let e = format!("{:#}", Lock::read(&path).unwrap_err());
        assert!(e.contains("package busybox 2: file"), "an edited version without its file: {e}");
        std::fs::write(&path, "packages = 3").unwrap();
        let e = format!("{:#}", Lock::read(&path).unwrap_err());
        assert!(e.contains("x.lock: not an image lock"), "{e}");
        assert_eq!(path_for(Path::new("images/default.toml")), Path::new("images/default.lock"));
    }

    #[test]
    fn changes_name_each_package_that_moved() {
        let kernel = deb("linux-image-6.1.0-40-cloud-amd64", "6.1.153-1");
        let old = Lock::new(requested(), &[deb("busybox", "1"), deb("gone", "1"), deb("same", "1")], &kernel, None);
        let new = Lock::new(requested(), &[deb("busybox", "2"), deb("added", "1"), deb("same", "1")], &kernel, None);
        assert_eq!(changes(Some(&old), &new), ["+ added 1", "~ busybox 1 -> 2", "- gone 1"]);
        assert_eq!(changes(Some(&new), &new), Vec::<String>::new());
        assert_eq!(changes(None, &new).len(), 4, "everything is new without a lock");
    }
}

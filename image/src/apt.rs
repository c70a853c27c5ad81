//! Resolving and fetching Debian packages through the build machine's apt, rootless and without
//! touching its package state: an empty dpkg status file makes apt resolve as for an empty system,
//! and downloads go to Cairn's own cache. A second build with the same inputs downloads nothing.

use crate::tools::run;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One `.deb` of the closure, as apt's index describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deb {
    pub package: String,
    pub version: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// `dir` holds the private status file and the archive cache.
    pub fn new(dir: &Path) -> Result<Apt> {
        let apt = Apt { dir: dir.to_path_buf() };
        for d in [apt.archives(), apt.archives().join("partial"), apt.empty_archives().join("partial")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let status = apt.status_file();
        if !status.exists() {
            std::fs::write(&status, b"").with_context(|| format!("creating {}", status.display()))?;
        }
        Ok(apt)
    }

    pub fn archives(&self) -> PathBuf {
        self.dir.join("archives")
    }

    /// Listing URIs against an empty archive directory makes apt list the whole closure.
    fn empty_archives(&self) -> PathBuf {
        self.dir.join("empty-archives")
    }

    fn status_file(&self) -> PathBuf {
        self.dir.join("status-empty")
    }

    fn command(&self, archives: &Path) -> Command {
        let mut c = Command::new("apt-get");
        let opts = [
            format!("Dir::State::status={}", self.status_file().display()),
            format!("Dir::Cache::archives={}", archives.display()),
            "Dir::Cache::pkgcache=".into(),
            "Dir::Cache::srcpkgcache=".into(),
            "Debug::NoLocking=1".into(),
            "APT::Install-Recommends=false".into(),
            "Acquire::ForceHash=SHA256".into(),
        ];
        for o in opts {
            c.arg("-o").arg(o);
        }
        if nix::unistd::geteuid().is_root() {
            // apt drops to _apt for downloads, which cannot write a private cache.
            c.arg("-o").arg("APT::Sandbox::User=root");
        }
        c
    }

    /// The packages and everything they depend on (no recommends), as for an empty system, but
    /// for `without`, which apt is told are installed (at their candidate versions).
    pub fn resolve_closure(&self, packages: &[String], without: &[String]) -> Result<Vec<Deb>> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        self.assume_installed(without)?;
        let mut cmd = self.command(&self.empty_archives());
        cmd.args(["--print-uris", "-qq", "-y", "install"]).args(packages);
        let out = run(&mut cmd).map_err(|e| explain_apt_failure(e, packages))?;
        let mut debs = parse_print_uris(&String::from_utf8_lossy(&out.stdout))?;
        debs.sort_by(|a, b| a.package.cmp(&b.package));
        Ok(debs)
    }

    /// Writes the status file apt resolves against: empty, or `packages` as installed, each
    /// described by its candidate's own fields so versioned dependencies on it are met.
    fn assume_installed(&self, packages: &[String]) -> Result<()> {
        let mut status = String::new();
        for p in packages {
            let out = run(Command::new("apt-cache").args(["show", "--no-all-versions", p]))
                .map_err(|e| explain_apt_failure(e, std::slice::from_ref(p)))?;
            status.push_str(
                &installed_stanza(&String::from_utf8_lossy(&out.stdout))
                    .with_context(|| format!("apt-cache show {p} gave no package"))?,
            );
        }
        let path = self.status_file();
        std::fs::write(&path, status).with_context(|| format!("writing {}", path.display()))
    }

    /// The exact versioned kernel package behind `package` (a meta package such as
    /// `linux-image-cloud-amd64`, or already a versioned one).
    pub fn resolve_kernel(&self, package: &str) -> Result<(Deb, Option<Deb>)> {
        let meta = self.resolve_one(package)?;
        let out = run(Command::new("apt-cache").args(["depends", "--important", package]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let versioned = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .find(|d| d.starts_with("linux-image-") && d.chars().nth(12).is_some_and(|c| c.is_ascii_digit()));
        match versioned {
            Some(name) => Ok((self.resolve_one(name)?, Some(meta))),
            None => Ok((meta, None)),
        }
    }

    fn resolve_one(&self, package: &str) -> Result<Deb> {
        let mut cmd = self.command(&self.empty_archives());
        cmd.args(["--print-uris", "-qq", "download", package]);
        let out = run(&mut cmd).map_err(|e| explain_apt_failure(e, &[package.to_string()]))?;
        let mut debs = parse_print_uris(&String::from_utf8_lossy(&out.stdout))?;
        match debs.len() {
            1 => Ok(debs.remove(0)),
            n => bail!("apt listed {n} files for {package}, expected one"),
        }
    }

    /// Why each of `debs` (locked versions) cannot be had: neither in the cache nor in the
    /// archive at that version, or the archive's file is not the locked one. Empty: all can.
    pub fn unobtainable(&self, debs: &[Deb]) -> Vec<String> {
        let mut problems = Vec::new();
        for d in debs.iter().filter(|d| !self.cached_ok(d)) {
            let mut cmd = self.command(&self.empty_archives());
            cmd.args(["--print-uris", "-qq", "download"]).arg(format!("{}={}", d.package, d.version));
            let listed = run(&mut cmd).map(|out| parse_print_uris(&String::from_utf8_lossy(&out.stdout)));
            match listed {
                Ok(Ok(found)) if found.iter().any(|f| f.sha256 == d.sha256) => {}
                Ok(Ok(found)) if !found.is_empty() => problems.push(format!(
                    "{} {}: the archive's file has sha256 {}, the lock says {}",
                    d.package, d.version, found[0].sha256, d.sha256
                )),
                _ => problems.push(format!("{} {}: in neither the cache nor the archive", d.package, d.version)),
            }
        }
        problems
    }

    /// Downloads what the cache lacks and checks every file's size and sha256.
    /// Returns how many files were downloaded.
    pub fn fetch(&self, debs: &[Deb]) -> Result<usize> {
        let missing: Vec<&Deb> = debs.iter().filter(|d| !self.cached_ok(d)).collect();
        if !missing.is_empty() {
            let mut cmd = self.command(&self.archives());
            cmd.current_dir(self.archives()).arg("download");
            if !std::io::stderr().is_terminal() {
                cmd.arg("-q");
            }
            cmd.args(missing.iter().map(|d| format!("{}={}", d.package, d.version)));
            crate::tools::run_visible(&mut cmd).context("downloading packages (is `apt-get update` done?)")?;
        }
        for d in debs {
            let path = self.path_of(d);
            let actual = sha256_file(&path)?;
            if actual != d.sha256 {
                let _ = std::fs::remove_file(&path);
                bail!("{} has sha256 {actual}, apt's index says {}; removed it, build again", path.display(), d.sha256);
            }
        }
        Ok(missing.len())
    }

    pub fn path_of(&self, deb: &Deb) -> PathBuf {
        self.archives().join(&deb.filename)
    }

    fn cached_ok(&self, deb: &Deb) -> bool {
        std::fs::metadata(self.path_of(deb)).map(|m| m.len() == deb.size).unwrap_or(false)
    }
}

fn explain_apt_failure(e: anyhow::Error, packages: &[String]) -> anyhow::Error {
    e.context(format!(
        "apt could not resolve {} (is the name right, and has `sudo apt-get update` run?)",
        packages.join(" ")
    ))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// The first stanza of `apt-cache show` as a dpkg status entry of an installed package: the
/// fields dependency resolution reads, and the status.
fn installed_stanza(show: &str) -> Option<String> {
    const KEPT: &[&str] = &["Package", "Version", "Architecture", "Multi-Arch", "Provides"];
    let first = show.split("\n\n").next()?;
    let mut out = String::new();
    for line in first.lines().filter(|l| !l.starts_with(' ')) {
        if let Some((key, _)) = line.split_once(':')
            && KEPT.contains(&key)
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.starts_with("Package:") {
        return None;
    }
    out.push_str("Status: install ok installed\n\n");
    Some(out)
}

/// Parses apt's `--print-uris` lines: `'URI' FILENAME SIZE SHA256:HEX`.
fn parse_print_uris(text: &str) -> Result<Vec<Deb>> {
    let mut debs = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('\'')) {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [_uri, filename, size, hash] = fields[..] else {
            bail!("unexpected apt output line: {line}");
        };
        let sha256 = hash.strip_prefix("SHA256:").with_context(|| format!("apt gave no SHA256 for {filename}"))?;
        let (package, version) =
            package_version_from_filename(filename).with_context(|| format!("unexpected .deb file name {filename}"))?;
        debs.push(Deb {
            package,
            version,
            filename: filename.to_string(),
            size: size.parse().with_context(|| format!("size of {filename}"))?,
            sha256: sha256.to_string(),
        });
    }
    Ok(debs)
}

/// `libgmp10_2%3a6.2.1+dfsg1-1.1_amd64.deb` -> (`libgmp10`, `2:6.2.1+dfsg1-1.1`)
fn package_version_from_filename(f: &str) -> Option<(String, String)> {
    let stem = f.strip_suffix(".deb")?;
    let mut parts = stem.splitn(3, '_');
    let (p, v, _arch) = (parts.next()?, parts.next()?, parts.next()?);
    Some((p.to_string(), v.replace("%3a", ":")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_out_dependency_is_an_installed_status_entry_of_its_candidate() {
        let show = "Package: debconf\nVersion: 1.5.82\nInstalled-Size: 512\nMaintainer: x\nArchitecture: all\n\
                    Multi-Arch: foreign\nProvides: debconf-2.0\nDescription: Debian configuration\n \
                    Version: 9\n\nPackage: debconf\nVersion: 1.0\n";
        assert_eq!(
            installed_stanza(show).unwrap(),
            "Package: debconf\nVersion: 1.5.82\nArchitecture: all\nMulti-Arch: foreign\nProvides: debconf-2.0\n\
             Status: install ok installed\n\n"
        );
        assert_eq!(installed_stanza(""), None);
    }

    /// A cached file that is not the one the lock (or apt's index) names is refused and removed,
    /// never unpacked into an image.
    #[test]
    fn a_cached_package_with_another_sha256_is_refused_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let apt = Apt::new(t.path()).unwrap();
        let deb = Deb {
            package: "busybox".into(),
            version: "1".into(),
            filename: "busybox_1_amd64.deb".into(),
            size: 5,
            sha256: hex::encode(Sha256::digest(b"right")),
        };
        std::fs::write(apt.path_of(&deb), b"wrong").unwrap();
        let e = apt.fetch(std::slice::from_ref(&deb)).unwrap_err().to_string();
        assert!(e.contains("has sha256") && e.contains(&deb.sha256), "{e}");
        assert!(!apt.path_of(&deb).exists(), "the wrong file is removed");
        std::fs::write(apt.path_of(&deb), b"right").unwrap();
        assert_eq!(apt.fetch(&[deb]).unwrap(), 0, "the right file is taken from the cache");
    }

    #[test]
    fn parses_print_uris() {
        let text = "'http://deb.debian.org/debian/pool/main/g/gmp/libgmp10_6.2.1%2bdfsg1-1.1_amd64.deb' libgmp10_2%3a6.2.1+dfsg1-1.1_amd64.deb 562588 SHA256:abcd\n";
        let d = parse_print_uris(text).unwrap();
        assert_eq!(
            d,
            vec![Deb {
                package: "libgmp10".into(),
                version: "2:6.2.1+dfsg1-1.1".into(),
                filename: "libgmp10_2%3a6.2.1+dfsg1-1.1_amd64.deb".into(),
                size: 562588,
                sha256: "abcd".into()
            }]
        );
    }

    #[test]
    fn md5_only_output_is_refused() {
        let text = "'http://x/a_1_amd64.deb' a_1_amd64.deb 10 MD5Sum:00\n";
        assert!(parse_print_uris(text).unwrap_err().to_string().contains("SHA256"));
    }
}

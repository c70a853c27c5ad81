//! Cairn's own binaries for the image: built by cargo from this workspace as static executables
//! (they run in the initramfs, before any library exists), or taken from a directory.

use crate::tools::run_visible;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Clone, Debug)]
pub enum Source {
    /// Build with cargo in this workspace (with this cargo home, else the environment's).
    Cargo { workspace: PathBuf, target_dir: PathBuf, cargo_home: Option<PathBuf> },
    /// Take prebuilt static binaries from a directory.
    Dir(PathBuf),
}

impl Source {
    /// The workspace: `CAIRN_SOURCE` if set; else the package cargo runs us from (tests, `cargo
    /// run`: every package is one level down); else the one this builder was compiled from.
    /// (Cargo reuses a build from another clone that shares the target directory, so the path
    /// compiled in may be of a clone since deleted.)
    pub fn default_cargo() -> Source {
        let package = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let workspace = std::env::var_os("CAIRN_SOURCE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&package).parent().expect("workspace").to_path_buf());
        let target_dir =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
        Source::Cargo { workspace, target_dir, cargo_home: None }
    }
}

#[derive(Clone, Debug)]
pub struct Binary {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// Where cargo keeps downloaded crates: `CARGO_HOME`, else `~/.cargo`.
pub fn default_cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// The flags every crate of Cairn's binaries is built with: static (stage 1 runs before any
/// shared library is reachable), without symbols, and with the cargo home and the target
/// directory rewritten to fixed paths. The standard library comes with `/rustc/<commit>` paths.
/// Nothing here names the checkout, so the dependencies' builds stay valid whichever checkout
/// builds next (the checkout's own path goes to Cairn's crates alone: [`member_rustflags`]).
pub fn rustflags(target_dir: &Path, cargo_home: Option<&Path>) -> Vec<String> {
    // No symbol table: the names LLVM gives promoted local symbols (`anon.HASH.N.llvm.NUMBER`)
    // differ between build machines, and a table stripped by the linker keeps the build id a
    // hash of what ships.
    let mut flags = ["-C", "target-feature=+crt-static", "-C", "strip=symbols"].map(String::from).to_vec();
    if let Some(home) = cargo_home.map(Path::to_path_buf).or_else(default_cargo_home) {
        flags.push(remap(&home, "/cargo"));
    }
    flags.push(remap(target_dir, "/cairn-target"));
    flags
}

/// The flags Cairn's own crates get on top of [`rustflags`], through cargo's workspace wrapper:
/// the checkout rewritten to `/cairn`, then the target directory again, as the more specific
/// prefix when it lies inside the checkout (rustc applies the last remapping that matches).
/// So the binaries, and so `/usr` and its verity root hash, do not depend on where they were built.
pub fn member_rustflags(workspace: &Path, target_dir: &Path) -> Vec<String> {
    vec![remap(workspace, "/cairn"), remap(target_dir, "/cairn-target")]
}

/// `--remap-path-prefix` of `from` as rustc sees it (absolute; a path that does not exist yet
/// is taken as given).
fn remap(from: &Path, to: &str) -> String {
    let from = from.canonicalize().unwrap_or_else(|_| from.to_path_buf());
    format!("--remap-path-prefix={}={to}", from.display())
}

/// The workspace wrapper: runs rustc with the flags of `CAIRN_MEMBER_RUSTFLAGS` (one a line)
/// appended. Cargo does not fingerprint what a wrapper adds, and uses it for workspace members
/// only, so the dependencies are not built again when another checkout builds.
const MEMBER_WRAPPER: &str = "#!/bin/sh\n# Written by cairn build: rustc for Cairn's own crates, with CAIRN_MEMBER_RUSTFLAGS.\nset -f\nIFS='\n'\nexec \"$@\" $CAIRN_MEMBER_RUSTFLAGS\n";

const MEMBER_WRAPPER_NAME: &str = "cairn-member-rustc";

/// The directory holding the wrapper script, in `target_dir`; the script is written when
/// missing or different.
fn member_wrapper(target_dir: &Path) -> Result<PathBuf> {
    let dir = target_dir.join("cairn-wrapper");
    let path = dir.join(MEMBER_WRAPPER_NAME);
    if std::fs::read(&path).ok().as_deref() != Some(MEMBER_WRAPPER.as_bytes()) {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        cairn_release::durable::write_atomic(&path, MEMBER_WRAPPER.as_bytes(), 0o755)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// `PATH` with `dir` first.
fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)))?)
}

/// The compiler cargo builds Cairn's binaries with (`rustc 1.95.0 (...)`), for build.json;
/// `None` for prebuilt binaries.
pub fn toolchain(source: &Source) -> Result<Option<String>> {
    let Source::Cargo { workspace, .. } = source else { return Ok(None) };
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = crate::tools::run(Command::new(rustc).current_dir(workspace).arg("--version"))?;
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

pub fn obtain(source: &Source, names: &[String], quiet: bool) -> Result<Vec<Binary>> {
    let dir = match source {
        Source::Dir(d) => d.clone(),
        Source::Cargo { workspace, target_dir, cargo_home } => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(workspace)
                .args(["build", "--release", "--target", TARGET])
                .arg("--target-dir")
                .arg(target_dir)
                // With --target these apply to Cairn's binaries only, not to build scripts.
                .env("CARGO_ENCODED_RUSTFLAGS", rustflags(target_dir, cargo_home.as_deref()).join("\u{1f}"))
                // By its bare name, found on PATH: cargo hashes the wrapper as named into the
                // crates' metadata, so a path (the target directory's) would reach the binaries.
                .env("RUSTC_WORKSPACE_WRAPPER", MEMBER_WRAPPER_NAME)
                .env("PATH", path_with(&member_wrapper(target_dir)?)?)
                .env("CAIRN_MEMBER_RUSTFLAGS", member_rustflags(workspace, target_dir).join("\n"));
            if let Some(home) = cargo_home {
                cmd.env("CARGO_HOME", home);
            }
            if quiet {
                cmd.arg("--quiet");
            }
            for n in names {
                cmd.args(["--bin", n]);
            }
            run_visible(&mut cmd).context("building Cairn's binaries")?;
            target_dir.join(TARGET).join("release")
        }
    };
    names
        .iter()
        .map(|n| {
            let path = dir.join(n);
            if !path.is_file() {
                bail!("binary {n} not found at {}", path.display());
            }
            let sha256 = crate::apt::sha256_file(&path)?;
            Ok(Binary { name: n.clone(), path, sha256 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_machines_paths_are_remapped_most_specific_last() {
        let flags = rustflags(Path::new("/w/cairn/target"), None);
        assert_eq!(&flags[..4], ["-C", "target-feature=+crt-static", "-C", "strip=symbols"]);
        assert!(!flags.iter().any(|f| f.contains("=/cairn=")), "no checkout in the shared flags: {flags:?}");
        let remaps: Vec<&str> = flags.iter().filter_map(|f| f.strip_prefix("--remap-path-prefix=")).collect();
        assert_eq!(remaps.last(), Some(&"/w/cairn/target=/cairn-target"), "{remaps:?}");
        if default_cargo_home().is_some() {
            assert!(remaps[0].ends_with("=/cargo"), "{remaps:?}");
        }
        let flags = rustflags(Path::new("/w/cairn/target"), Some(Path::new("/elsewhere")));
        assert!(flags.contains(&"--remap-path-prefix=/elsewhere=/cargo".to_string()), "{flags:?}");
        let members = member_rustflags(Path::new("/w/cairn"), Path::new("/w/cairn/target"));
        assert_eq!(
            members,
            ["--remap-path-prefix=/w/cairn=/cairn", "--remap-path-prefix=/w/cairn/target=/cairn-target"]
        );
    }

    /// The wrapper is run as cargo runs it (`WRAPPER RUSTC ARGS...`, found on PATH) with `printf` for rustc:
    /// the arguments come through as they were, then each flag whole, spaces and all.
    #[test]
    fn the_member_wrapper_appends_each_flag_whole() {
        let t = tempfile::tempdir().unwrap();
        let dir = member_wrapper(t.path()).unwrap();
        assert_eq!(member_wrapper(t.path()).unwrap(), dir, "written once, found again");
        let out = Command::new(MEMBER_WRAPPER_NAME)
            .env("PATH", path_with(&dir).unwrap())
            .args(["printf", "[%s]", "--crate-name", "a b*"])
            .env("CAIRN_MEMBER_RUSTFLAGS", "--remap-path-prefix=/w/my checkout=/cairn\n--remap-path-prefix=/t=/t2")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "[--crate-name][a b*][--remap-path-prefix=/w/my checkout=/cairn][--remap-path-prefix=/t=/t2]"
        );
    }
}

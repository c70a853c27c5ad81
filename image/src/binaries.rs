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

/// The flags of Cairn's binaries: static (stage 1 runs before any shared library is reachable),
/// without symbols, and with the build machine's paths (the cargo home, this checkout, the
/// target directory) rewritten to fixed ones, so the binaries, and so `/usr` and its verity root hash, do not
/// depend on where they were built. The standard library comes with `/rustc/<commit>` paths.
pub fn rustflags(workspace: &Path, target_dir: &Path, cargo_home: Option<&Path>) -> Vec<String> {
    // No symbol table: the names LLVM gives promoted local symbols (`anon.HASH.N.llvm.NUMBER`)
    // differ between build machines, and a table stripped by the linker keeps the build id a
    // hash of what ships.
    let mut flags = ["-C", "target-feature=+crt-static", "-C", "strip=symbols"].map(String::from).to_vec();
    let mut remap = |from: &Path, to: &str| {
        // Absolute, as rustc sees them; a path that does not exist (yet) is taken as given.
        let from = from.canonicalize().unwrap_or_else(|_| from.to_path_buf());
        flags.push(format!("--remap-path-prefix={}={to}", from.display()));
    };
    if let Some(home) = cargo_home.map(Path::to_path_buf).or_else(default_cargo_home) {
        remap(&home, "/cargo");
    }
    // The more specific prefix last: rustc applies the last remapping that matches.
    remap(workspace, "/cairn");
    remap(target_dir, "/cairn-target");
    flags
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
                .env("CARGO_ENCODED_RUSTFLAGS", rustflags(workspace, target_dir, cargo_home.as_deref()).join("\u{1f}"));
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
        let flags = rustflags(Path::new("/w/cairn"), Path::new("/w/cairn/target"), None);
        assert_eq!(&flags[..4], ["-C", "target-feature=+crt-static", "-C", "strip=symbols"]);
        let remaps: Vec<&str> = flags.iter().filter_map(|f| f.strip_prefix("--remap-path-prefix=")).collect();
        assert!(remaps.ends_with(&["/w/cairn=/cairn", "/w/cairn/target=/cairn-target"]), "{remaps:?}");
        if default_cargo_home().is_some() {
            assert!(remaps[0].ends_with("=/cargo"), "{remaps:?}");
        }
        let flags = rustflags(Path::new("/w/cairn"), Path::new("/w/cairn/target"), Some(Path::new("/elsewhere")));
        assert!(flags.contains(&"--remap-path-prefix=/elsewhere=/cargo".to_string()), "{flags:?}");
    }
}

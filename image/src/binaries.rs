//! Cairn's own binaries for the image: built by cargo from this workspace as static executables
//! (they run in the initramfs, before any library exists), or taken from a directory.

use crate::tools::run_visible;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Clone, Debug)]
pub enum Source {
    /// Build with cargo in this workspace.
    Cargo { workspace: PathBuf, target_dir: PathBuf },
    /// Take prebuilt static binaries from a directory.
    Dir(PathBuf),
}

impl Source {
    /// The workspace this builder was compiled from, unless overridden by `CAIRN_SOURCE`.
    pub fn default_cargo() -> Source {
        let workspace = std::env::var_os("CAIRN_SOURCE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf());
        let target_dir =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
        Source::Cargo { workspace, target_dir }
    }
}

#[derive(Clone, Debug)]
pub struct Binary {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
}

pub fn obtain(source: &Source, names: &[String], quiet: bool) -> Result<Vec<Binary>> {
    let dir = match source {
        Source::Dir(d) => d.clone(),
        Source::Cargo { workspace, target_dir } => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(workspace)
                .args(["build", "--release", "--target", TARGET])
                .arg("--target-dir")
                .arg(target_dir)
                // Static: stage 1 runs before any shared library is reachable.
                .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");
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

//! Unpacking `.deb` files into the cache, once per file content, without root and without
//! running maintainer scripts.

use crate::apt::Deb;
use crate::tools::run;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Unpacks `deb_path` into `cache/<sha256>` unless that is already there. The directory appears
/// whole or not at all (unpacked beside it, then renamed).
pub fn unpack_cached(deb: &Deb, deb_path: &Path, cache: &Path) -> Result<PathBuf> {
    let dest = cache.join(&deb.sha256);
    if dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let tmp = cache.join(format!(".{}.tmp-{}", deb.sha256, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb_path).arg(&tmp))
        .with_context(|| format!("unpacking {}", deb.filename))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("renaming into {}", dest.display()))?;
    Ok(dest)
}

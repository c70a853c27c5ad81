//! The Cairn image builder: `cairn build` and the pieces it is made of.

pub mod apt;
pub mod binaries;
pub mod build;
pub mod configdrive;
pub mod deb;
pub mod disk;
pub mod esp;
pub mod formats;
pub mod fsimage;
pub mod initramfs;
pub mod kmod;
pub mod lock;
pub mod release;
pub mod rootfs;
pub mod spec;
pub mod steps;
pub mod tools;
pub mod uki;
pub mod usr_cache;

/// Where downloads and intermediate results are kept between builds: `CAIRN_CACHE`, else
/// `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn default_cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_CACHE") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return std::path::Path::new(&d).join("cairn");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    std::path::Path::new(&home).join(".cache/cairn")
}

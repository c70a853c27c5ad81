//! Handing a host its user data: an OpenStack-style config drive (a FAT volume labelled
//! `config-2` holding `openstack/latest/user_data`), or QEMU's fw_cfg entry of that name.

use crate::esp::{EspFile, build_fat};
use anyhow::{Context, Result};
use std::path::Path;

use cairn_config::local::{CONFIG_DRIVE_LABEL, CONFIG_DRIVE_USER_DATA};

/// Writes a config drive holding `user_data` to `out`.
pub fn build(user_data: &Path, out: &Path) -> Result<()> {
    let len = std::fs::metadata(user_data).with_context(|| format!("reading {}", user_data.display()))?.len();
    // Room for the file and FAT's overhead, in whole MiB.
    let size = ((len * 2 + (1 << 20)) >> 20 << 20).max(2 << 20);
    build_fat(
        out,
        size,
        None,
        CONFIG_DRIVE_LABEL,
        0x0c0f_1602,
        1_700_000_000,
        &[EspFile { path: CONFIG_DRIVE_USER_DATA, source: user_data }],
    )
    .context("building the config drive")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn holds_the_user_data_under_its_label() {
        let t = tempfile::tempdir().unwrap();
        let doc = t.path().join("user-data");
        std::fs::write(&doc, "#cloud-config\nhostname: drive\n").unwrap();
        let drive = t.path().join("drive.img");
        build(&doc, &drive).unwrap();
        let read = |args: &[&str]| {
            let out = Command::new(args[0]).env("MTOOLS_SKIP_CHECK", "1").args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let img = drive.to_str().unwrap();
        assert_eq!(read(&["mtype", "-i", img, "::/openstack/latest/user_data"]), "#cloud-config\nhostname: drive\n");
        assert!(read(&["mlabel", "-s", "-i", img, "::"]).to_lowercase().contains("config-2"));
    }
}

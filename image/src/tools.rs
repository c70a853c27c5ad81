//! External programs the build runs, checked up front so a missing one fails at once with the
//! package that provides it.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// (program, Debian package providing it)
/// What `--push` (skopeo) and `--from` (skopeo as ostree-ext's image proxy, and the `ostree`
/// command, with which ostree-ext commits derived layers) need besides.
pub const OCI_TOOLS: &[(&str, &str)] = &[("skopeo", "skopeo")];
pub const IMPORT_TOOLS: &[(&str, &str)] = &[("skopeo", "skopeo"), ("ostree", "ostree")];

pub const BUILD_TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("mkfs.erofs", "erofs-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("objcopy", "binutils"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("mlabel", "mtools"),
    ("qemu-img", "qemu-utils"),
];

/// Files the build reads from Debian packages on the build machine.
pub const BUILD_FILES: &[(&str, &str)] = &[
    ("/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "systemd-boot-efi"),
    ("/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "systemd-boot-efi"),
];

pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Fails naming every missing program or file and the one apt-get line that installs them all.
pub fn check(tools: &[(&str, &str)], files: &[(&str, &str)]) -> Result<()> {
    let mut missing = Vec::new();
    let mut packages = Vec::new();
    for (prog, pkg) in tools {
        if find_in_path(prog).is_none() {
            missing.push(prog.to_string());
            packages.push(*pkg);
        }
    }
    for (file, pkg) in files {
        if !Path::new(file).exists() {
            missing.push(file.to_string());
            packages.push(*pkg);
        }
    }
    if !missing.is_empty() {
        packages.sort();
        packages.dedup();
        bail!("missing {}; install with: sudo apt-get install -y {}", missing.join(", "), packages.join(" "));
    }
    Ok(())
}

/// Runs a command, failing with its stderr when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let desc = describe(cmd);
    let out = cmd.output().with_context(|| format!("starting {desc}"))?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

/// Runs a command with its output on our terminal (progress of long steps).
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let desc = describe(cmd);
    let status = cmd.status().with_context(|| format!("starting {desc}"))?;
    if !status.success() {
        bail!("{desc} failed ({status})");
    }
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args().take(6) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if cmd.get_args().len() > 6 {
        s.push_str(" ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_program_and_package() {
        let err = check(&[("sh", "dash"), ("cairn-no-such-tool", "cairn-pkg")], &[("/no/such/file", "other-pkg")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cairn-no-such-tool"), "{err}");
        assert!(err.contains("/no/such/file"), "{err}");
        assert!(err.contains("apt-get install -y cairn-pkg other-pkg"), "{err}");
        assert!(!err.contains("dash"), "{err}");
    }
}

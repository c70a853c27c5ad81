//! The layout of ROOT, the persistent file system that `/usr` is mounted into.

/// Directories every ROOT has, with their modes.
pub const ROOT_DIRS: &[(&str, u32)] = &[
    ("etc", 0o755),
    ("var", 0o755),
    ("home", 0o755),
    ("root", 0o700),
    ("opt", 0o755),
    ("usr", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("mnt", 0o755),
];

/// Merged-/usr: the classic top-level directories are links into `/usr`; `/var/run` is `/run`
/// (where D-Bus clients look for the system bus).
pub const ROOT_LINKS: &[(&str, &str)] =
    &[("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("var/run", "../run")];

/// What stage 1 found, for stage 2 and the update agent: `KEY=value` lines (`SLOT`,
/// `USR_PARTITION`, `USR_DEVICE`, `ROOT_PARTITION` and boot timings).
pub const BOOT_ENV: &str = "/run/cairn/boot.env";

/// The running release's os-release (`ID`, `VERSION_ID`), on the verity-protected `/usr`.
pub const OS_RELEASE: &str = "/usr/lib/os-release";

/// The TUF root metadata the image trusts (`cairn build --trust-root`), relative to the root
/// (under `/usr`, so dm-verity protects it): without it, the agent trusts no release.
pub const TUF_ROOT: &str = "usr/share/cairn/tuf/root.json";

/// Where the agent keeps its TUF state on ROOT: the newest root it verified, tough's datastore,
/// verified metadata.
pub const TUF_STATE_DIR: &str = "/var/lib/cairn/agent/tuf";

/// The value of `key` in `KEY=value` lines (os-release, boot.env), quotes stripped.
pub fn env_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        let os = "NAME=\"Cairn\"\nID=cairn\nVERSION_ID=\"2.0.0\"\n";
        assert_eq!(env_value(os, "ID").as_deref(), Some("cairn"));
        assert_eq!(env_value(os, "VERSION_ID").as_deref(), Some("2.0.0"));
        assert_eq!(env_value(os, "VERSION"), None);
    }
}

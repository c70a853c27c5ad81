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

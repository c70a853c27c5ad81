//! A feed's role keys: ed25519, one per file (`ROLE-N.pk8`, PKCS#8 DER, mode 0600), created when
//! missing and never overwritten. The root has three keys, any two of which sign a root; the
//! targets key signs releases (both belong offline); snapshot and timestamp keys sign the
//! short-lived metadata (online, with whoever serves the feed).

use crate::{Error, Result, io};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tough::key_source::{KeySource, LocalKeySource};
pub use tough::schema::RoleType;

/// Root keys made by `generate`, and how many of them must sign a root.
pub const ROOT_KEYS: usize = 3;
pub const ROOT_THRESHOLD: u64 = 2;

pub const ROLES: [RoleType; 4] = [RoleType::Root, RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp];

pub fn role_name(role: RoleType) -> &'static str {
    match role {
        RoleType::Root => "root",
        RoleType::Targets => "targets",
        RoleType::Snapshot => "snapshot",
        RoleType::Timestamp => "timestamp",
        RoleType::DelegatedTargets => "delegated",
    }
}

pub fn path(dir: &Path, role: RoleType, n: usize) -> PathBuf {
    dir.join(format!("{}-{n}.pk8", role_name(role)))
}

/// Writes a new key to `path` unless a file is there; whether it wrote one.
fn create(path: &Path) -> Result<bool> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| Error::Feed("generating an ed25519 key failed".into()))?;
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io(path)(e)),
    };
    file.write_all(pkcs8.as_ref()).and_then(|()| file.sync_all()).map_err(io(path))?;
    Ok(true)
}

/// A new key at `path`; false if a file is there already.
pub fn generate_one(path: &Path) -> Result<bool> {
    create(path)
}

/// The role keys in `dir`, made where missing (three for the root, one for each other role);
/// the files it created.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut created = Vec::new();
    for role in ROLES {
        let count = if role == RoleType::Root { ROOT_KEYS } else { 1 };
        for n in 1..=count {
            let p = path(dir, role, n);
            if create(&p)? {
                created.push(p);
            }
        }
    }
    Ok(created)
}

/// The key files of `role` in `dir`, in order.
pub fn files(dir: &Path, role: RoleType) -> Result<Vec<PathBuf>> {
    let prefix = format!("{}-", role_name(role));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(&prefix) && name.ends_with(".pk8")
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Signing keys from files, as tough takes them.
pub fn sources(files: &[PathBuf]) -> Vec<Box<dyn KeySource>> {
    files.iter().map(|p| Box::new(LocalKeySource { path: p.clone() }) as Box<dyn KeySource>).collect()
}

/// The public half of the key in `path`, as root metadata lists it.
pub fn public(path: &Path) -> Result<tough::schema::key::Key> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let pair = tough::sign::parse_keypair(&bytes)
        .map_err(|e| Error::Feed(format!("{}: not a key tough can read: {e}", path.display())))?;
    Ok(tough::sign::Sign::tuf_key(&pair))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_made_once_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let made = generate(dir.path()).unwrap();
        assert_eq!(made.len(), ROOT_KEYS + 3);
        let before = std::fs::read(path(dir.path(), RoleType::Targets, 1)).unwrap();
        assert!(generate(dir.path()).unwrap().is_empty(), "nothing made twice");
        assert_eq!(std::fs::read(path(dir.path(), RoleType::Targets, 1)).unwrap(), before);
        for p in made {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        assert_eq!(files(dir.path(), RoleType::Root).unwrap().len(), 3);
        let a = public(&path(dir.path(), RoleType::Root, 1)).unwrap();
        let b = public(&path(dir.path(), RoleType::Root, 2)).unwrap();
        assert_ne!(a.key_id().unwrap(), b.key_id().unwrap());
    }
}

//! Admin tokens: 32 random bytes shown once, stored as their sha256. A token has the entropy
//! of a key, so a fast hash is enough (no password stretching needed) and the lookup is by hash.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "cairn_";

pub fn generate() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).context("reading random bytes")?;
    Ok(format!("{PREFIX}{}", hex::encode(bytes)))
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token kept in a file (its first line), so it is never on a command line. The file must not
/// be readable by others.
pub fn read_file(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!("{} is readable by others (mode {:o}): chmod 600 it", path.display(), meta.mode() & 0o777);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        anyhow::bail!("{} is empty", path.display());
    }
    Ok(token)
}

/// The token in an `Authorization: Bearer ...` header value.
pub fn from_header(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_parsed_from_bearer_headers() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64);
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(from_header(&format!("Bearer {a}")), Some(a.as_str()));
        assert_eq!(from_header("bearer  x "), Some("x"));
        assert_eq!(from_header("Basic x"), None);
        assert_eq!(from_header("Bearer "), None);
    }
}

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

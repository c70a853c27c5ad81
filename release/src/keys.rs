//! Release signing keys: ed25519, in small text files.
//!
//! - public key (`release.pub`): `cairn-release-key ed25519 <64 hex digits>`
//! - secret key (`release.key`, mode 0600): `cairn-release-secret-key ed25519 <64 hex digits of the seed>`
//!
//! A key is named by its id: the first 16 hex digits of the sha256 of the 32 public key bytes.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const PUBLIC_TAG: &str = "cairn-release-key ed25519 ";
const SECRET_TAG: &str = "cairn-release-secret-key ed25519 ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a Cairn release key (expected `{0}<64 hex digits>`)")]
    Format(&'static str),
    #[error("the public key is not a valid ed25519 point")]
    Invalid,
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

pub struct SecretKey(SigningKey);

fn hex32(text: &str, tag: &'static str) -> Result<[u8; 32], KeyError> {
    let hex_part = text.trim().strip_prefix(tag).ok_or(KeyError::Format(tag))?;
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_part.trim(), &mut b).map_err(|_| KeyError::Format(tag))?;
    Ok(b)
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let b = hex32(text, PUBLIC_TAG)?;
        VerifyingKey::from_bytes(&b).map(PublicKey).map_err(|_| KeyError::Invalid)
    }

    pub fn to_text(&self) -> String {
        format!("{PUBLIC_TAG}{}\n", hex::encode(self.0.as_bytes()))
    }

    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Strict verification (no malleable or small-order signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl SecretKey {
    /// A key from 32 random bytes (the caller reads them from the OS).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        Ok(SecretKey::from_seed(hex32(text, SECRET_TAG)?))
    }

    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG}{}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_verifies() {
        let sk = SecretKey::from_seed([7; 32]);
        let pk = PublicKey::parse(&sk.public().to_text()).unwrap();
        assert_eq!(pk, sk.public());
        assert_eq!(SecretKey::parse(&sk.to_text()).unwrap().public(), pk);
        let sig = sk.sign(b"release");
        assert!(pk.verify(b"release", &sig));
        assert!(!pk.verify(b"releasE", &sig));
        assert_eq!(pk.id().len(), 16);
    }

    #[test]
    fn wrong_files_are_refused() {
        assert!(matches!(PublicKey::parse("ssh-ed25519 AAAA"), Err(KeyError::Format(_))));
        let sk = SecretKey::from_seed([1; 32]);
        // A secret key is not a public key, and vice versa.
        assert!(PublicKey::parse(&sk.to_text()).is_err());
        assert!(SecretKey::parse(&sk.public().to_text()).is_err());
    }
}

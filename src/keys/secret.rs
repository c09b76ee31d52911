//! The client key itself: `sk-sy-` and 48 hex digits (192 random bits from the operating
//! system). Only its SHA-256 is ever stored; a presented key is hashed and its hash compared in
//! constant time. The plaintext exists once, in the answer that created it.

use http::HeaderMap;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

/// The prefix every client key starts with.
pub const PREFIX: &str = "sk-sy-";
/// Random bytes in a key (hex-encoded after the prefix).
const RANDOM_BYTES: usize = 24;

/// The SHA-256 of a client key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a presented key.
    pub fn of(secret: &str) -> KeyHash {
        let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        KeyHash(out)
    }

    /// The first 8 bytes: where a key is looked up (the full hash is then compared in
    /// constant time).
    pub fn slot(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// Constant-time equality of the whole hash.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// From stored bytes.
    pub fn from_slice(b: &[u8]) -> Option<KeyHash> {
        <[u8; 32]>::try_from(b).ok().map(KeyHash)
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(*****)")
    }
}

/// A freshly made key: shown once, never logged (its `Debug` is redacted).
pub struct NewSecret(String);

impl NewSecret {
    /// A new random key.
    pub fn generate() -> Result<NewSecret, String> {
        let mut bytes = [0u8; RANDOM_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "the system random source failed".to_owned())?;
        let mut s = String::with_capacity(PREFIX.len() + 2 * RANDOM_BYTES);
        s.push_str(PREFIX);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Ok(NewSecret(s))
    }

    /// The plaintext, for the one answer that hands it out.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Its hash, the only thing stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewSecret(*****)")
    }
}

/// What a request presented as its client key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'h> {
    /// No credentials at all.
    Nothing,
    /// Credentials that are not a Switchyard key (e.g. the dummy key an SDK insists on).
    Other,
    /// An `sk-sy-…` key.
    Key(&'h str),
}

/// Finds the client key of a request: `Authorization: Bearer …` (OpenAI SDKs, OFREP) or
/// `x-api-key` (Anthropic SDKs); a Switchyard key in either wins over other credentials.
pub fn presented(headers: &HeaderMap) -> Presented<'_> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let v = v.trim();
            match v.get(..7) {
                Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
                _ => v,
            }
        });
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let mut other = false;
    for candidate in [bearer, api_key].into_iter().flatten() {
        if candidate.starts_with(PREFIX) {
            return Presented::Key(candidate);
        }
        other |= !candidate.is_empty();
    }
    if other || headers.contains_key(http::header::AUTHORIZATION) {
        Presented::Other
    } else {
        Presented::Nothing
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_redacted() {
        let a = NewSecret::generate().unwrap();
        let b = NewSecret::generate().unwrap();
        assert!(a.reveal().starts_with(PREFIX));
        assert_eq!(a.reveal().len(), PREFIX.len() + 48);
        assert_ne!(a.reveal(), b.reveal());
        assert!(!format!("{a:?}").contains(a.reveal()));
        assert!(a.hash().matches(&KeyHash::of(a.reveal())));
        assert!(!a.hash().matches(&b.hash()));
    }

    #[test]
    fn keys_are_found_in_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), Presented::Nothing);
        h.insert("authorization", "Bearer sk-dummy".parse().unwrap());
        assert_eq!(presented(&h), Presented::Other);
        h.insert("x-api-key", "sk-sy-abc".parse().unwrap());
        assert_eq!(presented(&h), Presented::Key("sk-sy-abc"));
        h.insert("authorization", "bearer  sk-sy-xyz ".parse().unwrap());
        assert_eq!(presented(&h), Presented::Key("sk-sy-xyz"));
    }
}

//! Request ids that carry their own attribution, so feedback by `x-request-id` needs no table
//! of request ids (and the request path writes nothing durable).
//!
//! An id minted for a flag's answer holds the decision it was answered with — flag,
//! variation, rule, the user's bucketing id and the time — sealed with ChaCha20-Poly1305
//! under a key kept in the state store (created once, read at start, so every replica of a
//! fleet mints and reads the same ids). Sealing both authenticates the id (an altered or
//! forged one is refused) and keeps the user's id unreadable to whoever sees the header,
//! while feedback resolves to the very user id the exposure rows hold.
//!
//! Layout: `req_1` then, in unpadded base64url, a 12-byte nonce and the sealed payload
//! `at_ms (6 bytes) | len flag | flag | len variation | variation | len rule + 1 (0: none) |
//! rule | user` followed by its 16-byte tag. A typical id is 70–120 characters, URL- and
//! header-safe.
//!
//! Nonces never repeat under one key: each process draws a random 96-bit starting point and
//! counts up from it.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderValue;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// What every signed id starts with (plain ids, minted for requests without a flag's
/// decision, are `req_` and 24 hex digits).
pub const PREFIX: &str = "req_1";

/// Longest key, variation or rule id an id can carry.
const MAX_FIELD: usize = 254;

/// The decision a signed request id carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// The flag.
    pub flag: String,
    /// The variation served.
    pub variation: String,
    /// The rule that chose it, if any.
    pub rule: Option<String>,
    /// The bucketing id.
    pub user: String,
    /// Unix milliseconds of the decision.
    pub at_ms: u64,
}

/// Why a request id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not an id this proxy signs: a client's own `x-request-id`, or the id of a request
    /// answered without a flag's decision.
    #[error("unknown request id `{0}`: it carries no attribution (not minted by this proxy for a flag's answer; a client's own x-request-id is echoed but not signed): send `flag` and `user` instead")]
    Unsigned(String),
    /// Shaped like a signed id but not authentic.
    #[error("request id `{0}` is not authentic (altered, forged, or signed with another state store's key)")]
    Forged(String),
}

/// Mints and reads signed request ids with one key.
pub struct RequestIds {
    /// Always set: a 32-byte key fits ChaCha20-Poly1305 (`None` would only refuse every id).
    key: Option<LessSafeKey>,
    /// The nonce's first 4 bytes, random per process.
    prefix: [u8; 4],
    /// The nonce's last 8 bytes: a random start, counted up.
    counter: AtomicU64,
}

impl std::fmt::Debug for RequestIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestIds(*****)")
    }
}

impl RequestIds {
    /// Ids sealed with `key` (32 bytes from the state store).
    pub fn new(key: &[u8; 32]) -> RequestIds {
        let rng = SystemRandom::new();
        let mut seed = [0u8; 12];
        if rng.fill(&mut seed).is_err() {
            // No system randomness: a unique-enough start from the clock and fastrand.
            seed[..8].copy_from_slice(&crate::clock::now_ms().to_be_bytes());
            seed[8..].copy_from_slice(&fastrand::u32(..).to_be_bytes());
        }
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&seed[..4]);
        let mut start = [0u8; 8];
        start.copy_from_slice(&seed[4..]);
        RequestIds {
            key: UnboundKey::new(&CHACHA20_POLY1305, key)
                .ok()
                .map(LessSafeKey::new),
            prefix,
            counter: AtomicU64::new(u64::from_be_bytes(start)),
        }
    }

    /// A signed id for a flag's answer; `None` when a field is too long to carry (the caller
    /// then uses a plain id).
    pub fn mint(
        &self,
        flag: &str,
        variation: &str,
        rule: Option<&str>,
        user: &str,
        at_ms: u64,
    ) -> Option<HeaderValue> {
        if flag.len() > MAX_FIELD
            || variation.len() > MAX_FIELD
            || rule.is_some_and(|r| r.len() > MAX_FIELD - 1)
        {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.prefix);
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        nonce[4..].copy_from_slice(&count.to_be_bytes());
        let mut sealed = Vec::with_capacity(
            NONCE_LEN
                + 9
                + flag.len()
                + variation.len()
                + rule.map_or(0, str::len)
                + user.len()
                + 16,
        );
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&(at_ms & 0xffff_ffff_ffff).to_be_bytes()[2..]);
        sealed.push(flag.len() as u8);
        sealed.extend_from_slice(flag.as_bytes());
        sealed.push(variation.len() as u8);
        sealed.extend_from_slice(variation.as_bytes());
        match rule {
            Some(r) => {
                sealed.push(r.len() as u8 + 1);
                sealed.extend_from_slice(r.as_bytes());
            }
            None => sealed.push(0),
        }
        sealed.extend_from_slice(user.as_bytes());
        let tag = self
            .key
            .as_ref()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(PREFIX.as_bytes()),
                &mut sealed[NONCE_LEN..],
            )
            .ok()?;
        sealed.extend_from_slice(tag.as_ref());
        let mut id = String::with_capacity(PREFIX.len() + sealed.len() * 4 / 3 + 4);
        id.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&sealed, &mut id);
        HeaderValue::from_str(&id).ok()
    }

    /// The decision a signed id carries.
    pub fn read(&self, id: &str) -> Result<Attribution, IdError> {
        let unsigned = || IdError::Unsigned(shorten(id));
        let forged = || IdError::Forged(shorten(id));
        // Shaped like a signed id from here on: whatever fails is a forgery (or damage).
        let body = id.strip_prefix(PREFIX).ok_or_else(unsigned)?;
        let mut raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| forged())?;
        if raw.len() < NONCE_LEN + 16 + 9 {
            return Err(forged());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let plain = self
            .key
            .as_ref()
            .ok_or_else(forged)?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(PREFIX.as_bytes()),
                &mut raw[NONCE_LEN..],
            )
            .map_err(|_| forged())?;
        parse(plain).ok_or_else(forged)
    }
}

/// The payload's fields (authentic, so only a bug could make it malformed).
fn parse(plain: &[u8]) -> Option<Attribution> {
    let mut at = [0u8; 8];
    at[2..].copy_from_slice(plain.get(..6)?);
    let mut rest = &plain[6..];
    let field = |rest: &mut &[u8], len: usize| -> Option<String> {
        let (f, tail) = (rest.get(..len)?, rest.get(len..)?);
        *rest = tail;
        String::from_utf8(f.to_vec()).ok()
    };
    let len = usize::from(*rest.first()?);
    rest = &rest[1..];
    let flag = field(&mut rest, len)?;
    let len = usize::from(*rest.first()?);
    rest = &rest[1..];
    let variation = field(&mut rest, len)?;
    let len = usize::from(*rest.first()?);
    rest = &rest[1..];
    let rule = match len {
        0 => None,
        n => Some(field(&mut rest, n - 1)?),
    };
    let user = String::from_utf8(rest.to_vec()).ok()?;
    Some(Attribution {
        flag,
        variation,
        rule,
        user,
        at_ms: u64::from_be_bytes(at),
    })
}

/// An id as quoted in an error (a long one cut).
fn shorten(id: &str) -> String {
    match id.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &id[..i]),
        None => id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ids(seed: u8) -> RequestIds {
        RequestIds::new(&[seed; 32])
    }

    #[test]
    fn an_id_carries_its_decision_and_is_header_safe() {
        let a = ids(7);
        let id = a
            .mint(
                "support-assistant",
                "treatment",
                Some("ab-2026-11"),
                "user-42",
                1_764_000_000_123,
            )
            .unwrap();
        let s = id.to_str().unwrap();
        assert!(s.starts_with(PREFIX));
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'),
            "{s}"
        );
        assert!(s.len() <= 120, "{} chars: {s}", s.len());
        let got = a.read(s).unwrap();
        assert_eq!(
            got,
            Attribution {
                flag: "support-assistant".into(),
                variation: "treatment".into(),
                rule: Some("ab-2026-11".into()),
                user: "user-42".into(),
                at_ms: 1_764_000_000_123,
            }
        );
        // The user's id is not readable in the id.
        assert!(!s.contains("user-42"));
        let none = a.mint("f", "v", None, "ü ∂", 5).unwrap();
        let got = a.read(none.to_str().unwrap()).unwrap();
        assert_eq!((got.rule, got.user.as_str()), (None, "ü ∂"));
        // Another replica with the same key reads it; one with another key refuses it.
        assert_eq!(ids(7).read(s).unwrap().variation, "treatment");
        assert!(matches!(ids(8).read(s), Err(IdError::Forged(_))));
    }

    #[test]
    fn every_altered_character_is_refused() {
        let a = ids(1);
        let id = a.mint("f", "control", Some("r"), "u", 9).unwrap();
        let s = id.to_str().unwrap();
        for i in PREFIX.len()..s.len() {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            assert!(a.read(&altered).is_err(), "position {i}: {altered}");
        }
        assert!(matches!(
            a.read("req_0123456789abcdef01234567"),
            Err(IdError::Unsigned(_))
        ));
        assert!(matches!(a.read("client-req-42"), Err(IdError::Unsigned(_))));
        assert!(a.read(&s[..s.len() - 3]).is_err());
        assert!(a.read(PREFIX).is_err());
    }

    #[test]
    fn ids_are_unique_and_fields_too_long_are_not_carried() {
        let a = ids(3);
        let many: std::collections::HashSet<String> = (0..10_000)
            .map(|_| {
                a.mint("f", "v", None, "u", 1)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(many.len(), 10_000);
        assert!(a.mint(&"x".repeat(300), "v", None, "u", 1).is_none());
        assert!(a.mint("f", "v", Some(&"r".repeat(254)), "u", 1).is_none());
        assert!(a.mint("f", "v", Some(&"r".repeat(253)), "u", 1).is_some());
    }
}

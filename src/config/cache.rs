//! `[cache]`, a variation's `cache = { ttl = "10m" }` and `[export]`: the response cache's
//! backend and per-variation policy, and where per-request records are written.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{KeyPath, Validator};
use crate::cache::{CacheBackend, CachePolicy, CacheSettings};
use crate::export::ExportSettings;

/// `[cache]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    url: Option<String>,
    max_bytes: Option<i64>,
    max_entry_bytes: Option<i64>,
    timeout: Option<String>,
}

/// A variation's `cache` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariationCache {
    ttl: String,
    #[serde(default)]
    any_temperature: bool,
}

/// `[export]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    dir: Option<String>,
    rotate_bytes: Option<i64>,
    max_files: Option<i64>,
    queue: Option<i64>,
    #[serde(default)]
    include_content: bool,
}

impl Validator<'_> {
    /// `[cache]`.
    pub(super) fn cache(&mut self, raw: &RawCache) -> CacheSettings {
        let p = KeyPath::root().key("cache");
        let mut s = CacheSettings::default();
        match raw.url.as_deref().map(str::trim) {
            None | Some("memory") => {}
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                s.backend = CacheBackend::Redis(url.to_owned());
            }
            Some(_) => self.err(
                &p.key("url"),
                "expected \"memory\" or \"redis://host:port[/db]\"",
            ),
        }
        if let Some(n) = raw.max_bytes {
            match u64::try_from(n) {
                Ok(n) if n >= 1024 => s.max_bytes = n,
                _ => self.err(&p.key("max_bytes"), "max_bytes must be at least 1024"),
            }
        }
        if let Some(n) = raw.max_entry_bytes {
            match usize::try_from(n) {
                Ok(n) if n >= 1024 => s.max_entry_bytes = n,
                _ => self.err(
                    &p.key("max_entry_bytes"),
                    "max_entry_bytes must be at least 1024",
                ),
            }
        }
        s.timeout = self.duration(&p.key("timeout"), raw.timeout.as_deref(), s.timeout);
        if s.timeout.is_zero() || s.timeout > Duration::from_secs(5) {
            self.err(&p.key("timeout"), "timeout must be above 0 and at most 5s");
        }
        s
    }

    /// A variation's `cache` (off when absent).
    pub(super) fn variation_cache(
        &mut self,
        path: &KeyPath,
        raw: Option<&RawVariationCache>,
    ) -> Option<CachePolicy> {
        let raw = raw?;
        let p = path.key("cache").key("ttl");
        let ttl = self.duration(&p, Some(&raw.ttl), Duration::ZERO);
        if ttl.is_zero() {
            self.err(
                &p,
                "ttl must be above 0 (leave `cache` out to turn caching off)",
            );
            return None;
        }
        Some(CachePolicy {
            ttl,
            any_temperature: raw.any_temperature,
        })
    }

    /// `[export]`.
    pub(super) fn export(&mut self, raw: &RawExport) -> ExportSettings {
        let p = KeyPath::root().key("export");
        let mut s = ExportSettings {
            dir: raw.dir.as_deref().map(PathBuf::from),
            include_content: raw.include_content,
            ..ExportSettings::default()
        };
        if raw.dir.as_deref().is_some_and(|d| d.trim().is_empty()) {
            self.err(&p.key("dir"), "dir must not be empty");
        }
        if let Some(n) = raw.rotate_bytes {
            match u64::try_from(n) {
                Ok(n) if n >= 4096 => s.rotate_bytes = n,
                _ => self.err(&p.key("rotate_bytes"), "rotate_bytes must be at least 4096"),
            }
        }
        if let Some(n) = raw.max_files {
            match usize::try_from(n) {
                Ok(n) if n >= 2 => s.max_files = n,
                _ => self.err(&p.key("max_files"), "max_files must be at least 2"),
            }
        }
        if let Some(n) = raw.queue {
            match usize::try_from(n) {
                Ok(n) if (1..=1_000_000).contains(&n) => s.queue = n,
                _ => self.err(&p.key("queue"), "queue must be between 1 and 1000000"),
            }
        }
        s
    }
}

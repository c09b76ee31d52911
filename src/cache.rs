//! The response cache, per variation: a phase of the request path between rewrite and
//! forward. A variation with `cache = { ttl = "10m" }` answers a request it has answered
//! before from the cache, without calling its provider.
//!
//! The key is a SHA-256 over the *rewritten* upstream request (the body the provider would
//! receive), the provider, the flag and variation, the client API and the configuration's
//! revision — never the client's body alone — so users in two variations never share an
//! answer, and a reload starts afresh. Only deterministic requests are cached: `temperature =
//! 0` after the rewrite (or any temperature with `any_temperature = true`); embeddings always.
//! What is stored is the answer exactly as the client received it, in its own API's shape:
//! a JSON body, or a stream's events (replayed as a stream). Errors, fallback answers and
//! streams that did not complete are never stored. A client's `cache-control: no-cache`
//! skips the look-up (the fresh answer is stored), `no-store` skips both.
//!
//! Backends ([`store`]): in-process with a memory bound (`moka`), or Redis for a fleet. A
//! Redis that fails or is slow is a miss, never an error: every call has a short timeout, and
//! after a failure the cache stays out of the way for a second before it tries again.

mod entry;
mod store;
mod tee;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use sha2::{Digest, Sha256};

use crate::api::ClientApi;
use crate::body::{full, Body};
use crate::metrics::cache::CacheHandles;
use crate::metrics::Metrics;
use crate::providers::WireFormat;
pub use entry::{Entry, EntryKind};
pub use store::Store;

/// Response header: `hit`, `miss` or `bypass` (absent when the variation does not cache).
pub const CACHE_HEADER: &str = "x-switchyard-cache";

/// `[cache]`: where cached answers live.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// The backend.
    pub backend: CacheBackend,
    /// The in-process cache's memory bound, in bytes.
    pub max_bytes: u64,
    /// Larger answers are not stored.
    pub max_entry_bytes: usize,
    /// Budget of one backend call (Redis): slower is a miss.
    pub timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            backend: CacheBackend::Memory,
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 4 * 1024 * 1024,
            timeout: Duration::from_millis(100),
        }
    }
}

/// Which backend holds cached answers.
#[derive(Clone, PartialEq)]
pub enum CacheBackend {
    /// In this process, bounded by `max_bytes`.
    Memory,
    /// A Redis server (`redis://…`), shared by a fleet.
    Redis(String),
}

impl std::fmt::Debug for CacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheBackend::Memory => f.write_str("Memory"),
            // The URL may carry a password.
            CacheBackend::Redis(_) => f.write_str("Redis(*****)"),
        }
    }
}

/// A variation's `cache = { ttl = "10m", any_temperature = false }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachePolicy {
    /// How long an answer is served from the cache.
    pub ttl: Duration,
    /// Cache requests whatever their temperature (default: only `temperature = 0`).
    pub any_temperature: bool,
}

/// What the cache phase did with a request (the `x-switchyard-cache` header and the `result`
/// label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answered from the cache.
    Hit,
    /// Not in the cache: the provider answers (and the answer is stored).
    Miss,
    /// Not looked up: a non-deterministic request, or the client said `no-cache`/`no-store`.
    Bypass,
}

impl Verdict {
    /// The header and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Hit => "hit",
            Verdict::Miss => "miss",
            Verdict::Bypass => "bypass",
        }
    }
}

/// The cache phase's answer for one request.
#[derive(Default)]
pub struct Lookup {
    /// `None`: the variation does not cache (no header).
    pub verdict: Option<Verdict>,
    /// The cached answer, on a hit.
    pub hit: Option<Entry>,
    /// Where to store the provider's answer, when it should be stored.
    pub fill: Option<Fill>,
}

impl Lookup {
    /// Sets `x-switchyard-cache` on `resp`.
    pub fn mark(&self, resp: &mut Response<Body>) {
        if let Some(v) = self.verdict {
            resp.headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static(v.as_str()));
        }
    }
}

/// What one request asks of the cache.
pub struct Request<'a> {
    /// The flag's key.
    pub flag: &'a str,
    /// The variation.
    pub variation: &'a crate::flags::Variation,
    /// The configuration's revision.
    pub revision: &'a str,
    /// The client API.
    pub api: ClientApi,
    /// The rewritten body, as the provider would receive it.
    pub body: &'a [u8],
    /// The provider's wire format.
    pub format: WireFormat,
    /// The client's headers (`cache-control`).
    pub headers: &'a HeaderMap,
}

/// The response cache: a backend and the metric handles.
pub struct ResponseCache {
    store: Store,
    metrics: Arc<Metrics>,
    max_entry_bytes: usize,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// The cache `settings` describe (a Redis URL is only parsed here: connections are made
    /// on first use).
    pub fn new(settings: &CacheSettings, metrics: Arc<Metrics>) -> ResponseCache {
        ResponseCache {
            store: Store::new(settings),
            metrics,
            max_entry_bytes: settings.max_entry_bytes,
        }
    }

    /// The cache phase: looks `req` up when its variation caches and it may be cached.
    pub async fn look_up(&self, req: Request<'_>) -> Lookup {
        let Some(policy) = req.variation.cache else {
            return Lookup::default();
        };
        let handles = self.metrics.cache.handles(req.flag, &req.variation.key);
        let (no_cache, no_store) = client_directives(req.headers);
        let deterministic = policy.any_temperature
            || req.api == ClientApi::Embeddings
            || temperature(req.variation, req.body) == Some(0.0);
        if no_store || !deterministic {
            handles.record(Verdict::Bypass);
            return Lookup {
                verdict: Some(Verdict::Bypass),
                ..Lookup::default()
            };
        }
        let key = key(&req);
        let fill = Some(Fill {
            store: self.store.clone(),
            key: key.clone(),
            ttl: policy.ttl,
            max_bytes: self.max_entry_bytes,
            handles: handles.clone(),
        });
        if no_cache {
            handles.record(Verdict::Bypass);
            return Lookup {
                verdict: Some(Verdict::Bypass),
                hit: None,
                fill,
            };
        }
        match self.store.get(&key).await {
            Some(entry) => {
                handles.record(Verdict::Hit);
                handles.served(entry.body.len());
                Lookup {
                    verdict: Some(Verdict::Hit),
                    hit: Some(entry),
                    fill: None,
                }
            }
            None => {
                handles.record(Verdict::Miss);
                Lookup {
                    verdict: Some(Verdict::Miss),
                    hit: None,
                    fill,
                }
            }
        }
    }
}

/// Stores one provider answer under its request's key.
pub struct Fill {
    store: Store,
    key: String,
    ttl: Duration,
    max_bytes: usize,
    handles: CacheHandles,
}

impl Fill {
    /// Stores a complete answer, as the client receives it.
    pub fn complete(self, body: &Bytes) {
        self.put(Entry {
            kind: EntryKind::Json,
            body: body.clone(),
        });
    }

    /// Wraps a stream so that its events are stored once it completes (in `format`, the
    /// client's); a stream that is cut, fails or grows past the entry bound is not stored.
    pub fn stream(self, body: Body, format: WireFormat) -> Body {
        http_body_util::BodyExt::boxed(tee::Tee::new(body, self, format))
    }

    fn put(self, entry: Entry) {
        if entry.body.len() > self.max_bytes {
            return;
        }
        self.handles.stored(entry.body.len());
        self.store.put(self.key, entry, self.ttl);
    }
}

/// A cached answer as a response: JSON, or a stream replayed as its events.
pub fn replay(entry: Entry) -> Response<Body> {
    let mut resp = Response::new(full(entry.body));
    let h = resp.headers_mut();
    match entry.kind {
        EntryKind::Json => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        EntryKind::Sse => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
    }
    resp
}

/// The client's `cache-control`: (`no-cache`, `no-store`).
fn client_directives(headers: &HeaderMap) -> (bool, bool) {
    let (mut no_cache, mut no_store) = (false, false);
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            if d.eq_ignore_ascii_case("no-cache") {
                no_cache = true;
            } else if d.eq_ignore_ascii_case("no-store") {
                no_store = true;
            }
        }
    }
    (no_cache, no_store)
}

/// The temperature the provider receives: the variation's (the rewrite forces it), else the
/// one in the rewritten body.
fn temperature(v: &crate::flags::Variation, body: &[u8]) -> Option<f64> {
    if let Some(t) = v.temperature {
        return Some(t);
    }
    #[derive(serde::Deserialize)]
    struct Sampling {
        temperature: Option<f64>,
    }
    serde_json::from_slice::<Sampling>(body)
        .ok()
        .and_then(|s| s.temperature)
}

/// The key: SHA-256 over every input, each length-prefixed so that no two inputs run into
/// each other.
fn key(req: &Request<'_>) -> String {
    let mut h = Sha256::new();
    let parts: [&[u8]; 7] = [
        req.revision.as_bytes(),
        req.flag.as_bytes(),
        req.variation.key.as_bytes(),
        req.variation.provider.name.as_bytes(),
        req.api.as_str().as_bytes(),
        req.format.as_str().as_bytes(),
        req.body,
    ];
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(17 + 64);
    out.push_str("switchyard:cache:");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_from_every_cache_control_value() {
        let mut h = HeaderMap::new();
        assert_eq!(client_directives(&h), (false, false));
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        h.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, No-Store"),
        );
        assert_eq!(client_directives(&h), (false, true));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        assert_eq!(client_directives(&h), (true, false));
    }
}

//! Where cached answers live: in this process (`moka`, bounded by bytes, each entry expiring
//! after its variation's ttl) or in Redis (`SET … PX ttl`). Redis calls have a short
//! timeout; a failed call is a miss (or a store skipped) and keeps the cache out of the way
//! for [`REDIS_BACKOFF`] before the next try, so an outage costs requests nothing.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::{CacheBackend, CacheSettings, Entry};

/// How long the cache stays out of the way after a Redis failure.
pub const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// A cache backend. Cheap to clone (clones share it).
#[derive(Clone)]
pub enum Store {
    /// In this process.
    Memory(Cache<String, Stored>),
    /// Redis.
    Redis(Arc<Redis>),
}

/// An in-process entry and its time to live.
#[derive(Clone)]
pub struct Stored {
    entry: Entry,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, v: &Stored, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

impl Store {
    /// The backend `settings` name.
    pub fn new(settings: &CacheSettings) -> Store {
        match &settings.backend {
            CacheBackend::Memory => Store::Memory(
                Cache::builder()
                    .max_capacity(settings.max_bytes)
                    .weigher(|k: &String, v: &Stored| {
                        u32::try_from(k.len() + v.entry.body.len() + 64).unwrap_or(u32::MAX)
                    })
                    .expire_after(PerEntryTtl)
                    .build(),
            ),
            CacheBackend::Redis(url) => Store::Redis(Arc::new(Redis::new(url, settings.timeout))),
        }
    }

    /// `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    /// The entry under `key`, if any (a backend failure is none).
    pub async fn get(&self, key: &str) -> Option<Entry> {
        match self {
            Store::Memory(c) => c.get(key).map(|s| s.entry),
            Store::Redis(r) => r.get(key).await,
        }
    }

    /// Stores `entry` under `key` for `ttl`: at once in memory, in the background for Redis.
    pub fn put(&self, key: String, entry: Entry, ttl: Duration) {
        match self {
            Store::Memory(c) => c.insert(key, Stored { entry, ttl }),
            Store::Redis(r) => {
                let r = r.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { r.put(&key, &entry, ttl).await });
                }
            }
        }
    }
}

/// A Redis backend: one multiplexed connection, made on first use and again after a failure.
pub struct Redis {
    client: Option<redis::Client>,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    down_until: Mutex<Option<Instant>>,
}

impl Redis {
    fn new(url: &str, timeout: Duration) -> Redis {
        let client = match redis::Client::open(url) {
            Ok(c) => Some(c),
            Err(e) => {
                // The error may quote the URL (and its password): only its kind is logged.
                tracing::warn!(kind = ?e.kind(), "the cache's Redis URL is invalid: every look-up misses");
                None
            }
        };
        Redis {
            client,
            timeout,
            conn: tokio::sync::Mutex::new(None),
            down_until: Mutex::new(None),
        }
    }

    fn is_down(&self) -> bool {
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        down.is_some_and(|t| Instant::now() < t)
    }

    fn failed(&self, doing: &str, detail: &str) {
        tracing::debug!(doing, detail, "cache backend failed: treated as a miss");
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + REDIS_BACKOFF);
    }

    /// A connection: the current one, or a new one.
    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = self.client.as_ref()?;
        if self.is_down() {
            return None;
        }
        let mut conn = tokio::time::timeout(self.timeout, self.conn.lock())
            .await
            .ok()?;
        if let Some(c) = conn.as_ref() {
            return Some(c.clone());
        }
        match tokio::time::timeout(self.timeout, client.get_multiplexed_async_connection()).await {
            Ok(Ok(c)) => {
                *conn = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.failed("connecting", &format!("{:?}", e.kind()));
                None
            }
            Err(_) => {
                self.failed("connecting", "timed out");
                None
            }
        }
    }

    /// Drops the connection after a failed call, so the next try makes a new one.
    async fn reset(&self, doing: &str, detail: &str) {
        self.failed(doing, detail);
        if let Ok(mut conn) = tokio::time::timeout(self.timeout, self.conn.lock()).await {
            *conn = None;
        }
    }

    async fn get(&self, key: &str) -> Option<Entry> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let call = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => v.and_then(Entry::decode),
            Ok(Err(e)) => {
                self.reset("reading", &format!("{:?}", e.kind())).await;
                None
            }
            Err(_) => {
                self.reset("reading", "timed out").await;
                None
            }
        }
    }

    async fn put(&self, key: &str, entry: &Entry, ttl: Duration) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(entry.encode()).arg("PX").arg(ms);
        let call = cmd.query_async::<()>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.reset("storing", &format!("{:?}", e.kind())).await,
            Err(_) => self.reset("storing", "timed out").await,
        }
    }
}

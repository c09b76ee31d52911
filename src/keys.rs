//! Client keys: who may call which flags, how often and for how much.
//!
//! A key (`sk-sy-…`, [`secret`]) is created through the admin API or `switchyard ctl keys
//! create` and shown once; the store keeps its SHA-256 only ([`store`]). Clients send it as
//! `Authorization: Bearer` (OpenAI SDKs, OFREP) or `x-api-key` (Anthropic SDKs). With `[keys]`
//! in the config every request's key is checked before anything else happens
//! ([`Keys::authorize`]): unknown, expired or revoked → 401, a flag the key may not use → 403,
//! over its requests or tokens per minute or its budget → 429 with `Retry-After` ([`meter`]).
//! Without `[keys]` nothing changes.
//!
//! A key carries attributes (`team`, `plan`…) that audiences see, and its name is the
//! bucketing id of a request that has none (`x-switchyard-identity: key`).
//!
//! Spend comes from the same token counts and prices as `switchyard_cost_usd_total` (the
//! request's recorder reports both at once) into one counter per key ([`meter::Meter`]) that
//! enforcement and `GET /admin/keys/{name}` both read. Every `[keys] flush_interval` (1 s) a
//! replica adds what it spent to the store and reads back the fleet's totals, so a replica's
//! unflushed spend is at most one interval of its own traffic. Requests and tokens per minute
//! are counted per replica.
//!
//! Revocations and rotations reach every replica through the store: PostgreSQL's
//! `NOTIFY switchyard_keys` (within a second), plus a full reload every 5 s as a safety net.
//!
//! # Layout
//! | module | what it holds |
//! |---|---|
//! | [`secret`] | the key format, hashing, where a request carries its key |
//! | [`record`] | what is stored about a key; budgets and periods |
//! | [`store`] | the key tables in SQLite or PostgreSQL, LISTEN/NOTIFY, batched spend |
//! | [`meter`] | per-key rate windows and the spend counter |
//! | [`admin`], [`openapi`] | `/admin/keys…` and its part of the OpenAPI document |
//! | [`cli`] | `switchyard ctl keys …` |

pub mod admin;
pub mod cli;
pub mod meter;
pub mod openapi;
pub mod record;
pub mod secret;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::flags::audience::Attributes;
use crate::metrics::keys::{KeyHandles, KeyMetrics};
use crate::state::StateError;
use meter::{Meter, Over};
use record::{KeyRecord, NANO_PER_USD};
use secret::{KeyHash, Presented};
use store::KeyStore;

/// `[keys]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysSettings {
    /// Requests without a valid key are refused (401). Otherwise a request without a
    /// Switchyard key goes through as before, and one with a key is held to it.
    pub required: bool,
    /// How often spend is added to the store and the fleet's totals read back.
    pub flush_interval: Duration,
}

/// Why a request was refused because of its key: rendered by the client API's error shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No key, with `[keys] required = true`.
    #[error("a client key is required: send `Authorization: Bearer sk-sy-…` or `x-api-key`")]
    Missing,
    /// Not a key of this proxy (unknown, revoked, or rotated past its grace period).
    #[error("invalid client key")]
    Invalid,
    /// The key expired.
    #[error("client key `{0}` has expired")]
    Expired(String),
    /// The key may not call this flag (or a model that is no flag).
    #[error("client key `{key}` may not use `{model}`")]
    Forbidden {
        /// The key's name.
        key: String,
        /// The model asked for.
        model: String,
    },
    /// Over a per-minute limit or the budget.
    #[error("client key `{key}` is over its {what}; retry after {retry_after} s")]
    Limited {
        /// The key's name.
        key: String,
        /// `rpm limit of N`, `budget of X USD per month`…
        what: String,
        /// Whether it is the budget (`insufficient_quota`) rather than a rate.
        budget: bool,
        /// Seconds (the `Retry-After` header).
        retry_after: u64,
    },
}

impl Refusal {
    /// 401, 403 or 429.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Missing | Refusal::Invalid | Refusal::Expired(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// OpenAI's error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Refusal::Missing | Refusal::Invalid | Refusal::Expired(_) => "invalid_request_error",
            Refusal::Forbidden { .. } => "permission_error",
            Refusal::Limited { budget: true, .. } => "insufficient_quota",
            Refusal::Limited { .. } => "rate_limit_error",
        }
    }

    /// OpenAI's error `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing_api_key",
            Refusal::Invalid => "invalid_api_key",
            Refusal::Expired(_) => "expired_api_key",
            Refusal::Forbidden { .. } => "model_not_allowed",
            Refusal::Limited { budget: true, .. } => "budget_exceeded",
            Refusal::Limited { .. } => "rate_limit_exceeded",
        }
    }

    /// `Retry-After`, for a 429.
    pub fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Refusal::Limited { retry_after, .. } => Some(HeaderValue::from(*retry_after)),
            _ => None,
        }
    }

    /// The `outcome` label of `switchyard_key_requests_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Refusal::Missing | Refusal::Invalid | Refusal::Expired(_) => "unauthorized",
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::Limited { budget: true, .. } => "over_budget",
            Refusal::Limited { .. } => "rate_limited",
        }
    }
}

/// A key as requests see it.
#[derive(Debug)]
pub struct Loaded {
    /// What is stored.
    pub record: KeyRecord,
    /// Its attributes, as audiences read them.
    pub attributes: Attributes,
    /// Its counters and metric handles (kept across reloads).
    pub entry: Arc<KeyEntry>,
}

/// The key a request was admitted with.
pub type Grant = Arc<Loaded>;

/// A key's live counters and metric handles.
#[derive(Debug)]
pub struct KeyEntry {
    meter: Mutex<Meter>,
    handles: KeyHandles,
}

impl KeyEntry {
    fn meter(&self) -> std::sync::MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Loaded {
    /// Counts an answered request: its tokens (in + out) and its cost in USD, computed where
    /// `switchyard_cost_usd_total` is.
    pub fn used(&self, tokens: u64, cost_usd: f64) {
        let nano = (cost_usd * NANO_PER_USD).round() as i64;
        self.entry
            .meter()
            .used(self.record.period(), tokens, nano, crate::clock::now_ms());
        if cost_usd > 0.0 {
            self.entry.handles.spend.inc_by(cost_usd);
        }
    }
}

#[derive(Default)]
struct Table {
    slots: HashMap<u64, Vec<Slot>>,
    by_name: BTreeMap<String, Grant>,
}

struct Slot {
    hash: KeyHash,
    /// For a rotated-out secret: valid until then.
    until: Option<u64>,
    key: Grant,
}

/// Every key, for the request path and the admin API. Cheap to clone.
#[derive(Clone, Default)]
pub struct Keys {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    store: OnceLock<KeyStore>,
    metrics: OnceLock<KeyMetrics>,
    table: ArcSwap<Table>,
    entries: Mutex<HashMap<String, Arc<KeyEntry>>>,
    reload: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("keys", &self.inner.table.load().by_name.len())
            .finish()
    }
}

impl Keys {
    /// Opens the key tables beside the state store, loads every key and starts the loops that
    /// keep them current and flush spend. Called once at start.
    pub async fn start(
        &self,
        state_url: &str,
        metrics: KeyMetrics,
        flush_interval: Duration,
    ) -> Result<(), StateError> {
        let store = KeyStore::open(state_url).await?;
        let changes = store.subscribe();
        let _ = self.inner.store.set(store);
        let _ = self.inner.metrics.set(metrics);
        self.reload().await?;
        tokio::spawn(sync_loop(Arc::downgrade(&self.inner), changes));
        tokio::spawn(flush_loop(Arc::downgrade(&self.inner), flush_interval));
        Ok(())
    }

    /// A keys view whose store is the given one (tests and benchmarks).
    pub async fn with_store(store: KeyStore, metrics: KeyMetrics) -> Result<Keys, StateError> {
        let keys = Keys::default();
        let _ = keys.inner.store.set(store);
        let _ = keys.inner.metrics.set(metrics);
        keys.reload().await?;
        Ok(keys)
    }

    fn store(&self) -> Result<&KeyStore, StateError> {
        self.inner
            .store
            .get()
            .ok_or_else(|| StateError::Unavailable("the key store is not open".into()))
    }

    /// Reads every key from the store and swaps them in.
    pub async fn reload(&self) -> Result<(), StateError> {
        let _guard = self.inner.reload.lock().await;
        let records = self.store()?.load().await?;
        let now = crate::clock::now_ms();
        let mut table = Table::default();
        let mut entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for record in records {
            let entry = match entries.get(&record.name) {
                Some(e) => e.clone(),
                None => {
                    let Some(metrics) = self.inner.metrics.get() else {
                        continue;
                    };
                    let e = Arc::new(KeyEntry {
                        meter: Mutex::new(Meter::default()),
                        handles: metrics.handles(&record.name),
                    });
                    entries.insert(record.name.clone(), e.clone());
                    e
                }
            };
            let attributes =
                Attributes::from_json_object(&record.attributes.clone().into_iter().collect());
            let revoked = record.revoked_at_ms.is_some();
            let (hash, previous) = (record.hash, record.previous);
            let key = Arc::new(Loaded {
                record,
                attributes,
                entry,
            });
            table.by_name.insert(key.record.name.clone(), key.clone());
            if revoked {
                continue;
            }
            table.slots.entry(hash.slot()).or_default().push(Slot {
                hash,
                until: None,
                key: key.clone(),
            });
            if let Some((old, until)) = previous.filter(|(_, until)| *until > now) {
                table.slots.entry(old.slot()).or_default().push(Slot {
                    hash: old,
                    until: Some(until),
                    key,
                });
            }
        }
        self.inner.table.store(Arc::new(table));
        Ok(())
    }

    /// The key of a presented secret, if it is valid now.
    pub fn verify(&self, secret: &str, now_ms: u64) -> Result<Grant, Refusal> {
        let hash = KeyHash::of(secret);
        let table = self.inner.table.load();
        let mut found = None;
        // Every candidate is compared (in constant time), so timing says nothing about which.
        for slot in table.slots.get(&hash.slot()).into_iter().flatten() {
            if slot.hash.matches(&hash) && slot.until.is_none_or(|u| u > now_ms) {
                found = Some(slot.key.clone());
            }
        }
        let key = found.ok_or(Refusal::Invalid)?;
        if key.record.expires_at_ms.is_some_and(|e| e <= now_ms) {
            key.entry.handles.outcome("unauthorized").inc();
            return Err(Refusal::Expired(key.record.name.clone()));
        }
        Ok(key)
    }

    /// The request-path check: the request's key (if any), allowed to call `flag` (`None`: a
    /// model that is no flag) and within its limits. `Ok(None)`: no key and none required.
    pub fn authorize(
        &self,
        settings: Option<&KeysSettings>,
        headers: &HeaderMap,
        flag: Option<&str>,
        model: &str,
    ) -> Result<Option<Grant>, Refusal> {
        let Some(settings) = settings else {
            return Ok(None);
        };
        let secret = match secret::presented(headers) {
            Presented::Key(k) => k,
            Presented::Nothing if !settings.required => return Ok(None),
            Presented::Other if !settings.required => return Ok(None),
            Presented::Nothing => return Err(self.refused_unknown(Refusal::Missing)),
            Presented::Other => return Err(self.refused_unknown(Refusal::Invalid)),
        };
        let now = crate::clock::now_ms();
        let key = self.verify(secret, now).map_err(|r| match r {
            Refusal::Invalid => self.refused_unknown(r),
            other => other,
        })?;
        self.admit(&key, flag, model, now)?;
        Ok(Some(key))
    }

    /// Whether `key` may send a request for `flag` now; counts it when it may.
    pub fn admit(
        &self,
        key: &Grant,
        flag: Option<&str>,
        model: &str,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let r = &key.record;
        let handles = &key.entry.handles;
        let allowed = match flag {
            Some(f) => r.allows(f),
            None => r.flags.is_empty(),
        };
        if !allowed {
            handles.outcome("forbidden").inc();
            return Err(Refusal::Forbidden {
                key: r.name.clone(),
                model: model.to_owned(),
            });
        }
        let over = key.entry.meter().admit(r, now_ms);
        match over {
            Ok(()) => {
                handles.outcome("allowed").inc();
                Ok(())
            }
            Err(over) => {
                let (what, budget, retry_after) = match over {
                    Over::Rpm { limit, retry_after } => (
                        format!("limit of {limit} requests per minute"),
                        false,
                        retry_after,
                    ),
                    Over::Tpm { limit, retry_after } => (
                        format!("limit of {limit} tokens per minute"),
                        false,
                        retry_after,
                    ),
                    Over::Budget { limit, retry_after } => (
                        format!(
                            "budget of {} USD per {}",
                            limit as f64 / NANO_PER_USD,
                            r.period().as_str()
                        ),
                        true,
                        retry_after,
                    ),
                };
                let refusal = Refusal::Limited {
                    key: r.name.clone(),
                    what,
                    budget,
                    retry_after,
                };
                handles.outcome(refusal.outcome()).inc();
                Err(refusal)
            }
        }
    }

    fn refused_unknown(&self, r: Refusal) -> Refusal {
        if let Some(m) = self.inner.metrics.get() {
            m.unknown(r.outcome());
        }
        r
    }

    /// A key by name (revoked ones included).
    pub fn get(&self, name: &str) -> Option<Grant> {
        self.inner.table.load().by_name.get(name).cloned()
    }

    /// Every key, by name.
    pub fn all(&self) -> Vec<Grant> {
        self.inner.table.load().by_name.values().cloned().collect()
    }

    /// A key as the admin API shows it: its settings and its spend in the current period
    /// (the same counter enforcement reads).
    pub fn json(&self, key: &Grant) -> serde_json::Value {
        let now = crate::clock::now_ms();
        let mut v = key.record.to_json(now);
        let period = key.record.period();
        let spend = key.entry.meter().spend_in(period, now);
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "spend_usd".into(),
                serde_json::json!(spend as f64 / NANO_PER_USD),
            );
            obj.insert("spend_period".into(), serde_json::json!(period.id(now)));
        }
        v
    }

    /// Adds every key's unflushed spend to the store and reads back the fleet's totals.
    pub async fn flush(&self) -> Result<(), StateError> {
        let store = self.store()?.clone();
        let now = crate::clock::now_ms();
        let keys = self.all();
        let mut deltas = Vec::new();
        for k in &keys {
            let (period, delta) = k.entry.meter().take_unflushed(k.record.period(), now);
            if delta != 0 {
                deltas.push((k.record.name.clone(), period, delta));
            }
        }
        let periods = vec![record::Period::Day.id(now), record::Period::Month.id(now)];
        match store.flush_spend(deltas, periods).await {
            Ok(totals) => {
                for k in &keys {
                    let mut m = k.entry.meter();
                    let period = k.record.period().id(now);
                    let total = totals
                        .get(&(k.record.name.clone(), period.clone()))
                        .copied()
                        .unwrap_or(0);
                    m.flushed(&period, total);
                }
                Ok(())
            }
            Err(e) => {
                for k in &keys {
                    k.entry.meter().flush_failed();
                }
                Err(e)
            }
        }
    }

    /// The store, for the admin API.
    pub(crate) fn key_store(&self) -> Result<&KeyStore, StateError> {
        self.store()
    }
}

async fn sync_loop(weak: Weak<Inner>, mut changes: Option<tokio::sync::watch::Receiver<u64>>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.tick().await;
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ok = changed => if !ok { changes = None },
            _ = every.tick() => {},
        }
        let Some(inner) = weak.upgrade() else { return };
        let keys = Keys { inner };
        if let Err(e) = keys.reload().await {
            tracing::warn!(error = %e, "keys not reloaded: serving on the last known keys");
        }
    }
}

async fn flush_loop(weak: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let keys = Keys { inner };
        if let Err(e) = keys.flush().await {
            tracing::warn!(error = %e, "key spend not flushed: kept for the next flush");
        }
    }
}

/// The request-path check for `model` (a flag, or a model that is no flag): the request's key
/// when `[keys]` is configured, refused in the client API's error shape.
pub fn check_request(
    app: &crate::app::App,
    live: &crate::app::Live,
    headers: &HeaderMap,
    model: &str,
) -> Result<Option<Grant>, crate::openai::ApiError> {
    let Some(settings) = live.config.keys.as_ref() else {
        return Ok(None);
    };
    let flag = live.config.flag(model).map(|(_, f)| f.key.as_str());
    app.keys
        .authorize(Some(settings), headers, flag, model)
        .map_err(crate::openai::ApiError::Key)
}

//! The durable runtime-state store: what operators change at runtime (kill switches, forced
//! fallbacks, rollout stages and holds) and the audit log of every change.
//!
//! One [`Store`], two backends chosen by the `[state] url`:
//!
//! | url | backend |
//! |---|---|
//! | `sqlite:PATH` | embedded SQLite (the default; WAL, `synchronous=FULL`) |
//! | `postgres://…`, `postgresql://…` | PostgreSQL for a fleet, LISTEN/NOTIFY between replicas |
//!
//! [`Store::apply`] reads one flag's [`FlagOverrides`], applies a [`Change`], writes them back,
//! appends the [`AuditEntry`] and bumps the global version in one transaction, so two
//! operators changing the same flag at once never lose an update. It returns once the change
//! is durable. [`Store::subscribe`] tells a replica that *another* one changed the state, so it
//! calls [`Store::load`] again.
//!
//! Each backend keeps its schema as an ordered `MIGRATIONS` list; opening a store brings the
//! database up to date under a lock, so replicas starting together do not race. To add tables,
//! append a migration to both lists.
//!
//! Experiment data lives in the same database (migrations 2 and 4): first exposures per
//! (flag, user) ([`Store::record_exposures`]) and idempotent feedback events
//! ([`Store::insert_feedback`]), with running aggregates maintained as they are ingested
//! ([`aggregates`]), so results ([`Store::feedback_aggs`], [`Store::exposure_counts`]) read a
//! handful of rows whatever the number of users. No table of request ids: request ids carry
//! their own attribution, sealed with the key [`Store::request_id_key`] keeps for the fleet.
//!
//! This file holds the [`Store`] front and the rows it reads and writes; the overrides, changes
//! and audit entries live in the `overrides` module, each backend in its own.

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

pub(crate) mod aggregates;
mod bandit;
pub mod export;
mod overrides;
mod postgres;
mod sqlite;

pub use overrides::{AuditEntry, AuditQuery, Change, FlagOverrides, RuntimeState};
pub use postgres::LeaderLock;

use overrides::{audit_json, overrides_json};

pub(crate) use crate::clock::{format_rfc3339_ms, now_ms};

/// One user's exposure to a flag: the variation a request was answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// The flag.
    pub flag: String,
    /// The variation served.
    pub variation: String,
    /// The rule that chose the variation, if any.
    pub rule: Option<String>,
    /// The bucketing id.
    pub user: String,
    /// Unix milliseconds of the decision.
    pub at_ms: u64,
    /// This proxy recorded the same (flag, user, variation) lately: nothing is written (a
    /// returning user's exposure carries nothing new).
    pub repeat: bool,
}

/// One feedback event, attributed to a flag's variation and a user.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRow {
    /// Idempotency key, unique across all events.
    pub event_id: String,
    /// The flag.
    pub flag: String,
    /// The variation the user was served.
    pub variation: String,
    /// The bucketing id.
    pub user: String,
    /// The metric.
    pub metric: String,
    /// The value (finite).
    pub value: f64,
    /// Unix milliseconds at which the event was received.
    pub at_ms: u64,
}

/// Per (variation, metric): each user's events combined first (sum, max, mean), then summed
/// over users.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackAgg {
    /// The variation.
    pub variation: String,
    /// The metric.
    pub metric: String,
    /// Users with at least one event.
    pub reporters: u64,
    /// Events.
    pub events: u64,
    /// Σ over users of the sum of their values.
    pub sum_of_sums: f64,
    /// Σ over users of the square of the sum of their values.
    pub sum_sq_of_sums: f64,
    /// Σ over users of their largest value.
    pub sum_of_max: f64,
    /// Σ over users of the square of their largest value.
    pub sum_sq_of_max: f64,
    /// Σ over users of the mean of their values.
    pub sum_of_means: f64,
    /// Σ over users of the square of the mean of their values.
    pub sum_sq_of_means: f64,
}

/// Why the state store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database cannot be reached right now (connection refused or lost, timeout, locked);
    /// retrying later may succeed.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error (unwritable file, bad schema, corrupt row…).
    #[error("state store error: {0}")]
    Storage(String),
    /// The `[state] url` names no supported backend or is malformed.
    #[error("invalid state store url: {0}")]
    BadUrl(String),
}

/// The runtime-state store. Cheap to clone: clones share one connection and one subscription.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// The key request ids are sealed with (see [`Store::request_id_key`]).
    id_key: std::sync::Arc<[u8; 32]>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the store named by `url` and creates or upgrades its schema (idempotent, safe when
    /// two processes start at once).
    ///
    /// - `sqlite:PATH`: PATH is relative to the process's working directory and its parent
    ///   directory must exist; `sqlite::memory:` is a private in-memory database (tests).
    ///   `sqlite://PATH` is accepted too (`sqlite:///abs/path` for an absolute path).
    /// - `postgres://…` / `postgresql://…`: a libpq-style URL; an extra `schema=NAME` query
    ///   parameter (default `public`) names the schema holding the tables, created if missing.
    ///
    /// Must be called inside a Tokio runtime; background work (subscriptions, connection
    /// drivers) runs on that runtime.
    pub async fn open(url: &str) -> Result<Store, StateError> {
        let url = url.trim();
        let backend = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(StateError::BadUrl(format!(
                    "{url:?}: no database path after \"sqlite:\""
                )));
            }
            Backend::Sqlite(sqlite::SqliteStore::open(path).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::PgStore::open(url).await?)
        } else {
            return Err(StateError::BadUrl(format!(
                "{:?}: expected \"sqlite:PATH\" or \"postgres://…\"",
                redact(url)
            )));
        };
        // Created once (the first replica to open the store wins), read by every other.
        let fresh = new_key()?;
        let id_key = match &backend {
            Backend::Sqlite(s) => s.secret("request_ids", &fresh).await?,
            Backend::Postgres(s) => s.secret("request_ids", &fresh).await?,
        };
        Ok(Store {
            backend,
            id_key: std::sync::Arc::new(id_key),
        })
    }

    /// The key request ids are sealed with: 32 random bytes created with the store and kept
    /// in it, so every replica sharing the store reads the ids any of them minted.
    pub fn request_id_key(&self) -> &[u8; 32] {
        &self.id_key
    }

    /// Every flag's overrides and the version they belong to, read in one snapshot.
    pub async fn load(&self) -> Result<RuntimeState, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.load().await,
            Backend::Postgres(s) => s.load().await,
        }
    }

    /// Atomically reads the flag's overrides, applies `change`, writes them, appends the audit
    /// entry and bumps the global version — one transaction, so concurrent changes from two
    /// actors are both applied and both audited. Durable before it returns. With PostgreSQL,
    /// other replicas are notified (channel `switchyard_state`) in the same transaction.
    ///
    /// The entry's `before`/`after` are the flag's overrides as JSON before and after; for a
    /// [`Change::Note`], `before` is `null` and `after` the note's detail (and nothing else
    /// changes: no state, no version bump, no notification).
    pub async fn apply(
        &self,
        change: &Change,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<AuditEntry, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.apply(change, actor, reason).await,
            Backend::Postgres(s) => s.apply(change, actor, reason).await,
        }
    }

    /// Audit entries, newest first; `flag` keeps only that flag's entries. `limit` is clamped
    /// to 1..=1000.
    pub async fn audit(
        &self,
        flag: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StateError> {
        self.audit_page(&AuditQuery {
            flag: flag.map(str::to_owned),
            limit,
            ..AuditQuery::default()
        })
        .await
    }

    /// Audit entries matching every filter of `q`, newest first (`q.limit` clamped to
    /// 1..=1000); the next page starts `before_id` the last entry's id.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StateError> {
        let q = AuditQuery {
            limit: q.limit.clamp(1, 1000),
            ..q.clone()
        };
        match &self.backend {
            Backend::Sqlite(s) => s.audit(q).await,
            Backend::Postgres(s) => s.audit(&q).await,
        }
    }

    /// A receiver whose value changes whenever another process (or another `Store` opened on
    /// the same database) changed the state; the caller then calls [`Store::load`]. The value
    /// itself only counts signals.
    ///
    /// PostgreSQL: LISTEN on `switchyard_state` over a dedicated connection; SQLite: the version
    /// is polled every 500 ms. The background task reconnects with backoff after a connection
    /// loss (or recovers after read errors) and then signals once, so the caller resyncs. It
    /// stops when the last clone of the store is dropped.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match &self.backend {
            Backend::Sqlite(s) => s.subscribe(),
            Backend::Postgres(s) => s.subscribe(),
        }
    }

    /// Records exposures, keeping the first one per (flag, user): a user seen for the first
    /// time is inserted with the variation, rule and time of this exposure; a user already
    /// exposed with a *different* variation is marked `switched` (and their feedback is left
    /// out of [`Store::feedback_aggs`] from then on). Within a batch, earlier entries come
    /// first; entries marked `repeat` are skipped. The running aggregates move with the
    /// users (a user's earlier feedback joins their variation's figures on first exposure,
    /// and leaves them on a switch). A known user with nothing new writes nothing.
    ///
    /// One transaction per batch (batches of up to a few thousand); durable before it
    /// returns.
    pub async fn record_exposures(&self, batch: &[Exposure]) -> Result<(), StateError> {
        let batch: Vec<Exposure> = batch.iter().filter(|e| !e.repeat).cloned().collect();
        if batch.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(s) => s.record_exposures(&batch).await,
            Backend::Postgres(s) => s.record_exposures(&batch).await,
        }
    }

    /// Adds exposures that were lost before reaching the store (a full queue, a store that
    /// stayed unavailable) to each flag's count, which results show as `dropped_exposures`.
    pub async fn record_exposure_losses(&self, lost: &[(String, u64)]) -> Result<(), StateError> {
        if lost.iter().all(|(_, n)| *n == 0) {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(s) => s.record_exposure_losses(lost).await,
            Backend::Postgres(s) => s.record_exposure_losses(lost).await,
        }
    }

    /// Exposures of `flag` lost before reaching the store, over the fleet's life.
    pub async fn exposure_losses(&self, flag: &str) -> Result<u64, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.exposure_losses(flag).await,
            Backend::Postgres(s) => s.exposure_losses(flag).await,
        }
    }

    /// Stores feedback events; `event_id` is unique across all events (idempotency). Returns,
    /// per row, `true` if it was stored and `false` if it was a duplicate (already stored, or
    /// repeated earlier in the same batch, in which case the earlier row is the one kept).
    /// One transaction; durable before it returns. A non-finite value rejects the whole
    /// batch.
    pub async fn insert_feedback(&self, rows: &[FeedbackRow]) -> Result<Vec<bool>, StateError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(bad) = rows.iter().find(|r| !r.value.is_finite()) {
            return Err(StateError::Storage(format!(
                "feedback event {:?} has a non-finite value ({})",
                bad.event_id, bad.value
            )));
        }
        match &self.backend {
            Backend::Sqlite(s) => s.insert_feedback(rows).await,
            Backend::Postgres(s) => s.insert_feedback(rows).await,
        }
    }

    /// Users per first-exposed variation, not counting switched users, sorted by variation;
    /// and the number of switched users. With `rule`, only users whose first exposure was in
    /// that rule count (switched ones included).
    pub async fn exposure_counts(
        &self,
        flag: &str,
        rule: Option<&str>,
    ) -> Result<(Vec<(String, u64)>, u64), StateError> {
        let (mut counts, switched) = match &self.backend {
            Backend::Sqlite(s) => s.exposure_counts(flag, rule, false).await,
            Backend::Postgres(s) => s.exposure_counts(flag, rule, false).await,
        }?;
        counts.retain(|(_, n)| *n > 0);
        counts.sort();
        Ok((counts, switched))
    }

    /// [`Store::exposure_counts`] computed from every exposure row (the reference the running
    /// counts are checked against; it reads every user of the flag).
    pub async fn exposure_counts_scan(
        &self,
        flag: &str,
        rule: Option<&str>,
    ) -> Result<(Vec<(String, u64)>, u64), StateError> {
        let (mut counts, switched) = match &self.backend {
            Backend::Sqlite(s) => s.exposure_counts(flag, rule, true).await,
            Backend::Postgres(s) => s.exposure_counts(flag, rule, true).await,
        }?;
        counts.sort();
        Ok((counts, switched))
    }

    /// Feedback aggregated per (variation, metric), sorted by variation then metric: only
    /// events whose variation equals the user's first-exposed variation, from users not
    /// switched (and whose first exposure was in `rule`, if given); with `since_ms`, only
    /// events at or after it. Users without an exposure row (e.g. re-decided users this proxy
    /// never served) count under the event's variation, unless `rule` is given (their rule is
    /// unknown, so they are left out).
    ///
    /// Without `since_ms` this reads the running aggregates (a handful of rows); with it, the
    /// events since then are aggregated (an index on the events' time bounds the scan).
    pub async fn feedback_aggs(
        &self,
        flag: &str,
        rule: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<Vec<FeedbackAgg>, StateError> {
        if since_ms.is_some() {
            return self.feedback_aggs_scan(flag, rule, since_ms).await;
        }
        let mut aggs = match &self.backend {
            Backend::Sqlite(s) => s.running_aggs(flag, rule).await,
            Backend::Postgres(s) => s.running_aggs(flag, rule).await,
        }?;
        aggs.sort_by(|a, b| (&a.variation, &a.metric).cmp(&(&b.variation, &b.metric)));
        Ok(aggs)
    }

    /// [`Store::feedback_aggs`] computed from every event (the reference the running
    /// aggregates are checked against, and the windowed query).
    pub async fn feedback_aggs_scan(
        &self,
        flag: &str,
        rule: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<Vec<FeedbackAgg>, StateError> {
        let mut aggs = match &self.backend {
            Backend::Sqlite(s) => s.feedback_aggs(flag, rule, since_ms).await,
            Backend::Postgres(s) => s.feedback_aggs(flag, rule, since_ms).await,
        }?;
        // Byte order on both backends, whatever the database's collation.
        aggs.sort_by(|a, b| (&a.variation, &a.metric).cmp(&(&b.variation, &b.metric)));
        Ok(aggs)
    }

    /// Recomputes every running aggregate from the stored exposures and events (what the
    /// migration to them does; also after data were loaded in bulk with SQL).
    pub async fn rebuild_aggregates(&self) -> Result<(), StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.rebuild_aggregates().await,
            Backend::Postgres(s) => s.rebuild_aggregates().await,
        }
    }

    /// Retention of finished experiments: deletes the exposures, events and aggregates of
    /// every flag not in `live_flags` whose last exposure or event is older than
    /// `before_ms`; returns the flags deleted.
    pub async fn prune_finished(
        &self,
        live_flags: &[String],
        before_ms: u64,
    ) -> Result<Vec<String>, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_finished(live_flags, before_ms).await,
            Backend::Postgres(s) => s.prune_finished(live_flags, before_ms).await,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Where the replicas sharing this store elect the one that acts: a PostgreSQL advisory
    /// lock. `None` on SQLite, where the single process leads.
    pub fn leader_lock(&self) -> Option<LeaderLock> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pg) => Some(pg.leader_lock()),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = match &self.backend {
            Backend::Sqlite(s) => s.location(),
            Backend::Postgres(s) => s.location(),
        };
        f.debug_struct("Store")
            .field("kind", &self.kind())
            .field("location", &location)
            .finish()
    }
}

/// 32 bytes from the system's random source.
fn new_key() -> Result<[u8; 32], StateError> {
    use ring::rand::SecureRandom as _;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| StateError::Storage("no system randomness for the request-id key".into()))?;
    Ok(key)
}

/// Marks the subscription as changed.
fn signal(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

/// Delay before reconnect attempt `attempt` (1, 2, …): 250 ms doubling up to 5 s, ±20 %
/// jitter so replicas do not reconnect in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base_ms = 250u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(5_000);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    Duration::from_millis((base_ms as f64 * jitter) as u64)
}

/// Unix milliseconds as stored (BIGINT / INTEGER), saturating.
fn ms_to_db(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A stored count or millisecond value back as `u64` (negative values, never written, as 0).
fn db_to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A URL with any password replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?schema=x"),
            "postgres://u:***@h:5432/db?schema=x"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h:5432/db"), "postgres://h:5432/db");
        assert_eq!(redact("mysql:x"), "mysql:x");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..40 {
            let d = backoff(attempt);
            assert!(d >= Duration::from_millis(200), "{attempt}: {d:?}");
            assert!(d <= Duration::from_millis(6_000), "{attempt}: {d:?}");
        }
        assert!(backoff(1) < Duration::from_millis(400));
        assert!(backoff(10) >= Duration::from_millis(4_000));
    }
}

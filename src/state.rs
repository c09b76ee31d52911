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
//! Experiment data lives in the same database (migration 2): first exposures per (flag, user)
//! ([`Store::record_exposures`]), the decision each request id was answered with
//! ([`Store::lookup_request`]), and idempotent feedback events ([`Store::insert_feedback`]),
//! aggregated per user and then per variation in SQL ([`Store::feedback_aggs`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

mod bandit;
pub mod export;
mod postgres;
mod sqlite;

pub use postgres::LeaderLock;

pub(crate) use crate::clock::{format_rfc3339_ms, now_ms};

/// Runtime overrides of one flag (what operators changed at runtime; absent = the config's
/// value).
///
/// Serialized compactly: fields that hold no override are left out, so a flag without
/// overrides is `{}` in the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FlagOverrides {
    /// Kill switch override: `Some(false)` serves the off variation to everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Whole-flag forced fallback: `Some(true)` answers every request rule-based.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_fallback: Option<bool>,
    /// Variations whose answers are forced to their fallback.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub forced_variations: BTreeSet<String>,
    /// Variations whose forced fallback is lifted, even where `proxy.toml` forces it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lifted_variations: BTreeSet<String>,
    /// Rule id → current rollout stage index.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rollout_stage: BTreeMap<String, u32>,
    /// Rule ids whose rollout is frozen (no automatic advance).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub rollout_held: BTreeSet<String>,
    /// Rule id → unix milliseconds at which its current stage began.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_started_at_ms: BTreeMap<String, u64>,
    /// Who set each override last (`enabled`, `force_fallback`, `variation:V`, `stage:RULE`,
    /// `held:RULE` → actor).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_by: BTreeMap<String, String>,
    /// The flag's bandit: weights in force, status, settings overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandit: Option<crate::bandit::BanditOverride>,
}

impl FlagOverrides {
    /// True when nothing is overridden (the flag runs exactly as configured).
    pub fn is_empty(&self) -> bool {
        *self == FlagOverrides::default()
    }
}

/// Every flag's runtime overrides, as of one version of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    /// Bumped by every state-changing [`Store::apply`]; 0 for a fresh store.
    pub version: i64,
    /// Flags with at least one override; a flag missing here runs as configured.
    pub flags: BTreeMap<String, FlagOverrides>,
}

/// One line of the audit log: who changed what, when, before and after.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// Increasing with time; newer entries have larger ids.
    pub id: i64,
    /// When, RFC 3339 UTC with milliseconds (`2026-11-25T12:01:02.345Z`).
    pub at: String,
    /// Who: the admin token's name, or the component (`alerts`, `reload`…).
    pub actor: String,
    /// What: [`Change::action`].
    pub action: String,
    /// The flag concerned, if any.
    pub flag: Option<String>,
    /// The flag's overrides before the change (`null` for a note).
    pub before: serde_json::Value,
    /// The flag's overrides after the change (the note's detail for a note).
    pub after: serde_json::Value,
    /// The operator's reason, if given.
    pub reason: Option<String>,
}

/// Filters and paging of the audit log; `None` filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this flag's entries.
    pub flag: Option<String>,
    /// Only this actor's entries (a token name, `alert:<name>`…).
    pub actor: Option<String>,
    /// Only this action ([`Change::action`]).
    pub action: Option<String>,
    /// Only entries older than this id (the next page).
    pub before_id: Option<i64>,
    /// At most this many entries.
    pub limit: u32,
}

/// One change to the runtime state (or an audit-only note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Kill switch: action `set_enabled`.
    SetEnabled {
        /// The flag.
        flag: String,
        /// `false` serves the off variation to everyone.
        enabled: bool,
    },
    /// Force (or lift) rule-based answers for the whole flag (`variation: None`) or one
    /// variation: action `set_forced_fallback`.
    SetForcedFallback {
        /// The flag.
        flag: String,
        /// One variation, or the whole flag.
        variation: Option<String>,
        /// `true` forces, `false` lifts.
        forced: bool,
    },
    /// Move a rule's rollout to a stage, which began at `at_ms`: action `set_rollout_stage`.
    SetRolloutStage {
        /// The flag.
        flag: String,
        /// The rollout rule's id.
        rule: String,
        /// The stage index.
        stage: u32,
        /// Unix milliseconds at which the stage began.
        at_ms: u64,
    },
    /// Freeze (or release) a rule's rollout: action `set_rollout_held`.
    SetRolloutHeld {
        /// The flag.
        flag: String,
        /// The rollout rule's id.
        rule: String,
        /// `true` freezes, `false` releases.
        held: bool,
    },
    /// Drop every override of the flag, back to the config: action `clear_overrides`.
    ClearFlag {
        /// The flag.
        flag: String,
    },
    /// Drop one override, back to the config for that field: action `clear_override`.
    ClearField {
        /// The flag.
        flag: String,
        /// `enabled`, `force_fallback`, `variation:V`, `stage:RULE` or `held:RULE`.
        field: String,
    },
    /// A bandit epoch's weights and status take effect: action `bandit_epoch`.
    BanditEpoch {
        /// The flag.
        flag: String,
        /// The epoch number.
        epoch: u64,
        /// Buckets per variation from now on.
        weights: BTreeMap<String, u32>,
        /// Where the bandit stands after the epoch.
        status: crate::bandit::Status,
        /// Unix milliseconds at which the weights take effect.
        at_ms: u64,
    },
    /// Operators change a bandit's settings: action `set_bandit`. `None` fields keep their
    /// value; `reset` goes back to the rule's configured allocation and a running bandit.
    SetBandit {
        /// The flag.
        flag: String,
        /// The settings to override.
        settings: crate::bandit::SettingsOverride,
        /// Start over: configured weights, status running.
        reset: bool,
        /// Unix milliseconds of the change.
        at_ms: u64,
    },
    /// An audit-only entry (`reload`, `reload_failed`, alert notifications…); changes no state
    /// and does not bump the version.
    Note {
        /// The flag concerned, if any.
        flag: Option<String>,
        /// The action recorded in the audit log.
        action: String,
        /// Recorded as the entry's `after`.
        detail: serde_json::Value,
    },
}

impl Change {
    /// The flag the change concerns (`None` only for a note about no flag).
    pub fn flag(&self) -> Option<&str> {
        match self {
            Change::SetEnabled { flag, .. }
            | Change::SetForcedFallback { flag, .. }
            | Change::SetRolloutStage { flag, .. }
            | Change::SetRolloutHeld { flag, .. }
            | Change::BanditEpoch { flag, .. }
            | Change::SetBandit { flag, .. }
            | Change::ClearField { flag, .. }
            | Change::ClearFlag { flag } => Some(flag),
            Change::Note { flag, .. } => flag.as_deref(),
        }
    }

    /// The action name recorded in the audit log.
    pub fn action(&self) -> &str {
        match self {
            Change::SetEnabled { .. } => "set_enabled",
            Change::SetForcedFallback { .. } => "set_forced_fallback",
            Change::SetRolloutStage { .. } => "set_rollout_stage",
            Change::SetRolloutHeld { .. } => "set_rollout_held",
            Change::BanditEpoch { .. } => "bandit_epoch",
            Change::SetBandit { .. } => "set_bandit",
            Change::ClearFlag { .. } => "clear_overrides",
            Change::ClearField { .. } => "clear_override",
            Change::Note { action, .. } => action,
        }
    }

    /// Applies the change to one flag's overrides (pure; a note changes nothing).
    pub fn apply(&self, o: &mut FlagOverrides) {
        match self {
            Change::SetEnabled { enabled, .. } => o.enabled = Some(*enabled),
            Change::SetForcedFallback {
                variation: None,
                forced,
                ..
            } => o.force_fallback = Some(*forced),
            Change::SetForcedFallback {
                variation: Some(variation),
                forced,
                ..
            } => {
                // Both ways: forcing and lifting each override what the file says.
                if *forced {
                    o.forced_variations.insert(variation.clone());
                    o.lifted_variations.remove(variation);
                } else {
                    o.forced_variations.remove(variation);
                    o.lifted_variations.insert(variation.clone());
                }
            }
            Change::SetRolloutStage {
                rule, stage, at_ms, ..
            } => {
                o.rollout_stage.insert(rule.clone(), *stage);
                o.stage_started_at_ms.insert(rule.clone(), *at_ms);
            }
            Change::SetRolloutHeld { rule, held, .. } => {
                if *held {
                    o.rollout_held.insert(rule.clone());
                } else {
                    o.rollout_held.remove(rule);
                }
            }
            Change::BanditEpoch { .. } | Change::SetBandit { .. } => {
                crate::bandit::apply_change(self, o.bandit.get_or_insert_with(Default::default));
            }
            Change::ClearFlag { .. } => *o = FlagOverrides::default(),
            Change::ClearField { field, .. } => {
                match field.split_once(':') {
                    None if field == "enabled" => o.enabled = None,
                    None if field == "bandit" => o.bandit = None,
                    None if field == "force_fallback" => o.force_fallback = None,
                    Some(("variation", v)) => {
                        o.forced_variations.remove(v);
                        o.lifted_variations.remove(v);
                    }
                    Some(("stage", r)) => {
                        o.rollout_stage.remove(r);
                        o.stage_started_at_ms.remove(r);
                    }
                    Some(("held", r)) => {
                        o.rollout_held.remove(r);
                    }
                    _ => return,
                }
                o.set_by.remove(field);
            }
            Change::Note { .. } => {}
        }
    }

    /// Applies the change and records `actor` as the one who set the field it changes.
    pub fn apply_by(&self, o: &mut FlagOverrides, actor: &str) {
        self.apply(o);
        let field = match self {
            Change::SetEnabled { .. } => "enabled".to_owned(),
            Change::SetForcedFallback {
                variation: None, ..
            } => "force_fallback".to_owned(),
            Change::SetForcedFallback {
                variation: Some(v), ..
            } => format!("variation:{v}"),
            Change::SetRolloutStage { rule, .. } => format!("stage:{rule}"),
            Change::SetRolloutHeld { rule, .. } => format!("held:{rule}"),
            Change::BanditEpoch { .. } | Change::SetBandit { .. } => "bandit".to_owned(),
            Change::ClearFlag { .. } | Change::ClearField { .. } | Change::Note { .. } => return,
        };
        o.set_by.insert(field, actor.to_owned());
    }

    /// The flag whose stored overrides this change rewrites (`None` for a note).
    fn state_flag(&self) -> Option<&str> {
        match self {
            Change::Note { .. } => None,
            other => other.flag(),
        }
    }
}

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
    /// The request's id (`x-request-id`), remembered for feedback attribution.
    pub request_id: String,
    /// Unix milliseconds of the decision.
    pub at_ms: u64,
    /// This proxy recorded the same (flag, user, variation) lately: only the request id is
    /// written (a returning user's exposure carries nothing new).
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
        Ok(Store { backend })
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
    /// first. Also remembers `request_id` → (flag, variation, user) for
    /// [`Store::lookup_request`] (the first exposure recorded under a request id is kept).
    ///
    /// One transaction per batch (batches of up to a few thousand); durable before it
    /// returns.
    pub async fn record_exposures(&self, batch: &[Exposure]) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(s) => s.record_exposures(batch).await,
            Backend::Postgres(s) => s.record_exposures(batch).await,
        }
    }

    /// The decision a request id was answered with: (flag, variation, user).
    pub async fn lookup_request(
        &self,
        request_id: &str,
    ) -> Result<Option<(String, String, String)>, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.lookup_request(request_id).await,
            Backend::Postgres(s) => s.lookup_request(request_id).await,
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
            Backend::Sqlite(s) => s.exposure_counts(flag, rule).await,
            Backend::Postgres(s) => s.exposure_counts(flag, rule).await,
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
    pub async fn feedback_aggs(
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

    /// Deletes remembered request ids recorded before `before_ms` (housekeeping); returns how
    /// many were deleted.
    pub async fn prune_requests(&self, before_ms: u64) -> Result<u64, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_requests(before_ms).await,
            Backend::Postgres(s) => s.prune_requests(before_ms).await,
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

/// The flag's overrides as they appear in the audit log.
fn overrides_json(o: &FlagOverrides) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
}

/// Overrides as an audit entry shows them: the fields, without who set them (the entry's
/// actor says that).
fn audit_json(o: &FlagOverrides) -> serde_json::Value {
    let mut v = overrides_json(o);
    if let Some(m) = v.as_object_mut() {
        m.remove("set_by");
    }
    v
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

    #[test]
    fn overrides_serialize_compactly_and_read_defaults() {
        let mut o = FlagOverrides::default();
        assert_eq!(overrides_json(&o), serde_json::json!({}));
        o.enabled = Some(false);
        o.rollout_stage.insert("r".into(), 2);
        assert_eq!(
            overrides_json(&o),
            serde_json::json!({"enabled": false, "rollout_stage": {"r": 2}})
        );
        let back: FlagOverrides = serde_json::from_value(
            serde_json::json!({"enabled": false, "rollout_stage": {"r": 2}}),
        )
        .unwrap();
        assert_eq!(back, o);
    }
}

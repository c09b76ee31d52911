//! The PostgreSQL backend, for a fleet of replicas sharing one state.
//!
//! One client runs queries (behind an async mutex; reconnected lazily when its connection is
//! lost). A change runs in one transaction: the flag's row is locked with `SELECT … FOR
//! UPDATE`, rewritten, the audit entry appended, the version bumped and `pg_notify` sent on
//! `switchyard_state`, which PostgreSQL delivers only if the transaction commits. A
//! subscription LISTENs on a dedicated connection.
//!
//! Exposures and feedback events are written with one array statement per table (`unnest`),
//! rows sorted by key so concurrent batches lock in the same order. Experiment-results
//! queries, which aggregate every event of a flag, run on a second connection with a longer
//! budget, so they never hold up changes, exposures or feedback.
//!
//! The tables live in the schema named by the URL's `schema` parameter (default `public`).
//!
//! This file holds the store, its connections and how an operation runs on them; the schema
//! and its migrations live in `schema`, the overrides and audit log in `overrides`, experiment
//! data in `experiments`, bandit epochs in `bandit`, the subscription in `listen` and the URL
//! in `url`.

mod bandit;
mod experiments;
mod listen;
mod overrides;
mod schema;
mod url;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::{
    db_to_u64, ms_to_db, AuditEntry, AuditQuery, Change, Exposure, FeedbackAgg, FeedbackRow,
    RuntimeState, StateError,
};

/// The NOTIFY channel replicas listen on.
const CHANNEL: &str = "switchyard_state";

/// Budget for establishing a connection (TCP connect, startup, authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Budget for one operation on an established connection.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget for one experiment-results query (it aggregates every event of a flag).
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// Budget for building the running aggregates from existing rows (the migration that adds
/// them): one statement over every exposure and event, which at ten million exposures takes
/// longer than a results query may.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Memory for one results query's hash tables and sorts (per operation), so that a million
/// events aggregate without spilling to disk.
const REPORT_WORK_MEM: &str = "64MB";
/// After a failed connect, calls within this window fail at once instead of queueing up
/// behind new connection attempts.
const FAIL_FAST_FOR: Duration = Duration::from_secs(1);
/// How often the listening connection is checked with a round trip.
const LISTEN_HEALTH_EVERY: u32 = 5; // seconds (ticks of one second)

/// A PostgreSQL-backed store; clones share the query connection and the subscription.
#[derive(Clone)]
pub(super) struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    config: tokio_postgres::Config,
    /// The schema's name as given, and quoted for SQL.
    schema: String,
    quoted_schema: String,
    /// `postgres://user@host:port/db?schema=…`, without password, for messages.
    location: String,
    /// Tells this store's own notifications from other replicas'.
    instance: u64,
    slot: Mutex<Slot>,
    /// A second connection for experiment-results queries, so a long aggregation never
    /// holds up changes, exposures or feedback.
    report_slot: Mutex<Slot>,
    /// The newest version this store has seen by loading or by applying its own change
    /// contiguously; a subscription compares it with the database's when it first connects.
    seen_version: AtomicI64,
    tx: watch::Sender<u64>,
    watching: AtomicBool,
    handle: Handle,
}

#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    last_connect_failure: Option<(Instant, String)>,
}

/// A client and the task driving its connection (aborted, closing the socket, when dropped).
struct Conn {
    client: Client,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Why one attempt at an operation failed.
enum Fail {
    /// A driver error; `committing` if it came from COMMIT (the outcome is then unknown, so
    /// the change must not be retried).
    Pg {
        error: tokio_postgres::Error,
        committing: bool,
    },
    /// Already a store error (corrupt data…).
    State(StateError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(error: tokio_postgres::Error) -> Fail {
        Fail::Pg {
            error,
            committing: false,
        }
    }
}

fn committing(error: tokio_postgres::Error) -> Fail {
    Fail::Pg {
        error,
        committing: true,
    }
}

impl PgStore {
    pub(super) async fn open(url: &str) -> Result<PgStore, StateError> {
        let handle = Handle::try_current().map_err(|_| {
            StateError::Storage("the state store must be opened inside a Tokio runtime".into())
        })?;
        let (pg_url, schema) = url::split_schema(url)?;
        let mut config: tokio_postgres::Config = pg_url.parse().map_err(|e| {
            StateError::BadUrl(format!("{:?}: {}", super::redact(url), describe(&e)))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("switchyard");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let location = url::describe_config(&config, &schema);
        let (tx, _) = watch::channel(0);
        let store = PgStore {
            shared: Arc::new(Shared {
                config,
                quoted_schema: format!("\"{schema}\""),
                schema,
                location,
                instance: fastrand::u64(..),
                slot: Mutex::new(Slot::default()),
                report_slot: Mutex::new(Slot::default()),
                seen_version: AtomicI64::new(0),
                tx,
                watching: AtomicBool::new(false),
                handle,
            }),
        };
        let version = store
            .with_conn("creating the schema", |mut conn| {
                let shared = &*store.shared;
                async move {
                    let result = schema::migrate(&mut conn.client, shared).await;
                    (conn, result)
                }
            })
            .await?;
        store.shared.seen_version.store(version, Ordering::SeqCst);
        Ok(store)
    }

    pub(super) fn location(&self) -> String {
        self.shared.location.clone()
    }

    pub(super) fn leader_lock(&self) -> LeaderLock {
        LeaderLock {
            config: self.shared.config.clone(),
            key: leader_key(&self.shared.schema),
            location: self.shared.location.clone(),
        }
    }

    pub(super) async fn load(&self) -> Result<RuntimeState, StateError> {
        let shared = &*self.shared;
        let state = self
            .with_conn("loading the state", |mut conn| async move {
                let result = overrides::load_txn(&mut conn.client, shared).await;
                (conn, result)
            })
            .await?;
        shared.seen_version.store(state.version, Ordering::SeqCst);
        Ok(state)
    }

    pub(super) async fn apply(
        &self,
        change: &Change,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<AuditEntry, StateError> {
        let shared = &*self.shared;
        let (entry, version) = self
            .with_conn("applying a change", |mut conn| async move {
                let result =
                    overrides::apply_txn(&mut conn.client, shared, change, actor, reason).await;
                (conn, result)
            })
            .await?;
        if let Some(v) = version {
            // Ignore the result: if another replica moved the version in between, its
            // notification (or the subscription's first check) accounts for it.
            let _ =
                shared
                    .seen_version
                    .compare_exchange(v - 1, v, Ordering::SeqCst, Ordering::SeqCst);
        }
        Ok(entry)
    }

    pub(super) async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StateError> {
        let shared = &*self.shared;
        self.with_conn("reading the audit log", |conn| async move {
            let result = overrides::audit_query(&conn.client, shared, q).await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn record_exposures(&self, batch: &[Exposure]) -> Result<(), StateError> {
        let shared = &*self.shared;
        self.with_conn("recording exposures", |mut conn| async move {
            let result = experiments::record_exposures(&mut conn.client, shared, batch).await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn insert_feedback(
        &self,
        rows: &[FeedbackRow],
    ) -> Result<Vec<bool>, StateError> {
        let shared = &*self.shared;
        self.with_conn("storing feedback", |mut conn| async move {
            let result = experiments::insert_feedback(&mut conn.client, shared, rows).await;
            (conn, result)
        })
        .await
    }

    /// The schema holding the tables, quoted for SQL.
    pub(super) fn quoted_schema(&self) -> &str {
        &self.shared.quoted_schema
    }

    /// Runs read-only `sql` on the results connection (exports, `state/export.rs`).
    pub(super) async fn read_rows(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StateError> {
        self.with_report_conn(doing, |conn| async move {
            let result = conn.client.query(sql, params).await.map_err(Fail::from);
            (conn, result)
        })
        .await
    }

    pub(super) async fn exposure_counts(
        &self,
        flag: &str,
        rule: Option<&str>,
        scan: bool,
    ) -> Result<(Vec<(String, u64)>, u64), StateError> {
        let s = &self.shared.quoted_schema;
        let bucket = crate::state::aggregates::query_bucket(rule);
        let (sql, param) = match (scan, rule) {
            (false, _) => (
                format!(
                    "SELECT variation, sum(users)::int8, sum(switched)::int8 \
                     FROM {s}.switchyard_exposure_counts \
                     WHERE flag = $1 AND ($2::text IS NULL OR bucket = $2) GROUP BY variation"
                ),
                bucket.as_deref(),
            ),
            (true, Some(_)) => (
                format!(
                    "SELECT variation, count(*) FILTER (WHERE NOT switched), \
                            count(*) FILTER (WHERE switched) FROM {s}.switchyard_exposures \
                     WHERE flag = $1 AND rule = $2 GROUP BY variation"
                ),
                rule,
            ),
            (true, None) => (
                format!(
                    "SELECT variation, count(*) FILTER (WHERE NOT switched), \
                            count(*) FILTER (WHERE switched) FROM {s}.switchyard_exposures \
                     WHERE flag = $1 AND $2::text IS NULL GROUP BY variation"
                ),
                rule,
            ),
        };
        let sql = &sql;
        self.with_report_conn("counting exposures", |conn| async move {
            let result = async {
                let rows = conn.client.query(sql, &[&flag, &param]).await?;
                let mut counts = Vec::with_capacity(rows.len());
                let mut switched = 0u64;
                for row in rows {
                    let users = db_to_u64(row.try_get(1)?);
                    switched += db_to_u64(row.try_get(2)?);
                    if users > 0 {
                        counts.push((row.try_get(0)?, users));
                    }
                }
                Ok((counts, switched))
            }
            .await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn running_aggs(
        &self,
        flag: &str,
        rule: Option<&str>,
    ) -> Result<Vec<FeedbackAgg>, StateError> {
        let s = &self.shared.quoted_schema;
        let sql = format!(
            "SELECT variation, metric, sum(reporters)::int8, sum(events)::int8, sum(s), sum(s2), \
                    sum(m), sum(m2), sum(a), sum(a2) \
             FROM {s}.switchyard_aggregates WHERE flag = $1 AND ($2::text IS NULL OR bucket = $2) \
             GROUP BY variation, metric HAVING sum(reporters) > 0"
        );
        let sql = &sql;
        let bucket = crate::state::aggregates::query_bucket(rule);
        let bucket = &bucket;
        self.with_report_conn("reading the aggregates", |conn| async move {
            let result = async {
                let rows = conn.client.query(sql, &[&flag, bucket]).await?;
                rows.iter().map(agg_row).collect::<Result<Vec<_>, _>>()
            }
            .await
            .map_err(Fail::from);
            (conn, result)
        })
        .await
    }

    pub(super) async fn feedback_aggs(
        &self,
        flag: &str,
        rule: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<Vec<FeedbackAgg>, StateError> {
        let s = &self.shared.quoted_schema;
        // Events are combined per (variation, user, metric) first, then the groups whose user
        // is unknown, or known, not switched and first exposed to that variation (in `rule`),
        // are summed per (variation, metric).
        let sql = format!(
            "SELECT g.variation, g.metric, count(*), sum(g.n)::int8, \
                    sum(g.s), sum(g.s * g.s), sum(g.m), sum(g.m * g.m), sum(g.a), sum(g.a * g.a) \
             FROM ( \
                 SELECT f.variation, f.user_id, f.metric, count(*) AS n, \
                        sum(f.value) AS s, max(f.value) AS m, avg(f.value) AS a \
                 FROM {s}.switchyard_feedback f \
                 WHERE f.flag = $1 AND f.at_ms >= $2 \
                 GROUP BY f.variation, f.user_id, f.metric \
             ) g \
             LEFT JOIN {s}.switchyard_exposures e ON e.flag = $1 AND e.user_id = g.user_id \
             WHERE CASE WHEN e.user_id IS NULL THEN $3::text IS NULL \
                   ELSE NOT e.switched AND e.variation = g.variation \
                        AND ($3::text IS NULL OR e.rule = $3::text) \
                   END \
             GROUP BY g.variation, g.metric"
        );
        let sql = &sql;
        let since = ms_to_db(since_ms.unwrap_or(0));
        self.with_report_conn("aggregating feedback", |mut conn| async move {
            let result = async {
                let tx = conn
                    .client
                    .build_transaction()
                    .read_only(true)
                    .start()
                    .await?;
                tx.batch_execute(&format!("SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
                    .await?;
                let rows = tx.query(sql, &[&flag, &since, &rule]).await?;
                tx.commit().await?;
                Ok(rows.iter().map(agg_row).collect::<Result<Vec<_>, _>>()?)
            }
            .await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn rebuild_aggregates(&self) -> Result<(), StateError> {
        let sql = schema::BACKFILL.replace("{s}", &self.shared.quoted_schema);
        let sql = &sql;
        let doing = "rebuilding the aggregates";
        self.with_conn_on(
            &self.shared.report_slot,
            REBUILD_TIMEOUT,
            doing,
            |mut conn| async move {
                let result = async {
                    let tx = conn.client.transaction().await?;
                    tx.batch_execute(&format!("SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
                        .await?;
                    tx.batch_execute(sql).await?;
                    tx.commit().await.map_err(committing)
                }
                .await;
                (conn, result)
            },
        )
        .await
    }

    pub(super) async fn record_exposure_losses(
        &self,
        lost: &[(String, u64)],
    ) -> Result<(), StateError> {
        let shared = &*self.shared;
        self.with_conn("counting lost exposures", |conn| async move {
            let result = experiments::record_losses(&conn.client, shared, lost).await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn exposure_losses(&self, flag: &str) -> Result<u64, StateError> {
        let shared = &*self.shared;
        self.with_report_conn("reading lost exposures", |conn| async move {
            let result = experiments::losses(&conn.client, shared, flag).await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn prune_finished(
        &self,
        live_flags: &[String],
        before_ms: u64,
    ) -> Result<Vec<String>, StateError> {
        let shared = &*self.shared;
        self.with_conn("deleting finished experiments", |mut conn| async move {
            let result = experiments::prune_finished(
                &mut conn.client,
                shared,
                live_flags,
                ms_to_db(before_ms),
            )
            .await;
            (conn, result)
        })
        .await
    }

    /// The secret `name`, created as `fresh` if the store has none yet.
    pub(super) async fn secret(
        &self,
        name: &str,
        fresh: &[u8; 32],
    ) -> Result<[u8; 32], StateError> {
        let shared = &*self.shared;
        self.with_conn("reading the request-id key", |conn| async move {
            let result = experiments::secret(&conn.client, shared, name, fresh).await;
            (conn, result)
        })
        .await
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        let rx = self.shared.tx.subscribe();
        if !self.shared.watching.swap(true, Ordering::SeqCst) {
            let weak = Arc::downgrade(&self.shared);
            self.shared.handle.spawn(listen::listen_loop(weak));
        }
        rx
    }

    /// Runs `op` on the query connection, connecting first if there is none (or it closed).
    /// If the connection turns out to be lost before anything was committed, reconnects once
    /// and retries. Every attempt is bounded by [`OP_TIMEOUT`]; a timed-out connection is
    /// dropped (which rolls back its transaction on the server).
    async fn with_conn<T, F, Fut>(&self, doing: &str, op: F) -> Result<T, StateError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = (Conn, Result<T, Fail>)>,
    {
        self.with_conn_on(&self.shared.slot, OP_TIMEOUT, doing, op)
            .await
    }

    /// [`PgStore::with_conn`] on the results connection, with [`REPORT_TIMEOUT`].
    async fn with_report_conn<T, F, Fut>(&self, doing: &str, op: F) -> Result<T, StateError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = (Conn, Result<T, Fail>)>,
    {
        self.with_conn_on(&self.shared.report_slot, REPORT_TIMEOUT, doing, op)
            .await
    }

    /// [`PgStore::with_conn`] on the connection of `slot`, each attempt bounded by `budget`.
    async fn with_conn_on<T, F, Fut>(
        &self,
        slot: &Mutex<Slot>,
        budget: Duration,
        doing: &str,
        mut op: F,
    ) -> Result<T, StateError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = (Conn, Result<T, Fail>)>,
    {
        let shared = &*self.shared;
        let mut slot = slot.lock().await;
        let mut retried = false;
        loop {
            let conn = match slot.conn.take() {
                Some(conn) if !conn.client.is_closed() => conn,
                _ => connect_for_queries(shared, &mut slot).await?,
            };
            let (conn, result) = match tokio::time::timeout(budget, op(conn)).await {
                Ok(done) => done,
                Err(_) => {
                    return Err(StateError::Unavailable(format!(
                        "PostgreSQL state store {}: {doing}: no answer within {} s",
                        shared.location,
                        budget.as_secs()
                    )))
                }
            };
            match result {
                Ok(value) => {
                    slot.conn = Some(conn);
                    return Ok(value);
                }
                Err(Fail::State(e)) => {
                    slot.conn = Some(conn);
                    return Err(e);
                }
                Err(Fail::Pg { error, committing }) => {
                    let lost = conn.client.is_closed() || error.is_closed();
                    if !lost {
                        slot.conn = Some(conn);
                    }
                    if lost && !committing && !retried {
                        tracing::debug!(store = %shared.location, error = %describe(&error),
                            "state store connection lost; reconnecting once");
                        retried = true;
                        continue;
                    }
                    let mut e = pg_error(&shared.location, doing, &error, lost);
                    if committing {
                        if let StateError::Unavailable(msg) = &mut e {
                            msg.push_str(
                                " (while committing: the change may or may not be applied)",
                            );
                        }
                    }
                    return Err(e);
                }
            }
        }
    }
}

async fn connect_for_queries(shared: &Shared, slot: &mut Slot) -> Result<Conn, StateError> {
    if let Some((when, msg)) = &slot.last_connect_failure {
        if when.elapsed() < FAIL_FAST_FOR {
            return Err(StateError::Unavailable(msg.clone()));
        }
    }
    match connect(shared).await {
        Ok((client, connection)) => {
            slot.last_connect_failure = None;
            let location = shared.location.clone();
            let driver = shared.handle.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(store = %location, error = %describe(&e),
                        "state store connection ended");
                }
            });
            Ok(Conn { client, driver })
        }
        Err(e) => {
            if let StateError::Unavailable(msg) = &e {
                slot.last_connect_failure = Some((Instant::now(), msg.clone()));
            }
            Err(e)
        }
    }
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// Connects with [`CONNECT_TIMEOUT`] on the whole handshake.
async fn connect(shared: &Shared) -> Result<(Client, Connection), StateError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, shared.config.connect(NoTls)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(StateError::Unavailable(format!(
            "cannot connect to the PostgreSQL state store {}: {}",
            shared.location,
            describe(&e)
        ))),
        Err(_) => Err(StateError::Unavailable(format!(
            "cannot connect to the PostgreSQL state store {}: no answer within {} s",
            shared.location,
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// How many times a transaction aborted by a deadlock or serialization failure is retried.
const CONFLICT_RETRIES: u32 = 3;

/// Whether the transaction was aborted by the server to resolve a conflict (and can simply be
/// run again).
fn is_conflict(fail: &Fail) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(fail, Fail::Pg { error, committing: false }
        if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
            || error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE))
}

/// One aggregated row: variation, metric, reporters, events, then the six sums.
fn agg_row(row: &tokio_postgres::Row) -> Result<FeedbackAgg, tokio_postgres::Error> {
    Ok(FeedbackAgg {
        variation: row.try_get(0)?,
        metric: row.try_get(1)?,
        reporters: db_to_u64(row.try_get(2)?),
        events: db_to_u64(row.try_get(3)?),
        sum_of_sums: row.try_get(4)?,
        sum_sq_of_sums: row.try_get(5)?,
        sum_of_max: row.try_get(6)?,
        sum_sq_of_max: row.try_get(7)?,
        sum_of_means: row.try_get(8)?,
        sum_sq_of_means: row.try_get(9)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Leadership and errors

/// The advisory-lock key replicas of one schema compete for to lead (FNV-1a, apart from the
/// migration lock's).
fn leader_key(schema: &str) -> i64 {
    schema::advisory_key("switchyard_leader:", schema)
}

/// What a replica needs to take the fleet's leader lock: a session-level advisory lock held
/// on a connection of its own (PostgreSQL releases it when that session ends, so a replica
/// that dies gives up leadership at once).
#[derive(Clone)]
pub struct LeaderLock {
    /// Connection settings of the store (password included: never printed).
    pub config: tokio_postgres::Config,
    /// The advisory-lock key (per schema).
    pub key: i64,
    /// `postgres://user@host:port/db?schema=…`, without password, for messages.
    pub location: String,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("location", &self.location)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The driver's error with the server's message and code when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn pg_error(location: &str, doing: &str, e: &tokio_postgres::Error, lost: bool) -> StateError {
    let msg = format!(
        "PostgreSQL state store {location}: {doing}: {}",
        describe(e)
    );
    // Class 08: connection exception; 57: operator intervention (shutdown, cannot connect
    // now); 53: insufficient resources (too many connections).
    let transient = e
        .code()
        .map(|code| {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57") || code.starts_with("53")
        })
        .unwrap_or(false);
    if lost || transient || e.as_db_error().is_none() {
        StateError::Unavailable(msg)
    } else {
        StateError::Storage(msg)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_leader_key_is_not_the_migration_key() {
        assert_ne!(leader_key("public"), schema::lock_key("public"));
        assert_ne!(leader_key("a"), leader_key("b"));
    }
}

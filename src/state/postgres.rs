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

mod bandit;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, IsolationLevel, NoTls, Notification};

use super::{
    audit_json, backoff, db_to_u64, format_rfc3339_ms, ms_to_db, overrides_json, signal,
    AuditEntry, AuditQuery, Change, Exposure, FeedbackAgg, FeedbackRow, FlagOverrides,
    RuntimeState, StateError,
};
use crate::clock::system_time_ms;

/// The NOTIFY channel replicas listen on.
const CHANNEL: &str = "switchyard_state";

/// The schema, one step per entry; `{s}` stands for the quoted schema name. The table
/// `switchyard_migrations` records the steps applied. Append only: never edit a step that
/// has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: runtime overrides, audit log, global version.
    r#"
    CREATE TABLE IF NOT EXISTS {s}.switchyard_meta (
        id SMALLINT PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO {s}.switchyard_meta (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
    CREATE TABLE IF NOT EXISTS {s}.switchyard_flag_state (
        flag TEXT PRIMARY KEY,
        overrides JSONB NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS {s}.switchyard_audit (
        id BIGSERIAL PRIMARY KEY,
        at TIMESTAMPTZ NOT NULL DEFAULT now(),
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        flag TEXT,
        "before" JSONB NOT NULL,
        "after" JSONB NOT NULL,
        reason TEXT
    );
    CREATE INDEX IF NOT EXISTS switchyard_audit_flag ON {s}.switchyard_audit (flag, id);
    "#,
    // 2: experiments: first exposures, request ids, feedback events.
    r#"
    CREATE TABLE IF NOT EXISTS {s}.switchyard_exposures (
        flag TEXT NOT NULL,
        user_id TEXT NOT NULL,
        variation TEXT NOT NULL,
        rule TEXT,
        first_at_ms BIGINT NOT NULL,
        switched BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (flag, user_id)
    );
    -- (flag, rule, variation), with `switched` so that counting exposures reads the index only.
    CREATE INDEX IF NOT EXISTS switchyard_exposures_rule
        ON {s}.switchyard_exposures (flag, rule, variation, switched);
    CREATE TABLE IF NOT EXISTS {s}.switchyard_requests (
        request_id TEXT PRIMARY KEY,
        flag TEXT NOT NULL,
        variation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        at_ms BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS switchyard_requests_at ON {s}.switchyard_requests (at_ms);
    CREATE TABLE IF NOT EXISTS {s}.switchyard_feedback (
        event_id TEXT PRIMARY KEY,
        flag TEXT NOT NULL,
        variation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS switchyard_feedback_metric
        ON {s}.switchyard_feedback (flag, metric);
    "#,
    // 3: bandit epoch records (immutable; one per flag and epoch).
    r#"
    CREATE TABLE IF NOT EXISTS {s}.switchyard_bandit_epochs (
        flag TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (flag, epoch)
    );
    "#,
];

/// Budget for establishing a connection (TCP connect, startup, authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Budget for one operation on an established connection.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget for one experiment-results query (it aggregates every event of a flag).
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);
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
        let (pg_url, schema) = split_schema(url)?;
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
        let location = describe_config(&config, &schema);
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
                    let result = migrate(&mut conn.client, shared).await;
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
                let result = load_txn(&mut conn.client, shared).await;
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
                let result = apply_txn(&mut conn.client, shared, change, actor, reason).await;
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
            let result = audit_query(&conn.client, shared, q).await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn record_exposures(&self, batch: &[Exposure]) -> Result<(), StateError> {
        let shared = &*self.shared;
        self.with_conn("recording exposures", |mut conn| async move {
            let result = record_exposures_txn(&mut conn.client, shared, batch).await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn lookup_request(
        &self,
        request_id: &str,
    ) -> Result<Option<(String, String, String)>, StateError> {
        let s = &self.shared.quoted_schema;
        let sql = format!(
            "SELECT flag, variation, user_id FROM {s}.switchyard_requests WHERE request_id = $1"
        );
        let sql = &sql;
        self.with_conn("looking up a request id", |conn| async move {
            let result = async {
                match conn.client.query_opt(sql, &[&request_id]).await? {
                    Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))),
                    None => Ok(None),
                }
            }
            .await;
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
            let result = insert_feedback_txn(&mut conn.client, shared, rows).await;
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
    ) -> Result<(Vec<(String, u64)>, u64), StateError> {
        let s = &self.shared.quoted_schema;
        let sql = match rule {
            Some(_) => format!(
                "SELECT variation, switched, count(*) FROM {s}.switchyard_exposures \
                 WHERE flag = $1 AND rule = $2 GROUP BY variation, switched"
            ),
            None => format!(
                "SELECT variation, switched, count(*) FROM {s}.switchyard_exposures \
                 WHERE flag = $1 AND $2::text IS NULL GROUP BY variation, switched"
            ),
        };
        let sql = &sql;
        self.with_report_conn("counting exposures", |conn| async move {
            let result = async {
                let rows = conn.client.query(sql, &[&flag, &rule]).await?;
                let mut counts = Vec::with_capacity(rows.len());
                let mut switched = 0u64;
                for row in rows {
                    let n = db_to_u64(row.try_get(2)?);
                    if row.try_get::<_, bool>(1)? {
                        switched += n;
                    } else {
                        counts.push((row.try_get(0)?, n));
                    }
                }
                Ok((counts, switched))
            }
            .await;
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
                let mut aggs = Vec::with_capacity(rows.len());
                for row in rows {
                    aggs.push(FeedbackAgg {
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
                    });
                }
                Ok(aggs)
            }
            .await;
            (conn, result)
        })
        .await
    }

    pub(super) async fn prune_requests(&self, before_ms: u64) -> Result<u64, StateError> {
        let s = &self.shared.quoted_schema;
        let sql = format!("DELETE FROM {s}.switchyard_requests WHERE at_ms < $1");
        let sql = &sql;
        let before = ms_to_db(before_ms);
        self.with_conn("pruning request ids", |conn| async move {
            let result = conn
                .client
                .execute(sql, &[&before])
                .await
                .map_err(Fail::from);
            (conn, result)
        })
        .await
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        let rx = self.shared.tx.subscribe();
        if !self.shared.watching.swap(true, Ordering::SeqCst) {
            let weak = Arc::downgrade(&self.shared);
            self.shared.handle.spawn(listen_loop(weak));
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

/// Creates the schema and applies pending migrations, serialized across processes by an
/// advisory lock; returns the current version.
async fn migrate(client: &mut Client, shared: &Shared) -> Result<i64, Fail> {
    let s = &shared.quoted_schema;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key(&shared.schema)],
    )
    .await?;
    // Only CREATE what is missing: CREATE … IF NOT EXISTS still needs the privilege.
    let schema_exists = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&shared.schema],
        )
        .await?
        .is_some();
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA {s}")).await?;
    }
    let table = format!("{s}.switchyard_migrations");
    let table_exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .try_get(0)?;
    if !table_exists {
        tx.batch_execute(&format!(
            "CREATE TABLE {table} (\
                version INTEGER PRIMARY KEY, \
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await?;
    }
    let applied: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {table}"),
            &[],
        )
        .await?
        .try_get(0)?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(Fail::State(StateError::Storage(format!(
            "PostgreSQL state store {}: the schema has version {applied}, newer than this build \
             knows ({}); upgrade switchyard",
            shared.location,
            MIGRATIONS.len()
        ))));
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(&step.replace("{s}", s)).await?;
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        tx.execute(
            &format!("INSERT INTO {table} (version) VALUES ($1)"),
            &[&version],
        )
        .await?;
    }
    let version: i64 = tx
        .query_one(
            &format!("SELECT version FROM {s}.switchyard_meta WHERE id = 1"),
            &[],
        )
        .await?
        .try_get(0)?;
    tx.commit().await.map_err(committing)?;
    Ok(version)
}

async fn load_txn(client: &mut Client, shared: &Shared) -> Result<RuntimeState, Fail> {
    let s = &shared.quoted_schema;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i64 = tx
        .query_one(
            &format!("SELECT version FROM {s}.switchyard_meta WHERE id = 1"),
            &[],
        )
        .await?
        .try_get(0)?;
    let rows = tx
        .query(
            &format!("SELECT flag, overrides FROM {s}.switchyard_flag_state"),
            &[],
        )
        .await?;
    tx.commit().await?;
    let mut flags = std::collections::BTreeMap::new();
    for row in rows {
        let flag: String = row.try_get(0)?;
        let overrides = parse_overrides(shared, &flag, row.try_get(1)?)?;
        flags.insert(flag, overrides);
    }
    Ok(RuntimeState { version, flags })
}

/// The audit entry and, for a state change, the new version.
async fn apply_txn(
    client: &mut Client,
    shared: &Shared,
    change: &Change,
    actor: &str,
    reason: Option<&str>,
) -> Result<(AuditEntry, Option<i64>), Fail> {
    let s = &shared.quoted_schema;
    let tx = client.transaction().await?;
    let mut new_version = None;
    let (before, after) = match change.state_flag() {
        None => match change {
            Change::Note { detail, .. } => (serde_json::Value::Null, detail.clone()),
            _ => (serde_json::Value::Null, serde_json::Value::Null),
        },
        Some(flag) => {
            // Make sure the row exists, then lock it: concurrent changes to this flag queue
            // here instead of overwriting each other.
            tx.execute(
                &format!(
                    "INSERT INTO {s}.switchyard_flag_state (flag, overrides) \
                     VALUES ($1, '{{}}'::jsonb) ON CONFLICT (flag) DO NOTHING"
                ),
                &[&flag],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!(
                        "SELECT overrides FROM {s}.switchyard_flag_state \
                         WHERE flag = $1 FOR UPDATE"
                    ),
                    &[&flag],
                )
                .await?;
            let before = parse_overrides(shared, flag, row.try_get(0)?)?;
            let mut after = before.clone();
            change.apply_by(&mut after, actor);
            if after.is_empty() {
                tx.execute(
                    &format!("DELETE FROM {s}.switchyard_flag_state WHERE flag = $1"),
                    &[&flag],
                )
                .await?;
            } else {
                tx.execute(
                    &format!(
                        "UPDATE {s}.switchyard_flag_state SET overrides = $2, updated_at = now() \
                         WHERE flag = $1"
                    ),
                    &[&flag, &overrides_json(&after)],
                )
                .await?;
            }
            let version: i64 = tx
                .query_one(
                    &format!(
                        "UPDATE {s}.switchyard_meta SET version = version + 1 WHERE id = 1 \
                         RETURNING version"
                    ),
                    &[],
                )
                .await?
                .try_get(0)?;
            new_version = Some(version);
            (audit_json(&before), audit_json(&after))
        }
    };
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO {s}.switchyard_audit \
                 (actor, action, flag, \"before\", \"after\", reason) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, at"
            ),
            &[
                &actor,
                &change.action(),
                &change.flag(),
                &before,
                &after,
                &reason,
            ],
        )
        .await?;
    let id: i64 = row.try_get(0)?;
    let at: std::time::SystemTime = row.try_get(1)?;
    if let Some(version) = new_version {
        let payload = notify_payload(&shared.schema, shared.instance, version);
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await?;
    }
    tx.commit().await.map_err(committing)?;
    let entry = AuditEntry {
        id,
        at: format_rfc3339_ms(system_time_ms(at)),
        actor: actor.to_owned(),
        action: change.action().to_owned(),
        flag: change.flag().map(str::to_owned),
        before,
        after,
        reason: reason.map(str::to_owned),
    };
    Ok((entry, new_version))
}

async fn audit_query(
    client: &Client,
    shared: &Shared,
    q: &AuditQuery,
) -> Result<Vec<AuditEntry>, Fail> {
    let s = &shared.quoted_schema;
    let sql = format!(
        "SELECT id, at, actor, action, flag, \"before\", \"after\", reason \
         FROM {s}.switchyard_audit WHERE ($1::text IS NULL OR flag = $1) \
         AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR action = $3) \
         AND ($4::bigint IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    );
    let limit = i64::from(q.limit);
    let rows = client
        .query(&sql, &[&q.flag, &q.actor, &q.action, &q.before_id, &limit])
        .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let at: std::time::SystemTime = row.try_get(1)?;
        entries.push(AuditEntry {
            id: row.try_get(0)?,
            at: format_rfc3339_ms(system_time_ms(at)),
            actor: row.try_get(2)?,
            action: row.try_get(3)?,
            flag: row.try_get(4)?,
            before: row.try_get(5)?,
            after: row.try_get(6)?,
            reason: row.try_get(7)?,
        });
    }
    Ok(entries)
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

/// Records a batch with two array statements: the batch is first reduced to one row per
/// (flag, user) — its first exposure, and whether a later one in the batch had another
/// variation — and one per request id, sorted, so concurrent batches lock rows in the same
/// order.
async fn record_exposures_txn(
    client: &mut Client,
    shared: &Shared,
    batch: &[Exposure],
) -> Result<(), Fail> {
    use std::collections::btree_map::Entry;
    use std::collections::BTreeMap;

    let mut users: BTreeMap<(&str, &str), (&Exposure, bool)> = BTreeMap::new();
    let mut requests: BTreeMap<&str, &Exposure> = BTreeMap::new();
    for e in batch {
        requests.entry(&e.request_id).or_insert(e);
        if e.repeat {
            continue;
        }
        match users.entry((&e.flag, &e.user)) {
            Entry::Vacant(slot) => {
                slot.insert((e, false));
            }
            Entry::Occupied(mut slot) => {
                let (first, switched) = slot.get_mut();
                if first.variation != e.variation {
                    *switched = true;
                }
            }
        }
    }
    let users: Vec<(&Exposure, bool)> = users.into_values().collect();
    let column = |f: fn(&Exposure) -> &str| users.iter().map(|(e, _)| f(e)).collect::<Vec<_>>();
    let flags = column(|e| &e.flag);
    let user_ids = column(|e| &e.user);
    let variations = column(|e| &e.variation);
    let rules: Vec<Option<&str>> = users.iter().map(|(e, _)| e.rule.as_deref()).collect();
    let ats: Vec<i64> = users.iter().map(|(e, _)| ms_to_db(e.at_ms)).collect();
    let switches: Vec<bool> = users.iter().map(|(_, switched)| *switched).collect();
    let requests: Vec<&Exposure> = requests.into_values().collect();
    let column = |f: fn(&Exposure) -> &str| requests.iter().map(|e| f(e)).collect::<Vec<_>>();
    let r_ids = column(|e| &e.request_id);
    let r_flags = column(|e| &e.flag);
    let r_variations = column(|e| &e.variation);
    let r_users = column(|e| &e.user);
    let r_ats: Vec<i64> = requests.iter().map(|e| ms_to_db(e.at_ms)).collect();

    let s = &shared.quoted_schema;
    // A known user is marked switched if this batch showed them another variation than their
    // first (either its own first exposure differs, or the batch itself saw two variations).
    let expose = format!(
        "INSERT INTO {s}.switchyard_exposures AS e          (flag, user_id, variation, rule, first_at_ms, switched)          SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],                               $6::bool[])          ON CONFLICT (flag, user_id) DO UPDATE SET switched = TRUE          WHERE NOT e.switched AND (e.variation <> excluded.variation OR excluded.switched)"
    );
    let remember = format!(
        "INSERT INTO {s}.switchyard_requests (request_id, flag, variation, user_id, at_ms)          SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])          ON CONFLICT (request_id) DO NOTHING"
    );
    let mut attempt = 0;
    loop {
        let result = async {
            let tx = client.transaction().await?;
            tx.execute(
                &expose,
                &[&flags, &user_ids, &variations, &rules, &ats, &switches],
            )
            .await?;
            tx.execute(
                &remember,
                &[&r_ids, &r_flags, &r_variations, &r_users, &r_ats],
            )
            .await?;
            tx.commit().await.map_err(committing)
        }
        .await;
        match result {
            Err(fail) if is_conflict(&fail) && attempt < CONFLICT_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

/// Inserts the batch's distinct event ids (first occurrence kept), sorted so concurrent
/// batches lock in the same order; `true` for the rows the insert returned.
async fn insert_feedback_txn(
    client: &mut Client,
    shared: &Shared,
    rows: &[FeedbackRow],
) -> Result<Vec<bool>, Fail> {
    use std::collections::{BTreeMap, HashSet};

    let mut firsts: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        firsts.entry(&r.event_id).or_insert(i);
    }
    let unique: Vec<&FeedbackRow> = firsts.values().map(|&i| &rows[i]).collect();
    let column = |f: fn(&FeedbackRow) -> &str| unique.iter().map(|r| f(r)).collect::<Vec<_>>();
    let ids = column(|r| &r.event_id);
    let flags = column(|r| &r.flag);
    let variations = column(|r| &r.variation);
    let users = column(|r| &r.user);
    let metrics = column(|r| &r.metric);
    let values: Vec<f64> = unique.iter().map(|r| r.value).collect();
    let ats: Vec<i64> = unique.iter().map(|r| ms_to_db(r.at_ms)).collect();
    let s = &shared.quoted_schema;
    let sql = format!(
        "INSERT INTO {s}.switchyard_feedback          (event_id, flag, variation, user_id, metric, value, at_ms)          SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],                               $6::float8[], $7::int8[])          ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    );
    let mut attempt = 0;
    let inserted = loop {
        let result = async {
            let tx = client.transaction().await?;
            let returned = tx
                .query(
                    &sql,
                    &[&ids, &flags, &variations, &users, &metrics, &values, &ats],
                )
                .await?;
            tx.commit().await.map_err(committing)?;
            returned
                .iter()
                .map(|row| row.try_get::<_, String>(0))
                .collect::<Result<HashSet<String>, _>>()
                .map_err(Fail::from)
        }
        .await;
        match result {
            Err(fail) if is_conflict(&fail) && attempt < CONFLICT_RETRIES => attempt += 1,
            other => break other?,
        }
    };
    Ok(rows
        .iter()
        .enumerate()
        .map(|(i, r)| firsts.get(r.event_id.as_str()) == Some(&i) && inserted.contains(&r.event_id))
        .collect())
}

fn parse_overrides(
    shared: &Shared,
    flag: &str,
    value: serde_json::Value,
) -> Result<FlagOverrides, Fail> {
    serde_json::from_value(value).map_err(|e| {
        Fail::State(StateError::Storage(format!(
            "PostgreSQL state store {}: stored overrides of flag {flag:?} are not valid: {e}",
            shared.location
        )))
    })
}

// ---------------------------------------------------------------------------------------------
// Subscription

/// How one LISTEN session ended.
enum Ended {
    /// The last clone of the store was dropped: stop.
    StoreDropped,
    /// The connection was lost: reconnect.
    Lost(String),
}

/// Keeps a LISTEN connection up for as long as the store lives, signalling other replicas'
/// changes; after a reconnect it signals once, since notifications may have been missed.
async fn listen_loop(weak: Weak<Shared>) {
    let mut failures = 0u32;
    let mut connected_before = false;
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        match listen(&shared).await {
            Ok(mut session) => {
                if failures > 0 || connected_before {
                    tracing::info!(store = %shared.location, "state store subscription reconnected");
                }
                failures = 0;
                // First session: resync only if the state moved since this store last looked;
                // later sessions: always, since notifications may have been lost.
                let moved = session.version != shared.seen_version.load(Ordering::SeqCst);
                if connected_before || moved {
                    signal(&shared.tx);
                }
                connected_before = true;
                let schema = shared.schema.clone();
                let instance = shared.instance;
                drop(shared); // do not keep the store alive
                let ended = pump(&weak, &mut session, &schema, instance).await;
                session.conn.driver.abort();
                match ended {
                    Ended::StoreDropped => return,
                    Ended::Lost(why) => {
                        if let Some(shared) = weak.upgrade() {
                            tracing::warn!(store = %shared.location, error = %why,
                                "state store subscription lost its connection; reconnecting");
                        }
                        // Reconnect promptly the first time.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "state store subscription cannot listen; retrying");
                } else {
                    tracing::debug!(error = %e, attempt = failures, "state store subscription retry failed");
                }
                drop(shared);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

struct Session {
    conn: Conn,
    notifications: mpsc::UnboundedReceiver<Notification>,
    /// The database's version right after LISTEN took effect.
    version: i64,
}

/// Connects, LISTENs and reads the current version.
async fn listen(shared: &Shared) -> Result<Session, StateError> {
    let (client, mut connection) = connect(shared).await?;
    let (notify_tx, notifications) = mpsc::unbounded_channel();
    let driver = shared.handle.spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if notify_tx.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %describe(&e), "state store LISTEN connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    let conn = Conn { client, driver };
    let s = &shared.quoted_schema;
    let setup = async {
        conn.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await?;
        conn.client
            .query_one(
                &format!("SELECT version FROM {s}.switchyard_meta WHERE id = 1"),
                &[],
            )
            .await?
            .try_get::<_, i64>(0)
    };
    let version = match tokio::time::timeout(OP_TIMEOUT, setup).await {
        Ok(Ok(version)) => version,
        Ok(Err(e)) => {
            return Err(pg_error(
                &shared.location,
                "starting to listen",
                &e,
                conn.client.is_closed(),
            ))
        }
        Err(_) => {
            return Err(StateError::Unavailable(format!(
                "PostgreSQL state store {}: starting to listen: no answer within {} s",
                shared.location,
                OP_TIMEOUT.as_secs()
            )))
        }
    };
    Ok(Session {
        conn,
        notifications,
        version,
    })
}

/// Forwards notifications until the connection is lost or the store is dropped; checks the
/// connection with a round trip every few seconds so a silently dead peer is noticed.
async fn pump(weak: &Weak<Shared>, session: &mut Session, schema: &str, instance: u64) -> Ended {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            notification = session.notifications.recv() => {
                let Some(notification) = notification else {
                    return Ended::Lost("connection closed".into());
                };
                let Some(shared) = weak.upgrade() else {
                    return Ended::StoreDropped;
                };
                if is_foreign(notification.payload(), schema, instance) {
                    signal(&shared.tx);
                }
            }
            _ = tick.tick() => {
                if weak.strong_count() == 0 {
                    return Ended::StoreDropped;
                }
                ticks += 1;
                if ticks >= LISTEN_HEALTH_EVERY {
                    ticks = 0;
                    let probe = session.conn.client.simple_query("SELECT 1");
                    match tokio::time::timeout(OP_TIMEOUT, probe).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(describe(&e)),
                        Err(_) => return Ended::Lost("health check got no answer".into()),
                    }
                }
            }
        }
    }
}

/// `schema instance-hex version`.
fn notify_payload(schema: &str, instance: u64, version: i64) -> String {
    format!("{schema} {instance:x} {version}")
}

/// Whether a notification on the channel reports a change by another store on our schema.
/// Unparseable payloads count as foreign: a needless resync is harmless, a missed one is not.
fn is_foreign(payload: &str, schema: &str, instance: u64) -> bool {
    let mut parts = payload.split(' ');
    match (parts.next(), parts.next()) {
        (Some(their_schema), Some(their_instance)) => {
            their_schema == schema && u64::from_str_radix(their_instance, 16) != Ok(instance)
        }
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// URLs and errors

/// Splits the `schema` parameter off a PostgreSQL URL (the driver rejects unknown parameters).
fn split_schema(url: &str) -> Result<(String, String), StateError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("schema", value)) => schema = Some(value.to_owned()),
            _ => kept.push(param),
        }
    }
    let schema = schema.unwrap_or_else(|| "public".to_owned());
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(StateError::BadUrl(format!(
            "{:?}: schema {schema:?} must be 1–63 letters, digits or underscores, not starting \
             with a digit",
            super::redact(url)
        )));
    }
    let pg_url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((pg_url, schema))
}

/// `postgres://user@host:port/db?schema=…` (no password).
fn describe_config(config: &tokio_postgres::Config, schema: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}?schema={schema}", hosts.join(","))
}

/// A fixed advisory-lock key per schema (FNV-1a), so migrations of one schema serialize.
fn lock_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "switchyard_state:".bytes().chain(schema.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// The advisory-lock key replicas of one schema compete for to lead (FNV-1a, apart from the
/// migration lock's).
fn leader_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "switchyard_leader:".bytes().chain(schema.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
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
    fn schema_parameter_is_split_off_and_checked() {
        let (url, schema) = split_schema("postgres://u@h/db").unwrap();
        assert_eq!(
            (url.as_str(), schema.as_str()),
            ("postgres://u@h/db", "public")
        );
        let (url, schema) =
            split_schema("postgres://u@h/db?connect_timeout=3&schema=sy_1&sslmode=disable")
                .unwrap();
        assert_eq!(url, "postgres://u@h/db?connect_timeout=3&sslmode=disable");
        assert_eq!(schema, "sy_1");
        for bad in ["x-y", "1abc", "", "a\"b", &"a".repeat(64)] {
            let url = format!("postgres://h/db?schema={bad}");
            assert!(
                matches!(split_schema(&url), Err(StateError::BadUrl(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn own_notifications_are_not_foreign() {
        let payload = notify_payload("sy", 0xabc, 7);
        assert_eq!(payload, "sy abc 7");
        assert!(!is_foreign(&payload, "sy", 0xabc));
        assert!(is_foreign(&payload, "sy", 0xabd));
        assert!(!is_foreign(&payload, "other", 0xabd));
        assert!(is_foreign("garbage", "sy", 1));
    }

    #[test]
    fn the_leader_key_is_not_the_migration_key() {
        assert_ne!(leader_key("public"), lock_key("public"));
        assert_ne!(leader_key("a"), leader_key("b"));
    }

    #[test]
    fn lock_keys_differ_per_schema() {
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(lock_key("public"), lock_key("public"));
    }
}

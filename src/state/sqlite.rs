//! The embedded SQLite backend: one connection behind a mutex, used from blocking tasks.
//!
//! WAL journal with `synchronous=FULL`, so a committed change survives a crash; changes run in
//! `BEGIN IMMEDIATE` transactions, so two processes sharing the file serialize (waiting up to
//! the busy timeout) instead of losing updates. Other processes' changes are noticed by
//! polling the version.
//!
//! Exposures and feedback events are written with prepared statements, one transaction per
//! batch. Experiment-results queries run on a second, read-only connection (file databases
//! only), so a long aggregation never holds up writers.

mod bandit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::{
    audit_json, backoff, db_to_u64, format_rfc3339_ms, ms_to_db, now_ms, overrides_json, signal,
    AuditEntry, AuditQuery, Change, Exposure, FeedbackAgg, FeedbackRow, FlagOverrides,
    RuntimeState, StateError,
};

/// The schema, one step per entry; `PRAGMA user_version` counts the steps applied. Append
/// only: never edit a step that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: runtime overrides, audit log, global version.
    r#"
    CREATE TABLE IF NOT EXISTS switchyard_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO switchyard_meta (id, version) VALUES (1, 0);
    CREATE TABLE IF NOT EXISTS switchyard_flag_state (
        flag TEXT PRIMARY KEY,
        overrides TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS switchyard_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        flag TEXT,
        "before" TEXT NOT NULL,
        "after" TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX IF NOT EXISTS switchyard_audit_flag ON switchyard_audit (flag, id);
    "#,
    // 2: experiments: first exposures, request ids, feedback events.
    r#"
    CREATE TABLE IF NOT EXISTS switchyard_exposures (
        flag TEXT NOT NULL,
        user_id TEXT NOT NULL,
        variation TEXT NOT NULL,
        rule TEXT,
        first_at_ms INTEGER NOT NULL,
        switched INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (flag, user_id)
    ) WITHOUT ROWID;
    -- (flag, rule, variation), with `switched` so that counting exposures reads the index only.
    CREATE INDEX IF NOT EXISTS switchyard_exposures_rule
        ON switchyard_exposures (flag, rule, variation, switched);
    CREATE TABLE IF NOT EXISTS switchyard_requests (
        request_id TEXT PRIMARY KEY,
        flag TEXT NOT NULL,
        variation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS switchyard_requests_at ON switchyard_requests (at_ms);
    CREATE TABLE IF NOT EXISTS switchyard_feedback (
        event_id TEXT PRIMARY KEY,
        flag TEXT NOT NULL,
        variation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        value DOUBLE NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS switchyard_feedback_metric ON switchyard_feedback (flag, metric);
    "#,
    // 3: bandit epoch records (immutable; one per flag and epoch).
    r#"
    CREATE TABLE IF NOT EXISTS switchyard_bandit_epochs (
        flag TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (flag, epoch)
    );
    "#,
];

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a subscription polls the version.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A SQLite-backed store; clones share the connection.
#[derive(Clone)]
pub(super) struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Mutex<Db>,
    /// A second connection for experiment-results queries on a file database (opened on first
    /// use): WAL lets it read while the main connection writes, so a long aggregation never
    /// holds up changes, exposures or feedback.
    reports: Mutex<Option<Connection>>,
    location: String,
    tx: watch::Sender<u64>,
    watching: AtomicBool,
    handle: Handle,
}

struct Db {
    conn: Connection,
    /// The version this store has accounted for: set at open, advanced by its own changes
    /// (when no other process changed the state in between) and by the poller.
    known_version: i64,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path`, or a private in-memory one for
    /// `:memory:`, and migrates it.
    pub(super) async fn open(path: &str) -> Result<SqliteStore, StateError> {
        let handle = Handle::try_current().map_err(|_| {
            StateError::Storage("the state store must be opened inside a Tokio runtime".into())
        })?;
        let owned = path.to_owned();
        let db = tokio::task::spawn_blocking(move || open_db(&owned))
            .await
            .map_err(|e| StateError::Storage(format!("opening SQLite state store: {e}")))??;
        let (tx, _) = watch::channel(0);
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                db: Mutex::new(db),
                reports: Mutex::new(None),
                location: path.to_owned(),
                tx,
                watching: AtomicBool::new(false),
                handle,
            }),
        })
    }

    pub(super) fn location(&self) -> String {
        format!("sqlite:{}", self.shared.location)
    }

    pub(super) async fn load(&self) -> Result<RuntimeState, StateError> {
        run(self.shared.clone(), |db, location| {
            load_db(&mut db.conn).map_err(|e| e.into_state(location, "loading the state"))
        })
        .await
    }

    pub(super) async fn apply(
        &self,
        change: &Change,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<AuditEntry, StateError> {
        let change = change.clone();
        let actor = actor.to_owned();
        let reason = reason.map(str::to_owned);
        run(self.shared.clone(), move |db, location| {
            apply_db(db, &change, &actor, reason.as_deref())
                .map_err(|e| e.into_state(location, "applying a change"))
        })
        .await
    }

    pub(super) async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StateError> {
        run(self.shared.clone(), move |db, location| {
            audit_db(&db.conn, &q).map_err(|e| e.into_state(location, "reading the audit log"))
        })
        .await
    }

    pub(super) async fn record_exposures(&self, batch: &[Exposure]) -> Result<(), StateError> {
        let batch = batch.to_vec();
        run(self.shared.clone(), move |db, location| {
            record_exposures_db(&mut db.conn, &batch)
                .map_err(|e| e.into_state(location, "recording exposures"))
        })
        .await
    }

    pub(super) async fn lookup_request(
        &self,
        request_id: &str,
    ) -> Result<Option<(String, String, String)>, StateError> {
        let request_id = request_id.to_owned();
        run(self.shared.clone(), move |db, location| {
            lookup_request_db(&db.conn, &request_id)
                .map_err(|e| sql_error(location, "looking up a request id", &e))
        })
        .await
    }

    pub(super) async fn insert_feedback(
        &self,
        rows: &[FeedbackRow],
    ) -> Result<Vec<bool>, StateError> {
        let rows = rows.to_vec();
        run(self.shared.clone(), move |db, location| {
            insert_feedback_db(&mut db.conn, &rows)
                .map_err(|e| sql_error(location, "storing feedback", &e))
        })
        .await
    }

    pub(super) async fn exposure_counts(
        &self,
        flag: &str,
        rule: Option<&str>,
    ) -> Result<(Vec<(String, u64)>, u64), StateError> {
        let flag = flag.to_owned();
        let rule = rule.map(str::to_owned);
        run_report(self.shared.clone(), move |conn, location| {
            exposure_counts_db(conn, &flag, rule.as_deref())
                .map_err(|e| sql_error(location, "counting exposures", &e))
        })
        .await
    }

    pub(super) async fn feedback_aggs(
        &self,
        flag: &str,
        rule: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<Vec<FeedbackAgg>, StateError> {
        let flag = flag.to_owned();
        let rule = rule.map(str::to_owned);
        run_report(self.shared.clone(), move |conn, location| {
            feedback_aggs_db(conn, &flag, rule.as_deref(), since_ms)
                .map_err(|e| sql_error(location, "aggregating feedback", &e))
        })
        .await
    }

    /// Runs a read-only query `f` on the reports connection (exports, `state/export.rs`).
    pub(super) async fn read<T, F>(&self, doing: &'static str, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        run_report(self.shared.clone(), move |conn, location| {
            f(conn).map_err(|e| sql_error(location, doing, &e))
        })
        .await
    }

    pub(super) async fn prune_requests(&self, before_ms: u64) -> Result<u64, StateError> {
        run(self.shared.clone(), move |db, location| {
            db.conn
                .execute(
                    "DELETE FROM switchyard_requests WHERE at_ms < ?1",
                    [ms_to_db(before_ms)],
                )
                .map(|n| n as u64)
                .map_err(|e| sql_error(location, "pruning request ids", &e))
        })
        .await
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        let rx = self.shared.tx.subscribe();
        if !self.shared.watching.swap(true, Ordering::SeqCst) {
            let weak = Arc::downgrade(&self.shared);
            self.shared.handle.spawn(poll_loop(weak));
        }
        rx
    }
}

/// Runs `f` on the connection in a blocking task.
async fn run<T, F>(shared: Arc<Shared>, f: F) -> Result<T, StateError>
where
    T: Send + 'static,
    F: FnOnce(&mut Db, &str) -> Result<T, StateError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut db = shared.db.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut db, &shared.location)
    })
    .await
    .map_err(|e| StateError::Storage(format!("SQLite state store task failed: {e}")))?
}

/// Runs a read-only results query `f` in a blocking task: on the reports connection for a
/// file database, on the main one for an in-memory database (a second connection would see
/// another database).
async fn run_report<T, F>(shared: Arc<Shared>, f: F) -> Result<T, StateError>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &str) -> Result<T, StateError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        if shared.location == ":memory:" {
            let db = shared.db.lock().unwrap_or_else(PoisonError::into_inner);
            return f(&db.conn, &shared.location);
        }
        let mut reports = shared
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let conn = match reports.take() {
            Some(conn) => conn,
            None => open_reports(&shared.location)?,
        };
        let result = f(&conn, &shared.location);
        *reports = Some(conn);
        result
    })
    .await
    .map_err(|e| StateError::Storage(format!("SQLite state store task failed: {e}")))?
}

/// Opens the read-only reports connection on an already migrated database file.
fn open_reports(path: &str) -> Result<Connection, StateError> {
    let fail = |doing: &str, e: rusqlite::Error| sql_error(path, doing, &e);
    let conn = Connection::open(path).map_err(|e| fail("opening a reports connection", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| fail("setting the busy timeout", e))?;
    // Read only; a larger page cache (64 MiB) for aggregating a flag's events.
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -65536;")
        .map_err(|e| fail("configuring the reports connection", e))?;
    Ok(conn)
}

/// Polls the version every 500 ms and signals when another process moved it; stops when the
/// last clone of the store is gone.
async fn poll_loop(weak: Weak<Shared>) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tick.tick().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let polled = run(shared.clone(), |db, location| {
            poll_db(db).map_err(|e| e.into_state(location, "polling the version"))
        })
        .await;
        match polled {
            Ok(changed) => {
                // After read errors, changes may have been missed: resync once.
                if changed || failures > 0 {
                    signal(&shared.tx);
                }
                if failures > 0 {
                    tracing::info!(store = %shared.location, "state store readable again");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "state store subscription: cannot read the version");
                }
                drop(shared);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// An error inside a blocking task, turned into a [`StateError`] with context.
enum DbError {
    Sql(rusqlite::Error),
    Corrupt(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError::Sql(e)
    }
}

impl DbError {
    fn into_state(self, location: &str, doing: &str) -> StateError {
        match self {
            DbError::Sql(e) => sql_error(location, doing, &e),
            DbError::Corrupt(msg) => {
                StateError::Storage(format!("SQLite state store {location}: {doing}: {msg}"))
            }
        }
    }
}

fn sql_error(location: &str, doing: &str, e: &rusqlite::Error) -> StateError {
    let msg = format!("SQLite state store {location}: {doing}: {e}");
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StateError::Unavailable(msg),
        Some(ErrorCode::CannotOpen) => StateError::Storage(format!(
            "{msg} (does the directory exist, and may this process write to it?)"
        )),
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => StateError::Storage(format!(
            "{msg} (the database file or its directory is not writable)"
        )),
        _ => StateError::Storage(msg),
    }
}

fn open_db(path: &str) -> Result<Db, StateError> {
    let fail = |doing: &str, e: rusqlite::Error| sql_error(path, doing, &e);
    let mut conn = if path == ":memory:" {
        Connection::open_in_memory()
    } else {
        Connection::open(path)
    }
    .map_err(|e| fail("opening the database", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| fail("setting the busy timeout", e))?;
    // Switching the journal mode can answer "locked" at once, without the busy handler, while
    // another process opens the same new file: retry for up to the busy timeout.
    let mut tries = 0;
    let mode: String = loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)) {
            Ok(mode) => break mode,
            Err(e) if tries < 250 && e.to_string().contains("locked") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(fail("switching to WAL", e)),
        }
    };
    if path != ":memory:" && !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(store = path, journal_mode = %mode, "SQLite state store is not in WAL mode");
    }
    // A page cache of up to 16 MB (SQLite's default is 2 MB): exposures land at random places
    // of the (flag, user) index, and with the pages in memory a batch writes them without
    // reading them back first. It fills only as the store is used.
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA cache_size = -16384;")
        .map_err(|e| fail("setting synchronous=FULL", e))?;
    migrate(&mut conn).map_err(|e| e.into_state(path, "creating the schema"))?;
    let known_version = read_version(&conn).map_err(|e| fail("reading the version", e))?;
    Ok(Db {
        conn,
        known_version,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(DbError::Corrupt(format!(
            "the database has schema version {applied}, newer than this build knows ({}); \
             upgrade switchyard",
            MIGRATIONS.len()
        )));
    }
    if applied == MIGRATIONS.len() {
        return Ok(()); // dropping the transaction ends it
    }
    for step in &MIGRATIONS[applied..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

fn read_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row(
        "SELECT version FROM switchyard_meta WHERE id = 1",
        [],
        |row| row.get(0),
    )
}

fn parse_overrides(flag: &str, text: &str) -> Result<FlagOverrides, DbError> {
    serde_json::from_str(text).map_err(|e| {
        DbError::Corrupt(format!(
            "stored overrides of flag {flag:?} are not valid: {e}"
        ))
    })
}

fn load_db(conn: &mut Connection) -> Result<RuntimeState, DbError> {
    // One read transaction: the version and the flags come from the same snapshot.
    let tx = conn.transaction()?;
    let version = read_version(&tx)?;
    let mut flags = std::collections::BTreeMap::new();
    {
        let mut stmt = tx.prepare("SELECT flag, overrides FROM switchyard_flag_state")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (flag, text) = row?;
            let overrides = parse_overrides(&flag, &text)?;
            flags.insert(flag, overrides);
        }
    }
    tx.commit()?;
    Ok(RuntimeState { version, flags })
}

fn apply_db(
    db: &mut Db,
    change: &Change,
    actor: &str,
    reason: Option<&str>,
) -> Result<AuditEntry, DbError> {
    let at_ms = now_ms();
    let at = format_rfc3339_ms(i64::try_from(at_ms).unwrap_or(i64::MAX));
    let tx = db
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut versions = None;
    let (before, after) = match (change, change.state_flag()) {
        (Change::Note { detail, .. }, _) => (serde_json::Value::Null, detail.clone()),
        (_, None) => (serde_json::Value::Null, serde_json::Value::Null),
        (_, Some(flag)) => {
            let stored: Option<String> = tx
                .query_row(
                    "SELECT overrides FROM switchyard_flag_state WHERE flag = ?1",
                    [flag],
                    |row| row.get(0),
                )
                .optional()?;
            let before = match stored {
                Some(text) => parse_overrides(flag, &text)?,
                None => FlagOverrides::default(),
            };
            let mut after = before.clone();
            change.apply_by(&mut after, actor);
            if after.is_empty() {
                tx.execute("DELETE FROM switchyard_flag_state WHERE flag = ?1", [flag])?;
            } else {
                tx.execute(
                    "INSERT INTO switchyard_flag_state (flag, overrides, updated_at) \
                     VALUES (?1, ?2, ?3) \
                     ON CONFLICT (flag) DO UPDATE SET overrides = excluded.overrides, \
                     updated_at = excluded.updated_at",
                    params![flag, overrides_json(&after).to_string(), at],
                )?;
            }
            let new_version: i64 = tx.query_row(
                "UPDATE switchyard_meta SET version = version + 1 WHERE id = 1 RETURNING version",
                [],
                |row| row.get(0),
            )?;
            versions = Some(new_version);
            (audit_json(&before), audit_json(&after))
        }
    };
    tx.execute(
        "INSERT INTO switchyard_audit (at, actor, action, flag, \"before\", \"after\", reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            at,
            actor,
            change.action(),
            change.flag(),
            before.to_string(),
            after.to_string(),
            reason
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    if let Some(new_version) = versions {
        // Our own change: account for it unless another process changed the state since we
        // last looked (then the poller must still see a difference and signal).
        if db.known_version == new_version - 1 {
            db.known_version = new_version;
        }
    }
    Ok(AuditEntry {
        id,
        at,
        actor: actor.to_owned(),
        action: change.action().to_owned(),
        flag: change.flag().map(str::to_owned),
        before,
        after,
        reason: reason.map(str::to_owned),
    })
}

fn audit_db(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditEntry>, DbError> {
    let sql = "SELECT id, at, actor, action, flag, \"before\", \"after\", reason \
               FROM switchyard_audit WHERE (?1 IS NULL OR flag = ?1) \
               AND (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR action = ?3) \
               AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5";
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(
        params![q.flag, q.actor, q.action, q.before_id, q.limit],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, Option<String>>(7)?,
            ))
        },
    )?;
    let mut entries = Vec::new();
    for row in rows {
        let (id, at, actor, action, flag, before, after, reason) = row?;
        let json = |text: &str| {
            serde_json::from_str(text)
                .map_err(|e| DbError::Corrupt(format!("audit entry {id} holds invalid JSON: {e}")))
        };
        entries.push(AuditEntry {
            id,
            at,
            actor,
            action,
            flag,
            before: json(&before)?,
            after: json(&after)?,
            reason,
        });
    }
    Ok(entries)
}

/// Whether the version moved since this store last accounted for it.
fn poll_db(db: &mut Db) -> Result<bool, DbError> {
    let version = read_version(&db.conn)?;
    if version == db.known_version {
        return Ok(false);
    }
    db.known_version = version;
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Experiments

/// One prepared upsert per exposure and one insert per request id, in one transaction.
fn record_exposures_db(conn: &mut Connection, batch: &[Exposure]) -> Result<(), DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        // The first exposure is inserted; a later one with another variation marks the user.
        let mut expose = tx.prepare_cached(
            "INSERT INTO switchyard_exposures \
             (flag, user_id, variation, rule, first_at_ms, switched) \
             VALUES (?1, ?2, ?3, ?4, ?5, 0) \
             ON CONFLICT (flag, user_id) DO UPDATE SET switched = 1 \
             WHERE switchyard_exposures.switched = 0 \
             AND switchyard_exposures.variation <> excluded.variation",
        )?;
        let mut remember = tx.prepare_cached(
            "INSERT INTO switchyard_requests (request_id, flag, variation, user_id, at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (request_id) DO NOTHING",
        )?;
        for e in batch {
            let at = ms_to_db(e.at_ms);
            if !e.repeat {
                expose.execute(params![e.flag, e.user, e.variation, e.rule, at])?;
            }
            remember.execute(params![e.request_id, e.flag, e.variation, e.user, at])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn lookup_request_db(
    conn: &Connection,
    request_id: &str,
) -> Result<Option<(String, String, String)>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT flag, variation, user_id FROM switchyard_requests WHERE request_id = ?1",
    )?
    .query_row([request_id], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
    .optional()
}

/// Inserts each row unless its event id is already stored (by an earlier batch or earlier in
/// this one); `true` for the rows stored.
fn insert_feedback_db(
    conn: &mut Connection,
    rows: &[FeedbackRow],
) -> Result<Vec<bool>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut stored = Vec::with_capacity(rows.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO switchyard_feedback \
             (event_id, flag, variation, user_id, metric, value, at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (event_id) DO NOTHING",
        )?;
        for r in rows {
            let n = insert.execute(params![
                r.event_id,
                r.flag,
                r.variation,
                r.user,
                r.metric,
                r.value,
                ms_to_db(r.at_ms)
            ])?;
            stored.push(n == 1);
        }
    }
    tx.commit()?;
    Ok(stored)
}

fn exposure_counts_db(
    conn: &Connection,
    flag: &str,
    rule: Option<&str>,
) -> Result<(Vec<(String, u64)>, u64), rusqlite::Error> {
    // Two statements rather than `?2 IS NULL OR rule = ?2`, so the index serves the rule.
    let mut stmt = match rule {
        Some(_) => conn.prepare_cached(
            "SELECT variation, switched, count(*) FROM switchyard_exposures \
             WHERE flag = ?1 AND rule = ?2 GROUP BY variation, switched",
        )?,
        None => conn.prepare_cached(
            "SELECT variation, switched, count(*) FROM switchyard_exposures \
             WHERE flag = ?1 AND ?2 IS NULL GROUP BY variation, switched",
        )?,
    };
    let rows = stmt.query_map(params![flag, rule], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut counts = Vec::new();
    let mut switched = 0u64;
    for row in rows {
        let (variation, is_switched, n) = row?;
        if is_switched != 0 {
            switched += db_to_u64(n);
        } else {
            counts.push((variation, db_to_u64(n)));
        }
    }
    Ok((counts, switched))
}

/// Events are combined per (variation, user, metric) first, then the groups whose user is
/// unknown, or known, not switched and first exposed to that variation (in `rule`), are
/// summed per (variation, metric).
const FEEDBACK_AGGS_SQL: &str = "\
    SELECT g.variation, g.metric, count(*), sum(g.n), \
           sum(g.s), sum(g.s * g.s), sum(g.m), sum(g.m * g.m), sum(g.a), sum(g.a * g.a) \
    FROM ( \
        SELECT f.variation, f.user_id, f.metric, count(*) AS n, \
               sum(f.value) AS s, max(f.value) AS m, avg(f.value) AS a \
        FROM switchyard_feedback f \
        WHERE f.flag = ?1 AND f.at_ms >= ?2 \
        GROUP BY f.variation, f.user_id, f.metric \
    ) g \
    LEFT JOIN switchyard_exposures e ON e.flag = ?1 AND e.user_id = g.user_id \
    WHERE CASE WHEN e.user_id IS NULL THEN ?3 IS NULL \
          ELSE e.switched = 0 AND e.variation = g.variation AND (?3 IS NULL OR e.rule = ?3) \
          END \
    GROUP BY g.variation, g.metric";

fn feedback_aggs_db(
    conn: &Connection,
    flag: &str,
    rule: Option<&str>,
    since_ms: Option<u64>,
) -> Result<Vec<FeedbackAgg>, rusqlite::Error> {
    let since = ms_to_db(since_ms.unwrap_or(0));
    let mut stmt = conn.prepare_cached(FEEDBACK_AGGS_SQL)?;
    let rows = stmt.query_map(params![flag, since, rule], |row| {
        Ok(FeedbackAgg {
            variation: row.get(0)?,
            metric: row.get(1)?,
            reporters: db_to_u64(row.get(2)?),
            events: db_to_u64(row.get(3)?),
            sum_of_sums: row.get(4)?,
            sum_sq_of_sums: row.get(5)?,
            sum_of_max: row.get(6)?,
            sum_sq_of_max: row.get(7)?,
            sum_of_means: row.get(8)?,
            sum_sq_of_means: row.get(9)?,
        })
    })?;
    rows.collect()
}

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
//!
//! This file holds the store, its connections and the version poller; the schema and its
//! migrations live in `schema`, the overrides and audit log in `overrides`, experiment data in
//! `experiments` and bandit epochs in `bandit`.

mod bandit;
mod experiments;
mod overrides;
mod schema;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::{
    backoff, db_to_u64, ms_to_db, signal, AuditEntry, AuditQuery, Change, Exposure, FeedbackAgg,
    FeedbackRow, RuntimeState, StateError,
};

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
            overrides::load_db(&mut db.conn)
                .map_err(|e| e.into_state(location, "loading the state"))
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
            overrides::apply_db(db, &change, &actor, reason.as_deref())
                .map_err(|e| e.into_state(location, "applying a change"))
        })
        .await
    }

    pub(super) async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StateError> {
        run(self.shared.clone(), move |db, location| {
            overrides::audit_db(&db.conn, &q)
                .map_err(|e| e.into_state(location, "reading the audit log"))
        })
        .await
    }

    pub(super) async fn record_exposures(&self, batch: &[Exposure]) -> Result<(), StateError> {
        let batch = batch.to_vec();
        run(self.shared.clone(), move |db, location| {
            experiments::record_exposures_db(&mut db.conn, &batch)
                .map_err(|e| e.into_state(location, "recording exposures"))
        })
        .await
    }

    pub(super) async fn insert_feedback(
        &self,
        rows: &[FeedbackRow],
    ) -> Result<Vec<bool>, StateError> {
        let rows = rows.to_vec();
        run(self.shared.clone(), move |db, location| {
            experiments::insert_feedback_db(&mut db.conn, &rows)
                .map_err(|e| sql_error(location, "storing feedback", &e))
        })
        .await
    }

    pub(super) async fn exposure_counts(
        &self,
        flag: &str,
        rule: Option<&str>,
        scan: bool,
    ) -> Result<(Vec<(String, u64)>, u64), StateError> {
        let flag = flag.to_owned();
        let rule = rule.map(str::to_owned);
        run_report(self.shared.clone(), move |conn, location| {
            let counted = if scan {
                experiments::exposure_counts_db(conn, &flag, rule.as_deref())
            } else {
                experiments::running_counts(conn, &flag, rule.as_deref())
            };
            counted.map_err(|e| sql_error(location, "counting exposures", &e))
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
            experiments::feedback_aggs_db(conn, &flag, rule.as_deref(), since_ms)
                .map_err(|e| sql_error(location, "aggregating feedback", &e))
        })
        .await
    }

    pub(super) async fn running_aggs(
        &self,
        flag: &str,
        rule: Option<&str>,
    ) -> Result<Vec<FeedbackAgg>, StateError> {
        let flag = flag.to_owned();
        let rule = rule.map(str::to_owned);
        run_report(self.shared.clone(), move |conn, location| {
            experiments::running_aggs(conn, &flag, rule.as_deref())
                .map_err(|e| sql_error(location, "reading the aggregates", &e))
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

    pub(super) async fn rebuild_aggregates(&self) -> Result<(), StateError> {
        run(self.shared.clone(), move |db, location| {
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .and_then(|tx| tx.execute_batch(schema::BACKFILL).map(|()| tx))
                .and_then(|tx| tx.commit());
            tx.map_err(|e| sql_error(location, "rebuilding the aggregates", &e))
        })
        .await
    }

    pub(super) async fn record_exposure_losses(
        &self,
        lost: &[(String, u64)],
    ) -> Result<(), StateError> {
        let lost = lost.to_vec();
        run(self.shared.clone(), move |db, location| {
            experiments::record_losses(&mut db.conn, &lost)
                .map_err(|e| sql_error(location, "counting lost exposures", &e))
        })
        .await
    }

    pub(super) async fn exposure_losses(&self, flag: &str) -> Result<u64, StateError> {
        let flag = flag.to_owned();
        run_report(self.shared.clone(), move |conn, location| {
            experiments::losses(conn, &flag)
                .map_err(|e| sql_error(location, "reading lost exposures", &e))
        })
        .await
    }

    pub(super) async fn prune_finished(
        &self,
        live_flags: &[String],
        before_ms: u64,
    ) -> Result<Vec<String>, StateError> {
        let live_flags = live_flags.to_vec();
        run(self.shared.clone(), move |db, location| {
            experiments::prune_finished(&mut db.conn, &live_flags, ms_to_db(before_ms))
                .map_err(|e| sql_error(location, "deleting finished experiments", &e))
        })
        .await
    }

    /// The secret `name`, created as `fresh` if the store has none yet.
    pub(super) async fn secret(
        &self,
        name: &str,
        fresh: &[u8; 32],
    ) -> Result<[u8; 32], StateError> {
        let name = name.to_owned();
        let fresh = *fresh;
        run(self.shared.clone(), move |db, location| {
            experiments::secret(&mut db.conn, &name, &fresh)
                .map_err(|e| e.into_state(location, "reading the request-id key"))
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
    schema::migrate(&mut conn).map_err(|e| e.into_state(path, "creating the schema"))?;
    let known_version = read_version(&conn).map_err(|e| fail("reading the version", e))?;
    Ok(Db {
        conn,
        known_version,
    })
}

fn read_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row(
        "SELECT version FROM switchyard_meta WHERE id = 1",
        [],
        |row| row.get(0),
    )
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

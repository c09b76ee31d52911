//! Where keys and their spend live: the state store's database (`[state] url`), in tables of
//! their own (`switchyard_keys`, `switchyard_key_spend`) on a connection of their own.
//!
//! - SQLite (one node): a second connection to the state file (WAL lets both work).
//! - PostgreSQL (a fleet): every change to a key sends `NOTIFY switchyard_keys` in its
//!   transaction; each replica LISTENs and reloads its keys, so a revocation reaches every
//!   replica within a second. Spend is added in batches (`INSERT … ON CONFLICT DO UPDATE SET
//!   nano_usd = nano_usd + delta`), one transaction per flush, and read back for the whole
//!   fleet in the same round trip.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::record::{Budget, KeyRecord, Period};
use super::secret::KeyHash;
use crate::state::StateError;

/// The NOTIFY channel of key changes.
const CHANNEL: &str = "switchyard_keys";
/// Longest any database round trip may take.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

const COLUMNS: &str = "name, hash, previous_hash, previous_until_ms, flags, rpm, tpm, \
    budget_nano, budget_period, expires_at_ms, attributes, created_at_ms, revoked_at_ms";

/// Spend to add: (key name, period id, nano-USD).
pub type SpendDelta = (String, String, i64);

/// A key-store failure a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// A key of that name exists already.
    #[error("a key named `{0}` exists already")]
    Exists(String),
    /// The database failed.
    #[error("{0}")]
    State(#[from] StateError),
}

/// The key store.
#[derive(Clone)]
pub enum KeyStore {
    /// Embedded SQLite.
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    /// PostgreSQL.
    Postgres(Arc<Pg>),
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyStore::Sqlite(_) => f.write_str("KeyStore(sqlite)"),
            KeyStore::Postgres(_) => f.write_str("KeyStore(postgres)"),
        }
    }
}

/// The PostgreSQL side: a query connection (reconnected on loss) and a change signal.
pub struct Pg {
    config: tokio_postgres::Config,
    schema: String,
    client: tokio::sync::Mutex<Option<Client>>,
    changed: watch::Sender<u64>,
}

fn unavailable(doing: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("key store: {doing}: {e}"))
}

fn storage(doing: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Storage(format!("key store: {doing}: {e}"))
}

impl KeyStore {
    /// Opens the key tables in the database of `state_url`, creating them if missing.
    pub async fn open(state_url: &str) -> Result<KeyStore, StateError> {
        let url = state_url.trim();
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest).to_owned();
            let conn = tokio::task::spawn_blocking(move || open_sqlite(&path))
                .await
                .map_err(|e| storage("opening", e))??;
            Ok(KeyStore::Sqlite(Arc::new(Mutex::new(conn))))
        } else {
            let (pg_url, schema) = split_schema(url)?;
            let config: tokio_postgres::Config = pg_url
                .parse()
                .map_err(|e| StateError::BadUrl(format!("key store: {e}")))?;
            let (changed, _) = watch::channel(0);
            let pg = Arc::new(Pg {
                config,
                schema,
                client: tokio::sync::Mutex::new(None),
                changed,
            });
            pg.migrate().await?;
            tokio::spawn(listen_loop(Arc::downgrade(&pg)));
            Ok(KeyStore::Postgres(pg))
        }
    }

    /// Changes made by other replicas (PostgreSQL); never changes for SQLite.
    pub fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        match self {
            KeyStore::Sqlite(_) => None,
            KeyStore::Postgres(pg) => Some(pg.changed.subscribe()),
        }
    }

    /// Every key, revoked ones included.
    pub async fn load(&self) -> Result<Vec<KeyRecord>, StateError> {
        match self {
            KeyStore::Sqlite(c) => blocking(c, |conn| {
                let mut st = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM switchyard_keys ORDER BY name"
                ))?;
                let rows = st.query_map([], |r| {
                    Ok(Row {
                        name: r.get(0)?,
                        hash: r.get(1)?,
                        previous_hash: r.get(2)?,
                        previous_until_ms: r.get(3)?,
                        flags: r.get(4)?,
                        rpm: r.get(5)?,
                        tpm: r.get(6)?,
                        budget_nano: r.get(7)?,
                        budget_period: r.get(8)?,
                        expires_at_ms: r.get(9)?,
                        attributes: r.get(10)?,
                        created_at_ms: r.get(11)?,
                        revoked_at_ms: r.get(12)?,
                    })
                })?;
                rows.collect::<Result<Vec<Row>, _>>()
            })
            .await
            .map(|rows| rows.into_iter().filter_map(Row::into_record).collect()),
            KeyStore::Postgres(pg) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM \"{}\".switchyard_keys ORDER BY name",
                    pg.schema
                );
                let rows = pg
                    .run("loading keys", move |c| {
                        Box::pin(async move { c.query(&sql, &[]).await })
                    })
                    .await?;
                let mut out = Vec::new();
                for r in rows {
                    let row = Row {
                        name: r.try_get(0).map_err(|e| storage("reading a key", e))?,
                        hash: r.try_get(1).map_err(|e| storage("reading a key", e))?,
                        previous_hash: r.try_get(2).map_err(|e| storage("reading a key", e))?,
                        previous_until_ms: r.try_get(3).map_err(|e| storage("reading a key", e))?,
                        flags: r.try_get(4).map_err(|e| storage("reading a key", e))?,
                        rpm: r.try_get(5).map_err(|e| storage("reading a key", e))?,
                        tpm: r.try_get(6).map_err(|e| storage("reading a key", e))?,
                        budget_nano: r.try_get(7).map_err(|e| storage("reading a key", e))?,
                        budget_period: r.try_get(8).map_err(|e| storage("reading a key", e))?,
                        expires_at_ms: r.try_get(9).map_err(|e| storage("reading a key", e))?,
                        attributes: r.try_get(10).map_err(|e| storage("reading a key", e))?,
                        created_at_ms: r.try_get(11).map_err(|e| storage("reading a key", e))?,
                        revoked_at_ms: r.try_get(12).map_err(|e| storage("reading a key", e))?,
                    };
                    out.extend(row.into_record());
                }
                Ok(out)
            }
        }
    }

    /// Stores a new key; refuses a name in use.
    pub async fn insert(&self, k: &KeyRecord) -> Result<(), KeyStoreError> {
        let row = Row::from_record(k);
        match self {
            KeyStore::Sqlite(c) => {
                let name = k.name.clone();
                let inserted = blocking(c, move |conn| {
                    conn.execute(
                        &format!(
                            "INSERT OR IGNORE INTO switchyard_keys ({COLUMNS}) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                        ),
                        rusqlite::params![
                            row.name,
                            row.hash,
                            row.previous_hash,
                            row.previous_until_ms,
                            row.flags,
                            row.rpm,
                            row.tpm,
                            row.budget_nano,
                            row.budget_period,
                            row.expires_at_ms,
                            row.attributes,
                            row.created_at_ms,
                            row.revoked_at_ms
                        ],
                    )
                })
                .await?;
                if inserted == 0 {
                    return Err(KeyStoreError::Exists(name));
                }
                Ok(())
            }
            KeyStore::Postgres(pg) => {
                let sql = format!(
                    "INSERT INTO \"{}\".switchyard_keys ({COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (name) DO NOTHING",
                    pg.schema
                );
                let inserted = pg
                    .write_and_notify(
                        "creating a key",
                        sql,
                        vec![
                            Box::new(row.name),
                            Box::new(row.hash),
                            Box::new(row.previous_hash),
                            Box::new(row.previous_until_ms),
                            Box::new(row.flags),
                            Box::new(row.rpm),
                            Box::new(row.tpm),
                            Box::new(row.budget_nano),
                            Box::new(row.budget_period),
                            Box::new(row.expires_at_ms),
                            Box::new(row.attributes),
                            Box::new(row.created_at_ms),
                            Box::new(row.revoked_at_ms),
                        ],
                    )
                    .await?;
                if inserted == 0 {
                    return Err(KeyStoreError::Exists(k.name.clone()));
                }
                Ok(())
            }
        }
    }

    /// Marks a key revoked at `at_ms`; `false` when there is no such key (or it already was).
    pub async fn revoke(&self, name: &str, at_ms: u64) -> Result<bool, StateError> {
        let (name, at) = (name.to_owned(), ms(at_ms));
        match self {
            KeyStore::Sqlite(c) => blocking(c, move |conn| {
                conn.execute(
                    "UPDATE switchyard_keys SET revoked_at_ms = ?2 \
                     WHERE name = ?1 AND revoked_at_ms IS NULL",
                    rusqlite::params![name, at],
                )
            })
            .await
            .map(|n| n > 0),
            KeyStore::Postgres(pg) => {
                let sql = format!(
                    "UPDATE \"{}\".switchyard_keys SET revoked_at_ms = $2 \
                     WHERE name = $1 AND revoked_at_ms IS NULL",
                    pg.schema
                );
                pg.write_and_notify("revoking a key", sql, vec![Box::new(name), Box::new(at)])
                    .await
                    .map(|n| n > 0)
            }
        }
    }

    /// Replaces an active key's secret: the old hash stays valid until `previous_until_ms`.
    /// `false` when there is no such active key.
    pub async fn rotate(
        &self,
        name: &str,
        hash: KeyHash,
        previous_until_ms: u64,
    ) -> Result<bool, StateError> {
        let (name, hash, until) = (name.to_owned(), hash.0.to_vec(), ms(previous_until_ms));
        match self {
            KeyStore::Sqlite(c) => blocking(c, move |conn| {
                conn.execute(
                    "UPDATE switchyard_keys SET previous_hash = hash, previous_until_ms = ?3, \
                     hash = ?2 WHERE name = ?1 AND revoked_at_ms IS NULL",
                    rusqlite::params![name, hash, until],
                )
            })
            .await
            .map(|n| n > 0),
            KeyStore::Postgres(pg) => {
                let sql = format!(
                    "UPDATE \"{}\".switchyard_keys SET previous_hash = hash, \
                     previous_until_ms = $3, hash = $2 \
                     WHERE name = $1 AND revoked_at_ms IS NULL",
                    pg.schema
                );
                pg.write_and_notify(
                    "rotating a key",
                    sql,
                    vec![Box::new(name), Box::new(hash), Box::new(until)],
                )
                .await
                .map(|n| n > 0)
            }
        }
    }

    /// Adds `deltas` to the stored spend (one transaction), then reads the spend of every key
    /// in `periods` (the whole fleet's): (name, period) → nano-USD.
    pub async fn flush_spend(
        &self,
        mut deltas: Vec<SpendDelta>,
        periods: Vec<String>,
    ) -> Result<HashMap<(String, String), i64>, StateError> {
        // One order for every replica, so two flushes never wait on each other's rows.
        deltas.sort();
        match self {
            KeyStore::Sqlite(c) => {
                blocking(c, move |conn| {
                    let tx = conn.transaction()?;
                    {
                        let mut up = tx.prepare_cached(
                            "INSERT INTO switchyard_key_spend (name, period, nano_usd) \
                         VALUES (?1, ?2, ?3) ON CONFLICT (name, period) \
                         DO UPDATE SET nano_usd = nano_usd + excluded.nano_usd",
                        )?;
                        for (name, period, delta) in &deltas {
                            up.execute(rusqlite::params![name, period, delta])?;
                        }
                    }
                    let mut out = HashMap::new();
                    {
                        let mut read = tx.prepare_cached(
                            "SELECT name, nano_usd FROM switchyard_key_spend WHERE period = ?1",
                        )?;
                        for period in &periods {
                            let rows = read.query_map([period], |r| {
                                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                            })?;
                            for row in rows {
                                let (name, v) = row?;
                                out.insert((name, period.clone()), v);
                            }
                        }
                    }
                    tx.commit()?;
                    Ok(out)
                })
                .await
            }
            KeyStore::Postgres(pg) => {
                let s = pg.schema.clone();
                pg.run("flushing spend", move |c| {
                    Box::pin(async move {
                        let tx = c.transaction().await?;
                        if !deltas.is_empty() {
                            let up = tx
                                .prepare(&format!(
                                "INSERT INTO \"{s}\".switchyard_key_spend (name, period, nano_usd) \
                                 VALUES ($1, $2, $3) ON CONFLICT (name, period) DO UPDATE \
                                 SET nano_usd = \"{s}\".switchyard_key_spend.nano_usd \
                                 + EXCLUDED.nano_usd"
                            ))
                                .await?;
                            for (name, period, delta) in &deltas {
                                tx.execute(&up, &[name, period, delta]).await?;
                            }
                        }
                        let rows = tx
                            .query(
                                &format!(
                                "SELECT name, period, nano_usd FROM \"{s}\".switchyard_key_spend \
                                 WHERE period = ANY($1)"
                            ),
                                &[&periods],
                            )
                            .await?;
                        tx.commit().await?;
                        let mut out = HashMap::new();
                        for r in rows {
                            out.insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
                        }
                        Ok(out)
                    })
                })
                .await
            }
        }
    }
}

/// A key row as stored.
struct Row {
    name: String,
    hash: Vec<u8>,
    previous_hash: Option<Vec<u8>>,
    previous_until_ms: Option<i64>,
    flags: String,
    rpm: Option<i64>,
    tpm: Option<i64>,
    budget_nano: Option<i64>,
    budget_period: Option<String>,
    expires_at_ms: Option<i64>,
    attributes: String,
    created_at_ms: i64,
    revoked_at_ms: Option<i64>,
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Row {
    fn from_record(k: &KeyRecord) -> Row {
        Row {
            name: k.name.clone(),
            hash: k.hash.0.to_vec(),
            previous_hash: k.previous.map(|(h, _)| h.0.to_vec()),
            previous_until_ms: k.previous.map(|(_, until)| ms(until)),
            flags: serde_json::to_string(&k.flags).unwrap_or_else(|_| "[]".into()),
            rpm: k.rpm.map(ms),
            tpm: k.tpm.map(ms),
            budget_nano: k.budget.map(|b| b.nano_usd),
            budget_period: k.budget.map(|b| b.period.as_str().to_owned()),
            expires_at_ms: k.expires_at_ms.map(ms),
            attributes: serde_json::to_string(&k.attributes).unwrap_or_else(|_| "{}".into()),
            created_at_ms: ms(k.created_at_ms),
            revoked_at_ms: k.revoked_at_ms.map(ms),
        }
    }

    /// The record; a row that cannot be read (a corrupt hash) is left out with a warning.
    fn into_record(self) -> Option<KeyRecord> {
        let Some(hash) = KeyHash::from_slice(&self.hash) else {
            tracing::warn!(key = %self.name, "key row with an unreadable hash ignored");
            return None;
        };
        let previous = match (self.previous_hash, self.previous_until_ms) {
            (Some(h), Some(until)) => KeyHash::from_slice(&h).map(|h| (h, unms(until))),
            _ => None,
        };
        let budget = match (self.budget_nano, self.budget_period.as_deref()) {
            (Some(nano_usd), Some(p)) => Period::parse(p).map(|period| Budget { nano_usd, period }),
            _ => None,
        };
        Some(KeyRecord {
            name: self.name,
            hash,
            previous,
            flags: serde_json::from_str(&self.flags).unwrap_or_default(),
            rpm: self.rpm.map(unms),
            tpm: self.tpm.map(unms),
            budget,
            expires_at_ms: self.expires_at_ms.map(unms),
            attributes: serde_json::from_str::<BTreeMap<String, serde_json::Value>>(
                &self.attributes,
            )
            .unwrap_or_default(),
            created_at_ms: unms(self.created_at_ms),
            revoked_at_ms: self.revoked_at_ms.map(unms),
        })
    }
}

const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS switchyard_keys (
        name TEXT PRIMARY KEY,
        hash BLOB NOT NULL,
        previous_hash BLOB,
        previous_until_ms INTEGER,
        flags TEXT NOT NULL,
        rpm INTEGER,
        tpm INTEGER,
        budget_nano INTEGER,
        budget_period TEXT,
        expires_at_ms INTEGER,
        attributes TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    );
    CREATE TABLE IF NOT EXISTS switchyard_key_spend (
        name TEXT NOT NULL,
        period TEXT NOT NULL,
        nano_usd INTEGER NOT NULL,
        PRIMARY KEY (name, period)
    );";

fn open_sqlite(path: &str) -> Result<rusqlite::Connection, StateError> {
    let conn = if path == ":memory:" {
        rusqlite::Connection::open_in_memory()
    } else {
        rusqlite::Connection::open(path)
    }
    .map_err(|e| storage("opening", e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| storage("opening", e))?;
    conn.execute_batch(SQLITE_SCHEMA)
        .map_err(|e| storage("creating the key tables", e))?;
    Ok(conn)
}

async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<rusqlite::Connection>>,
    op: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, StateError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
        op(&mut guard)
    })
    .await
    .map_err(|e| storage("a blocking task failed", e))?
    .map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            unavailable("the database is busy", e)
        }
        _ => storage("sqlite", e),
    })
}

impl Pg {
    async fn connect(&self) -> Result<Client, StateError> {
        let (client, conn) = tokio::time::timeout(OP_TIMEOUT, self.config.connect(NoTls))
            .await
            .map_err(|_| unavailable("connecting", "no answer within 5 s"))?
            .map_err(|e| unavailable("connecting", e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs `op` on the query connection, connecting first when there is none (or it was
    /// lost); a failed round trip drops the connection so the next call reconnects.
    async fn run<T>(
        &self,
        doing: &str,
        op: impl for<'c> FnOnce(&'c mut Client) -> PgFuture<'c, T>,
    ) -> Result<T, StateError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect().await?);
        }
        let Some(client) = guard.as_mut() else {
            return Err(unavailable(doing, "no connection"));
        };
        let result = tokio::time::timeout(OP_TIMEOUT, op(client)).await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let lost = e.is_closed() || guard.as_ref().is_none_or(|c| c.is_closed());
                if lost {
                    *guard = None;
                    Err(unavailable(doing, e))
                } else {
                    Err(storage(doing, e))
                }
            }
            Err(_) => {
                *guard = None;
                Err(unavailable(doing, "no answer within 5 s"))
            }
        }
    }

    /// Runs one write on the key tables and, in the same transaction, tells every replica
    /// (`NOTIFY switchyard_keys`); the number of rows written.
    async fn write_and_notify(
        &self,
        doing: &str,
        sql: String,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
    ) -> Result<u64, StateError> {
        let s = self.schema.clone();
        self.run(doing, move |c| {
            Box::pin(async move {
                let params: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let tx = c.transaction().await?;
                let n = tx.execute(&sql, &params).await?;
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &s])
                    .await?;
                tx.commit().await?;
                Ok(n)
            })
        })
        .await
    }

    /// Creates the schema's key tables (serialized across replicas by an advisory lock).
    async fn migrate(&self) -> Result<(), StateError> {
        let s = self.schema.clone();
        self.run("creating the key tables", move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock(7046390812230121)", &[])
                    .await?;
                tx.batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{s}\";
                     CREATE TABLE IF NOT EXISTS \"{s}\".switchyard_keys (
                        name TEXT PRIMARY KEY,
                        hash BYTEA NOT NULL,
                        previous_hash BYTEA,
                        previous_until_ms BIGINT,
                        flags TEXT NOT NULL,
                        rpm BIGINT,
                        tpm BIGINT,
                        budget_nano BIGINT,
                        budget_period TEXT,
                        expires_at_ms BIGINT,
                        attributes TEXT NOT NULL,
                        created_at_ms BIGINT NOT NULL,
                        revoked_at_ms BIGINT
                     );
                     CREATE TABLE IF NOT EXISTS \"{s}\".switchyard_key_spend (
                        name TEXT NOT NULL,
                        period TEXT NOT NULL,
                        nano_usd BIGINT NOT NULL,
                        PRIMARY KEY (name, period)
                     );"
                ))
                .await?;
                tx.commit().await
            })
        })
        .await
    }
}

type PgFuture<'c, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
>;

/// `LISTEN switchyard_keys` for as long as the store lives, reconnecting with backoff; every
/// notification for this schema (and every reconnect) signals `changed`.
async fn listen_loop(weak: std::sync::Weak<Pg>) {
    let mut attempt = 0u32;
    loop {
        let Some(pg) = weak.upgrade() else { return };
        let session = async {
            let (client, mut conn) = pg.config.connect(NoTls).await?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    if let AsyncMessage::Notification(n) = msg {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                }
            });
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            Ok::<_, tokio_postgres::Error>((client, driver, rx))
        };
        let (client, driver, mut rx) = match tokio::time::timeout(OP_TIMEOUT, session).await {
            Ok(Ok(s)) => s,
            _ => {
                drop(pg);
                attempt += 1;
                tokio::time::sleep(Duration::from_millis((250u64 << attempt.min(5)).min(5_000)))
                    .await;
                continue;
            }
        };
        attempt = 0;
        // Whatever happened while not listening: reload.
        pg.changed.send_modify(|n| *n = n.wrapping_add(1));
        let schema = pg.schema.clone();
        drop(pg);
        let mut health = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(payload) if payload == schema => {
                        let Some(pg) = weak.upgrade() else { return };
                        pg.changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = health.tick() => {
                    if weak.strong_count() == 0 {
                        driver.abort();
                        return;
                    }
                    let ping = tokio::time::timeout(OP_TIMEOUT, client.simple_query("SELECT 1")).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        driver.abort();
    }
}

/// Splits the `schema` parameter off a PostgreSQL URL (the driver rejects unknown ones).
fn split_schema(url: &str) -> Result<(String, String), StateError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = "public".to_owned();
    let mut kept = Vec::new();
    for p in query.split('&').filter(|p| !p.is_empty()) {
        match p.split_once('=') {
            Some(("schema", v)) => schema = v.to_owned(),
            _ => kept.push(p),
        }
    }
    if schema.is_empty()
        || schema.len() > 63
        || !schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || schema.as_bytes()[0].is_ascii_digit()
    {
        return Err(StateError::BadUrl(format!(
            "key store: schema {schema:?} must be 1-63 letters, digits or underscores"
        )));
    }
    let pg_url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((pg_url, schema))
}

//! The SQLite schema: the ordered migrations (`PRAGMA user_version` counts the steps applied)
//! and the backfill of the running aggregates.

use rusqlite::{Connection, TransactionBehavior};

use super::DbError;

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
    // 4: running experiment aggregates (filled from the rows above by `BACKFILL`), the
    // request-id key; request ids are no longer stored, and counting exposures no longer
    // needs their (flag, rule, variation) index.
    r#"
    CREATE TABLE IF NOT EXISTS switchyard_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS switchyard_feedback_users (
        flag TEXT NOT NULL,
        user_id TEXT NOT NULL,
        variation TEXT NOT NULL,
        metric TEXT NOT NULL,
        n INTEGER NOT NULL,
        s DOUBLE NOT NULL,
        m DOUBLE NOT NULL,
        PRIMARY KEY (flag, user_id, variation, metric)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS switchyard_aggregates (
        flag TEXT NOT NULL,
        bucket TEXT NOT NULL,
        variation TEXT NOT NULL,
        metric TEXT NOT NULL,
        reporters INTEGER NOT NULL,
        events INTEGER NOT NULL,
        s DOUBLE NOT NULL, s2 DOUBLE NOT NULL,
        m DOUBLE NOT NULL, m2 DOUBLE NOT NULL,
        a DOUBLE NOT NULL, a2 DOUBLE NOT NULL,
        PRIMARY KEY (flag, bucket, variation, metric)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS switchyard_exposure_counts (
        flag TEXT NOT NULL,
        bucket TEXT NOT NULL,
        variation TEXT NOT NULL,
        users INTEGER NOT NULL,
        switched INTEGER NOT NULL,
        PRIMARY KEY (flag, bucket, variation)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS switchyard_experiment_flags (
        flag TEXT PRIMARY KEY,
        dropped INTEGER NOT NULL DEFAULT 0,
        last_at_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS switchyard_feedback_at ON switchyard_feedback (flag, at_ms);
    DROP INDEX IF EXISTS switchyard_exposures_rule;
    DROP INDEX IF EXISTS switchyard_requests_at;
    DROP TABLE IF EXISTS switchyard_requests;
    "#,
];

/// The migration that introduced the running aggregates (they are built from the rows
/// already stored when a database reaches it).
const AGGREGATES_STEP: usize = 4;

/// Recomputes the running aggregates from the stored exposures and events (the rules of
/// `FEEDBACK_AGGS_SQL`, grouped once per user).
pub(super) const BACKFILL: &str = r#"
    DELETE FROM switchyard_exposure_counts;
    DELETE FROM switchyard_feedback_users;
    DELETE FROM switchyard_aggregates;
    INSERT INTO switchyard_exposure_counts (flag, bucket, variation, users, switched)
        SELECT flag, CASE WHEN rule IS NULL THEN 'n' ELSE 'r' || rule END, variation,
               sum(switched = 0), sum(switched <> 0)
        FROM switchyard_exposures GROUP BY 1, 2, 3;
    INSERT INTO switchyard_feedback_users (flag, user_id, variation, metric, n, s, m)
        SELECT flag, user_id, variation, metric, count(*), sum(value), max(value)
        FROM switchyard_feedback GROUP BY flag, user_id, variation, metric;
    INSERT INTO switchyard_aggregates
        (flag, bucket, variation, metric, reporters, events, s, s2, m, m2, a, a2)
        SELECT g.flag,
               CASE WHEN e.user_id IS NULL THEN 'u' WHEN e.rule IS NULL THEN 'n'
                    ELSE 'r' || e.rule END,
               g.variation, g.metric, count(*), sum(g.n), sum(g.s), sum(g.s * g.s),
               sum(g.m), sum(g.m * g.m), sum(g.s / g.n), sum((g.s / g.n) * (g.s / g.n))
        FROM switchyard_feedback_users g
        LEFT JOIN switchyard_exposures e ON e.flag = g.flag AND e.user_id = g.user_id
        WHERE e.user_id IS NULL OR (e.switched = 0 AND e.variation = g.variation)
        GROUP BY 1, 2, 3, 4;
    INSERT INTO switchyard_experiment_flags (flag, dropped, last_at_ms)
        SELECT flag, 0, max(at) FROM (
            SELECT flag, max(first_at_ms) AS at FROM switchyard_exposures GROUP BY flag
            UNION ALL SELECT flag, max(at_ms) FROM switchyard_feedback GROUP BY flag
        ) GROUP BY flag
        ON CONFLICT (flag) DO UPDATE SET last_at_ms = max(last_at_ms, excluded.last_at_ms);
"#;

pub(super) fn migrate(conn: &mut Connection) -> Result<(), DbError> {
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
    if applied < AGGREGATES_STEP {
        tx.execute_batch(BACKFILL)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

//! The PostgreSQL schema: the ordered migrations, the backfill of the running aggregates, and
//! bringing a database up to date under an advisory lock so replicas starting together do not
//! race.

use tokio_postgres::Client;

use super::{committing, Fail, Shared};
use crate::state::StateError;

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
    // 4: running experiment aggregates (filled from the rows above by `BACKFILL`), the
    // request-id key; request ids are no longer stored, and counting exposures no longer
    // needs their (flag, rule, variation) index.
    r#"
    CREATE TABLE IF NOT EXISTS {s}.switchyard_secrets (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.switchyard_feedback_users (
        flag TEXT NOT NULL,
        user_id TEXT NOT NULL,
        variation TEXT NOT NULL,
        metric TEXT NOT NULL,
        n BIGINT NOT NULL,
        s DOUBLE PRECISION NOT NULL,
        m DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (flag, user_id, variation, metric)
    );
    CREATE TABLE IF NOT EXISTS {s}.switchyard_aggregates (
        flag TEXT NOT NULL,
        bucket TEXT NOT NULL,
        variation TEXT NOT NULL,
        metric TEXT NOT NULL,
        reporters BIGINT NOT NULL,
        events BIGINT NOT NULL,
        s DOUBLE PRECISION NOT NULL, s2 DOUBLE PRECISION NOT NULL,
        m DOUBLE PRECISION NOT NULL, m2 DOUBLE PRECISION NOT NULL,
        a DOUBLE PRECISION NOT NULL, a2 DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (flag, bucket, variation, metric)
    );
    CREATE TABLE IF NOT EXISTS {s}.switchyard_exposure_counts (
        flag TEXT NOT NULL,
        bucket TEXT NOT NULL,
        variation TEXT NOT NULL,
        users BIGINT NOT NULL,
        switched BIGINT NOT NULL,
        PRIMARY KEY (flag, bucket, variation)
    );
    CREATE TABLE IF NOT EXISTS {s}.switchyard_experiment_flags (
        flag TEXT PRIMARY KEY,
        dropped BIGINT NOT NULL DEFAULT 0,
        last_at_ms BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS switchyard_feedback_at ON {s}.switchyard_feedback (flag, at_ms);
    DROP INDEX IF EXISTS {s}.switchyard_exposures_rule;
    DROP TABLE IF EXISTS {s}.switchyard_requests;
    "#,
];

/// The migration that introduced the running aggregates (they are built from the rows
/// already stored when a database reaches it).
const AGGREGATES_STEP: usize = 4;

/// Recomputes the running aggregates from the stored exposures and events; `{s}` is the
/// schema.
pub(super) const BACKFILL: &str = r#"
    DELETE FROM {s}.switchyard_exposure_counts;
    DELETE FROM {s}.switchyard_feedback_users;
    DELETE FROM {s}.switchyard_aggregates;
    INSERT INTO {s}.switchyard_exposure_counts (flag, bucket, variation, users, switched)
        SELECT flag, CASE WHEN rule IS NULL THEN 'n' ELSE 'r' || rule END, variation,
               count(*) FILTER (WHERE NOT switched), count(*) FILTER (WHERE switched)
        FROM {s}.switchyard_exposures GROUP BY 1, 2, 3;
    INSERT INTO {s}.switchyard_feedback_users (flag, user_id, variation, metric, n, s, m)
        SELECT flag, user_id, variation, metric, count(*), sum(value), max(value)
        FROM {s}.switchyard_feedback GROUP BY flag, user_id, variation, metric;
    INSERT INTO {s}.switchyard_aggregates
        (flag, bucket, variation, metric, reporters, events, s, s2, m, m2, a, a2)
        SELECT g.flag,
               CASE WHEN e.user_id IS NULL THEN 'u' WHEN e.rule IS NULL THEN 'n'
                    ELSE 'r' || e.rule END,
               g.variation, g.metric, count(*), sum(g.n), sum(g.s), sum(g.s * g.s),
               sum(g.m), sum(g.m * g.m), sum(g.s / g.n), sum((g.s / g.n) * (g.s / g.n))
        FROM {s}.switchyard_feedback_users g
        LEFT JOIN {s}.switchyard_exposures e ON e.flag = g.flag AND e.user_id = g.user_id
        WHERE e.user_id IS NULL OR (NOT e.switched AND e.variation = g.variation)
        GROUP BY 1, 2, 3, 4;
    INSERT INTO {s}.switchyard_experiment_flags AS x (flag, dropped, last_at_ms)
        SELECT flag, 0, max(at) FROM (
            SELECT flag, max(first_at_ms) AS at FROM {s}.switchyard_exposures GROUP BY flag
            UNION ALL SELECT flag, max(at_ms) FROM {s}.switchyard_feedback GROUP BY flag
        ) t GROUP BY flag
        ON CONFLICT (flag) DO UPDATE SET last_at_ms = greatest(x.last_at_ms, excluded.last_at_ms);
"#;

/// Creates the schema and applies pending migrations, serialized across processes by an
/// advisory lock; returns the current version.
pub(super) async fn migrate(client: &mut Client, shared: &Shared) -> Result<i64, Fail> {
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
    if applied < AGGREGATES_STEP {
        tx.batch_execute(&BACKFILL.replace("{s}", s)).await?;
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

/// A fixed advisory-lock key per schema (FNV-1a), so migrations of one schema serialize.
pub(super) fn lock_key(schema: &str) -> i64 {
    advisory_key("switchyard_state:", schema)
}

/// An advisory-lock key: FNV-1a of `namespace` then `schema`.
pub(super) fn advisory_key(namespace: &str, schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain(schema.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn lock_keys_differ_per_schema() {
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(lock_key("public"), lock_key("public"));
    }
}

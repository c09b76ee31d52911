//! The runtime overrides in PostgreSQL: loading them in one snapshot, applying a change in one
//! transaction (row lock, audit entry, version bump, `pg_notify`), and reading the audit log.

use tokio_postgres::{Client, IsolationLevel};

use super::listen::notify_payload;
use super::{committing, Fail, Shared, CHANNEL};
use crate::clock::system_time_ms;
use crate::state::{
    audit_json, format_rfc3339_ms, overrides_json, AuditEntry, AuditQuery, Change, FlagOverrides,
    RuntimeState, StateError,
};

pub(super) async fn load_txn(client: &mut Client, shared: &Shared) -> Result<RuntimeState, Fail> {
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
pub(super) async fn apply_txn(
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

pub(super) async fn audit_query(
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

//! The runtime overrides in SQLite: loading them in one snapshot, applying a change in one
//! `BEGIN IMMEDIATE` transaction (audit entry and version bump included), and reading the
//! audit log.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{read_version, Db, DbError};
use crate::state::{
    audit_json, format_rfc3339_ms, now_ms, overrides_json, AuditEntry, AuditQuery, Change,
    FlagOverrides, RuntimeState,
};

fn parse_overrides(flag: &str, text: &str) -> Result<FlagOverrides, DbError> {
    serde_json::from_str(text).map_err(|e| {
        DbError::Corrupt(format!(
            "stored overrides of flag {flag:?} are not valid: {e}"
        ))
    })
}

pub(super) fn load_db(conn: &mut Connection) -> Result<RuntimeState, DbError> {
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

pub(super) fn apply_db(
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

pub(super) fn audit_db(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditEntry>, DbError> {
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

//! SQLite: exposures and feedback folded into the running aggregates
//! ([`crate::state::aggregates`]), results read from them, lost exposures, retention, and the
//! request-id key. The `_db` functions run one batch or one results query on the store's
//! connection (a batch in its own transaction); the others run inside the caller's connection or
//! transaction.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::DbError;
use crate::state::aggregates::{
    plan_exposures, plan_feedback, query_bucket, reduce_exposures, users_moved, AggDelta, AggKey,
    ExposureRow, GroupKey, UserFigures, UserKey,
};
use crate::state::{db_to_u64, ms_to_db, Exposure, FeedbackAgg, FeedbackRow};

fn exposure_row(
    conn: &Connection,
    flag: &str,
    user: &str,
) -> Result<Option<ExposureRow>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT variation, rule, switched FROM switchyard_exposures \
         WHERE flag = ?1 AND user_id = ?2",
    )?
    .query_row(params![flag, user], |row| {
        Ok(ExposureRow {
            variation: row.get(0)?,
            rule: row.get(1)?,
            switched: row.get::<_, i64>(2)? != 0,
        })
    })
    .optional()
}

fn add_aggs(conn: &Connection, aggs: &[(AggKey, AggDelta)]) -> Result<(), rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO switchyard_aggregates \
         (flag, bucket, variation, metric, reporters, events, s, s2, m, m2, a, a2) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (flag, bucket, variation, metric) DO UPDATE SET \
         reporters = reporters + excluded.reporters, events = events + excluded.events, \
         s = s + excluded.s, s2 = s2 + excluded.s2, m = m + excluded.m, \
         m2 = m2 + excluded.m2, a = a + excluded.a, a2 = a2 + excluded.a2",
    )?;
    for ((flag, bucket, variation, metric), d) in aggs {
        stmt.execute(params![
            flag,
            bucket,
            variation,
            metric,
            d.reporters,
            d.events,
            d.s,
            d.s2,
            d.m,
            d.m2,
            d.a,
            d.a2
        ])?;
    }
    Ok(())
}

fn touch_flags<'a>(
    conn: &Connection,
    flags: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), rusqlite::Error> {
    let mut latest: HashMap<&str, u64> = HashMap::new();
    for (flag, at) in flags {
        let slot = latest.entry(flag).or_default();
        *slot = (*slot).max(at);
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO switchyard_experiment_flags (flag, dropped, last_at_ms) VALUES (?1, 0, ?2) \
         ON CONFLICT (flag) DO UPDATE SET last_at_ms = max(last_at_ms, excluded.last_at_ms)",
    )?;
    for (flag, at) in latest {
        stmt.execute(params![flag, ms_to_db(at)])?;
    }
    Ok(())
}

/// Folds freshly stored events into the users' figures and the aggregates.
pub(super) fn fold_feedback(
    conn: &Connection,
    fresh: &[&FeedbackRow],
) -> Result<(), rusqlite::Error> {
    if fresh.is_empty() {
        return Ok(());
    }
    let mut exposures: HashMap<UserKey, ExposureRow> = HashMap::new();
    let mut users: HashMap<GroupKey, UserFigures> = HashMap::new();
    let mut looked_up: HashSet<UserKey> = HashSet::new();
    let mut groups_looked_up: HashSet<GroupKey> = HashSet::new();
    {
        let mut figures = conn.prepare_cached(
            "SELECT n, s, m FROM switchyard_feedback_users \
             WHERE flag = ?1 AND user_id = ?2 AND variation = ?3 AND metric = ?4",
        )?;
        for r in fresh {
            let ukey = (r.flag.clone(), r.user.clone());
            if looked_up.insert(ukey.clone()) {
                if let Some(x) = exposure_row(conn, &r.flag, &r.user)? {
                    exposures.insert(ukey, x);
                }
            }
            let gkey = (
                r.flag.clone(),
                r.user.clone(),
                r.variation.clone(),
                r.metric.clone(),
            );
            if !groups_looked_up.insert(gkey.clone()) {
                continue;
            }
            let found = figures
                .query_row(params![r.flag, r.user, r.variation, r.metric], |row| {
                    Ok(UserFigures {
                        n: row.get(0)?,
                        s: row.get(1)?,
                        m: row.get(2)?,
                    })
                })
                .optional()?;
            if let Some(f) = found {
                users.insert(gkey, f);
            }
        }
    }
    let plan = plan_feedback(fresh, &exposures, users);
    {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO switchyard_feedback_users (flag, user_id, variation, metric, n, s, m) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (flag, user_id, variation, metric) DO UPDATE SET \
             n = excluded.n, s = excluded.s, m = excluded.m",
        )?;
        for ((flag, user, variation, metric), f) in &plan.users {
            upsert.execute(params![flag, user, variation, metric, f.n, f.s, f.m])?;
        }
    }
    add_aggs(conn, &plan.aggs)?;
    touch_flags(conn, fresh.iter().map(|r| (r.flag.as_str(), r.at_ms)))
}

/// Records a batch of exposures (first per user kept; a later other variation switches the
/// user) and moves the users' earlier feedback in the aggregates.
pub(super) fn record_exposures(conn: &Connection, batch: &[Exposure]) -> Result<(), DbError> {
    let reduced = reduce_exposures(batch);
    let mut existing: HashMap<UserKey, ExposureRow> = HashMap::new();
    for (e, _) in &reduced {
        if let Some(x) = exposure_row(conn, &e.flag, &e.user)? {
            existing.insert((e.flag.clone(), e.user.clone()), x);
        }
    }
    let moved = users_moved(&reduced, &existing);
    if moved.is_empty() {
        return Ok(()); // returning users: nothing to write
    }
    let mut groups: HashMap<UserKey, Vec<(String, String, UserFigures)>> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT variation, metric, n, s, m FROM switchyard_feedback_users \
             WHERE flag = ?1 AND user_id = ?2",
        )?;
        for key in &moved {
            let rows = stmt.query_map(params![key.0, key.1], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    UserFigures {
                        n: row.get(2)?,
                        s: row.get(3)?,
                        m: row.get(4)?,
                    },
                ))
            })?;
            let found = rows.collect::<Result<Vec<_>, _>>()?;
            if !found.is_empty() {
                groups.insert(key.clone(), found);
            }
        }
    }
    let plan = plan_exposures(&reduced, &existing, &groups);
    {
        let mut insert = conn.prepare_cached(
            "INSERT INTO switchyard_exposures \
             (flag, user_id, variation, rule, first_at_ms, switched) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (e, switched) in &plan.inserts {
            insert.execute(params![
                e.flag,
                e.user,
                e.variation,
                e.rule,
                ms_to_db(e.at_ms),
                i64::from(*switched)
            ])?;
        }
        let mut switch = conn.prepare_cached(
            "UPDATE switchyard_exposures SET switched = 1 WHERE flag = ?1 AND user_id = ?2",
        )?;
        for (flag, user) in &plan.switches {
            switch.execute(params![flag, user])?;
        }
        let mut count = conn.prepare_cached(
            "INSERT INTO switchyard_exposure_counts (flag, bucket, variation, users, switched) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (flag, bucket, variation) DO UPDATE SET \
             users = users + excluded.users, switched = switched + excluded.switched",
        )?;
        for ((flag, bucket, variation), (users, switched)) in &plan.counts {
            count.execute(params![flag, bucket, variation, users, switched])?;
        }
    }
    add_aggs(conn, &plan.aggs)?;
    touch_flags(
        conn,
        plan.inserts.iter().map(|(e, _)| (e.flag.as_str(), e.at_ms)),
    )?;
    Ok(())
}

/// One row of exposure counts: a variation and two numbers.
fn count_row(row: &rusqlite::Row<'_>) -> Result<(String, i64, i64), rusqlite::Error> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

/// Users per first-exposed variation (not switched) and switched users, from the running
/// counts.
pub(super) fn running_counts(
    conn: &Connection,
    flag: &str,
    rule: Option<&str>,
) -> Result<(Vec<(String, u64)>, u64), rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT variation, sum(users), sum(switched) FROM switchyard_exposure_counts \
         WHERE flag = ?1 AND (?2 IS NULL OR bucket = ?2) GROUP BY variation",
    )?;
    let rows = stmt.query_map(params![flag, query_bucket(rule)], count_row)?;
    let mut counts = Vec::new();
    let mut switched = 0u64;
    for row in rows {
        let (variation, users, sw) = row?;
        switched += db_to_u64(sw);
        counts.push((variation, db_to_u64(users)));
    }
    Ok((counts, switched))
}

/// One aggregated row: variation, metric, reporters, events, then the six sums.
fn agg_row(row: &rusqlite::Row<'_>) -> Result<FeedbackAgg, rusqlite::Error> {
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
}

/// Per (variation, metric), from the running aggregates.
pub(super) fn running_aggs(
    conn: &Connection,
    flag: &str,
    rule: Option<&str>,
) -> Result<Vec<FeedbackAgg>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT variation, metric, sum(reporters), sum(events), sum(s), sum(s2), sum(m), \
                sum(m2), sum(a), sum(a2) \
         FROM switchyard_aggregates WHERE flag = ?1 AND (?2 IS NULL OR bucket = ?2) \
         GROUP BY variation, metric HAVING sum(reporters) > 0",
    )?;
    let rows = stmt.query_map(params![flag, query_bucket(rule)], agg_row)?;
    rows.collect()
}

pub(super) fn record_losses(
    conn: &mut Connection,
    lost: &[(String, u64)],
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO switchyard_experiment_flags (flag, dropped, last_at_ms) \
             VALUES (?1, ?2, 0) ON CONFLICT (flag) DO UPDATE SET dropped = dropped + excluded.dropped",
        )?;
        for (flag, n) in lost {
            stmt.execute(params![flag, i64::try_from(*n).unwrap_or(i64::MAX)])?;
        }
    }
    tx.commit()
}

pub(super) fn losses(conn: &Connection, flag: &str) -> Result<u64, rusqlite::Error> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT dropped FROM switchyard_experiment_flags WHERE flag = ?1")?
        .query_row([flag], |row| row.get(0))
        .optional()?;
    Ok(db_to_u64(n.unwrap_or(0)))
}

/// Deletes every row of the flags not in `live` whose last activity is before `before`.
pub(super) fn prune_finished(
    conn: &mut Connection,
    live: &[String],
    before: i64,
) -> Result<Vec<String>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stale: Vec<String> = {
        let mut stmt = tx.prepare(
            "SELECT flag FROM switchyard_experiment_flags WHERE last_at_ms < ?1 ORDER BY flag",
        )?;
        let rows = stmt.query_map([before], |row| row.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|f| !live.contains(f))
            .collect()
    };
    for flag in &stale {
        for table in [
            "switchyard_exposures",
            "switchyard_feedback",
            "switchyard_feedback_users",
            "switchyard_aggregates",
            "switchyard_exposure_counts",
            "switchyard_experiment_flags",
        ] {
            tx.execute(&format!("DELETE FROM {table} WHERE flag = ?1"), [flag])?;
        }
    }
    tx.commit()?;
    Ok(stale)
}

/// The secret `name`, stored as `fresh` when missing.
pub(super) fn secret(
    conn: &mut Connection,
    name: &str,
    fresh: &[u8; 32],
) -> Result<[u8; 32], DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO switchyard_secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![name, &fresh[..]],
    )?;
    let value: Vec<u8> = tx.query_row(
        "SELECT value FROM switchyard_secrets WHERE name = ?1",
        [name],
        |row| row.get(0),
    )?;
    tx.commit()?;
    <[u8; 32]>::try_from(value.as_slice())
        .map_err(|_| DbError::Corrupt(format!("the stored secret {name:?} is not 32 bytes")))
}

/// Records a batch of exposures and moves the running aggregates with them.
pub(super) fn record_exposures_db(
    conn: &mut Connection,
    batch: &[Exposure],
) -> Result<(), DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    record_exposures(&tx, batch)?;
    tx.commit()?;
    Ok(())
}

/// Inserts each row unless its event id is already stored (by an earlier batch or earlier in
/// this one), and folds the stored ones into the running aggregates; `true` for the rows
/// stored.
pub(super) fn insert_feedback_db(
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
    let fresh: Vec<&FeedbackRow> = rows
        .iter()
        .zip(&stored)
        .filter(|(_, s)| **s)
        .map(|(r, _)| r)
        .collect();
    fold_feedback(&tx, &fresh)?;
    tx.commit()?;
    Ok(stored)
}

pub(super) fn exposure_counts_db(
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
    let rows = stmt.query_map(params![flag, rule], count_row)?;
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

pub(super) fn feedback_aggs_db(
    conn: &Connection,
    flag: &str,
    rule: Option<&str>,
    since_ms: Option<u64>,
) -> Result<Vec<FeedbackAgg>, rusqlite::Error> {
    let since = ms_to_db(since_ms.unwrap_or(0));
    let mut stmt = conn.prepare_cached(FEEDBACK_AGGS_SQL)?;
    let rows = stmt.query_map(params![flag, since, rule], agg_row)?;
    rows.collect()
}

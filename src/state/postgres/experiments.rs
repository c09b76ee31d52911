//! PostgreSQL: exposures and feedback folded into the running aggregates
//! ([`crate::state::aggregates`]) with array statements, lost exposures, retention, and the
//! request-id key.
//!
//! Replicas ingest concurrently: every transaction that moves a flag's aggregates first takes
//! a transaction-scoped advisory lock per flag (in sorted order), so the read of the users'
//! rows and the write of the new figures are never interleaved with another replica's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tokio_postgres::Client;

use super::{committing, is_conflict, Fail, Shared, CONFLICT_RETRIES};
use crate::state::aggregates::{
    plan_exposures, plan_feedback, reduce_exposures, users_moved, AggDelta, AggKey, ExposureRow,
    GroupKey, UserFigures, UserKey,
};
use crate::state::{db_to_u64, ms_to_db, Exposure, FeedbackRow};

/// The advisory-lock key of one flag's aggregates (FNV-1a over schema and flag).
fn flag_lock(schema: &str, flag: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "switchyard_aggregates:"
        .bytes()
        .chain(schema.bytes())
        .chain([0u8])
        .chain(flag.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

async fn lock_flags<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    shared: &Shared,
    flags: impl Iterator<Item = &'a str>,
) -> Result<(), Fail> {
    let flags: BTreeSet<&str> = flags.collect();
    for flag in flags {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&flag_lock(&shared.schema, flag)],
        )
        .await?;
    }
    Ok(())
}

async fn exposure_rows(
    tx: &tokio_postgres::Transaction<'_>,
    shared: &Shared,
    keys: &[UserKey],
) -> Result<HashMap<UserKey, ExposureRow>, Fail> {
    let s = &shared.quoted_schema;
    let flags: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let users: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT e.flag, e.user_id, e.variation, e.rule, e.switched \
                 FROM {s}.switchyard_exposures e \
                 JOIN unnest($1::text[], $2::text[]) AS k(flag, user_id) \
                 ON e.flag = k.flag AND e.user_id = k.user_id"
            ),
            &[&flags, &users],
        )
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        out.insert(
            (row.try_get(0)?, row.try_get(1)?),
            ExposureRow {
                variation: row.try_get(2)?,
                rule: row.try_get(3)?,
                switched: row.try_get(4)?,
            },
        );
    }
    Ok(out)
}

async fn add_aggs(
    tx: &tokio_postgres::Transaction<'_>,
    shared: &Shared,
    aggs: &[(AggKey, AggDelta)],
) -> Result<(), Fail> {
    if aggs.is_empty() {
        return Ok(());
    }
    let s = &shared.quoted_schema;
    let text = |f: fn(&AggKey) -> &str| aggs.iter().map(|(k, _)| f(k)).collect::<Vec<_>>();
    let int = |f: fn(&AggDelta) -> i64| aggs.iter().map(|(_, d)| f(d)).collect::<Vec<_>>();
    let float = |f: fn(&AggDelta) -> f64| aggs.iter().map(|(_, d)| f(d)).collect::<Vec<_>>();
    tx.execute(
        &format!(
            "INSERT INTO {s}.switchyard_aggregates AS g \
             (flag, bucket, variation, metric, reporters, events, s, s2, m, m2, a, a2) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], \
                                  $6::int8[], $7::float8[], $8::float8[], $9::float8[], \
                                  $10::float8[], $11::float8[], $12::float8[]) \
             ON CONFLICT (flag, bucket, variation, metric) DO UPDATE SET \
             reporters = g.reporters + excluded.reporters, events = g.events + excluded.events, \
             s = g.s + excluded.s, s2 = g.s2 + excluded.s2, m = g.m + excluded.m, \
             m2 = g.m2 + excluded.m2, a = g.a + excluded.a, a2 = g.a2 + excluded.a2"
        ),
        &[
            &text(|k| &k.0),
            &text(|k| &k.1),
            &text(|k| &k.2),
            &text(|k| &k.3),
            &int(|d| d.reporters),
            &int(|d| d.events),
            &float(|d| d.s),
            &float(|d| d.s2),
            &float(|d| d.m),
            &float(|d| d.m2),
            &float(|d| d.a),
            &float(|d| d.a2),
        ],
    )
    .await?;
    Ok(())
}

async fn touch_flags<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    shared: &Shared,
    flags: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), Fail> {
    let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
    for (flag, at) in flags {
        let slot = latest.entry(flag).or_default();
        *slot = (*slot).max(at);
    }
    if latest.is_empty() {
        return Ok(());
    }
    let s = &shared.quoted_schema;
    let names: Vec<&str> = latest.keys().copied().collect();
    let ats: Vec<i64> = latest.values().map(|at| ms_to_db(*at)).collect();
    tx.execute(
        &format!(
            "INSERT INTO {s}.switchyard_experiment_flags AS x (flag, dropped, last_at_ms) \
             SELECT f, 0, at FROM unnest($1::text[], $2::int8[]) AS t(f, at) \
             ON CONFLICT (flag) DO UPDATE SET \
             last_at_ms = greatest(x.last_at_ms, excluded.last_at_ms)"
        ),
        &[&names, &ats],
    )
    .await?;
    Ok(())
}

/// Records a batch of exposures and moves the users' earlier feedback in the aggregates.
pub(super) async fn record_exposures(
    client: &mut Client,
    shared: &Shared,
    batch: &[Exposure],
) -> Result<(), Fail> {
    let reduced = reduce_exposures(batch);
    let keys: Vec<UserKey> = reduced
        .iter()
        .map(|(e, _)| (e.flag.clone(), e.user.clone()))
        .collect();
    let s = &shared.quoted_schema;
    let mut attempt = 0;
    loop {
        let result = async {
            let tx = client.transaction().await?;
            lock_flags(&tx, shared, reduced.iter().map(|(e, _)| e.flag.as_str())).await?;
            let existing = exposure_rows(&tx, shared, &keys).await?;
            let moved = users_moved(&reduced, &existing);
            if moved.is_empty() {
                return tx.commit().await.map_err(committing); // returning users only
            }
            let flags: Vec<&str> = moved.iter().map(|k| k.0.as_str()).collect();
            let users: Vec<&str> = moved.iter().map(|k| k.1.as_str()).collect();
            let rows = tx
                .query(
                    &format!(
                        "SELECT g.flag, g.user_id, g.variation, g.metric, g.n, g.s, g.m \
                         FROM {s}.switchyard_feedback_users g \
                         JOIN unnest($1::text[], $2::text[]) AS k(flag, user_id) \
                         ON g.flag = k.flag AND g.user_id = k.user_id"
                    ),
                    &[&flags, &users],
                )
                .await?;
            let mut groups: HashMap<UserKey, Vec<(String, String, UserFigures)>> = HashMap::new();
            for row in rows {
                groups
                    .entry((row.try_get(0)?, row.try_get(1)?))
                    .or_default()
                    .push((
                        row.try_get(2)?,
                        row.try_get(3)?,
                        UserFigures {
                            n: row.try_get(4)?,
                            s: row.try_get(5)?,
                            m: row.try_get(6)?,
                        },
                    ));
            }
            let plan = plan_exposures(&reduced, &existing, &groups);
            if !plan.inserts.is_empty() {
                let col = |f: fn(&Exposure) -> &str| {
                    plan.inserts.iter().map(|(e, _)| f(e)).collect::<Vec<_>>()
                };
                let rules: Vec<Option<&str>> =
                    plan.inserts.iter().map(|(e, _)| e.rule.as_deref()).collect();
                let ats: Vec<i64> = plan.inserts.iter().map(|(e, _)| ms_to_db(e.at_ms)).collect();
                let switched: Vec<bool> = plan.inserts.iter().map(|(_, sw)| *sw).collect();
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.switchyard_exposures \
                         (flag, user_id, variation, rule, first_at_ms, switched) \
                         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                                              $5::int8[], $6::bool[])"
                    ),
                    &[
                        &col(|e| &e.flag),
                        &col(|e| &e.user),
                        &col(|e| &e.variation),
                        &rules,
                        &ats,
                        &switched,
                    ],
                )
                .await?;
            }
            if !plan.switches.is_empty() {
                let flags: Vec<&str> = plan.switches.iter().map(|k| k.0.as_str()).collect();
                let users: Vec<&str> = plan.switches.iter().map(|k| k.1.as_str()).collect();
                tx.execute(
                    &format!(
                        "UPDATE {s}.switchyard_exposures e SET switched = TRUE \
                         FROM unnest($1::text[], $2::text[]) AS k(flag, user_id) \
                         WHERE e.flag = k.flag AND e.user_id = k.user_id"
                    ),
                    &[&flags, &users],
                )
                .await?;
            }
            if !plan.counts.is_empty() {
                let text = |f: fn(&(String, String, String)) -> &str| {
                    plan.counts.iter().map(|(k, _)| f(k)).collect::<Vec<_>>()
                };
                let users: Vec<i64> = plan.counts.iter().map(|(_, c)| c.0).collect();
                let switched: Vec<i64> = plan.counts.iter().map(|(_, c)| c.1).collect();
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.switchyard_exposure_counts AS c \
                         (flag, bucket, variation, users, switched) \
                         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], \
                                              $5::int8[]) \
                         ON CONFLICT (flag, bucket, variation) DO UPDATE SET \
                         users = c.users + excluded.users, switched = c.switched + excluded.switched"
                    ),
                    &[
                        &text(|k| &k.0),
                        &text(|k| &k.1),
                        &text(|k| &k.2),
                        &users,
                        &switched,
                    ],
                )
                .await?;
            }
            add_aggs(&tx, shared, &plan.aggs).await?;
            touch_flags(
                &tx,
                shared,
                plan.inserts.iter().map(|(e, _)| (e.flag.as_str(), e.at_ms)),
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
/// batches lock in the same order, and folds the stored ones into the aggregates; `true` for
/// the rows stored.
pub(super) async fn insert_feedback(
    client: &mut Client,
    shared: &Shared,
    rows: &[FeedbackRow],
) -> Result<Vec<bool>, Fail> {
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
        "INSERT INTO {s}.switchyard_feedback \
         (event_id, flag, variation, user_id, metric, value, at_ms) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                              $6::float8[], $7::int8[]) \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    );
    let mut attempt = 0;
    let inserted = loop {
        let result = async {
            let tx = client.transaction().await?;
            lock_flags(&tx, shared, unique.iter().map(|r| r.flag.as_str())).await?;
            let returned = tx
                .query(
                    &sql,
                    &[&ids, &flags, &variations, &users, &metrics, &values, &ats],
                )
                .await?;
            let inserted = returned
                .iter()
                .map(|row| row.try_get::<_, String>(0))
                .collect::<Result<HashSet<String>, _>>()?;
            // The stored events in the order they came.
            let fresh: Vec<&FeedbackRow> = rows
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    firsts.get(r.event_id.as_str()) == Some(i) && inserted.contains(&r.event_id)
                })
                .map(|(_, r)| r)
                .collect();
            fold_feedback(&tx, shared, &fresh).await?;
            tx.commit().await.map_err(committing)?;
            Ok(inserted)
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

async fn fold_feedback(
    tx: &tokio_postgres::Transaction<'_>,
    shared: &Shared,
    fresh: &[&FeedbackRow],
) -> Result<(), Fail> {
    if fresh.is_empty() {
        return Ok(());
    }
    let s = &shared.quoted_schema;
    let ukeys: Vec<UserKey> = fresh
        .iter()
        .map(|r| (r.flag.clone(), r.user.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let exposures = exposure_rows(tx, shared, &ukeys).await?;
    let gkeys: Vec<GroupKey> = fresh
        .iter()
        .map(|r| {
            (
                r.flag.clone(),
                r.user.clone(),
                r.variation.clone(),
                r.metric.clone(),
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let col = |f: fn(&GroupKey) -> &str| gkeys.iter().map(f).collect::<Vec<_>>();
    let rows = tx
        .query(
            &format!(
                "SELECT g.flag, g.user_id, g.variation, g.metric, g.n, g.s, g.m \
                 FROM {s}.switchyard_feedback_users g \
                 JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
                      AS k(flag, user_id, variation, metric) \
                 ON g.flag = k.flag AND g.user_id = k.user_id \
                    AND g.variation = k.variation AND g.metric = k.metric"
            ),
            &[
                &col(|k| &k.0),
                &col(|k| &k.1),
                &col(|k| &k.2),
                &col(|k| &k.3),
            ],
        )
        .await?;
    let mut users: HashMap<GroupKey, UserFigures> = HashMap::with_capacity(rows.len());
    for row in rows {
        users.insert(
            (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ),
            UserFigures {
                n: row.try_get(4)?,
                s: row.try_get(5)?,
                m: row.try_get(6)?,
            },
        );
    }
    let plan = plan_feedback(fresh, &exposures, users);
    if !plan.users.is_empty() {
        let text =
            |f: fn(&GroupKey) -> &str| plan.users.iter().map(|(k, _)| f(k)).collect::<Vec<_>>();
        let n: Vec<i64> = plan.users.iter().map(|(_, f)| f.n).collect();
        let sums: Vec<f64> = plan.users.iter().map(|(_, f)| f.s).collect();
        let maxes: Vec<f64> = plan.users.iter().map(|(_, f)| f.m).collect();
        tx.execute(
            &format!(
                "INSERT INTO {s}.switchyard_feedback_users \
                 (flag, user_id, variation, metric, n, s, m) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                                      $5::int8[], $6::float8[], $7::float8[]) \
                 ON CONFLICT (flag, user_id, variation, metric) DO UPDATE SET \
                 n = excluded.n, s = excluded.s, m = excluded.m"
            ),
            &[
                &text(|k| &k.0),
                &text(|k| &k.1),
                &text(|k| &k.2),
                &text(|k| &k.3),
                &n,
                &sums,
                &maxes,
            ],
        )
        .await?;
    }
    add_aggs(tx, shared, &plan.aggs).await?;
    touch_flags(tx, shared, fresh.iter().map(|r| (r.flag.as_str(), r.at_ms))).await
}

pub(super) async fn record_losses(
    client: &Client,
    shared: &Shared,
    lost: &[(String, u64)],
) -> Result<(), Fail> {
    let s = &shared.quoted_schema;
    let flags: Vec<&str> = lost.iter().map(|(f, _)| f.as_str()).collect();
    let n: Vec<i64> = lost
        .iter()
        .map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX))
        .collect();
    client
        .execute(
            &format!(
                "INSERT INTO {s}.switchyard_experiment_flags AS x (flag, dropped, last_at_ms) \
                 SELECT f, n, 0 FROM unnest($1::text[], $2::int8[]) AS t(f, n) \
                 ON CONFLICT (flag) DO UPDATE SET dropped = x.dropped + excluded.dropped"
            ),
            &[&flags, &n],
        )
        .await?;
    Ok(())
}

pub(super) async fn losses(client: &Client, shared: &Shared, flag: &str) -> Result<u64, Fail> {
    let s = &shared.quoted_schema;
    let row = client
        .query_opt(
            &format!("SELECT dropped FROM {s}.switchyard_experiment_flags WHERE flag = $1"),
            &[&flag],
        )
        .await?;
    Ok(match row {
        Some(row) => db_to_u64(row.try_get(0)?),
        None => 0,
    })
}

pub(super) async fn prune_finished(
    client: &mut Client,
    shared: &Shared,
    live: &[String],
    before: i64,
) -> Result<Vec<String>, Fail> {
    let s = &shared.quoted_schema;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "SELECT flag FROM {s}.switchyard_experiment_flags \
                 WHERE last_at_ms < $1 AND NOT (flag = ANY($2::text[])) ORDER BY flag"
            ),
            &[&before, &live],
        )
        .await?;
    let stale = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    lock_flags(&tx, shared, stale.iter().map(String::as_str)).await?;
    for table in [
        "switchyard_exposures",
        "switchyard_feedback",
        "switchyard_feedback_users",
        "switchyard_aggregates",
        "switchyard_exposure_counts",
        "switchyard_experiment_flags",
    ] {
        tx.execute(
            &format!("DELETE FROM {s}.{table} WHERE flag = ANY($1::text[])"),
            &[&stale],
        )
        .await?;
    }
    tx.commit().await.map_err(committing)?;
    Ok(stale)
}

pub(super) async fn secret(
    client: &Client,
    shared: &Shared,
    name: &str,
    fresh: &[u8; 32],
) -> Result<[u8; 32], Fail> {
    let s = &shared.quoted_schema;
    client
        .execute(
            &format!(
                "INSERT INTO {s}.switchyard_secrets (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING"
            ),
            &[&name, &&fresh[..]],
        )
        .await?;
    let value: Vec<u8> = client
        .query_one(
            &format!("SELECT value FROM {s}.switchyard_secrets WHERE name = $1"),
            &[&name],
        )
        .await?
        .try_get(0)?;
    <[u8; 32]>::try_from(value.as_slice()).map_err(|_| {
        Fail::State(crate::state::StateError::Storage(format!(
            "PostgreSQL state store {}: the stored secret {name:?} is not 32 bytes",
            shared.location
        )))
    })
}

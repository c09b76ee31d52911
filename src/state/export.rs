//! Reading exposures and feedback out for export, a page at a time: keyset pages (ordered by
//! time, then by the row's key) so a job that resumes after the last row it read loses and
//! duplicates nothing, however long it waited.

use super::{db_to_u64, ms_to_db, Backend, FeedbackRow, StateError, Store};

/// One user's first exposure to a flag, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredExposure {
    /// The flag.
    pub flag: String,
    /// The variation first served.
    pub variation: String,
    /// The rule that chose it, if known.
    pub rule: Option<String>,
    /// The bucketing id.
    pub user: String,
    /// Unix milliseconds of the first exposure.
    pub first_at_ms: u64,
    /// The user was later served another variation (left out of results).
    pub switched: bool,
}

/// Where an exposure page starts: after this (first_at_ms, flag, user).
pub type ExposureKey = (u64, String, String);
/// Where a feedback page starts: after this (at_ms, event_id).
pub type FeedbackKey = (u64, String);

/// Which feedback events a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackKind {
    /// Every event (online eval scores included: they are feedback events too).
    All,
    /// Only online eval scores (event ids starting `eval:`).
    Evals,
}

/// A page request.
#[derive(Debug, Clone)]
pub struct PageQuery<K> {
    /// Only this flag's rows.
    pub flag: Option<String>,
    /// Only rows at or after this (unix ms).
    pub since_ms: u64,
    /// Resume after this row.
    pub after: Option<K>,
    /// At most this many rows.
    pub limit: usize,
}

impl Store {
    /// A page of first exposures, ordered by (first_at_ms, flag, user).
    pub async fn export_exposures(
        &self,
        q: &PageQuery<ExposureKey>,
    ) -> Result<Vec<StoredExposure>, StateError> {
        let (after_ms, after_flag, after_user) = match &q.after {
            Some((ms, f, u)) => (ms_to_db(*ms), f.clone(), u.clone()),
            None => (-1, String::new(), String::new()),
        };
        let (flag, since, limit) = (q.flag.clone(), ms_to_db(q.since_ms), limit(q.limit));
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read("exporting exposures", move |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT flag, user_id, variation, rule, first_at_ms, switched \
                         FROM switchyard_exposures \
                         WHERE (?1 IS NULL OR flag = ?1) AND first_at_ms >= ?2 \
                           AND (first_at_ms, flag, user_id) > (?3, ?4, ?5) \
                         ORDER BY first_at_ms, flag, user_id LIMIT ?6",
                    )?;
                    let rows = stmt.query_map(
                        rusqlite::params![flag, since, after_ms, after_flag, after_user, limit],
                        |r| {
                            Ok(StoredExposure {
                                flag: r.get(0)?,
                                user: r.get(1)?,
                                variation: r.get(2)?,
                                rule: r.get(3)?,
                                first_at_ms: db_to_u64(r.get(4)?),
                                switched: r.get::<_, i64>(5)? != 0,
                            })
                        },
                    )?;
                    rows.collect()
                })
                .await
            }
            Backend::Postgres(s) => {
                let sql = format!(
                    "SELECT flag, user_id, variation, rule, first_at_ms, switched \
                     FROM {}.switchyard_exposures \
                     WHERE ($1::text IS NULL OR flag = $1) AND first_at_ms >= $2 \
                       AND (first_at_ms, flag, user_id) > ($3, $4, $5) \
                     ORDER BY first_at_ms, flag, user_id LIMIT $6",
                    s.quoted_schema()
                );
                let rows = s
                    .read_rows(
                        "exporting exposures",
                        &sql,
                        &[&flag, &since, &after_ms, &after_flag, &after_user, &limit],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(StoredExposure {
                            flag: r.try_get(0)?,
                            user: r.try_get(1)?,
                            variation: r.try_get(2)?,
                            rule: r.try_get(3)?,
                            first_at_ms: db_to_u64(r.try_get(4)?),
                            switched: r.try_get(5)?,
                        })
                    })
                    .collect::<Result<_, tokio_postgres::Error>>()
                    .map_err(|e| StateError::Storage(format!("exporting exposures: {e}")))
            }
        }
    }

    /// A page of feedback events, ordered by (at_ms, event_id).
    pub async fn export_feedback(
        &self,
        q: &PageQuery<FeedbackKey>,
        kind: FeedbackKind,
    ) -> Result<Vec<FeedbackRow>, StateError> {
        let (after_ms, after_id) = match &q.after {
            Some((ms, id)) => (ms_to_db(*ms), id.clone()),
            None => (-1, String::new()),
        };
        let (flag, since, limit) = (q.flag.clone(), ms_to_db(q.since_ms), limit(q.limit));
        let prefix = match kind {
            FeedbackKind::All => "%",
            FeedbackKind::Evals => "eval:%",
        };
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read("exporting feedback", move |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT event_id, flag, variation, user_id, metric, value, at_ms \
                         FROM switchyard_feedback \
                         WHERE (?1 IS NULL OR flag = ?1) AND at_ms >= ?2 \
                           AND (at_ms, event_id) > (?3, ?4) AND event_id LIKE ?5 \
                         ORDER BY at_ms, event_id LIMIT ?6",
                    )?;
                    let rows = stmt.query_map(
                        rusqlite::params![flag, since, after_ms, after_id, prefix, limit],
                        |r| {
                            Ok(FeedbackRow {
                                event_id: r.get(0)?,
                                flag: r.get(1)?,
                                variation: r.get(2)?,
                                user: r.get(3)?,
                                metric: r.get(4)?,
                                value: r.get(5)?,
                                at_ms: db_to_u64(r.get(6)?),
                            })
                        },
                    )?;
                    rows.collect()
                })
                .await
            }
            Backend::Postgres(s) => {
                let sql = format!(
                    "SELECT event_id, flag, variation, user_id, metric, value, at_ms \
                     FROM {}.switchyard_feedback \
                     WHERE ($1::text IS NULL OR flag = $1) AND at_ms >= $2 \
                       AND (at_ms, event_id) > ($3, $4) AND event_id LIKE $5 \
                     ORDER BY at_ms, event_id LIMIT $6",
                    s.quoted_schema()
                );
                let rows = s
                    .read_rows(
                        "exporting feedback",
                        &sql,
                        &[&flag, &since, &after_ms, &after_id, &prefix, &limit],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(FeedbackRow {
                            event_id: r.try_get(0)?,
                            flag: r.try_get(1)?,
                            variation: r.try_get(2)?,
                            user: r.try_get(3)?,
                            metric: r.try_get(4)?,
                            value: r.try_get(5)?,
                            at_ms: db_to_u64(r.try_get(6)?),
                        })
                    })
                    .collect::<Result<_, tokio_postgres::Error>>()
                    .map_err(|e| StateError::Storage(format!("exporting feedback: {e}")))
            }
        }
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n.clamp(1, 100_000)).unwrap_or(1)
}

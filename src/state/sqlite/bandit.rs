//! SQLite: bandit epoch records and first exposures for the sticky cache.

use rusqlite::{params, OptionalExtension};

use super::{db_to_u64, ms_to_db, run, run_report, sql_error, SqliteStore};
use crate::state::StateError;

impl SqliteStore {
    pub(in crate::state) async fn insert_bandit_epoch(
        &self,
        flag: &str,
        epoch: u64,
        at_ms: u64,
        record: &str,
    ) -> Result<bool, StateError> {
        let (flag, record) = (flag.to_owned(), record.to_owned());
        run(self.shared.clone(), move |db, location| {
            db.conn
                .execute(
                    "INSERT OR IGNORE INTO switchyard_bandit_epochs (flag, epoch, at_ms, record) VALUES (?1, ?2, ?3, ?4)",
                    params![flag, ms_to_db(epoch), ms_to_db(at_ms), record],
                )
                .map(|n| n == 1)
                .map_err(|e| sql_error(location, "recording a bandit epoch", &e))
        })
        .await
    }

    pub(in crate::state) async fn bandit_epochs(
        &self,
        flag: &str,
        epoch: Option<u64>,
        limit: u32,
    ) -> Result<Vec<String>, StateError> {
        let flag = flag.to_owned();
        run(self.shared.clone(), move |db, location| {
            let fail = |e: rusqlite::Error| sql_error(location, "reading bandit epochs", &e);
            match epoch {
                Some(n) => db
                    .conn
                    .query_row(
                        "SELECT record FROM switchyard_bandit_epochs WHERE flag = ?1 AND epoch = ?2",
                        params![flag, ms_to_db(n)],
                        |r| r.get(0),
                    )
                    .optional()
                    .map(|r| r.into_iter().collect())
                    .map_err(fail),
                None => {
                    let mut st = db
                        .conn
                        .prepare_cached(
                            "SELECT record FROM switchyard_bandit_epochs WHERE flag = ?1 ORDER BY epoch DESC LIMIT ?2",
                        )
                        .map_err(fail)?;
                    let rows = st
                        .query_map(params![flag, i64::from(limit)], |r| r.get(0))
                        .map_err(fail)?;
                    rows.collect::<Result<Vec<String>, _>>().map_err(fail)
                }
            }
        })
        .await
    }

    pub(in crate::state) async fn first_exposures(
        &self,
        flag: &str,
        rule: &str,
        since_ms: u64,
        limit: u32,
    ) -> Result<Vec<(String, String, u64)>, StateError> {
        let (flag, rule) = (flag.to_owned(), rule.to_owned());
        run_report(self.shared.clone(), move |conn, location| {
            let fail = |e: rusqlite::Error| sql_error(location, "reading first exposures", &e);
            let mut st = conn
                .prepare_cached(
                    "SELECT user_id, variation, first_at_ms FROM switchyard_exposures
                     WHERE flag = ?1 AND rule = ?2 AND switched = 0 AND first_at_ms >= ?3
                     ORDER BY first_at_ms LIMIT ?4",
                )
                .map_err(fail)?;
            let rows = st
                .query_map(
                    params![flag, rule, ms_to_db(since_ms), i64::from(limit)],
                    |r| Ok((r.get(0)?, r.get(1)?, db_to_u64(r.get(2)?))),
                )
                .map_err(fail)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(fail)
        })
        .await
    }
}

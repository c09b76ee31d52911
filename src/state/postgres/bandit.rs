//! PostgreSQL: bandit epoch records and first exposures for the sticky cache.

use super::{db_to_u64, ms_to_db, Fail, PgStore};
use crate::state::StateError;

impl PgStore {
    pub(in crate::state) async fn insert_bandit_epoch(
        &self,
        flag: &str,
        epoch: u64,
        at_ms: u64,
        record: &str,
    ) -> Result<bool, StateError> {
        let s = &self.shared.quoted_schema;
        let sql = format!(
            "INSERT INTO {s}.switchyard_bandit_epochs (flag, epoch, at_ms, record) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        );
        let sql = &sql;
        let (epoch, at_ms) = (ms_to_db(epoch), ms_to_db(at_ms));
        self.with_conn("recording a bandit epoch", |conn| async move {
            let result = conn
                .client
                .execute(sql, &[&flag, &epoch, &at_ms, &record])
                .await
                .map(|n| n == 1)
                .map_err(Fail::from);
            (conn, result)
        })
        .await
    }

    pub(in crate::state) async fn bandit_epochs(
        &self,
        flag: &str,
        epoch: Option<u64>,
        limit: u32,
    ) -> Result<Vec<String>, StateError> {
        let s = &self.shared.quoted_schema;
        let one = format!(
            "SELECT record FROM {s}.switchyard_bandit_epochs WHERE flag = $1 AND epoch = $2"
        );
        let many = format!(
            "SELECT record FROM {s}.switchyard_bandit_epochs WHERE flag = $1 ORDER BY epoch DESC LIMIT $2"
        );
        let (one, many) = (&one, &many);
        let limit = i64::from(limit);
        self.with_conn("reading bandit epochs", |conn| async move {
            let result = async {
                let rows = match epoch {
                    Some(n) => conn.client.query(one, &[&flag, &ms_to_db(n)]).await?,
                    None => conn.client.query(many, &[&flag, &limit]).await?,
                };
                rows.iter()
                    .map(|r| r.try_get::<_, String>(0).map_err(Fail::from))
                    .collect::<Result<Vec<_>, Fail>>()
            }
            .await;
            (conn, result)
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
        let s = &self.shared.quoted_schema;
        let sql = format!(
            "SELECT user_id, variation, first_at_ms FROM {s}.switchyard_exposures
             WHERE flag = $1 AND rule = $2 AND NOT switched AND first_at_ms >= $3
             ORDER BY first_at_ms LIMIT $4"
        );
        let sql = &sql;
        let (since, limit) = (ms_to_db(since_ms), i64::from(limit));
        self.with_report_conn("reading first exposures", |conn| async move {
            let result = async {
                let rows = conn
                    .client
                    .query(sql, &[&flag, &rule, &since, &limit])
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<_, String>(0)?,
                            r.try_get::<_, String>(1)?,
                            db_to_u64(r.try_get::<_, i64>(2)?),
                        ))
                    })
                    .collect::<Result<Vec<_>, Fail>>()
            }
            .await;
            (conn, result)
        })
        .await
    }
}

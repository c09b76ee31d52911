//! Bandit epoch records (one immutable row per flag and epoch, the record as JSON text so it
//! reads back byte for byte) and first exposures for the bandit's sticky cache.

use super::{Backend, StateError, Store};

impl Store {
    /// Stores an epoch's record unless that (flag, epoch) is recorded already; `true` when
    /// this call stored it. Durable before it returns.
    pub async fn insert_bandit_epoch(
        &self,
        flag: &str,
        epoch: u64,
        at_ms: u64,
        record: &str,
    ) -> Result<bool, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.insert_bandit_epoch(flag, epoch, at_ms, record).await,
            Backend::Postgres(s) => s.insert_bandit_epoch(flag, epoch, at_ms, record).await,
        }
    }

    /// The records of a flag's epochs, newest first (at most `limit`, clamped to 1..=1000),
    /// or only epoch `epoch`.
    pub async fn bandit_epochs(
        &self,
        flag: &str,
        epoch: Option<u64>,
        limit: u32,
    ) -> Result<Vec<String>, StateError> {
        let limit = limit.clamp(1, 1000);
        match &self.backend {
            Backend::Sqlite(s) => s.bandit_epochs(flag, epoch, limit).await,
            Backend::Postgres(s) => s.bandit_epochs(flag, epoch, limit).await,
        }
    }

    /// First exposures in `rule` at or after `since_ms`, oldest first, at most `limit`:
    /// (user, variation, first exposure unix ms), users who switched left out.
    pub async fn first_exposures(
        &self,
        flag: &str,
        rule: &str,
        since_ms: u64,
        limit: u32,
    ) -> Result<Vec<(String, String, u64)>, StateError> {
        match &self.backend {
            Backend::Sqlite(s) => s.first_exposures(flag, rule, since_ms, limit).await,
            Backend::Postgres(s) => s.first_exposures(flag, rule, since_ms, limit).await,
        }
    }
}

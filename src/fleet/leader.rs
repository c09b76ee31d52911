//! Leader election over the state store: the replica holding a PostgreSQL session-level
//! advisory lock (on a connection of its own) leads. PostgreSQL releases the lock when that
//! session ends, so a leader that dies (even by SIGKILL: the kernel closes its socket) or loses
//! the database gives up leadership at once, and a follower, retrying every second, takes
//! over. The leader checks its session with a round trip every second and steps down when
//! it fails. On shutdown the lock is released first, so a draining replica stops acting.
//!
//! The lock connection's `application_name` carries the replica's name, so followers can
//! tell who leads (`pg_locks` joined with `pg_stat_activity`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use crate::app::App;
use crate::state::LeaderLock;

/// How often a follower tries the lock and the leader checks its session.
const TICK: Duration = Duration::from_secs(1);
/// Budget for connecting and for each round trip.
const BUDGET: Duration = Duration::from_secs(2);
/// Prefix of the lock connection's `application_name`.
const APP_PREFIX: &str = "switchyard-leader:";

/// The lock's session: the client and the task driving its connection.
struct Session {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing the socket ends the session, which releases the lock.
        self.driver.abort();
    }
}

/// Competes for leadership until `stop` turns true.
pub(super) async fn run(app: Arc<App>, lock: LeaderLock, mut stop: watch::Receiver<bool>) {
    let fleet = &app.fleet;
    let mut session: Option<Session> = None;
    let mut last_error: Option<String> = None;
    loop {
        if session.as_ref().is_some_and(|s| s.client.is_closed()) {
            session = None;
        }
        if session.is_none() {
            match connect(&lock, fleet.replica()).await {
                Ok(s) => {
                    last_error = None;
                    session = Some(s);
                }
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(store = %lock.location, error = %e, "leader election: cannot reach the state store");
                        last_error = Some(e);
                    }
                }
            }
        }
        let leading = match &session {
            None => false,
            Some(s) if fleet.is_leader() => still_held(s).await,
            Some(s) => try_lock(s, &lock).await,
        };
        match (&session, leading) {
            (Some(s), false) if !s.client.is_closed() => {
                let holder = holder(s, &lock).await;
                fleet.set_leader(&app.metrics, false, holder);
            }
            (_, false) => {
                // The session failed: drop it (and the lock with it) and reconnect next tick.
                session = None;
                fleet.set_leader(&app.metrics, false, None);
            }
            (_, true) => {
                let me = fleet.replica().to_owned();
                fleet.set_leader(&app.metrics, true, Some(me));
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    if fleet.is_leader() {
        tracing::info!("leaving the lead: shutting down");
    }
    fleet.set_leader(&app.metrics, false, None);
    drop(session);
}

async fn connect(lock: &LeaderLock, replica: &str) -> Result<Session, String> {
    let mut config = lock.config.clone();
    let mut name = format!("{APP_PREFIX}{replica}");
    // PostgreSQL keeps 63 bytes of an application name.
    while name.len() > 63 {
        name.pop();
    }
    config.application_name(&name);
    let (client, connection) = match tokio::time::timeout(BUDGET, config.connect(NoTls)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(format!("{}: {e}", lock.location)),
        Err(_) => {
            return Err(format!(
                "{}: no answer within {} s",
                lock.location,
                BUDGET.as_secs()
            ))
        }
    };
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Session { client, driver })
}

async fn try_lock(s: &Session, lock: &LeaderLock) -> bool {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&lock.key];
    let attempt = s
        .client
        .query_one("SELECT pg_try_advisory_lock($1)", &params);
    match tokio::time::timeout(BUDGET, attempt).await {
        Ok(Ok(row)) => row.try_get::<_, bool>(0).unwrap_or(false),
        _ => false,
    }
}

async fn still_held(s: &Session) -> bool {
    matches!(
        tokio::time::timeout(BUDGET, s.client.simple_query("SELECT 1")).await,
        Ok(Ok(_))
    )
}

/// The replica holding the lock, from its session's `application_name`.
async fn holder(s: &Session, lock: &LeaderLock) -> Option<String> {
    let key = lock.key as u64;
    let (high, low) = ((key >> 32) as i64, (key & 0xffff_ffff) as i64);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&high, &low];
    let q = s.client.query_opt(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         LIMIT 1",
        &params,
    );
    match tokio::time::timeout(BUDGET, q).await {
        Ok(Ok(Some(row))) => row
            .try_get::<_, String>(0)
            .ok()
            .map(|n| n.strip_prefix(APP_PREFIX).unwrap_or(&n).to_owned()),
        _ => None,
    }
}

//! The subscription: a dedicated connection LISTENs on the state channel for as long as the
//! store lives, signals other replicas' changes, checks itself with a round trip every few
//! seconds and reconnects (signalling once, since notifications may have been missed).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Notification};

use super::{connect, describe, pg_error, Conn, Shared, CHANNEL, LISTEN_HEALTH_EVERY, OP_TIMEOUT};
use crate::state::{backoff, signal, StateError};

/// How one LISTEN session ended.
enum Ended {
    /// The last clone of the store was dropped: stop.
    StoreDropped,
    /// The connection was lost: reconnect.
    Lost(String),
}

/// Keeps a LISTEN connection up for as long as the store lives, signalling other replicas'
/// changes; after a reconnect it signals once, since notifications may have been missed.
pub(super) async fn listen_loop(weak: Weak<Shared>) {
    let mut failures = 0u32;
    let mut connected_before = false;
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        match listen(&shared).await {
            Ok(mut session) => {
                if failures > 0 || connected_before {
                    tracing::info!(store = %shared.location, "state store subscription reconnected");
                }
                failures = 0;
                // First session: resync only if the state moved since this store last looked;
                // later sessions: always, since notifications may have been lost.
                let moved = session.version != shared.seen_version.load(Ordering::SeqCst);
                if connected_before || moved {
                    signal(&shared.tx);
                }
                connected_before = true;
                let schema = shared.schema.clone();
                let instance = shared.instance;
                drop(shared); // do not keep the store alive
                let ended = pump(&weak, &mut session, &schema, instance).await;
                session.conn.driver.abort();
                match ended {
                    Ended::StoreDropped => return,
                    Ended::Lost(why) => {
                        if let Some(shared) = weak.upgrade() {
                            tracing::warn!(store = %shared.location, error = %why,
                                "state store subscription lost its connection; reconnecting");
                        }
                        // Reconnect promptly the first time.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "state store subscription cannot listen; retrying");
                } else {
                    tracing::debug!(error = %e, attempt = failures, "state store subscription retry failed");
                }
                drop(shared);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

struct Session {
    conn: Conn,
    notifications: mpsc::UnboundedReceiver<Notification>,
    /// The database's version right after LISTEN took effect.
    version: i64,
}

/// Connects, LISTENs and reads the current version.
async fn listen(shared: &Shared) -> Result<Session, StateError> {
    let (client, mut connection) = connect(shared).await?;
    let (notify_tx, notifications) = mpsc::unbounded_channel();
    let driver = shared.handle.spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if notify_tx.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %describe(&e), "state store LISTEN connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    let conn = Conn { client, driver };
    let s = &shared.quoted_schema;
    let setup = async {
        conn.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await?;
        conn.client
            .query_one(
                &format!("SELECT version FROM {s}.switchyard_meta WHERE id = 1"),
                &[],
            )
            .await?
            .try_get::<_, i64>(0)
    };
    let version = match tokio::time::timeout(OP_TIMEOUT, setup).await {
        Ok(Ok(version)) => version,
        Ok(Err(e)) => {
            return Err(pg_error(
                &shared.location,
                "starting to listen",
                &e,
                conn.client.is_closed(),
            ))
        }
        Err(_) => {
            return Err(StateError::Unavailable(format!(
                "PostgreSQL state store {}: starting to listen: no answer within {} s",
                shared.location,
                OP_TIMEOUT.as_secs()
            )))
        }
    };
    Ok(Session {
        conn,
        notifications,
        version,
    })
}

/// Forwards notifications until the connection is lost or the store is dropped; checks the
/// connection with a round trip every few seconds so a silently dead peer is noticed.
async fn pump(weak: &Weak<Shared>, session: &mut Session, schema: &str, instance: u64) -> Ended {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            notification = session.notifications.recv() => {
                let Some(notification) = notification else {
                    return Ended::Lost("connection closed".into());
                };
                let Some(shared) = weak.upgrade() else {
                    return Ended::StoreDropped;
                };
                if is_foreign(notification.payload(), schema, instance) {
                    signal(&shared.tx);
                }
            }
            _ = tick.tick() => {
                if weak.strong_count() == 0 {
                    return Ended::StoreDropped;
                }
                ticks += 1;
                if ticks >= LISTEN_HEALTH_EVERY {
                    ticks = 0;
                    let probe = session.conn.client.simple_query("SELECT 1");
                    match tokio::time::timeout(OP_TIMEOUT, probe).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(describe(&e)),
                        Err(_) => return Ended::Lost("health check got no answer".into()),
                    }
                }
            }
        }
    }
}

/// `schema instance-hex version`.
pub(super) fn notify_payload(schema: &str, instance: u64, version: i64) -> String {
    format!("{schema} {instance:x} {version}")
}

/// Whether a notification on the channel reports a change by another store on our schema.
/// Unparseable payloads count as foreign: a needless resync is harmless, a missed one is not.
fn is_foreign(payload: &str, schema: &str, instance: u64) -> bool {
    let mut parts = payload.split(' ');
    match (parts.next(), parts.next()) {
        (Some(their_schema), Some(their_instance)) => {
            their_schema == schema && u64::from_str_radix(their_instance, 16) != Ok(instance)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn own_notifications_are_not_foreign() {
        let payload = notify_payload("sy", 0xabc, 7);
        assert_eq!(payload, "sy abc 7");
        assert!(!is_foreign(&payload, "sy", 0xabc));
        assert!(is_foreign(&payload, "sy", 0xabd));
        assert!(!is_foreign(&payload, "other", 0xabd));
        assert!(is_foreign("garbage", "sy", 1));
    }
}

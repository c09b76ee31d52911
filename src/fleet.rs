//! A fleet: N replicas behind a load balancer sharing one state store and one Prometheus.
//!
//! Two ideas live here:
//!
//! - **Exactly one replica acts** ([`leader`]). The loops that change state on their own
//!   (rollout gates advancing or rolling back, alert actions) act only on the replica holding
//!   the fleet's lease: a PostgreSQL advisory lock on a connection of its own. On SQLite the
//!   single process leads. Every replica still serves traffic and evaluates the read-only
//!   views (gate status, alert levels). `switchyard_leader` is 1 on the leader, and `/readyz`
//!   says which replica leads.
//! - **Fleet-wide figures** ([`figures`], [`prometheus`], [`queries`]). A rollout gate or an
//!   `[[alerts]]` entry with `source = "prometheus"` reads its figures from Prometheus' HTTP
//!   API (`[fleet] prometheus_url`), aggregated across replicas, instead of this process's
//!   counters (`source = "local"`, the default). When Prometheus is unreachable or answers
//!   nonsense, gates fail closed (they do not advance and say why in the rollout status),
//!   alerts show `unknown` and act on nothing, and `switchyard_prometheus_queries_total
//!   {result="failed"}` counts the failed queries.

pub mod figures;
pub mod leader;
pub mod probe;
pub mod prometheus;
pub mod queries;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::app::App;
use crate::metrics::Metrics;

/// Fleet membership of this replica: its name, whether it leads, the fleet figures last read.
#[derive(Debug)]
pub struct Fleet {
    replica: String,
    leader: AtomicBool,
    /// The replica last seen leading (this one, another, or unknown).
    leader_replica: Mutex<Option<String>>,
    /// Fleet figures of each Prometheus-sourced gate, by (flag, rule).
    gates: DashMap<(String, String), figures::GateReading>,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new(replica_name())
    }
}

impl Fleet {
    /// A replica called `replica`, not leading until the election says so.
    pub fn new(replica: String) -> Fleet {
        Fleet {
            replica,
            leader: AtomicBool::new(false),
            leader_replica: Mutex::new(None),
            gates: DashMap::new(),
        }
    }

    /// This replica's name (`SWITCHYARD_REPLICA`, else the host name and process id).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether this replica runs the acting loops now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    fn set_leader(&self, metrics: &Metrics, leading: bool, holder: Option<String>) {
        let was = self.leader.swap(leading, Ordering::SeqCst);
        metrics.leader.set(i64::from(leading));
        if was != leading {
            if leading {
                tracing::info!(replica = %self.replica, "leading the fleet: acting loops run here");
            } else {
                tracing::info!(replica = %self.replica, "no longer leading the fleet");
            }
        }
        if let Ok(mut h) = self.leader_replica.lock() {
            *h = holder;
        }
    }

    /// The `fleet` member of `/readyz`: `{"replica", "leader", "leader_replica"}`.
    pub fn readyz_json(&self) -> Value {
        let holder = self.leader_replica.lock().ok().and_then(|h| h.clone());
        json!({
            "replica": self.replica,
            "leader": self.is_leader(),
            "leader_replica": holder,
        })
    }
}

/// The replica's name: `SWITCHYARD_REPLICA`, else `<host name>-<process id>`.
fn replica_name() -> String {
    if let Some(name) = std::env::var("SWITCHYARD_REPLICA")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        return name.trim().to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".into());
    format!("{host}-{}", std::process::id())
}

/// Starts the election: on PostgreSQL the replicas compete for the lock; on SQLite this
/// process leads at once.
pub fn spawn(app: &Arc<App>, stop: watch::Receiver<bool>) {
    match app.store.leader_lock() {
        None => {
            let me = app.fleet.replica().to_owned();
            app.fleet.set_leader(&app.metrics, true, Some(me));
        }
        Some(lock) => {
            tokio::spawn(leader::run(app.clone(), lock, stop));
        }
    }
}

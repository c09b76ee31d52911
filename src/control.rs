//! The control loops that run beside the request path: runtime-state sync across replicas,
//! rollout gates (auto-advance, auto-rollback), and config reload on file change or SIGHUP.
//!
//! Every replica evaluates gates (their status is a read-only view); only the fleet's leader
//! ([`crate::fleet`]) advances or rolls back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::admin::api::gate_verdict;
use crate::app::App;
use crate::clock::now_ms;
use crate::state::Change;

/// How often the state is reloaded from the store even without a notification.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// Starts every control loop; they end when `stop` turns true.
pub fn spawn(app: &Arc<App>, stop: watch::Receiver<bool>) {
    crate::fleet::spawn(app, stop.clone());
    tokio::spawn(state_sync(app.clone(), stop.clone()));
    tokio::spawn(gates(app.clone(), stop.clone()));
    crate::alerts::spawn(app, stop.clone());
    crate::sources::spawn(app, stop.clone());
    crate::experiments::runtime::spawn(app, stop.clone());
    crate::bandit::run::spawn(app, stop.clone());
    if app.config_path.is_some() {
        tokio::spawn(file_watch(app.clone(), stop.clone()));
        // Registered here, before any request is served, so a SIGHUP sent once the proxy
        // answers always reloads (the task below only waits on it).
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => {
                tokio::spawn(sighup(app.clone(), stop.clone(), hup));
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP reloads are off: the signal cannot be handled")
            }
        }
    }
    crate::console::spawn(app, stop);
}

async fn state_sync(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut changes = app.store.subscribe();
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    // The store's notifier ended: fall back on the periodic resync.
                    changes = app.store.subscribe();
                    tick.tick().await;
                }
                app.resync().await;
            }
            _ = tick.tick() => app.resync().await,
        }
    }
}

async fn gates(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        let every = app.live.load().config.server.gate_interval;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => evaluate_gates(&app).await,
        }
    }
}

/// One pass over every rollout: publishes gate status, rolls back on a breach, advances when
/// `auto_advance` is on and the gate holds. Actions are audited with actor `gate`, and taken
/// only on the fleet's leader.
pub async fn evaluate_gates(app: &Arc<App>) {
    crate::fleet::figures::refresh_gates(app).await;
    let leads = app.fleet.is_leader();
    let live = app.live.load_full();
    for (i, flag) in live.config.flags.iter().enumerate() {
        for (r, rule) in flag.rules.iter().enumerate() {
            let Some(ro) = &rule.rollout else { continue };
            let rt = &live.runtime[i];
            let stage = rt.stages[r];
            let verdict = gate_verdict(app, &live, i, flag, r);
            app.metrics
                .gate_met
                .with_label_values(&[&flag.key, &rule.id])
                .set(i64::from(verdict.pass));
            if !leads {
                continue;
            }
            if !verdict.rollback.is_empty() && stage > 0 && rt.enabled {
                let reason = format!("automatic rollback: {}", verdict.rollback.join("; "));
                tracing::warn!(flag = %flag.key, rule = %rule.id, from = stage, %reason, "rolling back");
                let back = Change::SetRolloutStage {
                    flag: flag.key.clone(),
                    rule: rule.id.clone(),
                    stage: 0,
                    at_ms: now_ms(),
                };
                let hold = Change::SetRolloutHeld {
                    flag: flag.key.clone(),
                    rule: rule.id.clone(),
                    held: true,
                };
                let done = app.change(&back, "gate", Some(&reason)).await.is_ok()
                    && app.change(&hold, "gate", Some(&reason)).await.is_ok();
                if done {
                    app.metrics
                        .rollbacks
                        .with_label_values(&[&flag.key, &rule.id, "gate"])
                        .inc();
                }
                continue;
            }
            let last = ro.stages.len().saturating_sub(1) as u32;
            if ro.auto_advance && verdict.pass && !rt.held[r] && rt.enabled && stage < last {
                tracing::info!(flag = %flag.key, rule = %rule.id, to = stage + 1, "gate met: advancing");
                let next = Change::SetRolloutStage {
                    flag: flag.key.clone(),
                    rule: rule.id.clone(),
                    stage: stage + 1,
                    at_ms: now_ms(),
                };
                let _ = app
                    .change(&next, "gate", Some("automatic advance: the gate holds"))
                    .await;
            }
        }
    }
}

/// A digest of the file's content (through symlinks, so a Kubernetes ConfigMap's swap of its
/// `..data` link is seen), or `None` when it cannot be read.
fn content_digest(path: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    // FNV-1a: change detection, not a security property.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Some(h)
}

/// Reloads when the file's content changed and then stayed the same for
/// `server.reload_settle`: an editor's or a deploy's half-written file is never applied (and a
/// file that does not validate is refused by the reload itself).
async fn file_watch(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let Some(path) = app.config_path.clone() else {
        return;
    };
    let mut applied = content_digest(&path);
    let mut candidate: Option<(Option<u64>, Instant)> = None;
    loop {
        let (every, settle) = {
            let live = app.live.load();
            (
                live.config.server.reload_check_interval,
                live.config.server.reload_settle,
            )
        };
        if every.is_zero() {
            let _ = stop.changed().await;
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {
                let now = content_digest(&path);
                if now == applied {
                    candidate = None;
                    continue;
                }
                match candidate {
                    Some((seen, since)) if seen == now => {
                        if since.elapsed() >= settle {
                            applied = now;
                            candidate = None;
                            let _ = app.reload("file-watch").await;
                        }
                    }
                    _ => candidate = Some((now, Instant::now())),
                }
            }
        }
    }
}

#[cfg(unix)]
async fn sighup(
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    mut hup: tokio::signal::unix::Signal,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = app.reload("sighup").await;
            }
        }
    }
}

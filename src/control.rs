//! The control loops that run beside the request path: runtime-state sync across replicas,
//! rollout gates (auto-advance, auto-rollback), and config reload on file change or SIGHUP.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::admin::api::{gate_verdict, now_ms};
use crate::app::App;
use crate::state::Change;

/// How often the state is reloaded from the store even without a notification.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// Starts every control loop; they end when `stop` turns true.
pub fn spawn(app: &Arc<App>, stop: watch::Receiver<bool>) {
    tokio::spawn(state_sync(app.clone(), stop.clone()));
    tokio::spawn(gates(app.clone(), stop.clone()));
    crate::alerts::spawn(app, stop.clone());
    crate::experiments::runtime::spawn(app, stop.clone());
    crate::console::spawn(app, stop.clone());
    if app.config_path.is_some() {
        tokio::spawn(file_watch(app.clone(), stop.clone()));
        #[cfg(unix)]
        tokio::spawn(sighup(app.clone(), stop));
    }
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
/// `auto_advance` is on and the gate holds. Actions are audited with actor `gate`.
pub async fn evaluate_gates(app: &Arc<App>) {
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

fn fingerprint(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

async fn file_watch(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let Some(path) = app.config_path.clone() else {
        return;
    };
    let mut last = fingerprint(&path);
    loop {
        let every = app.live.load().config.server.reload_check_interval;
        if every.is_zero() {
            let _ = stop.changed().await;
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {
                let now = fingerprint(&path);
                if now != last {
                    last = now;
                    let _ = app.reload("file-watch").await;
                }
            }
        }
    }
}

#[cfg(unix)]
async fn sighup(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
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

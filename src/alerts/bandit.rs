//! The bandit's alerts, `bandit:FLAG`: one per flag with a bandit, raised by its epochs rather
//! than measured. A sample-ratio mismatch that rolls the flag back to the control is
//! `critical`; a stop rule that holds or promotes is `info`; a running bandit is `ok`.
//!
//! The level follows the bandit's status in the shared runtime state, so every replica shows
//! it, a restart keeps it without paging again, and a reset (`PUT …/bandit {"reset": true}`)
//! resolves it. It is seen where every alert is: `GET /admin/alerts`, the
//! `switchyard_alert_level{alert="bandit:FLAG",flag,variation}` gauge (the variation is the
//! control), and a POST to each of the bandit's `webhooks` through the alerts' notifier, in the
//! payload shape of alert notifications (plus `epoch`, `why`, `weights` and `winner`).

use std::collections::BTreeMap;

use http::Uri;

use super::*;
use crate::bandit::Status;

/// The alert name of a flag's bandit.
pub fn name(flag: &str) -> String {
    format!("bandit:{flag}")
}

/// The level a bandit's status stands for.
pub fn level_of(status: Status) -> Level {
    match status {
        Status::Running => Level::Ok,
        Status::Stopped | Status::Promoted => Level::Info,
        Status::RolledBack => Level::Critical,
    }
}

/// One bandit's alert as the runtime state has it.
pub(super) struct Entry {
    pub(super) flag: String,
    /// The control (the flag's stable variation).
    pub(super) variation: String,
    pub(super) level: Level,
    status: Status,
    epoch: u64,
    since_ms: u64,
    cadence_seconds: f64,
    stop: Option<(f64, &'static str)>,
}

/// Every bandit's alert under `live`.
pub(super) fn entries(live: &Live) -> Vec<Entry> {
    let mut out = Vec::new();
    for (key, b) in &live.config.bandits {
        let Some((_, flag)) = live.config.flag(key) else {
            continue;
        };
        let o = live.state.flags.get(key).and_then(|o| o.bandit.as_ref());
        let status = o.map(|o| o.status).unwrap_or_default();
        out.push(Entry {
            flag: key.clone(),
            variation: flag.variations[flag.stable_variation].key.clone(),
            level: level_of(status),
            status,
            epoch: o.map_or(0, |o| o.epoch),
            since_ms: o.map_or(0, |o| o.since_ms),
            cadence_seconds: b.effective(o).cadence.as_secs_f64(),
            stop: b.stop.map(|s| {
                let then = match s.then {
                    crate::bandit::epoch::Then::Hold => "hold",
                    crate::bandit::epoch::Then::Promote => "promote",
                };
                (s.p_best, then)
            }),
        });
    }
    out
}

/// An entry of `GET /admin/alerts`, in the shape of the configured alerts' entries.
pub(super) fn entry_json(e: &Entry, srm_threshold: f64) -> Value {
    let since = (e.since_ms > 0).then(|| ms_json(e.since_ms));
    json!({
        "alert": name(&e.flag),
        "flag": e.flag,
        "variation": e.variation,
        "metric": "bandit_status",
        "level": e.level.as_str(),
        "last_level": e.level.as_str(),
        "value": null,
        "samples": 0,
        "min_samples": 0,
        "insufficient_reason": null,
        "control": null,
        "since": since,
        "evaluated_at": since,
        "pending": null,
        "thresholds": {
            "info": e.stop.map(|s| s.0),
            "warning": null,
            "critical": srm_threshold,
        },
        "direction": "above",
        "relative_to_control": false,
        "window_seconds": e.cadence_seconds,
        "actions": {
            "info": e.stop.map(|s| vec![s.1]).unwrap_or_default(),
            "warning": [],
            "critical": ["rollback"],
        },
        "source": "bandit",
        "status": e.status.as_str(),
        "epoch": e.epoch,
    })
}

/// What an epoch that changes a bandit's level announces.
#[derive(Debug, Clone)]
pub struct Event {
    /// The flag.
    pub flag: String,
    /// The control (the gauge's `variation`).
    pub variation: String,
    /// `srm` (a rollback) or `p_best` (the stop rule).
    pub metric: &'static str,
    /// The level entered.
    pub level: Level,
    /// The level before the epoch.
    pub previous: Level,
    /// The SRM p-value, or the winner's P(best).
    pub value: Option<f64>,
    /// The SRM threshold, or the stop rule's `p_best`.
    pub threshold: Option<f64>,
    /// Users in the experiment rule.
    pub samples: u64,
    /// The epoch.
    pub epoch: u64,
    /// The epoch's `why`.
    pub why: &'static str,
    /// What was done: `rollback`, `hold` or `promote`.
    pub action: &'static str,
    /// The winner of a stop rule.
    pub winner: Option<String>,
    /// Buckets per variation after the epoch.
    pub weights: BTreeMap<String, u32>,
    /// What happened, in a sentence (the epoch's audit reason).
    pub reason: String,
    /// When (unix ms).
    pub at_ms: u64,
}

impl Engine {
    /// Announces a bandit's change of level: the gauge at once, and a POST to each of
    /// `webhooks` in the background.
    pub fn bandit_event(&self, webhooks: &[Uri], e: &Event) {
        let alert = name(&e.flag);
        self.level_gauge
            .with_label_values(&[&alert, &e.flag, &e.variation])
            .set(e.level.code());
        for result in ["sent", "failed", "dropped"] {
            // Present at 0 from the first announcement, as for configured alerts.
            let _ = self.notifications.with_label_values(&[&alert, result]);
        }
        if webhooks.is_empty() {
            return;
        }
        let tag = match e.level {
            Level::Critical => ":rotating_light: [CRITICAL]",
            Level::Warning => ":warning: [WARNING]",
            Level::Info => ":information_source: [INFO]",
            Level::Ok => ":white_check_mark: [RESOLVED]",
        };
        let payload = json!({
            "text": format!("{tag} {alert}: {}", e.reason),
            "alert": alert,
            "flag": e.flag,
            "variation": e.variation,
            "metric": e.metric,
            "level": e.level.as_str(),
            "previous_level": e.previous.as_str(),
            "value": e.value,
            "threshold": e.threshold,
            "samples": e.samples,
            "at": ms_json(e.at_ms),
            "actions": [e.action],
            "epoch": e.epoch,
            "why": e.why,
            "winner": e.winner,
            "weights": e.weights,
        });
        self.notifier
            .send(&alert, webhooks, Bytes::from(payload.to_string()));
    }
}

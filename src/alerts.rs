//! Tiered alerts (`[[alerts]]`), evaluated off the request path: every `[server]
//! gate_interval` a pass measures each alert's metric per variation, moves its level with
//! hysteresis, and on a change of level audits it, runs the tier's actions and notifies.
//!
//! # Metrics an alert may name
//!
//! | metric | value | samples |
//! |---|---|---|
//! | `error_rate`, `fallback_rate` | upstream errors (fallback answers) per request over `window` | requests in the window |
//! | `requests` | requests over `window` | requests in the window |
//! | `p50_latency_seconds`, `p95_latency_seconds`, `p99_latency_seconds` | exact quantile of the rolling 60 s latency window (hdrhistogram; `window` does not apply) | latencies in that window |
//! | anything else (`conversion`, `revenue`, `task_completed`, `thumbs`, `csat`, `hallucination`, declared metrics) | mean per user from feedback events over `window` | users |
//!
//! Requests are those that reached a decision (answered, fallen back, failed or cancelled); the
//! clients' own bad requests are not counted.
//!
//! Request counters are windowed with a ring of (instant, totals) snapshots per (flag,
//! variation), one taken at each pass (at least `shortest window / 16` apart, at most 4,096 per
//! ring): the value over `window` is the live totals minus the oldest snapshot inside the
//! window; until the process has run for a whole window, minus the oldest snapshot there is.
//!
//! With `relative_to_control = true` the value is the variation's divided by the control's
//! (the flag's `stable_variation`); the control itself is not evaluated, both sides need
//! `min_samples`, and a control value of 0 is insufficient data.
//!
//! # Levels and hysteresis
//!
//! A value's level is the highest tier whose threshold it reaches (`above`: value ≥
//! threshold; `below`: value ≤ threshold), or `ok`. Two rules keep a value that hovers at a
//! threshold from producing a storm:
//!
//! 1. **Margin.** A level is left downwards only once the value has crossed back past that
//!    level's threshold by 5 % of the threshold (at least 1e-6): with warning at 0.05, an
//!    announced warning holds while the error rate stays above 0.0475.
//! 2. **Confirmation.** A new level is announced only after it held on 2 consecutive
//!    evaluations. While rising, what is announced is the level every evaluation of the streak
//!    reached (warning then critical announces warning; a second critical then announces
//!    critical); while falling, the highest level of the streak. An evaluation back at the
//!    announced level, or with insufficient data, breaks the streak.
//!
//! So each change of the announced level is one notification, a resolve (back to `ok`) is
//! one, and alternating just above and just below a threshold announces nothing new.
//!
//! With fewer than `min_samples` samples the level shown is `insufficient_data` (gauge -1):
//! nothing is announced, no action runs, and the announced level is kept (shown as
//! `last_level`), so sparse traffic does not page on every gap. Announced levels are
//! recovered from the audit log at start, so a restart does not page again.
//!
//! # On a change of level
//!
//! In order: an audit entry (`Change::Note`, action `alert`, actor `alert:<name>`, the
//! one-line summary as reason); the actions of every tier entered (`hold_rollout` holds each
//! rollout rule of the flag, `kill` turns the flag off; both audited with actor
//! `alert:<name>`, skipped when already in effect, retried at later passes if the state store
//! refused them, and not run again until the level has left the tier and entered it anew, so an
//! operator who turns the flag back on is not overruled); a log line; a webhook POST to each of
//! the rule's URLs (see [`notify`]): `{"text", "alert", "flag", "variation", "metric",
//! "level", "previous_level", "value", "threshold", "samples", "at", …}`, `text` being a
//! Slack-compatible one-line summary.
//!
//! Metrics: `switchyard_alert_level{alert,flag,variation}` (0 ok, 1 info, 2 warning,
//! 3 critical, -1 insufficient data),
//! `switchyard_alert_notifications_total{alert,result}` (`sent`, `failed`, `dropped`), and
//! `switchyard_stable_variation{flag,variation}` (1 for each flag's stable variation, so
//! Prometheus rules can compare a variation with its control).
//!
//! Each flag with a bandit has one more alert, `bandit:FLAG`, not configured here: its level
//! follows the bandit's status (critical after a sample-ratio rollback, info after a stop), and
//! epochs announce it (see [`bandit`]).
//!
//! An alert with `source = "local"` (the default) evaluates this replica's own counters; with
//! `source = "prometheus"` it reads the fleet's figures from Prometheus ([`crate::fleet`]):
//! counter metrics as `increase()` over `window` summed across replicas, latency quantiles
//! from the duration histogram over `window`, business metrics from
//! `switchyard_business_metric`. When Prometheus cannot be read the alert's level is
//! `unknown` (gauge -2): nothing is announced and no action runs.
//!
//! Every replica evaluates every alert (`GET /admin/alerts` and the gauges are read-only
//! views); only the fleet's leader audits, acts and notifies. A follower counts a tier as
//! acted once its actions are in effect in the shared state, so one that becomes leader
//! neither repeats them nor overrules an operator.

mod act;
pub mod bandit;
pub mod level;
mod measure;
pub mod notify;
mod publish;
pub mod window;

use act::*;
use measure::*;
use publish::*;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounterVec, IntGaugeVec};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::app::{App, Live};
use crate::clock::now_ms;
use crate::config::{AlertAction, AlertDirection, AlertRule, FigureSource};
use crate::flags::Flag;
use crate::metrics::VariationTotals;
use crate::state::{format_rfc3339_ms, Change};
use level::{Level, Streak, Thresholds, Tracker};
use notify::Notifier;
use window::{Delta, Ring};

/// The evaluation interval when `[server] gate_interval` is zero.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest evaluation interval.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// How many audit entries per flag are read at start to recover announced levels.
const RESTORE_ENTRIES: u32 = 1000;
/// The audit action of a change of level.
const AUDIT_ACTION: &str = "alert";

/// Starts the evaluation loop: one pass at once, then one every `[server] gate_interval` (or
/// 1 s when that is zero) until `stop` turns true.
pub fn spawn(app: &Arc<App>, mut stop: watch::Receiver<bool>) {
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                return;
            }
            evaluate_once(&app).await;
            let every = app.live.load().config.server.gate_interval;
            let every = if every.is_zero() {
                DEFAULT_INTERVAL
            } else {
                every.max(MIN_INTERVAL)
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// One evaluation pass over every alert of the live configuration. Passes never overlap.
pub async fn evaluate_once(app: &Arc<App>) {
    let engine = &app.alerts;
    let mut state = engine.state.lock().await;
    if !state.restored {
        state.restored = true;
        restore(app, &mut state).await;
    }
    let live = app.live.load_full();
    let now = Instant::now();
    let at_ms = now_ms();
    record_counters(&live, &mut state, now);
    state.passes += 1;
    let business = business_values(app, &live).await;
    let fleet = crate::fleet::figures::alert_values(app, &live).await;

    let mut work = Vec::new();
    let mut views = HashMap::new();
    for (ai, rule) in live.config.alerts.iter().enumerate() {
        let Some((fi, flag)) = live.config.flag(&rule.flag) else {
            continue;
        };
        let thresholds = Thresholds {
            direction: rule.direction,
            tiers: rule.tiers,
        };
        for vi in targets(rule, flag) {
            let inputs = Inputs {
                live: &live,
                rings: &state.rings,
                business: &business,
                fleet: &fleet,
                now,
            };
            let m = measure(&inputs, rule, fi, flag, vi);
            let variation = flag.variations[vi].key.clone();
            let key = (rule.name.clone(), variation.clone());
            let tracker = state.trackers.entry(key.clone()).or_default();
            let enough = m.enough().then_some(m.value).flatten();
            let transition = tracker.step(&thresholds, enough);
            let due = if enough.is_some() {
                tracker.due()
            } else {
                Vec::new()
            };
            if transition.is_some() || !due.is_empty() {
                work.push(Work {
                    alert: ai,
                    variation,
                    transition,
                    due,
                    measured: m,
                });
            }
            views.insert(key, (m, tracker.announced, tracker.streak));
        }
    }

    let leads = app.fleet.is_leader();
    for w in work {
        let Some(rule) = live.config.alerts.get(w.alert) else {
            continue;
        };
        let done = if leads {
            act(app, engine, rule, &w, at_ms).await
        } else {
            in_effect(&live, rule, &w.due)
        };
        if let Some(t) = state
            .trackers
            .get_mut(&(rule.name.clone(), w.variation.clone()))
        {
            for tier in done {
                t.acted[tier] = true;
            }
        }
    }

    publish(engine, &live, &mut state, views, at_ms);
}

/// Every alert's current level per flag and variation, for `GET /admin/alerts`:
/// `{"alerts": [{"alert", "flag", "variation", "metric", "level", "value", "samples", "since",
/// "thresholds": {"info", "warning", "critical"}, "direction", …}]}`; each bandit's alert
/// (`bandit:FLAG`, see [`bandit`]) comes after the configured ones.
pub fn alerts_json(app: &App) -> Value {
    let live = app.live.load();
    let views = app
        .alerts
        .views
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for rule in &live.config.alerts {
        let Some((_, flag)) = live.config.flag(&rule.flag) else {
            continue;
        };
        for vi in targets(rule, flag) {
            let variation = &flag.variations[vi].key;
            let view = views.get(&(rule.name.clone(), variation.clone()));
            out.push(alert_json(rule, variation, view));
        }
    }
    let srm_threshold = live.config.experiment_policy.srm_threshold;
    out.extend(
        bandit::entries(&live)
            .iter()
            .map(|e| bandit::entry_json(e, srm_threshold)),
    );
    json!({ "alerts": out })
}

// ---------------------------------------------------------------------------------------------
// Engine: per-App state, kept beside the App.
// ---------------------------------------------------------------------------------------------

/// The alerting state of one [`App`] (held in it).
pub struct Engine {
    /// Held for a whole pass, so passes never overlap.
    state: tokio::sync::Mutex<State>,
    /// What the last pass saw, for [`alerts_json`] (read without waiting for a pass).
    views: Mutex<HashMap<Key, View>>,
    notifier: Notifier,
    level_gauge: IntGaugeVec,
    notifications: IntCounterVec,
    stable: IntGaugeVec,
}

/// (alert name, variation key).
type Key = (String, String);

#[derive(Default)]
struct State {
    restored: bool,
    /// Passes done.
    passes: u64,
    trackers: HashMap<Key, Tracker>,
    /// By (flag key, variation key).
    rings: HashMap<Key, Ring>,
    /// `switchyard_alert_level` series set by the last pass.
    gauges: HashSet<(String, String, String)>,
    /// `switchyard_stable_variation` series set by the last pass.
    stable: HashSet<(String, String)>,
}

/// What one pass saw of one alert on one variation.
#[derive(Debug, Clone)]
struct View {
    measured: Measured,
    /// `None`: insufficient data.
    level: Option<Level>,
    announced: Level,
    pending: Option<Streak>,
    /// When `level` was first shown (unix ms).
    since_ms: u64,
    evaluated_ms: u64,
}

impl Engine {
    /// The alerting state of an app with these clients and metric families.
    pub fn new(
        clients: &crate::providers::client::Clients,
        metrics: &crate::metrics::Metrics,
    ) -> Engine {
        let level_gauge = metrics.alert_level.clone();
        let notifications = metrics.alert_notifications.clone();
        let stable = metrics.stable_variation.clone();
        let client = clients.get(Duration::from_secs(2), false);
        Engine {
            state: tokio::sync::Mutex::new(State::default()),
            views: Mutex::new(HashMap::new()),
            notifier: Notifier::new(client, notifications.clone(), notify::MAX_IN_FLIGHT),
            level_gauge,
            notifications,
            stable,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// One flag `f` (variations a, the control, and b) on the mock provider.
    const FLAG: &str = r#"
[providers.mock]
kind = "mock"
[flags.f]
off_variation = "a"
stable_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m-a"
[flags.f.variations.b]
provider = "mock"
model_id = "m-b"
[[flags.f.rules]]
id = "all"
allocation = [{ variation = "b", end = 10000 }]
"#;

    fn rule(toml_tail: &str) -> AlertRule {
        let src = format!("{FLAG}\n[[alerts]]\nname = \"x\"\nflag = \"f\"\n{toml_tail}\n");
        let c = crate::Config::parse(&src, "t.toml").unwrap();
        c.alerts[0].clone()
    }

    #[test]
    fn summaries_are_one_line_and_say_what_happened() {
        let r = rule(
            "metric = \"error_rate\"\nabove = { info = 0.01, warning = 0.05, critical = 0.10 }",
        );
        let m = Measured {
            value: Some(0.1234),
            samples: 114,
            ..Measured::default()
        };
        let s = summary(&r, "b", Level::Warning, Level::Critical, &m, Some(0.1));
        assert_eq!(
            s,
            ":rotating_light: [CRITICAL] x: f/b error_rate = 0.1234 ≥ 0.1 (was warning; 114 samples over 5m)"
        );
        let s = summary(&r, "b", Level::Critical, Level::Ok, &m, Some(0.01));
        assert!(s.starts_with(":white_check_mark: [RESOLVED]"), "{s}");
        assert!(s.contains("back under 0.01"), "{s}");
        assert!(!s.contains('\n'));
    }

    #[test]
    fn values_are_formatted_for_people() {
        assert_eq!(fmt_value(Some(0.05)), "0.05");
        assert_eq!(fmt_value(Some(2.0)), "2");
        assert_eq!(fmt_value(Some(12345.678)), "12346");
        assert_eq!(fmt_value(None), "n/a");
    }

    #[test]
    fn targets_skip_the_control_when_relative() {
        let r = rule("metric = \"p95_latency_seconds\"\nrelative_to_control = true\nabove = { warning = 1.5 }");
        let src_flag = {
            let c = crate::Config::parse(FLAG, "t.toml").unwrap();
            c.flags[0].clone()
        };
        assert_eq!(targets(&r, &src_flag), vec![1]);
        let r = rule("metric = \"error_rate\"\nabove = { warning = 0.05 }");
        assert_eq!(targets(&r, &src_flag), vec![0, 1]);
        let r = rule("metric = \"error_rate\"\nvariation = \"b\"\nabove = { warning = 0.05 }");
        assert_eq!(targets(&r, &src_flag), vec![1]);
    }

    #[test]
    fn metric_kinds() {
        assert!(is_counter_metric("error_rate"));
        assert!(is_counter_metric("requests"));
        assert_eq!(latency_quantile("p99_latency_seconds"), Some(2));
        assert!(is_business_metric("conversion"));
        assert!(is_business_metric("my_declared_metric"));
        assert!(!is_business_metric("p50_latency_seconds"));
    }
}

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

pub mod level;
pub mod notify;
pub mod window;

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
/// "thresholds": {"info", "warning", "critical"}, "direction", …}]}`.
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

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// The variations an alert evaluates: the one it names or all, less the control when the
/// alert is relative to it.
fn targets(rule: &AlertRule, flag: &Flag) -> Vec<usize> {
    let all: Vec<usize> = match &rule.variation {
        Some(v) => flag.variation_index(v).into_iter().collect(),
        None => (0..flag.variations.len()).collect(),
    };
    all.into_iter()
        .filter(|vi| !(rule.relative_to_control && *vi == flag.stable_variation))
        .collect()
}

/// Whether a metric is read from the request counters (windowed by the snapshot ring).
fn is_counter_metric(metric: &str) -> bool {
    matches!(metric, "error_rate" | "fallback_rate" | "requests")
}

/// Whether a metric is read from the rolling latency window.
fn latency_quantile(metric: &str) -> Option<usize> {
    match metric {
        "p50_latency_seconds" => Some(0),
        "p95_latency_seconds" => Some(1),
        "p99_latency_seconds" => Some(2),
        _ => None,
    }
}

/// Whether a metric comes from feedback events.
fn is_business_metric(metric: &str) -> bool {
    !is_counter_metric(metric) && latency_quantile(metric).is_none()
}

/// Takes this pass's snapshot of every (flag, variation) a counter alert reads. At the first
/// pass (the process is just starting) a ring starts from zero, so requests served before it
/// count; a ring created later (an alert added by a reload) starts from the totals then.
fn record_counters(live: &Live, state: &mut State, now: Instant) {
    let first_pass = state.passes == 0;
    let mut needed: HashMap<(usize, usize), (Duration, Duration)> = HashMap::new();
    for rule in &live.config.alerts {
        if !is_counter_metric(&rule.metric) || rule.source != FigureSource::Local {
            continue;
        }
        let Some((fi, flag)) = live.config.flag(&rule.flag) else {
            continue;
        };
        let mut vars = targets(rule, flag);
        if rule.relative_to_control {
            vars.push(flag.stable_variation);
        }
        for vi in vars {
            let e = needed.entry((fi, vi)).or_insert((rule.window, rule.window));
            e.0 = e.0.max(rule.window);
            e.1 = e.1.min(rule.window);
        }
    }
    let mut keep = HashSet::new();
    for ((fi, vi), (longest, shortest)) in needed {
        let (Some(flag), Some(handles)) = (live.config.flags.get(fi), live.routes.flags.get(fi))
        else {
            continue;
        };
        let (Some(variation), Some(h)) = (flag.variations.get(vi), handles.get(vi)) else {
            continue;
        };
        let key = (flag.key.clone(), variation.key.clone());
        let ring = state.rings.entry(key.clone()).or_insert_with(|| {
            let mut ring = Ring::default();
            if first_pass {
                ring.record(now, VariationTotals::default(), longest, shortest);
            }
            ring
        });
        ring.record(now, h.totals(), longest, shortest);
        keep.insert(key);
    }
    state.rings.retain(|k, _| keep.contains(k));
}

/// Business metrics per (flag, window) that some alert reads: `None` when the store failed.
type Business = HashMap<(String, Duration), Option<HashMap<(String, String), (f64, u64)>>>;

async fn business_values(app: &App, live: &Live) -> Business {
    let mut out: Business = HashMap::new();
    for rule in &live.config.alerts {
        if !is_business_metric(&rule.metric) || rule.source != FigureSource::Local {
            continue;
        }
        let key = (rule.flag.clone(), rule.window);
        if out.contains_key(&key) {
            continue;
        }
        let values = match app.business_values(&rule.flag, rule.window).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(alert = %rule.name, flag = %rule.flag, error = %e, "business metrics unavailable: alert data insufficient this pass");
                None
            }
        };
        out.insert(key, values);
    }
    out
}

/// One alert's measurement on one variation.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    /// The value compared with the thresholds (a ratio to the control's when relative).
    value: Option<f64>,
    /// Samples behind it (requests, latencies or users).
    samples: u64,
    /// The control's value and samples, when relative.
    control: Option<(Option<f64>, u64)>,
    /// Why there is no usable value, when there is none.
    why: Option<&'static str>,
}

impl Measured {
    fn enough(&self) -> bool {
        self.value.is_some() && self.why.is_none()
    }
}

/// What a pass measures from.
struct Inputs<'a> {
    live: &'a Live,
    /// By (flag key, variation key).
    rings: &'a HashMap<Key, Ring>,
    business: &'a Business,
    /// Figures of Prometheus-sourced alerts.
    fleet: &'a crate::fleet::figures::AlertValues,
    now: Instant,
}

/// A variation's own value of `metric` and its samples.
fn raw_value(
    inputs: &Inputs<'_>,
    rule: &AlertRule,
    fi: usize,
    flag: &Flag,
    vi: usize,
) -> (Option<f64>, u64, Option<&'static str>) {
    let Some(h) = inputs.live.routes.flags.get(fi).and_then(|v| v.get(vi)) else {
        return (None, 0, Some("no such variation"));
    };
    if rule.source == FigureSource::Prometheus {
        return crate::fleet::figures::alert_value(inputs.fleet, rule, &flag.variations[vi].key);
    }
    let metric = rule.metric.as_str();
    if is_counter_metric(metric) {
        let key = (flag.key.clone(), flag.variations[vi].key.clone());
        let d: Delta = inputs
            .rings
            .get(&key)
            .map(|r| r.delta(inputs.now, rule.window, h.totals()))
            .unwrap_or_default();
        let rate = |n: u64| (d.requests > 0).then(|| n as f64 / d.requests as f64);
        let value = match metric {
            "error_rate" => rate(d.errors),
            "fallback_rate" => rate(d.fallbacks),
            _ => Some(d.requests as f64),
        };
        return (value, d.requests, None);
    }
    if let Some(q) = latency_quantile(metric) {
        return match h.quantiles() {
            Some((n, qs)) if n > 0 => (Some(qs[q]), n, None),
            _ => (None, 0, None),
        };
    }
    match inputs.business.get(&(rule.flag.clone(), rule.window)) {
        Some(Some(values)) => {
            match values.get(&(flag.variations[vi].key.clone(), rule.metric.clone())) {
                Some((mean, users)) => (Some(*mean), *users, None),
                None => (None, 0, None),
            }
        }
        Some(None) => (None, 0, Some("state store unavailable")),
        None => (None, 0, None),
    }
}

/// One alert's measurement on variation `vi` of flag `fi`.
fn measure(inputs: &Inputs<'_>, rule: &AlertRule, fi: usize, flag: &Flag, vi: usize) -> Measured {
    let (value, samples, why) = raw_value(inputs, rule, fi, flag, vi);
    let mut m = Measured {
        value,
        samples,
        control: None,
        why,
    };
    if m.why.is_none() && samples < rule.min_samples {
        m.why = Some("too few samples");
    }
    if m.why.is_none() && value.is_none() {
        m.why = Some("no data");
    }
    if !rule.relative_to_control {
        return m;
    }
    let (c_value, c_samples, c_why) = raw_value(inputs, rule, fi, flag, flag.stable_variation);
    m.control = Some((c_value, c_samples));
    m.value = match (value, c_value) {
        (Some(v), Some(c)) if c != 0.0 => Some(v / c),
        _ => None,
    };
    if m.why.is_none() {
        m.why = c_why
            .or((c_samples < rule.min_samples).then_some("too few samples for the control"))
            .or((c_value == Some(0.0)).then_some("the control's value is 0"))
            .or(c_value.is_none().then_some("no data for the control"));
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Acting
// ---------------------------------------------------------------------------------------------

/// What a pass must do for one alert on one variation.
struct Work {
    alert: usize,
    variation: String,
    transition: Option<level::Transition>,
    /// Tier indexes whose actions are due.
    due: Vec<usize>,
    measured: Measured,
}

/// Audits and announces a change of level and runs the actions due; returns the tiers whose
/// actions are done.
async fn act(app: &App, engine: &Engine, rule: &AlertRule, w: &Work, at_ms: u64) -> Vec<usize> {
    let actor = format!("alert:{}", rule.name);
    let thresholds = Thresholds {
        direction: rule.direction,
        tiers: rule.tiers,
    };
    // The threshold a notification quotes: the one entered, or the one crossed back.
    let threshold = w.transition.and_then(|t| {
        if t.to > t.from {
            thresholds.of(t.to)
        } else {
            thresholds.of(t.from)
        }
    });
    let summary = w
        .transition
        .map(|t| summary(rule, &w.variation, t.from, t.to, &w.measured, threshold));

    if let (Some(t), Some(text)) = (w.transition, &summary) {
        let note = Change::Note {
            flag: Some(rule.flag.clone()),
            action: AUDIT_ACTION.into(),
            detail: json!({
                "alert": rule.name,
                "variation": w.variation,
                "metric": rule.metric,
                "level": t.to.as_str(),
                "previous_level": t.from.as_str(),
                "value": w.measured.value,
                "threshold": threshold,
                "samples": w.measured.samples,
            }),
        };
        if let Err(e) = app.change(&note, &actor, Some(text)).await {
            tracing::warn!(alert = %rule.name, error = %e, "alert level change not audited: state store unavailable");
        }
    }

    let mut done = Vec::new();
    let mut taken = Vec::new();
    for tier in &w.due {
        let Some(actions) = rule.actions.get(*tier) else {
            continue;
        };
        let level = Level::of_tier(*tier);
        let reason = format!(
            "alert {}: {} of {}/{} = {} ({} tier{})",
            rule.name,
            metric_label(rule),
            rule.flag,
            w.variation,
            fmt_value(w.measured.value),
            level.as_str(),
            thresholds
                .of(level)
                .map(|t| format!(" at {}", fmt_value(Some(t))))
                .unwrap_or_default(),
        );
        let mut ok = true;
        for action in actions {
            match run_action(app, rule, *action, &actor, &reason).await {
                Ok(true) => taken.push(action_name(*action)),
                Ok(false) => {}
                Err(()) => ok = false,
            }
        }
        if ok {
            done.push(*tier);
        }
    }

    if let (Some(t), Some(text)) = (w.transition, summary) {
        let m = &w.measured;
        if t.to > t.from && t.to >= Level::Warning {
            tracing::warn!(alert = %rule.name, flag = %rule.flag, variation = %w.variation, metric = %rule.metric, level = t.to.as_str(), previous = t.from.as_str(), value = ?m.value, samples = m.samples, "{text}");
        } else {
            tracing::info!(alert = %rule.name, flag = %rule.flag, variation = %w.variation, metric = %rule.metric, level = t.to.as_str(), previous = t.from.as_str(), value = ?m.value, samples = m.samples, "{text}");
        }
        if !rule.webhooks.is_empty() {
            let text = if taken.is_empty() {
                text
            } else {
                format!("{text}; actions: {}", taken.join(", "))
            };
            let payload = json!({
                "text": text,
                "alert": rule.name,
                "flag": rule.flag,
                "variation": w.variation,
                "metric": rule.metric,
                "level": t.to.as_str(),
                "previous_level": t.from.as_str(),
                "value": m.value,
                "threshold": threshold,
                "samples": m.samples,
                "at": format_rfc3339_ms(i64::try_from(at_ms).unwrap_or(i64::MAX)),
                "direction": direction_str(rule.direction),
                "relative_to_control": rule.relative_to_control,
                "window_seconds": rule.window.as_secs_f64(),
                "actions": taken,
            });
            engine
                .notifier
                .send(&rule.name, &rule.webhooks, Bytes::from(payload.to_string()));
        }
    }
    done
}

/// Whether a measurement is missing because the fleet's figures could not be read.
fn is_unknown(m: &Measured) -> bool {
    m.why == Some(crate::fleet::figures::UNAVAILABLE)
}

/// On a follower: the due tiers whose actions the leader has put in effect (so this replica,
/// should it lead later, does not run them again).
fn in_effect(live: &Live, rule: &AlertRule, due: &[usize]) -> Vec<usize> {
    let Some((fi, flag)) = live.config.flag(&rule.flag) else {
        return due.to_vec();
    };
    let Some(rt) = live.runtime.get(fi) else {
        return due.to_vec();
    };
    due.iter()
        .copied()
        .filter(|tier| {
            rule.actions.get(*tier).is_some_and(|actions| {
                actions.iter().all(|a| match a {
                    AlertAction::Notify => true,
                    AlertAction::Kill => !rt.enabled,
                    AlertAction::HoldRollout => flag.rules.iter().enumerate().all(|(r, rr)| {
                        rr.rollout.is_none() || rt.held.get(r).copied().unwrap_or(false)
                    }),
                })
            })
        })
        .collect()
}

fn action_name(a: AlertAction) -> &'static str {
    match a {
        AlertAction::Notify => "notify",
        AlertAction::HoldRollout => "hold_rollout",
        AlertAction::Kill => "kill",
    }
}

/// Runs one action: `Ok(true)` when it changed something, `Ok(false)` when there was nothing
/// to do, `Err` when the state store refused it (it is tried again at the next pass).
async fn run_action(
    app: &App,
    rule: &AlertRule,
    action: AlertAction,
    actor: &str,
    reason: &str,
) -> Result<bool, ()> {
    let live = app.live.load_full();
    let Some((fi, flag)) = live.config.flag(&rule.flag) else {
        return Ok(false);
    };
    let Some(rt) = live.runtime.get(fi) else {
        return Ok(false);
    };
    let mut changes = Vec::new();
    match action {
        AlertAction::Notify => {}
        AlertAction::Kill => {
            if rt.enabled {
                changes.push(Change::SetEnabled {
                    flag: flag.key.clone(),
                    enabled: false,
                });
            }
        }
        AlertAction::HoldRollout => {
            for (r, rr) in flag.rules.iter().enumerate() {
                if rr.rollout.is_some() && !rt.held.get(r).copied().unwrap_or(false) {
                    changes.push(Change::SetRolloutHeld {
                        flag: flag.key.clone(),
                        rule: rr.id.clone(),
                        held: true,
                    });
                }
            }
        }
    }
    let mut result = Ok(!changes.is_empty());
    for change in changes {
        match app.change(&change, actor, Some(reason)).await {
            Ok(_) => {
                tracing::warn!(alert = %rule.name, flag = %flag.key, action = change.action(), %reason, "alert action taken");
            }
            Err(e) => {
                tracing::error!(alert = %rule.name, flag = %flag.key, action = change.action(), error = %e, "alert action failed; retried at the next evaluation");
                result = Err(());
            }
        }
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

fn direction_str(d: AlertDirection) -> &'static str {
    match d {
        AlertDirection::Above => "above",
        AlertDirection::Below => "below",
    }
}

fn metric_label(rule: &AlertRule) -> String {
    if rule.relative_to_control {
        format!("{} (ratio to control)", rule.metric)
    } else {
        rule.metric.clone()
    }
}

/// A value for people: up to 4 decimals, trailing zeros dropped.
fn fmt_value(v: Option<f64>) -> String {
    let Some(v) = v else {
        return "n/a".into();
    };
    let s = if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// The one-line, Slack-compatible summary of a change of level.
fn summary(
    rule: &AlertRule,
    variation: &str,
    from: Level,
    to: Level,
    m: &Measured,
    threshold: Option<f64>,
) -> String {
    let (emoji, tag) = match to {
        Level::Ok => (":white_check_mark:", "RESOLVED".to_owned()),
        Level::Info => (":information_source:", "INFO".to_owned()),
        Level::Warning => (":warning:", "WARNING".to_owned()),
        Level::Critical => (":rotating_light:", "CRITICAL".to_owned()),
    };
    let rising = to > from;
    let cmp = match (rule.direction, rising) {
        (AlertDirection::Above, true) => "≥",
        (AlertDirection::Below, true) => "≤",
        (AlertDirection::Above, false) => "back under",
        (AlertDirection::Below, false) => "back over",
    };
    let th = threshold
        .map(|t| format!(" {cmp} {}", fmt_value(Some(t))))
        .unwrap_or_default();
    format!(
        "{emoji} [{tag}] {name}: {flag}/{variation} {metric} = {value}{th} (was {from}; {samples} samples over {window})",
        name = rule.name,
        flag = rule.flag,
        metric = metric_label(rule),
        value = fmt_value(m.value),
        from = from.as_str(),
        samples = m.samples,
        window = humantime::format_duration(rule.window),
    )
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

fn publish(
    engine: &Engine,
    live: &Live,
    state: &mut State,
    seen: HashMap<Key, (Measured, Level, Option<Streak>)>,
    at_ms: u64,
) {
    let Ok(mut views) = engine.views.lock() else {
        return;
    };
    let mut next = HashMap::with_capacity(seen.len());
    let mut gauges = HashSet::new();
    for rule in &live.config.alerts {
        for result in ["sent", "failed", "dropped"] {
            // Present at 0 from the start, so rate() works on the first notification.
            let _ = engine
                .notifications
                .with_label_values(&[&rule.name, result]);
        }
    }
    for (key, (m, announced, pending)) in seen {
        let level = m.enough().then_some(announced);
        let since_ms = match views.get(&key) {
            Some(v) if v.level == level => v.since_ms,
            _ => at_ms,
        };
        if let Some(rule) = live.config.alerts.iter().find(|r| r.name == key.0) {
            let labels = (rule.name.clone(), rule.flag.clone(), key.1.clone());
            let missing = if is_unknown(&m) { -2 } else { -1 };
            engine
                .level_gauge
                .with_label_values(&[&labels.0, &labels.1, &labels.2])
                .set(level.map_or(missing, Level::code));
            gauges.insert(labels);
        }
        next.insert(
            key,
            View {
                measured: m,
                level,
                announced,
                pending,
                since_ms,
                evaluated_ms: at_ms,
            },
        );
    }
    let mut stable = HashSet::new();
    for flag in &live.config.flags {
        if let Some(v) = flag.variations.get(flag.stable_variation) {
            engine.stable.with_label_values(&[&flag.key, &v.key]).set(1);
            stable.insert((flag.key.clone(), v.key.clone()));
        }
    }
    for (f, v) in state.stable.difference(&stable) {
        let _ = engine.stable.remove_label_values(&[f, v]);
    }
    state.stable = stable;
    for (a, f, v) in state.gauges.difference(&gauges) {
        let _ = engine.level_gauge.remove_label_values(&[a, f, v]);
    }
    state.gauges = gauges;
    let names: HashSet<&str> = live.config.alerts.iter().map(|r| r.name.as_str()).collect();
    state
        .trackers
        .retain(|(a, _), _| names.contains(a.as_str()));
    *views = next;
}

fn ms_json(ms: u64) -> Value {
    Value::String(format_rfc3339_ms(i64::try_from(ms).unwrap_or(i64::MAX)))
}

fn alert_json(rule: &AlertRule, variation: &str, view: Option<&View>) -> Value {
    let m = view.map(|v| v.measured).unwrap_or(Measured {
        why: Some("not evaluated yet"),
        ..Measured::default()
    });
    let missing = if is_unknown(&m) {
        "unknown"
    } else {
        "insufficient_data"
    };
    let level = view.and_then(|v| v.level).map_or(missing, Level::as_str);
    json!({
        "alert": rule.name,
        "flag": rule.flag,
        "variation": variation,
        "metric": rule.metric,
        "level": level,
        "last_level": view.map_or(Level::Ok, |v| v.announced).as_str(),
        "value": m.value,
        "samples": m.samples,
        "min_samples": rule.min_samples,
        "insufficient_reason": if view.and_then(|v| v.level).is_some() { None } else { m.why },
        "control": m.control.map(|(value, samples)| json!({"value": value, "samples": samples})),
        "since": view.map(|v| ms_json(v.since_ms)),
        "evaluated_at": view.map(|v| ms_json(v.evaluated_ms)),
        "pending": view.and_then(|v| v.pending).map(|s| json!({"level": s.level.as_str(), "evaluations": s.count, "needed": level::CONFIRM})),
        "thresholds": {
            "info": rule.tiers[0],
            "warning": rule.tiers[1],
            "critical": rule.tiers[2],
        },
        "direction": direction_str(rule.direction),
        "relative_to_control": rule.relative_to_control,
        "window_seconds": rule.window.as_secs_f64(),
        "actions": {
            "info": rule.actions[0].iter().map(|a| action_name(*a)).collect::<Vec<_>>(),
            "warning": rule.actions[1].iter().map(|a| action_name(*a)).collect::<Vec<_>>(),
            "critical": rule.actions[2].iter().map(|a| action_name(*a)).collect::<Vec<_>>(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Restoring announced levels
// ---------------------------------------------------------------------------------------------

/// Recovers each alert's last announced level from the audit log, so a restart neither pages
/// again for a level already announced nor repeats its actions.
async fn restore(app: &App, state: &mut State) {
    let live = app.live.load_full();
    let names: HashSet<&str> = live.config.alerts.iter().map(|r| r.name.as_str()).collect();
    let flags: HashSet<&str> = live.config.alerts.iter().map(|r| r.flag.as_str()).collect();
    for flag in flags {
        let entries = match app.store.audit(Some(flag), RESTORE_ENTRIES).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(flag, error = %e, "alert levels not restored: state store unavailable");
                continue;
            }
        };
        // Newest first: the first entry seen per (alert, variation) is the last announced.
        for e in entries {
            if e.action != AUDIT_ACTION {
                continue;
            }
            let Some(name) = e.actor.strip_prefix("alert:") else {
                continue;
            };
            let (Some(variation), Some(level)) = (
                e.after.get("variation").and_then(Value::as_str),
                e.after
                    .get("level")
                    .and_then(Value::as_str)
                    .and_then(Level::parse),
            ) else {
                continue;
            };
            if !names.contains(name) {
                continue;
            }
            state
                .trackers
                .entry((name.to_owned(), variation.to_owned()))
                .or_insert_with(|| Tracker::restored(level));
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

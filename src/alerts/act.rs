//! Acting: the actions a level change triggers (hold a rollout, kill), and the text that announces it.

use super::*;

// ---------------------------------------------------------------------------------------------
// Acting
// ---------------------------------------------------------------------------------------------

/// What a pass must do for one alert on one variation.
pub(super) struct Work {
    pub(super) alert: usize,
    pub(super) variation: String,
    pub(super) transition: Option<level::Transition>,
    /// Tier indexes whose actions are due.
    pub(super) due: Vec<usize>,
    pub(super) measured: Measured,
}

/// Audits and announces a change of level and runs the actions due; returns the tiers whose
/// actions are done.
pub(super) async fn act(
    app: &App,
    engine: &Engine,
    rule: &AlertRule,
    w: &Work,
    at_ms: u64,
) -> Vec<usize> {
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
pub(super) fn is_unknown(m: &Measured) -> bool {
    m.why == Some(crate::fleet::figures::UNAVAILABLE)
}

/// On a follower: the due tiers whose actions the leader has put in effect (so this replica,
/// should it lead later, does not run them again).
pub(super) fn in_effect(live: &Live, rule: &AlertRule, due: &[usize]) -> Vec<usize> {
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

pub(super) fn action_name(a: AlertAction) -> &'static str {
    match a {
        AlertAction::Notify => "notify",
        AlertAction::HoldRollout => "hold_rollout",
        AlertAction::Kill => "kill",
    }
}

/// Runs one action: `Ok(true)` when it changed something, `Ok(false)` when there was nothing
/// to do, `Err` when the state store refused it (it is tried again at the next pass).
pub(super) async fn run_action(
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

pub(super) fn direction_str(d: AlertDirection) -> &'static str {
    match d {
        AlertDirection::Above => "above",
        AlertDirection::Below => "below",
    }
}

pub(super) fn metric_label(rule: &AlertRule) -> String {
    if rule.relative_to_control {
        format!("{} (ratio to control)", rule.metric)
    } else {
        rule.metric.clone()
    }
}

/// A value for people: up to 4 decimals, trailing zeros dropped.
pub(super) fn fmt_value(v: Option<f64>) -> String {
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
pub(super) fn summary(
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

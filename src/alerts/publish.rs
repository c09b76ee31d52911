//! Publishing: what a pass saw, for `GET /admin/alerts` and the metrics; and restoring announced levels at start.

use super::*;

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

pub(super) fn publish(
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
    for e in bandit::entries(live) {
        let labels = (bandit::name(&e.flag), e.flag, e.variation);
        engine
            .level_gauge
            .with_label_values(&[&labels.0, &labels.1, &labels.2])
            .set(e.level.code());
        gauges.insert(labels);
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

pub(super) fn ms_json(ms: u64) -> Value {
    Value::String(format_rfc3339_ms(i64::try_from(ms).unwrap_or(i64::MAX)))
}

pub(super) fn alert_json(rule: &AlertRule, variation: &str, view: Option<&View>) -> Value {
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
pub(super) async fn restore(app: &App, state: &mut State) {
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

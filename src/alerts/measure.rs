//! Measuring: each alert's figure per variation, from local counters, business metrics or Prometheus.

use super::*;

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// The variations an alert evaluates: the one it names or all, less the control when the
/// alert is relative to it.
pub(super) fn targets(rule: &AlertRule, flag: &Flag) -> Vec<usize> {
    let all: Vec<usize> = match &rule.variation {
        Some(v) => flag.variation_index(v).into_iter().collect(),
        None => (0..flag.variations.len()).collect(),
    };
    all.into_iter()
        .filter(|vi| !(rule.relative_to_control && *vi == flag.stable_variation))
        .collect()
}

/// Whether a metric is read from the request counters (windowed by the snapshot ring).
pub(super) fn is_counter_metric(metric: &str) -> bool {
    matches!(metric, "error_rate" | "fallback_rate" | "requests")
}

/// Whether a metric is read from the rolling latency window.
pub(super) fn latency_quantile(metric: &str) -> Option<usize> {
    match metric {
        "p50_latency_seconds" => Some(0),
        "p95_latency_seconds" => Some(1),
        "p99_latency_seconds" => Some(2),
        _ => None,
    }
}

/// Whether a metric comes from feedback events.
pub(super) fn is_business_metric(metric: &str) -> bool {
    !is_counter_metric(metric) && latency_quantile(metric).is_none()
}

/// Takes this pass's snapshot of every (flag, variation) a counter alert reads. At the first
/// pass (the process is just starting) a ring starts from zero, so requests served before it
/// count; a ring created later (an alert added by a reload) starts from the totals then.
pub(super) fn record_counters(live: &Live, state: &mut State, now: Instant) {
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
pub(super) type Business =
    HashMap<(String, Duration), Option<HashMap<(String, String), (f64, u64)>>>;

pub(super) async fn business_values(app: &App, live: &Live) -> Business {
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
pub(super) struct Measured {
    /// The value compared with the thresholds (a ratio to the control's when relative).
    pub(super) value: Option<f64>,
    /// Samples behind it (requests, latencies or users).
    pub(super) samples: u64,
    /// The control's value and samples, when relative.
    pub(super) control: Option<(Option<f64>, u64)>,
    /// Why there is no usable value, when there is none.
    pub(super) why: Option<&'static str>,
}

impl Measured {
    pub(super) fn enough(&self) -> bool {
        self.value.is_some() && self.why.is_none()
    }
}

/// What a pass measures from.
pub(super) struct Inputs<'a> {
    pub(super) live: &'a Live,
    /// By (flag key, variation key).
    pub(super) rings: &'a HashMap<Key, Ring>,
    pub(super) business: &'a Business,
    /// Figures of Prometheus-sourced alerts.
    pub(super) fleet: &'a crate::fleet::figures::AlertValues,
    pub(super) now: Instant,
}

/// A variation's own value of `metric` and its samples.
pub(super) fn raw_value(
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
pub(super) fn measure(
    inputs: &Inputs<'_>,
    rule: &AlertRule,
    fi: usize,
    flag: &Flag,
    vi: usize,
) -> Measured {
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

//! Fleet-wide figures for gates and alerts with `source = "prometheus"`.
//!
//! Gates: every gate pass (on every replica, so each one's rollout status shows the fleet)
//! reads, per Prometheus-sourced rollout, the rolled-out variation's requests, errors and
//! fallbacks since its stage began (or over the gate's `window`, the last part of the stage),
//! and p95 latencies when the gate has a latency threshold. The reading is kept here;
//! [`stage_figures`] turns it into the gate's [`StageFigures`], or into the reason the gate
//! cannot pass (Prometheus unreachable, nonsense, or a reading too old): gates fail closed.
//!
//! Alerts: every alert pass reads each Prometheus-sourced alert's metric per variation over
//! its window ([`alert_values`]); a failed read makes the alert's state `unknown` (no level
//! change, no action).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::prometheus::{Prometheus, Sample};
use super::queries::{self, AlertMetricKind};
use crate::app::{App, Live};
use crate::config::{AlertRule, FigureSource};
use crate::rollout::StageFigures;

/// Why an alert has no value when its figures could not be read from Prometheus (the
/// alert's state is then `unknown`).
pub const UNAVAILABLE: &str = "fleet figures unavailable: Prometheus did not answer";

/// What one gate pass read from Prometheus for one rollout.
#[derive(Debug, Clone)]
pub struct GateReading {
    stage: u32,
    at: Instant,
    result: Result<Counts, String>,
}

/// A variation's request counts over a range, and latency quantiles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    requests: f64,
    errors: f64,
    fallbacks: f64,
    p95: Option<f64>,
    stable_p95: Option<f64>,
}

/// The Prometheus client of the live config, when `[fleet] prometheus_url` is set.
pub fn prometheus(app: &App, live: &Live) -> Option<Prometheus> {
    let fleet = &live.config.fleet;
    let url = fleet.prometheus_url.as_ref()?;
    let client = app.clients.get(fleet.query_timeout, false);
    Some(Prometheus::new(url, fleet.query_timeout, client))
}

/// Runs one query, counting it in `switchyard_prometheus_queries_total`.
async fn query(app: &App, prom: &Prometheus, promql: &str) -> Result<Vec<Sample>, String> {
    match prom.query(promql).await {
        Ok(samples) => {
            app.metrics
                .prometheus_queries
                .with_label_values(&["ok"])
                .inc();
            Ok(samples)
        }
        Err(e) => {
            app.metrics
                .prometheus_queries
                .with_label_values(&["failed"])
                .inc();
            tracing::warn!(error = %e, query = promql, "fleet figures: query failed");
            Err(e.to_string())
        }
    }
}

/// Per variation: (requests, errors, fallbacks) from a [`queries::requests_by_outcome`]
/// answer. Requests are those that reached a decision (clients' own bad requests excluded).
fn counts_by_variation(samples: &[Sample]) -> HashMap<String, (f64, f64, f64)> {
    let mut out: HashMap<String, (f64, f64, f64)> = HashMap::new();
    for s in samples {
        let e = out.entry(s.label("variation").to_owned()).or_default();
        match s.label("outcome") {
            "client_error" => {}
            "upstream_error" => {
                e.0 += s.value;
                e.1 += s.value;
            }
            "fallback" => {
                e.0 += s.value;
                e.2 += s.value;
            }
            _ => e.0 += s.value,
        }
    }
    out
}

fn by_variation(samples: &[Sample]) -> HashMap<String, f64> {
    samples
        .iter()
        .map(|s| (s.label("variation").to_owned(), s.value))
        .collect()
}

/// Reads the fleet figures of every Prometheus-sourced rollout of the live config.
pub async fn refresh_gates(app: &Arc<App>) {
    let live = app.live.load_full();
    let mut wanted = Vec::new();
    for (i, flag) in live.config.flags.iter().enumerate() {
        for (r, rule) in flag.rules.iter().enumerate() {
            match &rule.rollout {
                Some(ro) if ro.gate.source == FigureSource::Prometheus => wanted.push((i, r)),
                _ => {}
            }
        }
    }
    app.fleet.gates.retain(|(f, r), _| {
        wanted.iter().any(|(i, j)| {
            live.config.flags[*i].key == *f && live.config.flags[*i].rules[*j].id == *r
        })
    });
    if wanted.is_empty() {
        return;
    }
    let prom = prometheus(app, &live);
    for (i, r) in wanted {
        let flag = &live.config.flags[i];
        let rule = &flag.rules[r];
        let Some(ro) = &rule.rollout else { continue };
        let stage = live.runtime[i].stages[r];
        let held_for = crate::admin::api::stage_figures(app, &live, i, flag, r).held_for;
        let over = ro.gate.window.map_or(held_for, |w| w.min(held_for));
        let result = match &prom {
            None => Err("[fleet] prometheus_url is not set".to_owned()),
            Some(prom) => {
                read_gate(
                    app,
                    prom,
                    &flag.key,
                    &flag.variations[ro.variation].key,
                    &flag.variations[flag.stable_variation].key,
                    ro.gate.max_p95_seconds.is_some() || ro.gate.max_p95_ratio.is_some(),
                    over,
                )
                .await
            }
        };
        app.fleet.gates.insert(
            (flag.key.clone(), rule.id.clone()),
            GateReading {
                stage,
                at: Instant::now(),
                result,
            },
        );
    }
}

async fn read_gate(
    app: &App,
    prom: &Prometheus,
    flag: &str,
    variation: &str,
    stable: &str,
    latency: bool,
    over: Duration,
) -> Result<Counts, String> {
    let samples = query(app, prom, &queries::requests_by_outcome(flag, over)).await?;
    let (requests, errors, fallbacks) = counts_by_variation(&samples)
        .get(variation)
        .copied()
        .unwrap_or_default();
    let mut counts = Counts {
        requests,
        errors,
        fallbacks,
        ..Counts::default()
    };
    if latency {
        let p =
            by_variation(&query(app, prom, &queries::duration_quantile(flag, 0.95, over)).await?);
        counts.p95 = p.get(variation).copied();
        counts.stable_p95 = p.get(stable).copied();
    }
    Ok(counts)
}

/// The fleet figures of a Prometheus-sourced gate in `stage`, or why the gate cannot pass.
pub fn stage_figures(
    app: &App,
    live: &Live,
    flag: &str,
    rule: &str,
    stage: u32,
    held_for: Duration,
) -> Result<StageFigures, String> {
    let Some(reading) = app
        .fleet
        .gates
        .get(&(flag.to_owned(), rule.to_owned()))
        .map(|r| r.clone())
    else {
        return Err("fleet figures not read from Prometheus yet".into());
    };
    if reading.stage != stage {
        return Err("fleet figures of this stage not read from Prometheus yet".into());
    }
    let server = &live.config.server;
    let max_age =
        server.gate_interval * 3 + live.config.fleet.query_timeout + Duration::from_secs(2);
    let age = reading.at.elapsed();
    if age > max_age {
        return Err(format!(
            "fleet figures are {} s old (the gate loop has not read Prometheus since)",
            age.as_secs()
        ));
    }
    match reading.result {
        Err(why) => Err(format!("fleet figures unavailable: {why}")),
        Ok(c) => Ok(StageFigures {
            requests: c.requests.round().max(0.0) as u64,
            errors: c.errors.round().max(0.0) as u64,
            fallbacks: c.fallbacks.round().max(0.0) as u64,
            p95_seconds: c.p95,
            stable_p95_seconds: c.stable_p95,
            held_for,
        }),
    }
}

/// Each Prometheus-sourced alert's (value, samples) per variation, or why they could not be
/// read: by alert name.
pub type AlertValues = HashMap<String, Result<HashMap<String, (f64, u64)>, String>>;

/// Reads the figures of every Prometheus-sourced alert of the live config (identical queries
/// asked once per pass).
pub async fn alert_values(app: &App, live: &Live) -> AlertValues {
    let mut out = AlertValues::new();
    let rules: Vec<&AlertRule> = live
        .config
        .alerts
        .iter()
        .filter(|r| r.source == FigureSource::Prometheus)
        .collect();
    if rules.is_empty() {
        return out;
    }
    let Some(prom) = prometheus(app, live) else {
        for r in rules {
            out.insert(
                r.name.clone(),
                Err("[fleet] prometheus_url is not set".into()),
            );
        }
        return out;
    };
    let mut asked: HashMap<String, Result<Vec<Sample>, String>> = HashMap::new();
    for rule in rules {
        let value = read_alert(app, &prom, rule, &mut asked).await;
        out.insert(rule.name.clone(), value);
    }
    out
}

async fn ask(
    app: &App,
    prom: &Prometheus,
    asked: &mut HashMap<String, Result<Vec<Sample>, String>>,
    promql: String,
) -> Result<Vec<Sample>, String> {
    if let Some(r) = asked.get(&promql) {
        return r.clone();
    }
    let r = query(app, prom, &promql).await;
    asked.insert(promql, r.clone());
    r
}

async fn read_alert(
    app: &App,
    prom: &Prometheus,
    rule: &AlertRule,
    asked: &mut HashMap<String, Result<Vec<Sample>, String>>,
) -> Result<HashMap<String, (f64, u64)>, String> {
    let flag = rule.flag.as_str();
    let samples = |n: f64| n.round().max(0.0) as u64;
    match queries::alert_metric_kind(&rule.metric) {
        None => Err(format!(
            "metric {:?} cannot be read from Prometheus",
            rule.metric
        )),
        Some(AlertMetricKind::Counter) => {
            let s = ask(
                app,
                prom,
                asked,
                queries::requests_by_outcome(flag, rule.window),
            )
            .await?;
            Ok(counts_by_variation(&s)
                .into_iter()
                .filter_map(|(v, (requests, errors, fallbacks))| {
                    let value = match rule.metric.as_str() {
                        "error_rate" => (requests > 0.0).then(|| errors / requests),
                        "fallback_rate" => (requests > 0.0).then(|| fallbacks / requests),
                        _ => Some(requests),
                    };
                    value.map(|x| (v, (x, samples(requests))))
                })
                .collect())
        }
        Some(AlertMetricKind::Quantile(q)) => {
            let values = ask(
                app,
                prom,
                asked,
                queries::duration_quantile(flag, q, rule.window),
            )
            .await?;
            let counts = ask(app, prom, asked, queries::duration_count(flag, rule.window)).await?;
            let counts = by_variation(&counts);
            Ok(by_variation(&values)
                .into_iter()
                .map(|(v, x)| {
                    let n = counts.get(&v).copied().unwrap_or(0.0);
                    (v, (x, samples(n)))
                })
                .collect())
        }
        Some(AlertMetricKind::Business) => {
            let values = ask(
                app,
                prom,
                asked,
                queries::business_metric(flag, &rule.metric),
            )
            .await?;
            let users = ask(
                app,
                prom,
                asked,
                queries::business_users(flag, &rule.metric),
            )
            .await?;
            let users = by_variation(&users);
            Ok(by_variation(&values)
                .into_iter()
                .map(|(v, x)| {
                    let n = users.get(&v).copied().unwrap_or(0.0);
                    (v, (x, samples(n)))
                })
                .collect())
        }
    }
}

/// A Prometheus-sourced alert's value on `variation`: (value, samples, why there is none).
pub fn alert_value(
    values: &AlertValues,
    rule: &AlertRule,
    variation: &str,
) -> (Option<f64>, u64, Option<&'static str>) {
    match values.get(&rule.name) {
        Some(Ok(map)) => match map.get(variation) {
            Some((value, samples)) => (Some(*value), *samples, None),
            None => (None, 0, None),
        },
        Some(Err(_)) | None => (None, 0, Some(UNAVAILABLE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample(variation: &str, outcome: &str, value: f64) -> Sample {
        let mut labels = BTreeMap::new();
        labels.insert("variation".to_owned(), variation.to_owned());
        labels.insert("outcome".to_owned(), outcome.to_owned());
        Sample { labels, value }
    }

    #[test]
    fn outcomes_add_up_as_the_local_counters_do() {
        let c = counts_by_variation(&[
            sample("a", "success", 90.0),
            sample("a", "upstream_error", 6.0),
            sample("a", "fallback", 4.0),
            sample("a", "client_error", 50.0),
            sample("a", "client_cancelled", 1.0),
            sample("b", "success", 3.0),
        ]);
        assert_eq!(c["a"], (101.0, 6.0, 4.0));
        assert_eq!(c["b"], (3.0, 0.0, 0.0));
    }
}

//! The last hour of each variation's figures for the console's charts: a ring of points per
//! (flag, variation), one every [`SAMPLE_EVERY`], taken by a loop beside the request path from
//! the counters and rolling quantiles requests already record.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::RwLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::{App, Live};

/// How often a point is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back the history goes.
pub const KEEP: Duration = Duration::from_secs(3600);
/// The SRM check of every experiment is refreshed once per this many samples (once a minute).
pub const SRM_EVERY_TICKS: u64 = 12;
/// Points per ring.
const POINTS: usize = (KEEP.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;

/// One sample of one variation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When (unix ms).
    pub at_ms: u64,
    /// Requests since the process started (cumulative).
    pub requests: u64,
    /// Upstream errors since the process started (cumulative).
    pub errors: u64,
    /// Fallback answers since the process started (cumulative).
    pub fallbacks: u64,
    /// Median latency of the rolling window then, in seconds.
    pub p50: Option<f32>,
    /// 95th percentile latency of the rolling window then, in seconds.
    pub p95: Option<f32>,
}

/// (flag key, variation key).
type Key = (String, String);

/// Rings of points per variation, and each experiment's last SRM check.
#[derive(Debug, Default)]
pub struct History {
    series: RwLock<HashMap<Key, VecDeque<Point>>>,
    srm: RwLock<HashMap<String, bool>>,
}

impl History {
    /// Takes one point of every variation of `live`; forgets variations the config dropped.
    pub fn sample(&self, live: &Live, at_ms: u64) {
        let Ok(mut series) = self.series.write() else {
            return;
        };
        let mut keep = HashSet::new();
        for (fi, flag) in live.config.flags.iter().enumerate() {
            for (vi, v) in flag.variations.iter().enumerate() {
                let Some(h) = live.routes.flags.get(fi).and_then(|f| f.get(vi)) else {
                    continue;
                };
                let t = h.totals();
                let q = h.quantiles().filter(|(n, _)| *n > 0).map(|(_, q)| q);
                let key = (flag.key.clone(), v.key.clone());
                let ring = series.entry(key.clone()).or_default();
                if ring.len() >= POINTS {
                    ring.pop_front();
                }
                ring.push_back(Point {
                    at_ms,
                    requests: t.requests,
                    errors: t.errors,
                    fallbacks: t.fallbacks,
                    p50: q.map(|q| q[0] as f32),
                    p95: q.map(|q| q[1] as f32),
                });
                keep.insert(key);
            }
        }
        series.retain(|k, _| keep.contains(k));
    }

    /// The points of one variation, oldest first.
    pub fn points(&self, flag: &str, variation: &str) -> Vec<Point> {
        let Ok(series) = self.series.read() else {
            return Vec::new();
        };
        series
            .get(&(flag.to_owned(), variation.to_owned()))
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The oldest point of a variation no older than `since_ms`, if any.
    pub fn first_since(&self, flag: &str, variation: &str, since_ms: u64) -> Option<Point> {
        let series = self.series.read().ok()?;
        let ring = series.get(&(flag.to_owned(), variation.to_owned()))?;
        ring.iter().find(|p| p.at_ms >= since_ms).copied()
    }

    /// Whether the last check of `flag`'s experiment found a sample ratio mismatch (`None`:
    /// not checked, or no experiment).
    pub fn srm(&self, flag: &str) -> Option<bool> {
        self.srm.read().ok()?.get(flag).copied()
    }

    fn set_srm(&self, values: HashMap<String, bool>) {
        if let Ok(mut srm) = self.srm.write() {
            *srm = values;
        }
    }
}

/// A variation's chart series as JSON: `[[at_ms, p50, p95, error_rate, requests], …]`, where
/// the error rate and requests are those of the interval ending at that point.
pub fn series_json(points: &[Point]) -> Value {
    let mut out = Vec::with_capacity(points.len());
    let mut prev: Option<&Point> = None;
    for p in points {
        let (requests, errors) = match prev {
            Some(q) => (
                p.requests.saturating_sub(q.requests),
                p.errors.saturating_sub(q.errors),
            ),
            None => (0, 0),
        };
        let rate = (requests > 0).then(|| errors as f64 / requests as f64);
        out.push(json!([
            p.at_ms,
            p.p50.map(f64::from),
            p.p95.map(f64::from),
            rate,
            requests
        ]));
        prev = Some(p);
    }
    Value::Array(out)
}

/// Checks every experiment for a sample ratio mismatch (the figures of `GET
/// /admin/flags/{flag}/results`); a flag whose check fails keeps no mark.
pub async fn refresh_srm(app: &App) {
    let live = app.live.load_full();
    let mut values = HashMap::new();
    for flag in &live.config.flags {
        if flag.experiment_rule.is_none() {
            continue;
        }
        match crate::experiments::runtime::results(app, &flag.key, None).await {
            Ok(v) => {
                if let Some(detected) = v["srm"]["detected"].as_bool() {
                    values.insert(flag.key.clone(), detected);
                }
            }
            Err(e) => {
                tracing::debug!(flag = %flag.key, error = %e, "SRM check skipped");
            }
        }
    }
    app.history.set_srm(values);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: u64, requests: u64, errors: u64) -> Point {
        Point {
            at_ms,
            requests,
            errors,
            fallbacks: 0,
            p50: Some(0.01),
            p95: None,
        }
    }

    #[test]
    fn series_are_per_interval() {
        let s = series_json(&[point(0, 10, 1), point(5000, 30, 6), point(10000, 30, 6)]);
        assert_eq!(s[0][3], Value::Null);
        assert_eq!(s[1][3], json!(0.25));
        assert_eq!(s[1][4], json!(20));
        assert_eq!(s[2][3], Value::Null, "no requests: no error rate");
        assert_eq!(s[0][2], Value::Null);
    }

    #[test]
    fn an_hour_of_points_is_kept() {
        assert_eq!(POINTS, 721);
    }
}

//! `switchyard_latency_quantile_seconds`: the rolling hdrhistogram quantiles of every
//! (flag, variation) exposed as a Prometheus *summary* (quantiles 0.5, 0.95 and 0.99 with
//! `_sum` and `_count` over the same rolling window), built when `/metrics` is gathered.
//! A gauge may not carry the reserved `quantile` label; a summary is what it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};

use super::Rolling;

/// The family's name.
const NAME: &str = "switchyard_latency_quantile_seconds";
/// Its help text.
const HELP: &str = "Exact request latency quantiles over a rolling 60 s window (hdrhistogram); _sum and _count cover the same window.";
/// The quantiles exposed, in the order [`Rolling::quantiles`] returns them.
const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// Rolling windows by (flag, variation), shared with the per-variation handles.
pub(super) type Windows = Arc<DashMap<(String, String), Arc<Mutex<Rolling>>>>;

/// The collector registered in the one registry.
pub(super) struct LatencySummary {
    windows: Windows,
    /// `[telemetry] latency_quantiles` of the config in force: nothing is exposed when off.
    enabled: Arc<AtomicBool>,
    desc: Desc,
}

impl LatencySummary {
    pub(super) fn new(
        windows: Windows,
        enabled: Arc<AtomicBool>,
    ) -> prometheus::Result<LatencySummary> {
        let desc = Desc::new(
            NAME.to_owned(),
            HELP.to_owned(),
            vec!["flag".to_owned(), "variation".to_owned()],
            Default::default(),
        )?;
        Ok(LatencySummary {
            windows,
            enabled,
            desc,
        })
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

impl Collector for LatencySummary {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut rows = Vec::new();
        for entry in self.windows.iter() {
            let Ok(mut r) = entry.value().lock() else {
                continue;
            };
            let (count, qs, sum) = r.summary();
            drop(r);
            if count > 0 {
                rows.push((entry.key().clone(), count, qs, sum));
            }
        }
        if rows.is_empty() {
            return Vec::new();
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let metrics = rows
            .into_iter()
            .map(|((flag, variation), count, qs, sum)| {
                let mut s = Summary::default();
                s.set_sample_count(count);
                s.set_sample_sum(sum);
                s.set_quantile(
                    QUANTILES
                        .iter()
                        .zip(qs)
                        .map(|(q, v)| {
                            let mut quantile = Quantile::default();
                            quantile.set_quantile(*q);
                            quantile.set_value(v);
                            quantile
                        })
                        .collect(),
                );
                let mut m = Metric::default();
                m.set_label(vec![label("flag", &flag), label("variation", &variation)]);
                m.set_summary(s);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(NAME.to_owned());
        family.set_help(HELP.to_owned());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(metrics);
        vec![family]
    }
}

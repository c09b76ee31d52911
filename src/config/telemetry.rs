//! `[telemetry]`: what is exposed per variation. Without the rolling quantile window
//! (`latency_quantiles = false`) nothing local can read a p50/p95/p99, so a gate or an alert
//! that would read one from this process is refused rather than left waiting on no data.

use std::sync::Arc;

use super::raw::RawConfig;
use super::{AlertRule, FigureSource, KeyPath, Validator};
use crate::flags::Flag;
use crate::metrics::Telemetry;

/// Alert metrics read from the rolling latency window.
const QUANTILE_METRICS: [&str; 3] = [
    "p50_latency_seconds",
    "p95_latency_seconds",
    "p99_latency_seconds",
];

impl Validator<'_> {
    /// `[telemetry]`, checked against the gates and alerts that read local latency quantiles.
    pub(super) fn telemetry(
        &mut self,
        raw: &RawConfig,
        flags: &[Arc<Flag>],
        alerts: &[AlertRule],
    ) -> Telemetry {
        let t = Telemetry {
            latency_quantiles: raw.telemetry.latency_quantiles.unwrap_or(true),
            model_label: raw.telemetry.model_label.unwrap_or(true),
        };
        if t.latency_quantiles {
            return t;
        }
        let path = KeyPath::root().key("telemetry").key("latency_quantiles");
        for a in alerts {
            if a.source == FigureSource::Local && QUANTILE_METRICS.contains(&a.metric.as_str()) {
                self.err(
                    &path,
                    format!(
                        "alert {:?} reads {} from this process, which keeps no latency quantiles with latency_quantiles = false (use source = \"prometheus\" or keep the quantiles)",
                        a.name, a.metric
                    ),
                );
            }
        }
        for f in flags {
            for r in &f.rules {
                let Some(ro) = &r.rollout else { continue };
                let g = &ro.gate;
                if g.source == FigureSource::Local
                    && (g.max_p95_seconds.is_some() || g.max_p95_ratio.is_some())
                {
                    self.err(
                        &path,
                        format!(
                            "the rollout gate of flag {:?} rule {:?} reads a local p95, which is not kept with latency_quantiles = false (use source = \"prometheus\" or keep the quantiles)",
                            f.key, r.id
                        ),
                    );
                }
            }
        }
        t
    }
}

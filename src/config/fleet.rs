//! `[fleet]` and the `source` of gates and alerts: where fleet-wide figures come from.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use super::raw::RawConfig;
use super::{AlertRule, FigureSource, FleetSettings, KeyPath, Validator};
use crate::flags::Flag;

/// The default budget of one Prometheus query.
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Validator<'_> {
    /// A gate's or an alert's `source` (default `local`).
    pub(super) fn source(&mut self, path: &KeyPath, value: Option<&str>) -> FigureSource {
        match value {
            None | Some("local") => FigureSource::Local,
            Some("prometheus") => FigureSource::Prometheus,
            Some(other) => {
                self.err(
                    path,
                    format!("unknown source {other:?} (\"local\" or \"prometheus\")"),
                );
                FigureSource::Local
            }
        }
    }

    /// `[fleet]`, checked against the gates and alerts that read Prometheus.
    pub(super) fn fleet(
        &mut self,
        raw: &RawConfig,
        flags: &[Arc<Flag>],
        alerts: &[AlertRule],
    ) -> FleetSettings {
        let p = KeyPath::root().key("fleet");
        let prometheus_url = raw.fleet.prometheus_url.as_deref().and_then(|u| {
            match u.trim_end_matches('/').parse::<Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http") | Some("https"))
                        && uri.host().is_some()
                        && uri.query().is_none() =>
                {
                    Some(uri)
                }
                _ => {
                    self.err(
                        &p.key("prometheus_url"),
                        format!("invalid URL {u:?} (write e.g. \"http://prometheus:9090\")"),
                    );
                    None
                }
            }
        });
        let query_timeout = self.duration(
            &p.key("query_timeout"),
            raw.fleet.query_timeout.as_deref(),
            DEFAULT_QUERY_TIMEOUT,
        );
        if query_timeout.is_zero() {
            self.err(&p.key("query_timeout"), "must be more than 0s");
        }
        if raw.fleet.prometheus_url.is_none() {
            let need = "source = \"prometheus\" needs [fleet] prometheus_url";
            for flag in flags {
                for (i, rule) in flag.rules.iter().enumerate() {
                    let reads = rule
                        .rollout
                        .as_ref()
                        .is_some_and(|ro| ro.gate.source == FigureSource::Prometheus);
                    if reads {
                        let path = KeyPath::root()
                            .key("flags")
                            .key(&flag.key)
                            .key("rules")
                            .index(i)
                            .key("rollout")
                            .key("gate")
                            .key("source");
                        self.err(&path, need);
                    }
                }
            }
            for (i, a) in raw.alerts.iter().enumerate() {
                if a.source.as_deref() == Some("prometheus") {
                    self.err(&KeyPath::root().key("alerts").index(i).key("source"), need);
                }
            }
        }
        for (i, a) in raw.alerts.iter().enumerate() {
            let reads = alerts
                .iter()
                .any(|r| r.name == a.name && r.source == FigureSource::Prometheus);
            if reads && crate::fleet::queries::alert_metric_kind(&a.metric).is_none() {
                self.err(
                    &KeyPath::root().key("alerts").index(i).key("metric"),
                    format!("metric {:?} cannot be read from Prometheus", a.metric),
                );
            }
        }
        FleetSettings {
            prometheus_url,
            query_timeout,
        }
    }
}

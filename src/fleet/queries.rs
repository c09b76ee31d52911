//! The PromQL this project asks Prometheus, one builder per figure (pure). Every expression
//! aggregates across replicas (`sum by (variation, …)`), so a gate or an alert with
//! `source = "prometheus"` sees the fleet, not one process.

use std::time::Duration;

/// What an alert metric is read from in Prometheus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlertMetricKind {
    /// `error_rate`, `fallback_rate`, `requests`: request counters over the window.
    Counter,
    /// `p50_latency_seconds`, `p95_…`, `p99_…`: the duration histogram over the window.
    Quantile(f64),
    /// Anything else: the business-metric gauge (mean per user over the experiment).
    Business,
}

/// How an alert's metric is read from Prometheus (`None`: it cannot be).
pub fn alert_metric_kind(metric: &str) -> Option<AlertMetricKind> {
    match metric {
        "" => None,
        "error_rate" | "fallback_rate" | "requests" => Some(AlertMetricKind::Counter),
        "p50_latency_seconds" => Some(AlertMetricKind::Quantile(0.5)),
        "p95_latency_seconds" => Some(AlertMetricKind::Quantile(0.95)),
        "p99_latency_seconds" => Some(AlertMetricKind::Quantile(0.99)),
        _ => Some(AlertMetricKind::Business),
    }
}

/// A PromQL string literal (double-quoted, escaped).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A range in whole seconds, at least one.
pub fn range(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{}s", secs.max(1))
}

/// Requests of `flag` over the last `over`, per variation and outcome, across replicas.
pub fn requests_by_outcome(flag: &str, over: Duration) -> String {
    format!(
        "sum by (variation, outcome) (increase(switchyard_requests_total{{flag={}}}[{}]))",
        quote(flag),
        range(over)
    )
}

/// The `q` quantile of request duration of `flag` over the last `over`, per variation, from
/// the histogram buckets of every replica.
pub fn duration_quantile(flag: &str, q: f64, over: Duration) -> String {
    format!(
        "histogram_quantile({q}, sum by (variation, le) (rate(switchyard_request_duration_seconds_bucket{{flag={}}}[{}])))",
        quote(flag),
        range(over)
    )
}

/// Requests timed by the duration histogram of `flag` over the last `over`, per variation.
pub fn duration_count(flag: &str, over: Duration) -> String {
    format!(
        "sum by (variation) (increase(switchyard_request_duration_seconds_count{{flag={}}}[{}]))",
        quote(flag),
        range(over)
    )
}

/// A business metric of `flag` per variation (the replicas agree: it comes from the shared
/// store; `max` keeps one series per variation).
pub fn business_metric(flag: &str, metric: &str) -> String {
    format!(
        "max by (variation) (switchyard_business_metric{{flag={}, metric={}}})",
        quote(flag),
        quote(metric)
    )
}

/// Users behind [`business_metric`].
pub fn business_users(flag: &str, metric: &str) -> String {
    format!(
        "max by (variation) (switchyard_business_metric_users{{flag={}, metric={}}})",
        quote(flag),
        quote(metric)
    )
}

/// Every query a gate or an alert on `flag` may ask, for checking them against a live
/// Prometheus: (what, PromQL).
pub fn all_for(flag: &str, metric: &str, over: Duration) -> Vec<(&'static str, String)> {
    vec![
        ("requests by outcome", requests_by_outcome(flag, over)),
        ("p95 latency", duration_quantile(flag, 0.95, over)),
        ("timed requests", duration_count(flag, over)),
        ("business metric", business_metric(flag, metric)),
        ("business users", business_users(flag, metric)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_quoted_and_ranges_whole_seconds() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(range(Duration::from_millis(1500)), "2s");
        assert_eq!(range(Duration::ZERO), "1s");
        assert_eq!(
            requests_by_outcome("f", Duration::from_secs(60)),
            r#"sum by (variation, outcome) (increase(switchyard_requests_total{flag="f"}[60s]))"#
        );
    }

    #[test]
    fn metric_kinds() {
        assert_eq!(
            alert_metric_kind("error_rate"),
            Some(AlertMetricKind::Counter)
        );
        assert_eq!(
            alert_metric_kind("p95_latency_seconds"),
            Some(AlertMetricKind::Quantile(0.95))
        );
        assert_eq!(
            alert_metric_kind("conversion"),
            Some(AlertMetricKind::Business)
        );
        assert_eq!(alert_metric_kind(""), None);
    }
}

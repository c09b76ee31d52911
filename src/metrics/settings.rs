//! `[telemetry]`: what the proxy exposes about each variation, for configurations where the
//! series count matters (hundreds of flags).

/// `[telemetry]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Telemetry {
    /// `latency_quantiles` (default true): keep the rolling hdrhistogram window per
    /// variation, exposed as `switchyard_latency_quantile_seconds` and read by the admin API,
    /// the console and latency-quantile alerts. `false` drops the window and the summary
    /// (the `switchyard_request_duration_seconds` histogram stays, for `histogram_quantile`).
    pub latency_quantiles: bool,
    /// `model_label` (default true): fill the `model` label with the variation's model id.
    /// `false` leaves it empty (the series keep their count, each one is shorter).
    pub model_label: bool,
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry {
            latency_quantiles: true,
            model_label: true,
        }
    }
}

//! The handles the request path records through: one set per (flag, variation) and client
//! API, resolved when a config loads (chat) or on first use (the other APIs).

use super::*;

/// Pre-resolved handles for one (flag, variation): the request path records through these.
#[derive(Debug, Clone)]
pub struct VariationMetrics {
    pub(super) outcomes: [IntCounter; 6],
    /// Total request duration.
    pub duration: Histogram,
    /// Time to first token of streams.
    pub ttft: Histogram,
    /// The proxy's own time.
    pub overhead: Histogram,
    /// Prompt tokens.
    pub tokens_in: IntCounter,
    /// Completion tokens.
    pub tokens_out: IntCounter,
    pub(super) errors: [IntCounter; 10],
    /// `fallback_triggers_total{reason="stream_interrupted", behavior="error"}`.
    pub stream_interrupted: IntCounter,
    /// Estimated cost in USD (from `[prices]`).
    pub cost_usd: prometheus::Counter,
    /// USD per million (input, output) tokens of this variation's model, when priced.
    pub price: Option<(f64, f64)>,
    pub(super) rolling: Arc<Mutex<Rolling>>,
}

impl VariationMetrics {
    /// Counts one request with its outcome.
    pub fn outcome(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[i].inc();
    }

    /// Totals since the process started: (requests, errors, fallbacks, client_errors).
    /// Requests exclude the client's own bad requests.
    pub fn totals(&self) -> VariationTotals {
        let get = |o: Outcome| {
            let i = Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0);
            self.outcomes[i].get()
        };
        let errors = get(Outcome::UpstreamError);
        let fallbacks = get(Outcome::Fallback);
        VariationTotals {
            requests: get(Outcome::Success)
                + fallbacks
                + errors
                + get(Outcome::Cancelled)
                + get(Outcome::Cached),
            errors,
            fallbacks,
            tokens_in: self.tokens_in.get(),
            tokens_out: self.tokens_out.get(),
        }
    }

    /// Counts one error of a class.
    pub fn error(&self, class: ErrorClass) {
        let i = ErrorClass::ALL
            .iter()
            .position(|c| *c == class)
            .unwrap_or(0);
        self.errors[i].inc();
    }

    /// Records a request's total latency (histogram and rolling quantiles).
    pub fn latency(&self, d: Duration) {
        self.duration.observe(d.as_secs_f64());
        if let Ok(mut r) = self.rolling.lock() {
            r.record(d);
        }
    }

    /// Exact quantiles of the rolling window, in seconds (for the admin API).
    pub fn quantiles(&self) -> Option<(u64, [f64; 3])> {
        self.rolling.lock().ok().map(|mut r| r.quantiles())
    }
}

/// A variation's counters, read back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariationTotals {
    /// Requests that reached a decision (answered, fell back, failed, or cancelled).
    pub requests: u64,
    /// Requests that ended in an upstream error.
    pub errors: u64,
    /// Requests answered by a fallback.
    pub fallbacks: u64,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
}

/// Handles of every variation of a config, indexed `[flag][variation]`, plus the
/// passthrough and pre-flag handles.
#[derive(Debug)]
pub struct RouteMetrics {
    /// `[flag index][variation index]`.
    pub flags: Vec<Vec<VariationHandles>>,
    /// Requests for a model that is no flag.
    pub passthrough: VariationHandles,
    /// Requests rejected before a flag was known.
    pub unrouted: VariationHandles,
}

/// The labels of one (flag, variation)'s handles.
#[derive(Debug)]
pub struct HandleLabels {
    pub(super) flag: String,
    pub(super) variation: String,
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) price: Option<(f64, f64)>,
}

/// One (flag, variation)'s handles per client API: the chat API's resolved with the config,
/// the others on first use (so a config of many flags does not carry five sets each).
#[derive(Debug)]
pub struct VariationHandles {
    pub(super) chat: VariationMetrics,
    pub(super) others: [OnceLock<VariationMetrics>; 4],
    pub(super) labels: HandleLabels,
    pub(super) metrics: std::sync::Weak<Metrics>,
}

impl VariationHandles {
    /// The handles of requests that came in through `api`.
    pub fn api(&self, api: ClientApi) -> &VariationMetrics {
        let Some(slot) = api.index().checked_sub(1).and_then(|i| self.others.get(i)) else {
            return &self.chat;
        };
        if let Some(h) = slot.get() {
            return h;
        }
        match self
            .metrics
            .upgrade()
            .and_then(|m| m.variation(&self.labels, api).ok())
        {
            Some(h) => slot.get_or_init(|| h),
            // The registry is gone (shutting down): count with chat's.
            None => &self.chat,
        }
    }

    /// Estimated cost in USD since the process started.
    pub fn cost_usd(&self) -> f64 {
        self.chat.cost_usd.get()
    }

    /// Mean time to first token of streams since the process started, over every client API.
    pub fn ttft_mean_seconds(&self) -> Option<f64> {
        let (n, sum) = self.all().fold((0u64, 0.0), |(n, sum), h| {
            (n + h.ttft.get_sample_count(), sum + h.ttft.get_sample_sum())
        });
        (n > 0).then(|| sum / n as f64)
    }

    fn all(&self) -> impl Iterator<Item = &VariationMetrics> {
        std::iter::once(&self.chat).chain(self.others.iter().filter_map(OnceLock::get))
    }

    /// Totals since the process started, over every client API.
    pub fn totals(&self) -> VariationTotals {
        let mut t = VariationTotals::default();
        for h in self.all() {
            let x = h.totals();
            t.requests += x.requests;
            t.errors += x.errors;
            t.fallbacks += x.fallbacks;
            t.tokens_in += x.tokens_in;
            t.tokens_out += x.tokens_out;
        }
        t
    }

    /// Exact quantiles of the rolling window (shared by every client API), in seconds.
    pub fn quantiles(&self) -> Option<(u64, [f64; 3])> {
        self.chat.quantiles()
    }
}

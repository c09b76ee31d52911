//! The handles the request path records through: one set per (flag, variation) and client
//! API, kept by the registry so a reload finds the same set.
//!
//! What `increase()` reads starts at zero: the chat API's set of every variation is made when
//! a config loads, and a set's request, token and cost counters exist (at zero) from the
//! moment the set is made, so Prometheus sees a flag's first requests and alerts and gates
//! reading it fire. Everything else is made on its first observation ([`Lazy`]): the latency
//! histograms, the rolling quantile window, the error-class and stream-interruption counters.
//! A thousand flags carry nine counters per variation until used, not their histograms.

use super::*;

/// Handles for one (flag, variation) and client API.
#[derive(Debug)]
pub struct VariationMetrics {
    pub(super) outcomes: [Lazy<IntCounter>; 6],
    /// Total request duration.
    pub duration: Lazy<Histogram>,
    /// Time to first token of streams.
    pub ttft: Lazy<Histogram>,
    /// The proxy's own time.
    pub overhead: Lazy<Histogram>,
    /// Prompt tokens.
    pub tokens_in: Lazy<IntCounter>,
    /// Completion tokens.
    pub tokens_out: Lazy<IntCounter>,
    pub(super) errors: [Lazy<IntCounter>; 10],
    /// `fallback_triggers_total{reason="stream_interrupted", behavior="error"}`.
    pub stream_interrupted: Lazy<IntCounter>,
    /// Estimated cost in USD (from `[prices]`).
    pub cost_usd: Lazy<prometheus::Counter>,
    /// USD per million (input, output) tokens of this variation's model, when priced.
    pub price: Option<(f64, f64)>,
    /// The rolling quantile window (recorded while `[telemetry] latency_quantiles` holds).
    pub(super) rolling: Lazy<Arc<Mutex<Rolling>>>,
    quantiles: Arc<std::sync::atomic::AtomicBool>,
}

fn outcome(o: &Owner, m: &Metrics, i: usize) -> prometheus::Result<IntCounter> {
    let l = &o.labels;
    let outcome = Outcome::ALL.get(i).copied().unwrap_or(Outcome::Success);
    m.requests.get_metric_with_label_values(&[
        &l.flag,
        &l.variation,
        &l.provider,
        &l.model,
        outcome.as_str(),
        o.api,
    ])
}

fn error(o: &Owner, m: &Metrics, i: usize) -> prometheus::Result<IntCounter> {
    let class = ErrorClass::ALL
        .get(i)
        .copied()
        .unwrap_or(ErrorClass::ALL[0]);
    m.errors
        .get_metric_with_label_values(&[&o.labels.flag, &o.labels.variation, class.as_str()])
}

fn duration(o: &Owner, m: &Metrics, _: usize) -> prometheus::Result<Histogram> {
    let l = &o.labels;
    m.duration
        .get_metric_with_label_values(&[&l.flag, &l.variation, &l.provider, &l.model, o.api])
}

fn ttft(o: &Owner, m: &Metrics, _: usize) -> prometheus::Result<Histogram> {
    let l = &o.labels;
    m.ttft
        .get_metric_with_label_values(&[&l.flag, &l.variation, &l.provider, &l.model, o.api])
}

fn overhead(o: &Owner, m: &Metrics, _: usize) -> prometheus::Result<Histogram> {
    m.overhead
        .get_metric_with_label_values(&[&o.labels.flag, &o.labels.variation])
}

fn tokens(o: &Owner, m: &Metrics, out: usize) -> prometheus::Result<IntCounter> {
    let l = &o.labels;
    let direction = if out == 1 { "out" } else { "in" };
    m.tokens
        .get_metric_with_label_values(&[&l.flag, &l.variation, &l.model, direction, o.api])
}

fn stream_interrupted(o: &Owner, m: &Metrics, _: usize) -> prometheus::Result<IntCounter> {
    m.fallback_triggers.get_metric_with_label_values(&[
        &o.labels.flag,
        &o.labels.variation,
        "stream_interrupted",
        "error",
    ])
}

fn cost(o: &Owner, m: &Metrics, _: usize) -> prometheus::Result<prometheus::Counter> {
    let l = &o.labels;
    m.cost
        .get_metric_with_label_values(&[&l.flag, &l.variation, &l.model])
}

fn rolling(o: &Owner, m: &Metrics, _: usize) -> prometheus::Result<Arc<Mutex<Rolling>>> {
    Ok(m.rolling
        .entry((o.labels.flag.clone(), o.labels.variation.clone()))
        .or_insert_with(|| Arc::new(Mutex::new(Rolling::new())))
        .clone())
}

impl VariationMetrics {
    /// The handles of `owner`, none of them created yet.
    pub(super) fn new(owner: Owner) -> VariationMetrics {
        let price = owner
            .labels
            .price
            .map(|(i, o)| (f64::from_bits(i), f64::from_bits(o)));
        let quantiles = owner.quantiles.clone();
        let o = Arc::new(owner);
        VariationMetrics {
            outcomes: std::array::from_fn(|i| Lazy::new(&o, outcome, i)),
            duration: Lazy::new(&o, duration, 0),
            ttft: Lazy::new(&o, ttft, 0),
            overhead: Lazy::new(&o, overhead, 0),
            tokens_in: Lazy::new(&o, tokens, 0),
            tokens_out: Lazy::new(&o, tokens, 1),
            errors: std::array::from_fn(|i| Lazy::new(&o, error, i)),
            stream_interrupted: Lazy::new(&o, stream_interrupted, 0),
            cost_usd: Lazy::new(&o, cost, 0),
            price,
            rolling: Lazy::new(&o, rolling, 0),
            quantiles,
        }
    }

    /// Creates the series `increase()` reads (request outcomes, tokens, cost when priced) at
    /// zero, so a scrape before the first request already holds them.
    pub(super) fn zero_counters(&self) {
        for c in &self.outcomes {
            c.resolve();
        }
        self.tokens_in.resolve();
        self.tokens_out.resolve();
        if self.price.is_some() {
            self.cost_usd.resolve();
        }
    }

    /// Counts one request with its outcome.
    pub fn outcome(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(c) = self.outcomes.get(i) {
            c.inc();
        }
    }

    /// Totals since the process started: (requests, errors, fallbacks, client_errors).
    /// Requests exclude the client's own bad requests.
    pub fn totals(&self) -> VariationTotals {
        let get = |o: Outcome| {
            let i = Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0);
            self.outcomes.get(i).map_or(0, |c| c.get())
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
        if let Some(c) = self.errors.get(i) {
            c.inc();
        }
    }

    /// Records a request's total latency (histogram and rolling quantiles).
    pub fn latency(&self, d: Duration) {
        self.duration.observe(d.as_secs_f64());
        if !self.quantiles.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Some(Ok(mut r)) = self.rolling.resolve().map(|r| r.lock()) {
            r.record(d);
        }
    }

    /// Exact quantiles of the rolling window, in seconds (for the admin API); `None` when no
    /// latency was recorded or quantiles are off.
    pub fn quantiles(&self) -> Option<(u64, [f64; 3])> {
        if !self.quantiles.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let window = self.rolling.peek()?;
        window.lock().ok().map(|mut r| r.quantiles())
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HandleLabels {
    pub(super) flag: String,
    pub(super) variation: String,
    pub(super) provider: String,
    /// The model id, or empty when `[telemetry] model_label = false`.
    pub(super) model: String,
    /// USD per million (input, output) tokens, as bits (so labels can be a map key).
    pub(super) price: Option<(u64, u64)>,
}

/// The key under which the registry keeps a set of handles: its labels and client API.
pub(super) type HandleKey = (Arc<HandleLabels>, usize);

/// One (flag, variation)'s handles per client API, each set resolved on first use.
#[derive(Debug)]
pub struct VariationHandles {
    pub(super) apis: [OnceLock<Arc<VariationMetrics>>; 5],
    pub(super) labels: Arc<HandleLabels>,
    pub(super) metrics: std::sync::Weak<Metrics>,
}

impl VariationHandles {
    /// The handles of requests that came in through `api` (made on first use).
    pub fn api(&self, api: ClientApi) -> &VariationMetrics {
        let i = api.index().min(self.apis.len() - 1);
        let slot = &self.apis[i];
        if let Some(h) = slot.get() {
            return h;
        }
        let h = match self.metrics.upgrade() {
            Some(m) => m.variation(&self.labels, api),
            // The registry is gone (shutting down): handles that record nothing.
            None => Arc::new(VariationMetrics::new(Owner {
                labels: self.labels.clone(),
                api: api.as_str(),
                metrics: std::sync::Weak::new(),
                quantiles: Default::default(),
            })),
        };
        slot.get_or_init(|| h)
    }

    /// The handles of `api` if they were ever made (in this config or an earlier one).
    fn peek(&self, api: ClientApi) -> Option<&VariationMetrics> {
        let slot = self.apis.get(api.index())?;
        if let Some(h) = slot.get() {
            return Some(h);
        }
        let found = self.metrics.upgrade()?.existing(&self.labels, api)?;
        Some(slot.get_or_init(|| found))
    }

    /// Estimated cost in USD since the process started.
    pub fn cost_usd(&self) -> f64 {
        self.all().map(|h| h.cost_usd.get()).sum()
    }

    /// Mean time to first token of streams since the process started, over every client API.
    pub fn ttft_mean_seconds(&self) -> Option<f64> {
        let (n, sum) = self.all().fold((0u64, 0.0), |(n, sum), h| {
            (n + h.ttft.get_sample_count(), sum + h.ttft.get_sample_sum())
        });
        (n > 0).then(|| sum / n as f64)
    }

    fn all(&self) -> impl Iterator<Item = &VariationMetrics> {
        ClientApi::ALL.iter().filter_map(|a| self.peek(*a))
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
        self.all().find_map(VariationMetrics::quantiles)
    }
}

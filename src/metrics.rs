//! Every metric, registered once in [`Metrics`]. Label values come from the config and from
//! enums, never from user input, so cardinality stays bounded. The request path records
//! through [`VariationMetrics`], handles resolved when a config is loaded, so recording
//! allocates nothing.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod lazy;
mod settings;
mod summary;

pub mod cache;
pub mod export;

use crate::api::ClientApi;
use crate::config::Config;
use crate::openai::ErrorClass;

mod evals;
mod handles;
pub mod keys;
mod rolling;

pub use evals::{EvalMetrics, EvalOutcome};
pub use handles::{
    HandleLabels, RouteMetrics, VariationHandles, VariationMetrics, VariationTotals,
};
pub use lazy::Lazy;
use lazy::Owner;
use rolling::Rolling;
pub use settings::Telemetry;

/// The `flag` label of requests for a model that is no flag.
pub const PASSTHROUGH: &str = "_passthrough";
/// The `flag`/`variation` label of requests that failed before a flag was known.
pub const NONE: &str = "_none";

/// Buckets for request latency and time to first token: milliseconds to minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
/// Buckets for the proxy's own time: microseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.05,
];

/// How a request ended, the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by the provider.
    Success,
    /// Answered by a fallback.
    Fallback,
    /// The client's request was rejected.
    ClientError,
    /// The provider failed and the error was passed on.
    UpstreamError,
    /// The client went away first.
    Cancelled,
    /// Answered from the response cache.
    Cached,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Fallback,
        Outcome::ClientError,
        Outcome::UpstreamError,
        Outcome::Cancelled,
        Outcome::Cached,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Fallback => "fallback",
            Outcome::ClientError => "client_error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Cancelled => "client_cancelled",
            Outcome::Cached => "cached",
        }
    }
}

/// All metric families.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    overhead: HistogramVec,
    tokens: IntCounterVec,
    errors: IntCounterVec,
    /// `switchyard_fallback_triggers_total{flag,variation,reason,behavior}`.
    pub fallback_triggers: IntCounterVec,
    config_info: IntGaugeVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    circuit: IntGaugeVec,
    flag_enabled: IntGaugeVec,
    flag_forced: IntGaugeVec,
    rollout_stage: IntGaugeVec,
    rollout_percent: GaugeVec,
    /// `switchyard_rollout_gate_met{flag,rule}`: 1 when the current stage's gate holds.
    pub gate_met: IntGaugeVec,
    /// `switchyard_rollout_rollbacks_total{flag,rule,by}`.
    pub rollbacks: IntCounterVec,
    state_errors: IntCounter,
    reloads: IntCounterVec,
    cost: prometheus::CounterVec,
    /// `switchyard_feedback_events_total{flag,variation,metric}`.
    pub feedback_events: IntCounterVec,
    /// `switchyard_business_metric{flag,variation,metric}`: mean per user over the experiment.
    pub business: GaugeVec,
    /// `switchyard_business_metric_users{flag,variation,metric}`.
    pub business_users: IntGaugeVec,
    /// `switchyard_bandit_weight{flag,variation}`: the bandit's share of its rule's traffic.
    pub bandit_weight: GaugeVec,
    /// `switchyard_exposures_total{result}`: written, dropped (queue full), failed.
    pub exposures: IntCounterVec,
    /// `switchyard_leader`: 1 on the replica running the acting loops.
    pub leader: IntGauge,
    /// `switchyard_prometheus_queries_total{result}`: fleet-figure queries, `ok` or `failed`.
    pub prometheus_queries: IntCounterVec,
    passthrough_requests: IntCounterVec,
    passthrough_duration: HistogramVec,
    /// `switchyard_source_updates_total{source,outcome}`: polls of a flag source by outcome
    /// (applied, unchanged, rejected, fetch_error).
    pub source_updates: IntCounterVec,
    /// `switchyard_source_healthy{source}`: 1 while the source's last poll was good, 0 while
    /// it fails (the last good flags keep serving).
    pub source_healthy: IntGaugeVec,
    /// `switchyard_source_events_total{source,outcome}`: decision events sent back to the
    /// source (sent, dropped, failed).
    pub source_events: IntCounterVec,
    /// `switchyard_requests_without_id_total{flag}`: flag requests with no bucketing id (a
    /// random one was used).
    without_id: IntCounterVec,
    /// `switchyard_connections_refused_total{listener}`: connections over `max_connections`.
    pub connections_refused: IntCounterVec,
    /// `switchyard_connections_closed_total{listener,reason}`: connections the server closed
    /// (`header_timeout`, `idle_timeout`).
    pub connections_closed: IntCounterVec,
    /// `switchyard_open_connections{listener}`.
    pub open_connections: IntGaugeVec,
    /// `switchyard_alert_level{alert,flag,variation}`.
    pub alert_level: IntGaugeVec,
    /// `switchyard_alert_notifications_total{alert,result}`.
    pub alert_notifications: IntCounterVec,
    /// `switchyard_stable_variation{flag,variation}`.
    pub stable_variation: IntGaugeVec,
    rolling: summary::Windows,
    /// Every set of per-variation handles made so far, so a reloaded config finds the sets
    /// (and counts) of the one before.
    handle_sets: dashmap::DashMap<handles::HandleKey, Arc<VariationMetrics>>,
    /// `[telemetry] latency_quantiles` of the config in force.
    quantiles: Arc<std::sync::atomic::AtomicBool>,
    /// `switchyard_eval_*`: online evals.
    pub evals: EvalMetrics,
    /// The response cache's families.
    pub cache: cache::CacheMetrics,
    /// The export sink's family.
    pub export: export::ExportMetrics,
    /// `switchyard_key_requests_total`, `switchyard_key_spend_usd_total`.
    pub keys: keys::KeyMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn histogram(
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
}

impl Metrics {
    /// The handle of `switchyard_requests_without_id_total{flag}`.
    pub fn without_id(&self, flag: &str) -> prometheus::Result<IntCounter> {
        self.without_id.get_metric_with_label_values(&[flag])
    }

    /// Registers every family once.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests by flag, variation, provider, model, outcome and client API.",
            ),
            &["flag", "variation", "provider", "model", "outcome", "api"],
        )?;
        let duration = histogram(
            "switchyard_request_duration_seconds",
            "Request duration, from the request's arrival to the last byte of the answer.",
            LATENCY_BUCKETS,
            &["flag", "variation", "provider", "model", "api"],
        )?;
        let ttft = histogram(
            "switchyard_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first chunk.",
            LATENCY_BUCKETS,
            &["flag", "variation", "provider", "model", "api"],
        )?;
        let overhead = histogram(
            "switchyard_overhead_seconds",
            "Time spent in the proxy itself per request, excluding the upstream.",
            OVERHEAD_BUCKETS,
            &["flag", "variation"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "switchyard_tokens_total",
                "Tokens by direction (in = prompt, out = completion).",
            ),
            &["flag", "variation", "model", "direction", "api"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("switchyard_errors_total", "Errors by class."),
            &["flag", "variation", "class"],
        )?;
        let fallback_triggers = IntCounterVec::new(
            Opts::new(
                "switchyard_fallback_triggers_total",
                "Fallbacks by trigger reason and behaviour.",
            ),
            &["flag", "variation", "reason", "behavior"],
        )?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "switchyard_config_info",
                "The configuration in force: 1 for its hash.",
            ),
            &["hash"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_attempts_total",
                "Upstream attempts by provider and outcome (retries included).",
            ),
            &["provider", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("switchyard_retries_total", "Retries by provider and the failure retried (budget_exhausted: a retry the budget refused)."),
            &["provider", "reason"],
        )?;
        let circuit = IntGaugeVec::new(
            Opts::new(
                "switchyard_circuit_state",
                "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
            ),
            &["provider"],
        )?;
        let flag_enabled = IntGaugeVec::new(
            Opts::new(
                "switchyard_flag_enabled",
                "Effective kill switch per flag: 1 on, 0 off (config plus runtime override).",
            ),
            &["flag"],
        )?;
        let flag_forced = IntGaugeVec::new(
            Opts::new("switchyard_forced_fallback", "1 when rule-based answers are forced for the flag's variation (variation=\"_all\": the whole flag)."),
            &["flag", "variation"],
        )?;
        let rollout_stage = IntGaugeVec::new(
            Opts::new(
                "switchyard_rollout_stage",
                "Current stage index of each rollout rule.",
            ),
            &["flag", "rule"],
        )?;
        let rollout_percent = GaugeVec::new(
            Opts::new(
                "switchyard_rollout_percent",
                "Share of the rule's audience the rollout's variation gets, in percent.",
            ),
            &["flag", "rule"],
        )?;
        let gate_met = IntGaugeVec::new(
            Opts::new(
                "switchyard_rollout_gate_met",
                "1 when the current rollout stage's gate holds, else 0.",
            ),
            &["flag", "rule"],
        )?;
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "switchyard_rollout_rollbacks_total",
                "Rollout rollbacks (by = gate: automatic; operator: through the admin API).",
            ),
            &["flag", "rule", "by"],
        )?;
        let state_errors = IntCounter::new(
            "switchyard_state_store_errors_total",
            "State store operations that failed (serving continues on the last known state).",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "switchyard_config_reloads_total",
                "Configuration reloads by result (ok, rejected).",
            ),
            &["result"],
        )?;
        let cost = prometheus::CounterVec::new(
            Opts::new(
                "switchyard_cost_usd_total",
                "Estimated provider cost in USD, from [prices] and the tokens reported.",
            ),
            &["flag", "variation", "model"],
        )?;
        let feedback_events = IntCounterVec::new(
            Opts::new(
                "switchyard_feedback_events_total",
                "Feedback events accepted, by metric.",
            ),
            &["flag", "variation", "metric"],
        )?;
        let business = GaugeVec::new(
            Opts::new("switchyard_business_metric", "Mean per user of a business metric (conversion rate, revenue per user, CSAT, hallucination rate…) over the experiment, refreshed every few seconds."),
            &["flag", "variation", "metric"],
        )?;
        let business_users = IntGaugeVec::new(
            Opts::new(
                "switchyard_business_metric_users",
                "Users the business metric is over.",
            ),
            &["flag", "variation", "metric"],
        )?;
        let exposures = IntCounterVec::new(
            Opts::new("switchyard_exposures_total", "Exposures (answered chat requests) by what became of them: written, dropped (queue full), failed (store error)."),
            &["result"],
        )?;
        let leader = IntGauge::new(
            "switchyard_leader",
            "1 on the replica that runs the acting loops (gate advance and rollback, alert actions), else 0.",
        )?;
        let prometheus_queries = IntCounterVec::new(
            Opts::new(
                "switchyard_prometheus_queries_total",
                "Queries to Prometheus for fleet-wide gate and alert figures, by result (ok, failed: unreachable, timed out or a nonsense answer).",
            ),
            &["result"],
        )?;
        for result in ["ok", "failed"] {
            let _ = prometheus_queries.with_label_values(&[result]);
        }
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(prometheus_queries.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(feedback_events.clone()))?;
        registry.register(Box::new(business.clone()))?;
        registry.register(Box::new(business_users.clone()))?;
        let bandit_weight = GaugeVec::new(
            Opts::new(
                "switchyard_bandit_weight",
                "The bandit's share (0..1) of its rule's traffic per variation, as of the last epoch.",
            ),
            &["flag", "variation"],
        )?;
        registry.register(Box::new(bandit_weight.clone()))?;
        registry.register(Box::new(exposures.clone()))?;
        let alert_level = IntGaugeVec::new(
            Opts::new(
                "switchyard_alert_level",
                "Alert level per flag and variation: 0 ok, 1 info, 2 warning, 3 critical, -1 insufficient data.",
            ),
            &["alert", "flag", "variation"],
        )?;
        let alert_notifications = IntCounterVec::new(
            Opts::new(
                "switchyard_alert_notifications_total",
                "Alert webhook notifications by result (sent, failed after retries, dropped: too many in flight).",
            ),
            &["alert", "result"],
        )?;
        let stable_variation = IntGaugeVec::new(
            Opts::new(
                "switchyard_stable_variation",
                "1 for each flag's stable variation (the control of relative alerts), for joins in PromQL.",
            ),
            &["flag", "variation"],
        )?;
        registry.register(Box::new(alert_level.clone()))?;
        registry.register(Box::new(alert_notifications.clone()))?;
        registry.register(Box::new(stable_variation.clone()))?;
        let passthrough_requests = IntCounterVec::new(
            Opts::new(
                "switchyard_passthrough_requests_total",
                "Requests relayed to the passthrough provider, by endpoint and status class.",
            ),
            &["endpoint", "status"],
        )?;
        let passthrough_duration = histogram(
            "switchyard_passthrough_duration_seconds",
            "Time to the passthrough provider's response head, by endpoint.",
            LATENCY_BUCKETS,
            &["endpoint"],
        )?;
        registry.register(Box::new(passthrough_requests.clone()))?;
        registry.register(Box::new(passthrough_duration.clone()))?;
        let source_updates = IntCounterVec::new(
            Opts::new("switchyard_source_updates_total", "Polls of a flag source (the Optimizely datafile) by outcome: applied, unchanged, rejected (invalid; the last good flags keep serving), fetch_error."),
            &["source", "outcome"],
        )?;
        let source_healthy = IntGaugeVec::new(
            Opts::new("switchyard_source_healthy", "1 while a flag source's last poll was good, 0 while it fails (the last good flags keep serving)."),
            &["source"],
        )?;
        let source_events = IntCounterVec::new(
            Opts::new("switchyard_source_events_total", "Decision events sent back to a flag source (Optimizely's event API) by outcome: sent, dropped (queue full), failed (after retries)."),
            &["source", "outcome"],
        )?;
        registry.register(Box::new(source_events.clone()))?;
        registry.register(Box::new(source_updates.clone()))?;
        registry.register(Box::new(source_healthy.clone()))?;
        let without_id = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_without_id_total",
                "Flag requests that carried no bucketing id (a random id was used; the user is not counted in experiments).",
            ),
            &["flag"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "switchyard_connections_refused_total",
                "Connections refused because the listener had max_connections open.",
            ),
            &["listener"],
        )?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "switchyard_connections_closed_total",
                "Connections the server closed by reason (header_timeout, idle_timeout).",
            ),
            &["listener", "reason"],
        )?;
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "switchyard_open_connections",
                "Open connections per listener.",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(without_id.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(connections_closed.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        for c in [&flag_enabled, &flag_forced, &rollout_stage, &gate_met] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(rollout_percent.clone()))?;
        registry.register(Box::new(rollbacks.clone()))?;
        registry.register(Box::new(state_errors.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(circuit.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(fallback_triggers.clone()))?;
        let evals = EvalMetrics::register(&registry)?;
        let keys = keys::KeyMetrics::new(&registry)?;
        let rolling = summary::Windows::default();
        let quantiles = Arc::new(std::sync::atomic::AtomicBool::new(true));
        registry.register(Box::new(summary::LatencySummary::new(
            rolling.clone(),
            quantiles.clone(),
        )?))?;
        registry.register(Box::new(config_info.clone()))?;
        let cache = cache::CacheMetrics::new(&registry)?;
        let export = export::ExportMetrics::new(&registry)?;
        Ok(Metrics {
            keys,
            registry,
            requests,
            duration,
            ttft,
            overhead,
            tokens,
            errors,
            fallback_triggers,
            config_info,
            attempts,
            retries,
            circuit,
            flag_enabled,
            flag_forced,
            rollout_stage,
            rollout_percent,
            gate_met,
            rollbacks,
            state_errors,
            reloads,
            cost,
            feedback_events,
            business,
            business_users,
            bandit_weight,
            exposures,
            leader,
            prometheus_queries,
            alert_level,
            alert_notifications,
            stable_variation,
            passthrough_requests,
            passthrough_duration,
            source_updates,
            source_healthy,
            source_events,
            without_id,
            connections_refused,
            connections_closed,
            open_connections,
            rolling,
            handle_sets: Default::default(),
            quantiles,
            evals,
            cache,
            export,
        })
    }

    /// Counts one upstream attempt (provider names come from the config).
    pub fn attempt(&self, provider: &str, outcome: &str) {
        self.attempts.with_label_values(&[provider, outcome]).inc();
    }

    /// Counts one retry, or one the budget refused.
    pub fn retry(&self, provider: &str, reason: &str) {
        self.retries.with_label_values(&[provider, reason]).inc();
    }

    /// Sets the circuit state gauge of a provider.
    pub fn circuit_state(&self, provider: &str, code: i64) {
        self.circuit.with_label_values(&[provider]).set(code);
    }

    /// Sets the per-flag state gauges from a live view.
    pub fn flag_states(&self, config: &Config, runtime: &[crate::runtime::FlagRuntime]) {
        self.flag_enabled.reset();
        self.flag_forced.reset();
        self.rollout_stage.reset();
        self.rollout_percent.reset();
        for (flag, rt) in config.flags.iter().zip(runtime) {
            self.flag_enabled
                .with_label_values(&[&flag.key])
                .set(i64::from(rt.enabled));
            self.flag_forced
                .with_label_values(&[flag.key.as_str(), "_all"])
                .set(i64::from(rt.force_fallback));
            for (i, v) in flag.variations.iter().enumerate() {
                self.flag_forced
                    .with_label_values(&[&flag.key, &v.key])
                    .set(i64::from(rt.forced(i)));
            }
            for (i, rule) in flag.rules.iter().enumerate() {
                if let Some(ro) = &rule.rollout {
                    let stage = rt.stages.get(i).copied().unwrap_or(0);
                    self.rollout_stage
                        .with_label_values(&[&flag.key, &rule.id])
                        .set(i64::from(stage));
                    self.rollout_percent
                        .with_label_values(&[&flag.key, &rule.id])
                        .set(f64::from(ro.end_at(stage)) / 100.0);
                }
            }
        }
    }

    /// Counts a failed state store operation.
    pub fn state_error(&self) {
        self.state_errors.inc();
    }

    /// Counts a reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "rejected" }])
            .inc();
    }

    /// Counts one fallback trigger.
    pub fn fallback(&self, flag: &str, variation: &str, reason: &str, behavior: &str) {
        self.fallback_triggers
            .with_label_values(&[flag, variation, reason, behavior])
            .inc();
    }

    /// The registry, for families other modules register.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The handles of (labels, api), made on first use and kept for later configs.
    fn variation(
        self: &Arc<Self>,
        labels: &Arc<HandleLabels>,
        api: ClientApi,
    ) -> Arc<VariationMetrics> {
        let key = (labels.clone(), api.index());
        if let Some(h) = self.handle_sets.get(&key) {
            return h.clone();
        }
        self.handle_sets
            .entry(key)
            .or_insert_with(|| {
                let set = VariationMetrics::new(Owner {
                    labels: labels.clone(),
                    api: api.as_str(),
                    metrics: Arc::downgrade(self),
                    quantiles: self.quantiles.clone(),
                });
                set.zero_counters();
                Arc::new(set)
            })
            .clone()
    }

    /// The handles of (labels, api) if they were ever made.
    fn existing(
        &self,
        labels: &Arc<HandleLabels>,
        api: ClientApi,
    ) -> Option<Arc<VariationMetrics>> {
        self.handle_sets
            .get(&(labels.clone(), api.index()))
            .map(|h| h.clone())
    }

    /// Counts one passthrough request (`endpoint` from a fixed list).
    pub fn passthrough(&self, endpoint: &'static str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.passthrough_requests
            .with_label_values(&[endpoint, class])
            .inc();
        self.passthrough_duration
            .with_label_values(&[endpoint])
            .observe(seconds);
    }

    /// The handles of every variation of `config` (done once per config load): the chat API's
    /// counters are registered at zero here, everything else on first use.
    pub fn routes(self: &Arc<Self>, config: &Config) -> prometheus::Result<RouteMetrics> {
        let telemetry = config.telemetry;
        self.quantiles.store(
            telemetry.latency_quantiles,
            std::sync::atomic::Ordering::Relaxed,
        );
        if !telemetry.latency_quantiles {
            // Nothing records into the windows any more: their histograms go now.
            for w in self.rolling.iter() {
                if let Ok(mut r) = w.value().lock() {
                    r.clear();
                }
            }
        }
        let mut flags = Vec::with_capacity(config.flags.len());
        for flag in &config.flags {
            let mut vars = Vec::with_capacity(flag.variations.len());
            for v in &flag.variations {
                vars.push(
                    self.handles(HandleLabels {
                        flag: flag.key.clone(),
                        variation: v.key.clone(),
                        provider: v.provider.name.clone(),
                        model: if telemetry.model_label {
                            v.model_id.clone()
                        } else {
                            String::new()
                        },
                        price: config
                            .prices
                            .get(&v.model_id)
                            .map(|(i, o)| (i.to_bits(), o.to_bits())),
                    }),
                );
            }
            flags.push(vars);
        }
        let passthrough_provider = config
            .passthrough
            .as_ref()
            .map_or(NONE, |p| p.name.as_str());
        self.config_info.reset();
        self.config_info.with_label_values(&[&config.hash]).set(1);
        let fixed = |flag: &str, provider: &str| HandleLabels {
            flag: flag.to_owned(),
            variation: flag.to_owned(),
            provider: provider.to_owned(),
            model: flag.to_owned(),
            price: None,
        };
        Ok(RouteMetrics {
            flags,
            passthrough: self.handles(fixed(PASSTHROUGH, passthrough_provider)),
            unrouted: self.handles(HandleLabels {
                provider: NONE.to_owned(),
                ..fixed(NONE, NONE)
            }),
        })
    }

    /// One variation's handles, with the chat API's set made now (its counters at zero).
    fn handles(self: &Arc<Self>, labels: HandleLabels) -> VariationHandles {
        let h = VariationHandles {
            apis: Default::default(),
            labels: Arc::new(labels),
            metrics: Arc::downgrade(self),
        };
        h.api(ClientApi::Chat);
        h
    }

    /// The Prometheus text exposition (the rolling quantile summary is built as it is
    /// gathered).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

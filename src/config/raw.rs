//! The shape of `proxy.toml` as serde reads it. Nothing here reaches the request path:
//! [`super::Config::parse`] validates these into the types the proxy runs on.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub passthrough: Option<RawPassthrough>,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    #[serde(default)]
    pub tool_policies: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub audiences: BTreeMap<String, RawAudience>,
    #[serde(default)]
    pub flags: BTreeMap<String, RawFlag>,
    #[serde(default)]
    pub alerts: Vec<RawAlert>,
    pub fallback: Option<RawResponder>,
    /// Business metrics beyond the built-in ones.
    #[serde(default)]
    pub metrics: BTreeMap<String, RawMetric>,
    /// Prices per model, for estimated cost.
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    pub experiments: RawExperiments,
    /// `[fleet]`: fleet-wide figures from Prometheus.
    #[serde(default)]
    pub fleet: RawFleet,
    /// `[ofrep]`: the OpenFeature remote evaluation endpoints.
    #[serde(default)]
    pub ofrep: RawOfrep,
    /// `[sources.*]`: flags from other systems.
    #[serde(default)]
    pub sources: RawSources,
    /// `[telemetry]`: what is exposed per variation.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// `[evals.NAME]`: online evals.
    #[serde(default)]
    pub evals: BTreeMap<String, super::evals::RawEval>,
    /// `[cache]`: the response cache's backend.
    #[serde(default)]
    pub cache: super::cache::RawCache,
    /// `[export]`: the per-request record sink.
    #[serde(default)]
    pub export: super::cache::RawExport,
    /// `[keys]`: client keys.
    pub keys: Option<RawKeys>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub latency_quantiles: Option<bool>,
    pub model_label: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub required: Option<bool>,
    pub flush_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOfrep {
    #[serde(default)]
    pub tokens: Vec<RawAdminToken>,
    pub exposures: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSources {
    pub optimizely: Option<RawOptimizely>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptimizely {
    pub datafile_url: Option<String>,
    pub datafile_path: Option<String>,
    pub sdk_key_env: Option<String>,
    pub access_token_env: Option<String>,
    pub poll_interval: Option<String>,
    pub provider: Option<String>,
    pub events_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetric {
    pub kind: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub per_user: Option<String>,
    pub higher_is_better: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiments {
    pub alpha: Option<f64>,
    pub min_users: Option<i64>,
    pub min_events: Option<i64>,
    pub relative_effect: Option<f64>,
    pub retain_exposures: Option<String>,
}

/// The rule-based responder: regex rules on the last user message, and a default reply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponder {
    pub default_reply: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawReplyRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplyRule {
    pub pattern: String,
    pub reply: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<i64>,
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub retry_after_cap: Option<String>,
    pub budget: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuit {
    pub enabled: Option<bool>,
    pub error_rate: Option<f64>,
    pub min_requests: Option<i64>,
    pub window: Option<String>,
    pub cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// How often rollout gates are evaluated (auto-advance, auto-rollback).
    pub gate_interval: Option<String>,
    /// How often the config file is checked for changes (0s disables the watch).
    pub reload_check_interval: Option<String>,
    /// How long a changed file must stay unchanged before the watch applies it.
    pub reload_settle: Option<String>,
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub drain_timeout: Option<String>,
    pub drain_delay: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub linger_timeout: Option<String>,
    pub linger_max_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub bucketing_id: Option<Vec<String>>,
    pub attribute_header_prefix: Option<String>,
    pub attributes_from_metadata: Option<bool>,
    pub on_missing: Option<String>,
    pub max_id_bytes: Option<i64>,
    pub max_attributes: Option<i64>,
    pub max_attribute_name_bytes: Option<i64>,
    pub max_attribute_value_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub tokens: Vec<RawAdminToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RawAdminToken {
    pub name: String,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    /// An agent token's policy (`[admin]` only).
    pub policy: Option<super::agents::RawAgentPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub url: Option<String>,
    /// An environment variable holding the URL (with its password): it wins over `url`.
    pub url_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassthrough {
    pub provider: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// Header that carries the key: `authorization` (as `Bearer <key>`, the default) or any
    /// other name (the bare key), e.g. Azure's `api-key`.
    pub auth_header: Option<String>,
    /// Extra query parameters on every call, e.g. Azure's `api-version`.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Extra headers on every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Plain-text `http://` providers: speak HTTP/2 without negotiation (h2c, prior
    /// knowledge), so concurrent requests and streams share connections. Over `https://`
    /// HTTP/2 is negotiated by ALPN anyway.
    pub http2_prior_knowledge: Option<bool>,
    /// Wire formats the provider accepts as they are: chat, responses, messages, embeddings.
    pub apis: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub retry: Option<RawRetry>,
    pub circuit: Option<RawCircuit>,
    /// Anthropic: `max_tokens` when the request sets none (the Messages API requires it).
    pub default_max_tokens: Option<i64>,
    /// Anthropic: the `anthropic-version` header.
    pub api_version: Option<String>,
    // mock only
    pub latency: Option<String>,
    pub stream_chunks: Option<i64>,
    pub chunk_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RawAudience {
    pub conditions: serde_json::Value,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlag {
    pub enabled: Option<bool>,
    pub description: Option<String>,
    pub off_variation: Option<String>,
    pub stable_variation: Option<String>,
    pub system_prompt_mode: Option<String>,
    pub force_fallback: Option<bool>,
    pub fallback: Option<RawResponder>,
    /// The rule whose users experiment results compare (default: the first rule without an
    /// audience that splits traffic between several variations).
    pub experiment_rule: Option<String>,
    /// `[flags.F.bandit]`: a guarded bandit on the experiment rule.
    pub bandit: Option<super::bandit::RawBandit>,
    #[serde(default)]
    pub variations: BTreeMap<String, RawVariation>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariation {
    pub provider: String,
    pub model_id: String,
    pub system_prompt_variant: Option<String>,
    pub temperature: Option<f64>,
    pub token_budget: Option<i64>,
    pub tool_policy: Option<String>,
    pub retrieval_profile: Option<String>,
    pub fallback_behavior: Option<String>,
    pub force_fallback: Option<bool>,
    pub timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// `cache = { ttl = "10m" }`: the response cache for this variation (off when absent).
    pub cache: Option<super::cache::RawVariationCache>,
    #[serde(default)]
    pub variables: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    pub audience: Option<String>,
    #[serde(default)]
    pub allocation: Vec<RawRange>,
    pub rollout: Option<RawRollout>,
}

/// A progressive rollout of one variation through stages (percent of the rule's audience).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub variation: String,
    pub stages: Vec<f64>,
    pub initial_stage: Option<i64>,
    pub auto_advance: Option<bool>,
    pub gate: Option<RawGate>,
}

/// What a stage must show before the next one: samples, hold time, thresholds; and what rolls
/// it back on its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub min_requests: Option<i64>,
    pub hold: Option<String>,
    pub max_error_rate: Option<f64>,
    pub max_fallback_rate: Option<f64>,
    pub max_p95_seconds: Option<f64>,
    pub max_p95_ratio: Option<f64>,
    pub rollback_error_rate: Option<f64>,
    pub rollback_fallback_rate: Option<f64>,
    pub rollback_min_requests: Option<i64>,
    /// `local` (default) or `prometheus`.
    pub source: Option<String>,
    /// With `source = "prometheus"`: figures over the last `window` of the stage.
    pub window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    pub variation: Option<String>,
    pub end: i64,
}

/// Parsed now so the file's shape is checked; acted upon by the alerting subsystem.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RawAlert {
    pub name: String,
    pub flag: String,
    pub variation: Option<String>,
    pub metric: String,
    pub above: Option<RawTiers>,
    pub below: Option<RawTiers>,
    pub relative_to_control: Option<bool>,
    pub window: Option<String>,
    pub min_samples: Option<i64>,
    #[serde(default)]
    pub actions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// `local` (default) or `prometheus`.
    pub source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RawTiers {
    pub info: Option<f64>,
    pub warning: Option<f64>,
    pub critical: Option<f64>,
}

/// `[fleet]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub prometheus_url: Option<String>,
    pub query_timeout: Option<String>,
}

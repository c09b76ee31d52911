//! Providers: where a variation's requests go. One OpenAI-compatible path serves OpenAI, Azure,
//! vLLM, Ollama and friends (they differ only in data: URL, auth header, query); the built-in
//! [`mock`] answers in-process for demos and tests.

pub mod anthropic;
pub mod anthropic_stream;
pub mod client;
pub mod mock;

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

/// A provider as configured under `[providers.NAME]`.
#[derive(Debug)]
pub struct Provider {
    /// The name in the config (a metric label).
    pub name: String,
    /// What it is.
    pub kind: ProviderKind,
    /// Timeouts (a variation may override all but `connect`).
    pub timeouts: Timeouts,
    /// Retries of failed attempts.
    pub retry: RetryPolicy,
    /// When to stop sending to a failing provider.
    pub circuit: CircuitPolicy,
    /// Plain-text HTTP/2 (h2c, prior knowledge) instead of HTTP/1.1 for `http://` URLs.
    pub http2_prior_knowledge: bool,
}

/// Timeouts of one upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection.
    pub connect: Duration,
    /// From sending the request to the response head and, for streams, the first chunk.
    pub first_byte: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle: Duration,
    /// The whole call, body included.
    pub total: Duration,
}

/// Retries: bounded attempts with jittered exponential backoff, within a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retries).
    pub retries: u32,
    /// The first backoff; doubled each retry, with full jitter.
    pub backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; a longer one is not waited for.
    pub retry_after_cap: Duration,
    /// Retries may be at most this fraction of recent requests (plus a small floor).
    pub budget: f64,
}

/// The circuit breaker's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitPolicy {
    /// Whether the breaker is used at all.
    pub enabled: bool,
    /// The error rate over the window that opens the circuit.
    pub error_rate: f64,
    /// The fewest requests in the window before the rate counts.
    pub min_requests: u32,
    /// The rolling window.
    pub window: Duration,
    /// How long the circuit stays open before a half-open probe.
    pub cooldown: Duration,
}

/// The provider kinds.
#[derive(Debug)]
pub enum ProviderKind {
    /// The built-in offline provider.
    Mock(mock::MockSettings),
    /// Any OpenAI-compatible HTTP endpoint.
    OpenAi(OpenAiSettings),
    /// Anthropic's Messages API (translated both ways).
    Anthropic(AnthropicSettings),
}

/// Settings of an Anthropic endpoint.
#[derive(Debug)]
pub struct AnthropicSettings {
    /// `base_url` + `/messages`.
    pub messages_url: Uri,
    /// The `x-api-key` credential.
    pub api_key: Option<Secret>,
    /// The `anthropic-version` header.
    pub version: HeaderValue,
    /// `max_tokens` when the request sets none.
    pub default_max_tokens: u32,
    /// Extra headers sent on every call.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ProviderKind {
    /// The kind as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Mock(_) => "mock",
            ProviderKind::OpenAi(_) => "openai",
            ProviderKind::Anthropic(_) => "anthropic",
        }
    }
}

/// Settings of an OpenAI-compatible endpoint.
#[derive(Debug)]
pub struct OpenAiSettings {
    /// `base_url` + `/chat/completions` (+ the configured query).
    pub chat_url: Uri,
    /// The credential and the header it goes in.
    pub auth: Option<(HeaderName, Secret)>,
    /// Extra headers sent on every call.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A secret (API key, token) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(HeaderValue);

impl Secret {
    /// Wraps a header value, marking it sensitive so hyper never logs it either.
    pub fn new(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        Secret(value)
    }

    /// The value, for the one place that sends it.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("*****")
    }
}

//! Providers: where a variation's requests go. One OpenAI-compatible path serves OpenAI, Azure,
//! vLLM, Ollama and friends (they differ only in data: URL, auth header, query); the built-in
//! [`mock`] answers in-process for demos and tests.

pub mod anthropic;
pub mod anthropic_stream;
pub mod client;
pub mod mock;

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

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
    /// The wire formats it accepts as they are (`apis`); others are translated through chat.
    pub apis: Vec<WireFormat>,
}

impl Provider {
    /// Whether a body in `format` can be sent as it is. Chat is always accepted: a provider
    /// that does not speak it natively translates it in its own module (Anthropic).
    pub fn accepts(&self, format: WireFormat) -> bool {
        format == WireFormat::Chat || self.apis.contains(&format)
    }
}

/// A wire format: the shape of a request body and of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// OpenAI chat completions, the pivot every other format translates through.
    Chat,
    /// OpenAI Responses.
    Responses,
    /// Anthropic Messages.
    Messages,
    /// OpenAI embeddings.
    Embeddings,
}

impl WireFormat {
    /// Every format, in config order.
    pub const ALL: [WireFormat; 4] = [
        WireFormat::Chat,
        WireFormat::Responses,
        WireFormat::Messages,
        WireFormat::Embeddings,
    ];

    /// The name in `apis`.
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::Chat => "chat",
            WireFormat::Responses => "responses",
            WireFormat::Messages => "messages",
            WireFormat::Embeddings => "embeddings",
        }
    }

    /// Parses a name in `apis`.
    pub fn parse(name: &str) -> Option<WireFormat> {
        WireFormat::ALL.into_iter().find(|f| f.as_str() == name)
    }
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
    /// `base_url` + `/messages/count_tokens`.
    pub count_tokens_url: Uri,
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
    /// The HTTP request that sends `body`, in `format`, to this provider, and whether its
    /// answer must be translated back to chat (Anthropic answering a chat request). Each
    /// provider kind owns its wire details here: URL per format, credentials, version headers.
    /// `Err` when the provider cannot take `format` (the mock answers in-process instead).
    pub fn http_request(
        &self,
        format: WireFormat,
        body: Bytes,
        stream: bool,
        request_id: &HeaderValue,
    ) -> Result<(Request<Full<Bytes>>, bool), String> {
        match self {
            ProviderKind::Mock(_) => Err("the mock provider answers in-process".into()),
            ProviderKind::OpenAi(settings) => {
                let url = match format {
                    WireFormat::Chat => &settings.chat_url,
                    WireFormat::Responses => &settings.responses_url,
                    WireFormat::Embeddings => &settings.embeddings_url,
                    WireFormat::Messages => {
                        return Err("an OpenAI-compatible provider does not take Messages".into())
                    }
                };
                let mut req = post(url, body, stream, request_id)?;
                let headers = req.headers_mut();
                if let Some((name, secret)) = &settings.auth {
                    headers.insert(name.clone(), secret.header_value().clone());
                }
                for (k, v) in &settings.headers {
                    headers.insert(k.clone(), v.clone());
                }
                Ok((req, false))
            }
            ProviderKind::Anthropic(settings) => {
                let (body, translate) = match format {
                    WireFormat::Chat => (
                        Bytes::from(
                            anthropic::to_anthropic_request(&body, settings.default_max_tokens)
                                .map_err(|e| e.to_string())?,
                        ),
                        true,
                    ),
                    WireFormat::Messages => (body, false),
                    other => {
                        return Err(format!(
                            "an Anthropic provider does not take {}",
                            other.as_str()
                        ))
                    }
                };
                let mut req = post(&settings.messages_url, body, stream, request_id)?;
                settings.sign(req.headers_mut());
                Ok((req, translate))
            }
        }
    }

    /// The kind as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Mock(_) => "mock",
            ProviderKind::OpenAi(_) => "openai",
            ProviderKind::Anthropic(_) => "anthropic",
        }
    }
}

impl AnthropicSettings {
    /// Credentials, version and extra headers on a request to this endpoint.
    pub fn sign(&self, headers: &mut http::HeaderMap) {
        if let Some(secret) = &self.api_key {
            headers.insert("x-api-key", secret.header_value().clone());
        }
        headers.insert("anthropic-version", self.version.clone());
        for (k, v) in &self.headers {
            headers.insert(k.clone(), v.clone());
        }
    }
}

/// A JSON POST to a provider.
pub fn post(
    url: &Uri,
    body: Bytes,
    stream: bool,
    request_id: &HeaderValue,
) -> Result<Request<Full<Bytes>>, String> {
    Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::ACCEPT,
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        )
        .header("x-request-id", request_id.clone())
        .body(Full::new(body))
        .map_err(|e| format!("building the upstream request: {e}"))
}

/// Settings of an OpenAI-compatible endpoint.
#[derive(Debug)]
pub struct OpenAiSettings {
    /// `base_url` + `/chat/completions` (+ the configured query).
    pub chat_url: Uri,
    /// `base_url` + `/responses`.
    pub responses_url: Uri,
    /// `base_url` + `/embeddings`.
    pub embeddings_url: Uri,
    /// `base_url` without a trailing slash: passthrough paths are appended to it.
    pub base_url: String,
    /// The configured query (`k=v&…`), added to passthrough calls too.
    pub query: String,
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

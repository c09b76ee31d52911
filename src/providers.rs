//! Providers: where a variation's requests go. One OpenAI-compatible path serves OpenAI, Azure,
//! vLLM, Ollama and friends (they differ only in data: URL, auth header, query); the built-in
//! [`mock`] answers in-process for demos and tests.

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
    /// Total time allowed for one upstream call (headers and body).
    pub timeout: Duration,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
}

/// The provider kinds.
#[derive(Debug)]
pub enum ProviderKind {
    /// The built-in offline provider.
    Mock(mock::MockSettings),
    /// Any OpenAI-compatible HTTP endpoint.
    OpenAi(OpenAiSettings),
}

impl ProviderKind {
    /// The kind as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Mock(_) => "mock",
            ProviderKind::OpenAi(_) => "openai",
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

//! OpenAI wire shapes that the proxy reads or writes, and the one error type
//! that every failure on the request path turns into.
//!
//! Errors are converted to a response in exactly one place ([`ApiError::into_response`]),
//! always as OpenAI's `{"error": {"message", "type", "code"}}` so that the official SDKs
//! raise their usual exceptions.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

/// A failure on the request path, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON (or not a JSON object).
    #[error("{0}")]
    InvalidJson(String),
    /// A field has the wrong type or an invalid value; names the field.
    #[error("{message}")]
    InvalidField {
        /// The offending field, as OpenAI's `param`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The body is larger than `server.max_body_bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// An input is larger than a configured limit; names the limit.
    #[error("{what} exceeds the limit {limit} = {max}")]
    LimitExceeded {
        /// The config key of the limit (also the error `code`), e.g. `max_id_bytes`.
        limit: &'static str,
        /// What was too large, e.g. "the bucketing id (from body:user) is 1048576 bytes: it".
        what: String,
        /// The limit's value.
        max: usize,
        /// OpenAI's `param`, when one field is at fault.
        param: Option<&'static str>,
    },
    /// The client stopped sending its body.
    #[error(
        "the request body did not arrive: nothing received for {after_ms} ms (server.body_timeout)"
    )]
    BodyTimeout {
        /// The timeout that fired.
        after_ms: u64,
    },
    /// No bucketing id was found and `identity.on_missing = "reject"`.
    #[error("no bucketing id: send one of {sources}")]
    MissingIdentity {
        /// The configured sources, for the message.
        sources: String,
    },
    /// The `model` is neither a flag nor routable to a passthrough provider.
    #[error("the model `{0}` does not exist: it is not a flag of this proxy and no passthrough provider is configured")]
    ModelNotFound(String),
    /// A flag named in a query does not exist.
    #[error("unknown flag `{0}`")]
    UnknownFlag(String),
    /// The path exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The methods the path takes (the `Allow` header).
        allow: &'static str,
    },
    /// No such path.
    #[error("unknown path {0}")]
    NotFound(String),
    /// The provider could not be reached.
    #[error("upstream provider `{provider}` is unreachable: {detail}")]
    UpstreamUnreachable {
        /// Provider name from the config.
        provider: String,
        /// A short cause, never containing secrets.
        detail: String,
    },
    /// The provider did not answer in time.
    #[error("upstream provider `{provider}` timed out after {after_ms} ms")]
    UpstreamTimeout {
        /// Provider name from the config.
        provider: String,
        /// The timeout that fired.
        after_ms: u64,
    },
    /// The provider answered with an error status; its body is relayed or wrapped.
    #[error("upstream provider `{provider}` answered {status}: {excerpt}")]
    UpstreamStatus {
        /// Provider name from the config.
        provider: String,
        /// The provider's status, passed through.
        status: StatusCode,
        /// The provider's body, when it already is an OpenAI error object.
        openai_body: Option<Bytes>,
        /// A short excerpt of a non-OpenAI body, wrapped into our error shape.
        excerpt: String,
    },
    /// The provider answered 2xx with something that is not a chat completion.
    #[error("upstream provider `{provider}` sent an invalid response: {detail}")]
    UpstreamInvalid {
        /// Provider name from the config.
        provider: String,
        /// What was wrong.
        detail: String,
    },
    /// The provider's circuit breaker is open and no fallback answered.
    #[error("upstream provider `{provider}` is failing: its circuit breaker is open")]
    CircuitOpen {
        /// Provider name from the config.
        provider: String,
    },
    /// The state store cannot be reached (feedback and results need it).
    #[error("the state store is unavailable: {0}")]
    StateUnavailable(String),
    /// The proxy is draining for shutdown.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected condition; never a panic.
    #[error("internal error: {0}")]
    Internal(String),
    /// Refused because of the client key: 401, 403 or 429 (with `Retry-After`).
    #[error("{0}")]
    Key(crate::keys::Refusal),
}

/// Error classes, the bounded label of `switchyard_errors_total{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The client's request was invalid (4xx before forwarding).
    InvalidRequest,
    /// Unknown model or flag.
    NotFound,
    /// Could not connect to the provider.
    UpstreamUnreachable,
    /// The provider timed out.
    UpstreamTimeout,
    /// The provider answered 4xx.
    Upstream4xx,
    /// The provider answered 5xx.
    Upstream5xx,
    /// The provider answered 429.
    RateLimited,
    /// The provider's answer could not be read.
    UpstreamInvalid,
    /// A stream broke after part of it reached the client.
    StreamInterrupted,
    /// Everything else.
    Internal,
}

impl ErrorClass {
    /// Every class, for pre-building metric handles.
    pub const ALL: [ErrorClass; 10] = [
        ErrorClass::InvalidRequest,
        ErrorClass::NotFound,
        ErrorClass::UpstreamUnreachable,
        ErrorClass::UpstreamTimeout,
        ErrorClass::Upstream4xx,
        ErrorClass::Upstream5xx,
        ErrorClass::RateLimited,
        ErrorClass::UpstreamInvalid,
        ErrorClass::StreamInterrupted,
        ErrorClass::Internal,
    ];

    /// Whether the client's request was at fault (as opposed to the upstream or the proxy).
    pub fn is_client_side(self) -> bool {
        matches!(self, ErrorClass::InvalidRequest | ErrorClass::NotFound)
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::NotFound => "not_found",
            ErrorClass::UpstreamUnreachable => "upstream_unreachable",
            ErrorClass::UpstreamTimeout => "upstream_timeout",
            ErrorClass::Upstream4xx => "upstream_4xx",
            ErrorClass::Upstream5xx => "upstream_5xx",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::UpstreamInvalid => "upstream_invalid",
            ErrorClass::StreamInterrupted => "stream_interrupted",
            ErrorClass::Internal => "internal",
        }
    }
}

impl ApiError {
    /// Shorthand for a wrong-type or invalid-value field.
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field,
            message: message.into(),
        }
    }

    /// The HTTP status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidField { .. }
            | ApiError::MissingIdentity { .. }
            | ApiError::LimitExceeded { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::ModelNotFound(_) | ApiError::UnknownFlag(_) | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpstreamUnreachable { .. } | ApiError::UpstreamInvalid { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamStatus { status, .. } => *status,
            ApiError::ShuttingDown | ApiError::StateUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Key(r) => r.status(),
        }
    }

    /// OpenAI's error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidField { .. }
            | ApiError::MissingIdentity { .. }
            | ApiError::LimitExceeded { .. }
            | ApiError::BodyTimeout { .. }
            | ApiError::BodyTooLarge { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::UnknownFlag(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed { .. } => "invalid_request_error",
            ApiError::UpstreamStatus { status, .. } if status.is_client_error() => {
                "invalid_request_error"
            }
            ApiError::UpstreamUnreachable { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::CircuitOpen { .. }
            | ApiError::UpstreamStatus { .. }
            | ApiError::UpstreamInvalid { .. } => "upstream_error",
            ApiError::ShuttingDown | ApiError::Internal(_) | ApiError::StateUnavailable(_) => {
                "server_error"
            }
            ApiError::Key(r) => r.error_type(),
        }
    }

    /// OpenAI's error `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidField { .. } => "invalid_value",
            ApiError::MissingIdentity { .. } => "missing_user",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::LimitExceeded { limit, .. } => limit,
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::UnknownFlag(_) => "flag_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ApiError::UpstreamTimeout { .. } => "upstream_timeout",
            ApiError::CircuitOpen { .. } => "circuit_open",
            ApiError::UpstreamStatus { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limit_exceeded"
            }
            ApiError::UpstreamStatus { .. } => "upstream_error",
            ApiError::UpstreamInvalid { .. } => "upstream_invalid_response",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::StateUnavailable(_) => "state_unavailable",
            ApiError::Internal(_) => "internal_error",
            ApiError::Key(r) => r.code(),
        }
    }

    /// The metric class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidField { .. }
            | ApiError::MissingIdentity { .. }
            | ApiError::LimitExceeded { .. }
            | ApiError::BodyTimeout { .. }
            | ApiError::BodyTooLarge { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::Key(_) => ErrorClass::InvalidRequest,
            ApiError::ModelNotFound(_) | ApiError::UnknownFlag(_) | ApiError::NotFound(_) => {
                ErrorClass::NotFound
            }
            ApiError::UpstreamUnreachable { .. } | ApiError::CircuitOpen { .. } => {
                ErrorClass::UpstreamUnreachable
            }
            ApiError::UpstreamTimeout { .. } => ErrorClass::UpstreamTimeout,
            ApiError::UpstreamStatus { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                ErrorClass::RateLimited
            }
            ApiError::UpstreamStatus { status, .. } if status.is_server_error() => {
                ErrorClass::Upstream5xx
            }
            ApiError::UpstreamStatus { .. } => ErrorClass::Upstream4xx,
            ApiError::UpstreamInvalid { .. } => ErrorClass::UpstreamInvalid,
            ApiError::ShuttingDown | ApiError::Internal(_) | ApiError::StateUnavailable(_) => {
                ErrorClass::Internal
            }
        }
    }

    /// OpenAI's `param`, when one field is at fault.
    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidField { field, .. } => Some(field),
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::MissingIdentity { .. } => Some("user"),
            ApiError::LimitExceeded { param, .. } => *param,
            _ => None,
        }
    }

    /// The error as OpenAI's JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    /// The error as an OpenAI-shaped response (chat, Responses, embeddings, passthrough).
    pub fn into_response(self) -> Response<Body> {
        self.into_response_for(crate::api::ClientApi::Chat)
    }

    /// The one place an error becomes a response: OpenAI's `{"error": {…}}`, or Anthropic's
    /// `{"type": "error", "error": {"type", "message"}}` for Messages clients.
    pub fn into_response_for(self, api: crate::api::ClientApi) -> Response<Body> {
        let status = self.status();
        let body = match &self {
            ApiError::UpstreamStatus {
                openai_body: Some(raw),
                ..
            } if api.anthropic_errors() => {
                let v: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
                let message = v["error"]["message"].as_str().unwrap_or("upstream error");
                Bytes::from(crate::api::messages::error_json(status, message).to_string())
            }
            ApiError::UpstreamStatus {
                openai_body: Some(raw),
                ..
            } => raw.clone(),
            _ if api.anthropic_errors() => {
                Bytes::from(crate::api::messages::error_json(status, &self.to_string()).to_string())
            }
            _ => Bytes::from(self.to_json().to_string()),
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ApiError::BodyTooLarge { .. } | ApiError::BodyTimeout { .. }
        ) {
            // The body was not read to its end: the connection cannot carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(after) = match &self {
            ApiError::Key(r) => r.retry_after(),
            _ => None,
        } {
            resp.headers_mut().insert(header::RETRY_AFTER, after);
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// Whether `body` is already an OpenAI error object (`{"error": {"message": …}}`), so it can be
/// relayed as it is.
pub fn is_openai_error(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Outer<'a> {
        #[allow(dead_code)]
        #[serde(borrow)]
        error: Inner<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Inner<'a> {
        #[allow(dead_code)]
        #[serde(borrow)]
        message: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Outer<'_>>(body).is_ok()
}

/// Reads a complete answer in one pass: `None` when `body` is not a chat completion (a JSON
/// object with `choices`), otherwise its usage when it reports one (a malformed `usage` is
/// ignored, as [`read_usage`] does).
pub fn read_completion(body: &[u8]) -> Option<Option<Usage>> {
    #[derive(serde::Deserialize)]
    struct Completion<'a> {
        #[allow(dead_code)]
        choices: serde::de::IgnoredAny,
        #[serde(borrow, default)]
        usage: Option<&'a serde_json::value::RawValue>,
    }
    let c = serde_json::from_slice::<Completion<'_>>(body).ok()?;
    Some(
        c.usage
            .and_then(|raw| serde_json::from_str::<Usage>(raw.get()).ok()),
    )
}

/// Whether `body` is a JSON object with `choices` (a chat completion, not garbage).
pub fn is_completion(body: &[u8]) -> bool {
    read_completion(body).is_some()
}

/// Usage as reported by a provider.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// Reads `usage` out of a completion or chunk, tolerating everything else.
pub fn read_usage(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<WithUsage>(body)
        .ok()
        .and_then(|w| w.usage)
}

//! Phase 5, forward: the rewritten body goes to the variation's provider over a pooled
//! connection. Each attempt has its timeouts; failed attempts are retried (jittered backoff,
//! `Retry-After`, a retry budget) only while nothing has reached the client; the provider's
//! circuit breaker sees every outcome. Streams are held until their first chunk arrives, so a
//! stream that fails before its first byte fails over like any other request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::body::{Body, BodyError};
use crate::fallback::FallbackReason;
use crate::metrics::Metrics;
use crate::openai::{is_openai_error, ApiError};
use crate::providers::anthropic_stream::AnthropicSse;
use crate::providers::client::Clients;
use crate::providers::{anthropic, mock, Provider, ProviderKind, Timeouts, WireFormat};
use crate::resilience::{backoff, Admission, Resilience};

/// Largest non-streamed answer accepted from a provider.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
/// Largest error body read from a provider.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A provider's successful answer.
pub enum Upstream {
    /// A complete JSON answer (OpenAI shape), and the usage it reports.
    Complete(Bytes, Option<crate::openai::Usage>),
    /// An SSE stream (OpenAI shape): its first chunk, and the rest still arriving.
    Stream {
        /// The first data received.
        first: Bytes,
        /// Everything after it.
        rest: Body,
        /// When the whole call must be over (the attempt's start + the total timeout).
        deadline: Instant,
    },
}

/// Why an upstream call failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection.
    Connect(String),
    /// A timeout fired.
    Timeout(Duration),
    /// An error status (with the body, and `Retry-After` when sent).
    Status {
        /// The status.
        status: StatusCode,
        /// The body (OpenAI-shaped when the provider is OpenAI-compatible).
        body: Bytes,
        /// `Retry-After`, in seconds form.
        retry_after: Option<Duration>,
    },
    /// A 2xx answer that is not a valid completion or stream.
    Invalid(String),
    /// The circuit is open.
    CircuitOpen,
    /// The request cannot be expressed for this provider (a client error).
    Untranslatable(String),
    /// The request was refused before it was sent (a client error, already in final form).
    Rejected(ApiError),
}

impl Failure {
    /// The fallback trigger this failure is, or `None` when the client's request was at fault
    /// (the provider's 4xx is passed through, no fallback).
    pub fn fallback_reason(&self) -> Option<FallbackReason> {
        match self {
            Failure::Connect(_) => Some(FallbackReason::ConnectError),
            Failure::Timeout(_) => Some(FallbackReason::Timeout),
            Failure::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                Some(FallbackReason::RateLimited)
            }
            Failure::Status { status, .. } if status.is_server_error() => {
                Some(FallbackReason::Upstream5xx)
            }
            Failure::Status { .. } | Failure::Untranslatable(_) | Failure::Rejected(_) => None,
            Failure::Invalid(_) => Some(FallbackReason::InvalidResponse),
            Failure::CircuitOpen => Some(FallbackReason::CircuitOpen),
        }
    }

    /// The attempt-outcome label.
    fn outcome(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect_error",
            Failure::Timeout(_) => "timeout",
            Failure::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limited"
            }
            Failure::Status { status, .. } if status.is_server_error() => "upstream_5xx",
            Failure::Status { .. } => "upstream_4xx",
            Failure::Invalid(_) => "invalid_response",
            Failure::CircuitOpen => "circuit_open",
            Failure::Untranslatable(_) | Failure::Rejected(_) => "untranslatable",
        }
    }

    /// Whether the provider looked unhealthy (what the breaker counts).
    fn is_unhealthy(&self) -> bool {
        matches!(
            self,
            Failure::Connect(_) | Failure::Timeout(_) | Failure::Invalid(_)
        ) || matches!(self, Failure::Status { status, .. } if status.is_server_error())
    }

    /// Whether another attempt may help.
    fn is_retryable(&self) -> bool {
        matches!(self, Failure::Connect(_))
            || matches!(self, Failure::Status { status, .. } if status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS)
    }

    /// The error the client receives when no fallback answers.
    pub fn into_api_error(self, provider: &Provider) -> ApiError {
        let name = provider.name.clone();
        match self {
            Failure::Connect(detail) => ApiError::UpstreamUnreachable {
                provider: name,
                detail,
            },
            Failure::Timeout(after) => ApiError::UpstreamTimeout {
                provider: name,
                after_ms: after.as_millis() as u64,
            },
            Failure::Status { status, body, .. } => {
                let openai = is_openai_error(&body);
                let excerpt = if openai {
                    String::new()
                } else {
                    let text = String::from_utf8_lossy(&body[..body.len().min(512)])
                        .trim()
                        .to_owned();
                    if text.is_empty() {
                        "(empty body)".into()
                    } else {
                        text
                    }
                };
                ApiError::UpstreamStatus {
                    provider: name,
                    status,
                    openai_body: openai.then_some(body),
                    excerpt,
                }
            }
            Failure::Invalid(detail) => ApiError::UpstreamInvalid {
                provider: name,
                detail,
            },
            Failure::CircuitOpen => ApiError::CircuitOpen { provider: name },
            Failure::Untranslatable(detail) => ApiError::field("messages", detail),
            Failure::Rejected(e) => e,
        }
    }
}

/// What one forward needs besides the body.
pub struct ForwardCtx<'a> {
    /// Upstream pools.
    pub clients: &'a Clients,
    /// Breakers and budgets.
    pub resilience: &'a Resilience,
    /// Attempt and retry counters.
    pub metrics: &'a Metrics,
    /// Propagated upstream.
    pub request_id: &'a HeaderValue,
}

/// Sends `body` to `provider`, retrying as its policy allows. `stream` says whether the
/// client asked for a stream; `include_usage` whether it asked for usage in it.
pub async fn forward(
    ctx: &ForwardCtx<'_>,
    provider: &Provider,
    timeouts: Timeouts,
    body: Bytes,
    format: WireFormat,
    stream: bool,
    include_usage: bool,
) -> Result<Upstream, Failure> {
    let breaker = ctx.resilience.breaker(&provider.name, provider.circuit);
    let budget = ctx.resilience.budget(&provider.name);
    budget.request(Instant::now());
    let mut retry = 0;
    loop {
        let admission = breaker.admit(Instant::now());
        if admission == Admission::Rejected {
            ctx.metrics.attempt(&provider.name, "circuit_open");
            return Err(Failure::CircuitOpen);
        }
        let result = attempt(
            ctx,
            provider,
            timeouts,
            body.clone(),
            format,
            stream,
            include_usage,
        )
        .await;
        let failure = match result {
            Ok(upstream) => {
                breaker.record(Instant::now(), admission, true);
                ctx.metrics.attempt(&provider.name, "success");
                return Ok(upstream);
            }
            Err(f) => f,
        };
        breaker.record(Instant::now(), admission, !failure.is_unhealthy());
        ctx.metrics.attempt(&provider.name, failure.outcome());
        if !failure.is_retryable() || retry >= provider.retry.retries {
            return Err(failure);
        }
        let wait = match &failure {
            Failure::Status {
                retry_after: Some(after),
                ..
            } => {
                if *after > provider.retry.retry_after_cap {
                    // Waiting that long would hold the client: fall back instead.
                    return Err(failure);
                }
                *after
            }
            _ => backoff(&provider.retry, retry),
        };
        if !budget.try_retry(Instant::now(), provider.retry.budget) {
            ctx.metrics.retry(&provider.name, "budget_exhausted");
            return Err(failure);
        }
        ctx.metrics.retry(&provider.name, failure.outcome());
        tokio::time::sleep(wait).await;
        retry += 1;
    }
}

/// One attempt.
async fn attempt(
    ctx: &ForwardCtx<'_>,
    provider: &Provider,
    timeouts: Timeouts,
    body: Bytes,
    format: WireFormat,
    stream: bool,
    include_usage: bool,
) -> Result<Upstream, Failure> {
    let started = Instant::now();
    let deadline = started + timeouts.total;
    let first_byte_deadline = started + timeouts.first_byte.min(timeouts.total);
    let (req, translate) = match &provider.kind {
        ProviderKind::Mock(settings) => {
            if !settings.latency.is_zero() {
                if settings.latency > timeouts.first_byte.min(timeouts.total) {
                    tokio::time::sleep(timeouts.first_byte.min(timeouts.total)).await;
                    return Err(Failure::Timeout(timeouts.first_byte.min(timeouts.total)));
                }
                tokio::time::sleep(settings.latency).await;
            }
            if format == WireFormat::Embeddings {
                let answer = mock::embeddings(&body);
                let usage = read_answer(format, &answer).flatten();
                return Ok(Upstream::Complete(answer, usage));
            }
            return if stream {
                let mut s = BodyExt::boxed(mock::stream(&body, settings));
                let first = first_chunk(&mut s, first_byte_deadline, timeouts).await?;
                Ok(Upstream::Stream {
                    first,
                    rest: s,
                    deadline,
                })
            } else {
                let answer = mock::complete(&body);
                let usage = crate::openai::read_usage(&answer);
                Ok(Upstream::Complete(answer, usage))
            };
        }
        kind => kind
            .http_request(format, body, stream, ctx.request_id)
            .map_err(Failure::Untranslatable)?,
    };
    let client = ctx
        .clients
        .get(timeouts.connect, provider.http2_prior_knowledge);
    let resp = match tokio::time::timeout_at(first_byte_deadline.into(), client.request(req)).await
    {
        Err(_) => return Err(Failure::Timeout(first_byte_deadline - started)),
        Ok(Err(e)) => {
            let what = if e.is_connect() {
                "connection failed"
            } else {
                "the request failed"
            };
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return Err(Failure::Connect(format!("{what}{cause}")));
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
        let body = read_limited(resp.into_body(), MAX_ERROR_BODY, deadline)
            .await
            .unwrap_or_default();
        return Err(Failure::Status {
            status,
            body,
            retry_after,
        });
    }
    if stream && is_sse {
        let raw = resp
            .into_body()
            .map_err(|e| Box::new(e) as BodyError)
            .boxed();
        let mut s = if translate {
            AnthropicSse::new(raw, crate::clock::now_secs(), include_usage).boxed()
        } else {
            raw
        };
        let first = first_chunk(&mut s, first_byte_deadline, timeouts).await?;
        return Ok(Upstream::Stream {
            first,
            rest: s,
            deadline,
        });
    }
    let bytes = match read_limited(resp.into_body(), MAX_UPSTREAM_BODY, deadline).await {
        Ok(b) => b,
        Err(ReadError::Timeout) => return Err(Failure::Timeout(timeouts.total)),
        Err(ReadError::Failed(detail)) => return Err(Failure::Invalid(detail)),
    };
    let bytes = if translate {
        Bytes::from(
            anthropic::from_anthropic_response(&bytes, crate::clock::now_secs())
                .map_err(|e| Failure::Invalid(e.to_string()))?,
        )
    } else {
        bytes
    };
    let Some(usage) = read_answer(format, &bytes) else {
        return Err(Failure::Invalid(format!(
            "the answer is not a valid {} answer",
            format.as_str()
        )));
    };
    if stream {
        // The client asked for a stream but the provider answered in one piece: not valid.
        return Err(Failure::Invalid(
            "a stream was requested but the provider sent a complete answer".into(),
        ));
    }
    Ok(Upstream::Complete(bytes, usage))
}

/// Reads a complete answer in `format`: `None` when it is not one, else its usage.
pub fn read_answer(format: WireFormat, body: &[u8]) -> Option<Option<crate::openai::Usage>> {
    match format {
        WireFormat::Chat => crate::openai::read_completion(body),
        WireFormat::Responses => crate::api::responses::read_answer(body),
        WireFormat::Messages => crate::api::messages::read_answer(body),
        WireFormat::Embeddings => crate::api::embeddings::read_answer(body),
    }
}

/// Waits for a stream's first data (within the first-byte deadline).
async fn first_chunk(
    body: &mut Body,
    deadline: Instant,
    timeouts: Timeouts,
) -> Result<Bytes, Failure> {
    loop {
        match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Err(_) => return Err(Failure::Timeout(timeouts.first_byte.min(timeouts.total))),
            Ok(None) => return Err(Failure::Invalid("the stream ended before any data".into())),
            Ok(Some(Err(e))) => {
                return Err(Failure::Invalid(format!(
                    "the stream failed before any data: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        return Ok(data);
                    }
                }
            }
        }
    }
}

enum ReadError {
    Timeout,
    Failed(String),
}

async fn read_limited(
    body: hyper::body::Incoming,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, ReadError> {
    match tokio::time::timeout_at(deadline.into(), Limited::new(body, limit).collect()).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(e)) => Err(ReadError::Failed(format!("reading the body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

//! Phase 5, forward: the rewritten body goes to the variation's provider over a pooled
//! connection, with the provider's timeout; failures become [`ApiError`]s.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use crate::body::Body;
use crate::openai::{is_openai_error, ApiError};
use crate::providers::client::Clients;
use crate::providers::{mock, Provider, ProviderKind};

/// Largest non-streamed answer accepted from a provider.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
/// Largest error body read from a provider.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A provider's successful answer.
pub enum Upstream {
    /// A complete JSON answer.
    Complete(Bytes),
    /// An SSE stream, still arriving.
    Stream(Body),
}

/// Sends `body` to `provider`. `stream` says whether the client asked for a stream.
pub async fn forward(
    clients: &Clients,
    provider: &Provider,
    body: Vec<u8>,
    stream: bool,
    request_id: &HeaderValue,
) -> Result<Upstream, ApiError> {
    match &provider.kind {
        ProviderKind::Mock(settings) => {
            if !settings.latency.is_zero() {
                tokio::time::sleep(settings.latency).await;
            }
            Ok(if stream {
                Upstream::Stream(BodyExt::boxed(mock::stream(&body, settings)))
            } else {
                Upstream::Complete(mock::complete(&body))
            })
        }
        ProviderKind::OpenAi(settings) => {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(settings.chat_url.clone())
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
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ApiError::Internal(format!("building the upstream request: {e}")))?;
            let headers = req.headers_mut();
            if let Some((name, secret)) = &settings.auth {
                headers.insert(name.clone(), secret.header_value().clone());
            }
            for (k, v) in &settings.headers {
                headers.insert(k.clone(), v.clone());
            }
            let started = Instant::now();
            let client = clients.get(provider.connect_timeout);
            let resp = match tokio::time::timeout(provider.timeout, client.request(req)).await {
                Err(_) => return Err(timeout(provider, provider.timeout)),
                Ok(Err(e)) => {
                    let detail = if e.is_connect() {
                        "connection failed"
                    } else {
                        "the request failed"
                    };
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    return Err(ApiError::UpstreamUnreachable {
                        provider: provider.name.clone(),
                        detail: format!("{detail}{cause}"),
                    });
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            let is_sse = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("text/event-stream"));
            let remaining = provider.timeout.saturating_sub(started.elapsed());
            if !status.is_success() {
                let bytes = read_limited(resp.into_body(), MAX_ERROR_BODY, remaining)
                    .await
                    .unwrap_or_default();
                return Err(upstream_status(provider, status, bytes));
            }
            if stream && is_sse {
                return Ok(Upstream::Stream(
                    resp.into_body()
                        .map_err(|e| Box::new(e) as crate::body::BodyError)
                        .boxed(),
                ));
            }
            match read_limited(resp.into_body(), MAX_UPSTREAM_BODY, remaining).await {
                Ok(bytes) => Ok(Upstream::Complete(bytes)),
                Err(ReadError::Timeout) => Err(timeout(provider, provider.timeout)),
                Err(ReadError::Failed(detail)) => Err(ApiError::UpstreamInvalid {
                    provider: provider.name.clone(),
                    detail,
                }),
            }
        }
    }
}

fn timeout(provider: &Provider, after: Duration) -> ApiError {
    ApiError::UpstreamTimeout {
        provider: provider.name.clone(),
        after_ms: after.as_millis() as u64,
    }
}

fn upstream_status(provider: &Provider, status: StatusCode, body: Bytes) -> ApiError {
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
        provider: provider.name.clone(),
        status,
        openai_body: openai.then_some(body),
        excerpt,
    }
}

enum ReadError {
    Timeout,
    Failed(String),
}

async fn read_limited(
    body: hyper::body::Incoming,
    limit: usize,
    within: Duration,
) -> Result<Bytes, ReadError> {
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(e)) => Err(ReadError::Failed(format!("reading the body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

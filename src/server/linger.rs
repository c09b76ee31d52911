//! Reading request bodies within limits (size, and time between pieces), and the lingering
//! close after an early answer: when the proxy answers (413) while the body is still
//! arriving, it says `Connection: close` and reads and discards the rest for a bounded time and
//! size before closing, as nginx's lingering close does, so that a client still sending reads
//! the answer instead of a connection reset.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::ServerSettings;
use crate::openai::ApiError;

/// Limits on reading one body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body (413 beyond).
    pub max_bytes: usize,
    /// Longest wait for the next piece (408 beyond).
    pub timeout: Duration,
    /// Lingering close: longest time spent discarding.
    pub linger_timeout: Duration,
    /// Lingering close: most bytes discarded.
    pub linger_max_bytes: u64,
}

impl BodyLimits {
    /// The limits of `[server]`, with `max_bytes` as the size limit.
    pub fn new(server: &ServerSettings, max_bytes: usize) -> Self {
        BodyLimits {
            max_bytes,
            timeout: server.body_timeout,
            linger_timeout: server.linger_timeout,
            linger_max_bytes: server.linger_max_bytes,
        }
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Whether the request announces a body (a non-zero length, or chunks).
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Reads and discards what is left of `body` in the background, within the limits. A client
/// that sent `Expect: 100-continue` was never told to send, so there is nothing to discard.
pub fn linger(body: Incoming, headers: &HeaderMap, limits: BodyLimits) {
    if expects_continue(headers) || body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let deadline = tokio::time::Instant::now() + limits.linger_timeout;
        let mut discarded: u64 = 0;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
            if let Some(data) = frame.data_ref() {
                discarded += data.len() as u64;
                if discarded > limits.linger_max_bytes {
                    break;
                }
            }
        }
        tracing::debug!(discarded, "lingering close done");
    });
}

/// Marks an early answer: the connection closes after it.
pub fn close_after(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Reads a whole body within `limits`: 413 when it is larger, 408 when it stalls. On 413 the
/// rest is discarded in the background (lingering close).
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::BodyTooLarge {
        limit: limits.max_bytes,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        linger(body, headers, limits);
        return Err(too_large);
    }
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(limits.timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::BodyTimeout {
                    after_ms: limits.timeout.as_millis() as u64,
                })
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::InvalidJson(format!(
                    "could not read the request body: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + data.len() > limits.max_bytes {
            linger(body, headers, limits);
            return Err(too_large);
        }
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    rest.extend_from_slice(&f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(f) => f,
        None => rest.freeze(),
    })
}

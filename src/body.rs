//! The response body type shared by every handler: a boxed body so that fixed JSON answers and
//! relayed streams have one type.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Errors a streamed body can end with (the connection is then closed uncleanly, so a client
/// never mistakes a cut stream for a complete one).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body.
pub type Body = BoxBody<Bytes, BodyError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response body.
pub fn json(value: &serde_json::Value) -> Body {
    full(value.to_string())
}

/// A JSON response with a status.
pub fn json_response(status: http::StatusCode, value: &serde_json::Value) -> http::Response<Body> {
    let mut resp = http::Response::new(json(value));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A provider's error inside a stream, already in OpenAI's error JSON shape: the relay sends it
/// to the client as the stream's last event.
#[derive(Debug)]
pub struct StreamFault(pub String);

impl std::fmt::Display for StreamFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider error event: {}", self.0)
    }
}

impl std::error::Error for StreamFault {}

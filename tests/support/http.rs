//! A small HTTP/1.1 client for integration tests, over hyper-util's legacy client, plus a
//! raw-TCP helper for requests no well-behaved client would send.
//!
//! ```ignore
//! #[path = "support/http.rs"]
//! mod client;
//!
//! let resp = client::post_json(&proxy.url("/v1/chat/completions"), body, &[]).await;
//! assert_eq!(resp.status, 200);
//! let mut stream = client::post_stream(&url, body, &[]).await;
//! let first = stream.next_data(Duration::from_secs(5)).await; // one frame, as it arrives
//! ```
//!
//! Every call has a deadline ([`DEADLINE`]) and panics when it runs out, so a hung proxy fails
//! the test instead of hanging it.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any one call may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON; panics (showing the body) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, when present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// A response whose body is read frame by frame.
#[derive(Debug)]
pub struct StreamResp {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    body: Incoming,
}

impl StreamResp {
    /// A header's value, when present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The next data frame: `Ok(Some(bytes))`, `Ok(None)` at the end of the body, `Err(())`
    /// when nothing arrived within `within`. Panics on a body error.
    pub async fn next_frame(&mut self, within: Duration) -> Result<Option<Bytes>, ()> {
        loop {
            match tokio::time::timeout(within, self.body.frame()).await {
                Err(_) => return Err(()),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => panic!("response body failed: {e}"),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The next data frame, which must arrive within `within` (panics otherwise, or at the end
    /// of the body).
    pub async fn next_data(&mut self, within: Duration) -> Bytes {
        match self.next_frame(within).await {
            Ok(Some(b)) => b,
            Ok(None) => panic!("the body ended where a frame was expected"),
            Err(()) => panic!("no frame arrived within {within:?}"),
        }
    }

    /// Everything that is left, up to the end of the body (panics after `within`).
    pub async fn rest(mut self, within: Duration) -> Bytes {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(Some(b)) => out.extend_from_slice(&b),
                Ok(None) => return Bytes::from(out),
                Err(()) => panic!(
                    "the body did not end within {within:?}; so far: {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }
}

/// A client that keeps its connections (use one for many requests on one connection pool).
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// A new client with an empty pool.
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> http::Response<Incoming> {
        let mut req = Request::builder().method(method).uri(url);
        let sets_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !body.is_empty() && !sets_type {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("a valid request");
        match tokio::time::timeout(DEADLINE, self.client.request(req)).await {
            Err(_) => panic!("no response from {url} within {DEADLINE:?}"),
            Ok(Err(e)) => panic!("request to {url} failed: {e:?}"),
            Ok(Ok(r)) => r,
        }
    }

    /// Any request, read to the end.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let resp = self.send(method, url, body.into(), headers).await;
        let (parts, body) = resp.into_parts();
        let body = match tokio::time::timeout(DEADLINE, body.collect()).await {
            Err(_) => panic!("the body from {url} did not end within {DEADLINE:?}"),
            Ok(Err(e)) => panic!("reading the body from {url} failed: {e}"),
            Ok(Ok(c)) => c.to_bytes(),
        };
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `POST url` with a JSON body (sent as is, so it may be malformed on purpose).
    pub async fn post_json(&self, url: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::POST, url, body.to_owned(), headers)
            .await
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Resp {
        self.request(Method::GET, url, Bytes::new(), &[]).await
    }

    /// `POST url` and return as soon as the response head arrives; the body is read frame by
    /// frame from the result.
    pub async fn post_stream(&self, url: &str, body: &str, headers: &[(&str, &str)]) -> StreamResp {
        let resp = self
            .send(Method::POST, url, Bytes::from(body.to_owned()), headers)
            .await;
        let (parts, body) = resp.into_parts();
        StreamResp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// `POST url` with a JSON body, on a fresh connection.
pub async fn post_json(url: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
    Http::new().post_json(url, body, headers).await
}

/// `GET url`, on a fresh connection.
pub async fn get(url: &str) -> Resp {
    Http::new().get(url).await
}

/// Any request, on a fresh connection.
pub async fn request(
    method: Method,
    url: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Resp {
    Http::new().request(method, url, body, headers).await
}

/// A request with `authorization: Bearer {token}` and a JSON body (`Value::Null`: none), as
/// the admin API takes them.
pub async fn with_token(method: Method, url: &str, token: &str, body: &serde_json::Value) -> Resp {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    request(
        method,
        url,
        body,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
    )
    .await
}

/// `POST url`, returning at the response head; see [`StreamResp`].
pub async fn post_stream(url: &str, body: &str, headers: &[(&str, &str)]) -> StreamResp {
    Http::new().post_stream(url, body, headers).await
}

/// What came back on a raw connection.
#[derive(Debug, Clone)]
pub struct RawResp {
    /// Everything read until the server closed the connection (or the deadline).
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection (rather than the deadline running out).
    pub closed: bool,
}

impl RawResp {
    /// The status code of the first response, if one was received.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let line = text.lines().next()?;
        let mut parts = line.split_whitespace();
        let version = parts.next()?;
        if !version.starts_with("HTTP/") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// The body of the first response (everything after the blank line; a chunked body is
    /// returned with its framing).
    pub fn body(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    /// The whole exchange as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request` verbatim on a new connection to `addr`, optionally half-closes the write
/// side (`shutdown_write`), then reads until the server closes the connection or `within`
/// runs out.
pub async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    shutdown_write: bool,
    within: Duration,
) -> RawResp {
    let mut stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .expect("connect within the deadline")
        .expect("connect");
    // The server may answer (and close) before reading everything; a failed write is then
    // expected and the answer is still read below.
    let _ = stream.write_all(request).await;
    if shutdown_write {
        let _ = stream.shutdown().await;
    }
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return RawResp {
                    bytes,
                    closed: false,
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return RawResp {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

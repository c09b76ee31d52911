//! An in-process mock upstream: a small OpenAI-compatible server on
//! `127.0.0.1:0` for integration tests.
//!
//! ```ignore
//! #[path = "support/upstream.rs"]
//! mod upstream;
//!
//! let up = upstream::MockUpstream::builder()
//!     .latency(Duration::from_millis(20))
//!     .start()
//!     .await;
//! // point a provider's base_url at up.base_url(), send requests, then:
//! assert_eq!(up.requests()[0].json()["model"], "gpt-4o");
//! ```
//!
//! Without a configured body it answers like OpenAI does:
//! `POST …/chat/completions` gets a `chat.completion` whose content is
//! `"echo: "` + the last user message (or a stream of
//! `chat.completion.chunk` events when the request has `"stream": true`),
//! and `GET …/models` gets a list with one model. Every request is captured
//! (method, path, headers, body) before it is answered.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// The model the mock reports when a request names none, and the one model
/// that `GET /v1/models` lists.
pub const DEFAULT_MODEL: &str = "mock-model";

/// One step of a scripted server-sent-event stream.
#[derive(Debug, Clone)]
pub enum SseStep {
    /// Written as `data: {s}\n\n`.
    Data(String),
    /// Written verbatim (comments, `event:` lines, broken framing, …).
    Raw(String),
    /// Pause before the next step.
    Delay(Duration),
    /// `data: [DONE]\n\n`.
    Done,
    /// Wait until the test calls `notify_one()` on this `Notify` (a permit
    /// stored before the stream reaches the gate also opens it). Lets a test
    /// prove that a chunk reached the client while the upstream is still
    /// sending.
    Gate(Arc<Notify>),
}

/// One request as the mock upstream received it.
#[derive(Debug, Clone)]
pub struct CapturedRequest {
    pub method: String,
    /// `HTTP/1.1`, `HTTP/2.0`…
    pub version: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl CapturedRequest {
    /// The body parsed as JSON; panics (naming the body) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "captured request body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first value of a header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

#[derive(Debug, Clone)]
enum FixedBody {
    Json(Value),
    Raw { content_type: String, body: String },
}

#[derive(Debug, Clone)]
struct Script {
    /// `None`: 200, or 404 for a path the mock does not know.
    status: Option<StatusCode>,
    latency: Duration,
    body: Option<FixedBody>,
    headers: Vec<(HeaderName, HeaderValue)>,
    sse: Option<Vec<SseStep>>,
    hang: bool,
}

/// Configures a [`MockUpstream`]; see [`MockUpstream::builder`].
#[derive(Debug, Clone)]
pub struct MockUpstreamBuilder {
    script: Script,
}

impl MockUpstreamBuilder {
    /// Response status for every request (default 200). With an error status
    /// and no configured body, the body is an OpenAI-shaped error object.
    pub fn status(mut self, s: u16) -> Self {
        self.script.status = Some(StatusCode::from_u16(s).expect("valid HTTP status code"));
        self
    }

    /// Delay between receiving a request and sending the response headers.
    pub fn latency(mut self, d: Duration) -> Self {
        self.script.latency = d;
        self
    }

    /// A fixed JSON body (`application/json`) for every request.
    pub fn json_body(mut self, v: Value) -> Self {
        self.script.body = Some(FixedBody::Json(v));
        self
    }

    /// A fixed body of any content type (e.g. an HTML error page).
    pub fn raw_body(mut self, content_type: &str, body: &str) -> Self {
        self.script.body = Some(FixedBody::Raw {
            content_type: content_type.to_owned(),
            body: body.to_owned(),
        });
        self
    }

    /// An extra response header on every response.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        let value = HeaderValue::from_str(value).expect("valid header value");
        self.script.headers.push((name, value));
        self
    }

    /// Stream these steps (as `text/event-stream`) when the request has
    /// `"stream": true`; non-streaming requests get the usual JSON answer.
    pub fn sse(mut self, events: Vec<SseStep>) -> Self {
        self.script.sse = Some(events);
        self
    }

    /// Accept the connection, read and capture the request, never answer.
    pub fn hang(mut self) -> Self {
        self.script.hang = true;
        self
    }

    /// Bind `127.0.0.1:0` and serve in the background. The socket is
    /// listening when this returns.
    pub async fn start(self) -> MockUpstream {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock upstream address");
        let shared = Arc::new(Shared {
            script: self.script,
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            connections: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        MockUpstream { addr, shared, task }
    }
}

struct Shared {
    script: Script,
    requests: Mutex<Vec<CapturedRequest>>,
    arrived: Notify,
    connections: AtomicUsize,
    ids: AtomicU64,
}

impl Shared {
    fn requests(&self) -> MutexGuard<'_, Vec<CapturedRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running mock upstream. Dropping it stops the server and closes every
/// connection it holds.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .finish()
    }
}

impl MockUpstream {
    pub fn builder() -> MockUpstreamBuilder {
        MockUpstreamBuilder {
            script: Script {
                status: None,
                latency: Duration::ZERO,
                body: None,
                headers: Vec::new(),
                sse: None,
                hang: false,
            },
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, what an OpenAI client takes as base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<CapturedRequest> {
        self.shared.requests().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests().len()
    }

    /// Wait until at least `n` requests have been captured; `false` if the
    /// timeout ran out first.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            // Register before checking, so a request landing in between is
            // not missed.
            arrived.as_mut().enable();
            if self.request_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.request_count() >= n;
            }
        }
    }

    /// TCP connections accepted so far (one per client connection, so
    /// keep-alive reuse shows as fewer connections than requests).
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here so that aborting this task drops (and aborts) every
    // connection task too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // Connection errors (a client hanging up mid-stream) are
                    // part of what tests provoke; nothing to report.
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type MockBody = BoxBody<Bytes, Infallible>;

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let captured = CapturedRequest {
        method: parts.method.to_string(),
        version: format!("{:?}", parts.version),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    shared.requests().push(captured.clone());
    shared.arrived.notify_waiters();

    let script = &shared.script;
    if script.hang {
        std::future::pending::<()>().await;
    }
    if !script.latency.is_zero() {
        tokio::time::sleep(script.latency).await;
    }

    let request_json: Value = serde_json::from_slice(&captured.body).unwrap_or(Value::Null);
    let wants_stream = request_json.get("stream").and_then(Value::as_bool) == Some(true);
    let id = shared.ids.fetch_add(1, Ordering::SeqCst) + 1;

    let mut response = if wants_stream && script.sse.is_some() {
        let steps = script.sse.clone().unwrap_or_default();
        sse_response(steps)
    } else if let Some(fixed) = &script.body {
        match fixed {
            FixedBody::Json(v) => json_response(v),
            FixedBody::Raw { content_type, body } => {
                bytes_response(content_type, Bytes::from(body.clone()))
            }
        }
    } else {
        default_response(&captured, &request_json, script.status, wants_stream, id)
    };
    if let Some(status) = script.status {
        *response.status_mut() = status;
    }
    for (name, value) in &script.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    Ok(response)
}

fn default_response(
    req: &CapturedRequest,
    request_json: &Value,
    status: Option<StatusCode>,
    wants_stream: bool,
    id: u64,
) -> Response<MockBody> {
    if let Some(status) = status.filter(|s| s.is_client_error() || s.is_server_error()) {
        return json_response(&error_json(status));
    }
    let path = req.path.trim_end_matches('/');
    if req.method == "GET" && path.ends_with("/models") {
        return json_response(&models_json());
    }
    if req.method == "POST" && path.ends_with("/chat/completions") {
        let model = request_json
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_MODEL);
        let content = format!("echo: {}", last_user_content(request_json));
        let prompt_tokens = prompt_tokens(request_json);
        let completion_tokens = count_tokens(&content);
        let chat_id = format!("chatcmpl-mock{id:06}");
        if wants_stream {
            let include_usage = request_json
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true);
            return sse_response(default_stream(
                &chat_id,
                model,
                &content,
                include_usage.then_some((prompt_tokens, completion_tokens)),
            ));
        }
        let mut completion = chat_completion_json(model, &content);
        completion["id"] = json!(chat_id);
        completion["usage"] = usage_json(prompt_tokens, completion_tokens);
        return json_response(&completion);
    }
    let mut not_found = json_response(&json!({
        "error": {
            "message": format!("Unknown request URL: {} {}", req.method, req.path),
            "type": "invalid_request_error",
            "param": null,
            "code": "unknown_url",
        }
    }));
    *not_found.status_mut() = StatusCode::NOT_FOUND;
    not_found
}

fn default_stream(
    chat_id: &str,
    model: &str,
    content: &str,
    usage: Option<(u64, u64)>,
) -> Vec<SseStep> {
    let created = unix_now();
    let chunk = |delta: Value, finish_reason: Value| {
        let mut c = json!({
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if usage.is_some() {
            // OpenAI sends `"usage": null` on every chunk but the last one
            // when include_usage is set.
            c["usage"] = Value::Null;
        }
        SseStep::Data(c.to_string())
    };
    let mut steps = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in split_in_three(content) {
        steps.push(chunk(json!({ "content": piece }), Value::Null));
    }
    steps.push(chunk(json!({}), json!("stop")));
    if let Some((prompt, completion)) = usage {
        let last = json!({
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage_json(prompt, completion),
        });
        steps.push(SseStep::Data(last.to_string()));
    }
    steps.push(SseStep::Done);
    steps
}

/// Three consecutive pieces of `s` (split on char boundaries) that
/// concatenate back to `s`.
fn split_in_three(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    let (a, b) = (n / 3, 2 * n / 3);
    vec![
        chars[..a].iter().collect(),
        chars[a..b].iter().collect(),
        chars[b..].iter().collect(),
    ]
}

fn json_response(v: &Value) -> Response<MockBody> {
    bytes_response("application/json", Bytes::from(v.to_string()))
}

fn bytes_response(content_type: &str, body: Bytes) -> Response<MockBody> {
    let mut response = Response::new(Full::new(body).boxed());
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}

fn sse_response(steps: Vec<SseStep>) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        for step in steps {
            let frame = match step {
                SseStep::Data(s) => Bytes::from(format!("data: {s}\n\n")),
                SseStep::Raw(s) => Bytes::from(s),
                SseStep::Done => Bytes::from_static(b"data: [DONE]\n\n"),
                SseStep::Delay(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                SseStep::Gate(gate) => {
                    gate.notified().await;
                    continue;
                }
            };
            if tx.send(frame).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut response = Response::new(ChannelBody { rx }.boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A response body fed by a channel: each message is its own data frame, and
/// the body ends when the sender is dropped.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A rough token count (about four characters a token, at least one).
fn count_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn message_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        // Content parts: [{"type": "text", "text": "…"}, …]
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn last_user_content(request: &Value) -> String {
    request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(message_text)
        .unwrap_or_default()
}

/// Prompt tokens the way OpenAI roughly counts them: the text of every
/// message plus a few tokens of framing per message.
fn prompt_tokens(request: &Value) -> u64 {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text: u64 = messages
        .iter()
        .map(|m| count_tokens(&message_text(m.get("content").unwrap_or(&Value::Null))))
        .sum();
    text + 4 * messages.len() as u64 + 3
}

fn usage_json(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn error_json(status: StatusCode) -> Value {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json!({
        "error": {
            "message": format!("mock upstream answered {status}"),
            "type": kind,
            "param": null,
            "code": null,
        }
    })
}

fn models_json() -> Value {
    json!({
        "object": "list",
        "data": [{
            "id": DEFAULT_MODEL,
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "mock-upstream",
        }],
    })
}

/// A complete non-streaming `chat.completion` with one assistant message.
pub fn chat_completion_json(model: &str, content: &str) -> Value {
    let completion_tokens = count_tokens(content);
    json!({
        "id": "chatcmpl-mock000000",
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage_json(10, completion_tokens),
    })
}

/// One `chat.completion.chunk` carrying a content delta, serialized for
/// `SseStep::Data`.
pub fn chunk_json(model: &str, delta_content: &str) -> String {
    json!({
        "id": "chatcmpl-mock000000",
        "object": "chat.completion.chunk",
        "created": unix_now(),
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{
            "index": 0,
            "delta": {"content": delta_content},
            "logprobs": null,
            "finish_reason": null,
        }],
    })
    .to_string()
}

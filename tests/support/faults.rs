//! A fault-injecting OpenAI-compatible upstream over raw TCP, for resilience tests.
//!
//! HTTP/1.1 is parsed by hand (request head up to the blank line, a `Content-Length` body,
//! keep-alive), so a fault can be anything a socket can do: answer late, never answer, reset
//! the connection, cut a stream midway, or stall it. Each request's behaviour comes from a
//! script (a shared queue, tests push onto it) and, when the script is empty, from a default
//! [`Fault`] or from a seeded random draw over weighted faults.
//!
//! ```ignore
//! #[path = "support/faults.rs"]
//! mod faults;
//!
//! let up = faults::FaultServer::start(Fault::Ok).await;
//! up.push_n(Fault::status(500), 2); // the next two requests get 500, then Ok again
//! // point a provider's base_url at up.base_url(), send requests, then:
//! assert_eq!(up.served("status_500"), 2);
//! ```
//!
//! The server counts how many times it served each fault kind ([`FaultServer::served`]) and
//! whether the peer (the proxy) closed a connection while a response was still open
//! ([`FaultServer::closed_early`]), so a test can prove that the proxy gave up on a hung
//! upstream or cancelled a stream whose client went away.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// Content chunks of a successful stream (before the finish and usage chunks).
pub const DEFAULT_STREAM_CHUNKS: usize = 4;
/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// A `chat.completion` (or, for `"stream": true`, an SSE stream of content chunks, a
    /// finish chunk, a usage chunk when asked for, and `[DONE]`). The model echoes the
    /// request's.
    Ok,
    /// An error status with a body (and `Retry-After` when given).
    Status {
        /// The status code.
        code: u16,
        /// The body, sent as `application/json`.
        body: String,
        /// The `Retry-After` header value.
        retry_after: Option<String>,
    },
    /// Waits, then answers like [`Fault::Ok`].
    Delay(Duration),
    /// Never answers (waits until the peer closes the connection).
    Hang,
    /// Reads the request, then resets the connection (`SO_LINGER` 0: a real RST).
    Reset,
    /// `200 application/json` with `{"choices": [` as the whole body.
    InvalidJson,
    /// A stream: `k` chunks, then the connection closes (no terminating chunk, no `[DONE]`).
    /// On a non-streamed request: the head and half the body, then the connection closes.
    StreamCutAfter(usize),
    /// A stream: `k` chunks, then silence until the peer closes. On a non-streamed request:
    /// the head and half the body, then silence.
    StreamStallAfter(usize),
    /// A stream: `k` chunks, then a clean end of the body without `[DONE]`. A non-streamed
    /// request is answered like [`Fault::Ok`].
    StreamEndWithoutDone(usize),
    /// An Anthropic Messages stream that is only an `event: error` (overloaded).
    AnthropicErrorEvent,
    /// An Anthropic Messages stream: `message_start`, a text block with `k` text deltas, then
    /// an `event: error` (overloaded) instead of `message_stop`.
    AnthropicErrorAfter(usize),
    /// A stream sending one chunk every interval, never ending (until the peer closes, or
    /// after 10 000 chunks). A non-streamed request is never answered, like [`Fault::Hang`].
    Trickle(Duration),
    /// A stream: `chunks` chunks, then held until `gate` is notified (or the peer closes),
    /// then the rest and `[DONE]`. A non-streamed request waits for the gate too.
    SlowStream {
        /// Chunks sent before the gate.
        chunks: usize,
        /// Opens the gate.
        gate: Arc<Notify>,
    },
}

impl Fault {
    /// `Status` with an OpenAI-shaped error body.
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            body: openai_error_body(code, "injected fault"),
            retry_after: None,
        }
    }

    /// `Status` with an OpenAI-shaped error body and a `Retry-After` header.
    pub fn status_retry_after(code: u16, retry_after: &str) -> Fault {
        Fault::Status {
            code,
            body: openai_error_body(code, "injected fault"),
            retry_after: Some(retry_after.to_owned()),
        }
    }

    /// The kind, as counted by [`FaultServer::served`]: `ok`, `status_500`, `delay`, `hang`,
    /// `reset`, `invalid_json`, `stream_cut`, `stream_stall`, `stream_no_done`,
    /// `anthropic_error`, `trickle`, `slow_stream`.
    pub fn kind(&self) -> String {
        match self {
            Fault::Ok => "ok".into(),
            Fault::Status { code, .. } => format!("status_{code}"),
            Fault::Delay(_) => "delay".into(),
            Fault::Hang => "hang".into(),
            Fault::Reset => "reset".into(),
            Fault::InvalidJson => "invalid_json".into(),
            Fault::StreamCutAfter(_) => "stream_cut".into(),
            Fault::StreamStallAfter(_) => "stream_stall".into(),
            Fault::StreamEndWithoutDone(_) => "stream_no_done".into(),
            Fault::AnthropicErrorEvent | Fault::AnthropicErrorAfter(_) => "anthropic_error".into(),
            Fault::Trickle(_) => "trickle".into(),
            Fault::SlowStream { .. } => "slow_stream".into(),
        }
    }
}

/// An OpenAI error object for `code`.
pub fn openai_error_body(code: u16, message: &str) -> String {
    let (kind, err_code) = match code {
        429 => ("requests", "rate_limit_exceeded"),
        400..=499 => ("invalid_request_error", "invalid_value"),
        _ => ("server_error", "server_error"),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": err_code}})
        .to_string()
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request path.
    pub path: String,
    /// The body's `model`.
    pub model: String,
    /// The body's `stream`.
    pub stream: bool,
    /// The body's `stream_options.include_usage`.
    pub include_usage: bool,
    /// The kind of fault it was served.
    pub fault: String,
}

/// A small deterministic generator (SplitMix64), enough to draw faults reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Debug)]
enum Chooser {
    Fixed(Fault),
    Random {
        rng: Rng,
        table: Vec<(Fault, u32)>,
        total: u64,
    },
}

impl Chooser {
    fn draw(&mut self) -> Fault {
        match self {
            Chooser::Fixed(f) => f.clone(),
            Chooser::Random { rng, table, total } => {
                let mut pick = rng.below(*total);
                for (fault, weight) in table.iter() {
                    if pick < u64::from(*weight) {
                        return fault.clone();
                    }
                    pick -= u64::from(*weight);
                }
                Fault::Ok
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    script: Mutex<VecDeque<Fault>>,
    default: Mutex<Chooser>,
    stream_chunks: AtomicUsize,
    served: Mutex<BTreeMap<String, usize>>,
    closed_early: Mutex<BTreeMap<String, usize>>,
    requests: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Notified on every new request and every early close.
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn next_fault(&self) -> Fault {
        if let Some(f) = lock(&self.script).pop_front() {
            return f;
        }
        lock(&self.default).draw()
    }

    fn record(&self, seen: Seen) {
        *lock(&self.served).entry(seen.fault.clone()).or_default() += 1;
        lock(&self.requests).push(seen);
        self.changed.notify_waiters();
    }

    fn closed_early(&self, kind: &str) {
        *lock(&self.closed_early).entry(kind.to_owned()).or_default() += 1;
        self.changed.notify_waiters();
    }
}

/// A running fault-injecting upstream on `127.0.0.1:0`; dropping it stops it (and every
/// connection it holds).
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultServer {
    /// Starts a server answering every unscripted request with `default`.
    pub async fn start(default: Fault) -> FaultServer {
        FaultServer::start_with(Chooser::Fixed(default)).await
    }

    /// Starts a server drawing every unscripted request's fault from `weights` with a
    /// generator seeded by `seed`.
    pub async fn random(seed: u64, weights: Vec<(Fault, u32)>) -> FaultServer {
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        assert!(total > 0, "weights must not all be zero");
        FaultServer::start_with(Chooser::Random {
            rng: Rng::new(seed),
            table: weights,
            total,
        })
        .await
    }

    async fn start_with(default: Chooser) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            stream_chunks: AtomicUsize::new(DEFAULT_STREAM_CHUNKS),
            served: Mutex::new(BTreeMap::new()),
            closed_early: Mutex::new(BTreeMap::new()),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultServer { addr, shared, task }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, a provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues `fault` for the next unanswered request.
    pub fn push(&self, fault: Fault) {
        lock(&self.shared.script).push_back(fault);
    }

    /// Queues `fault` for the next `n` requests.
    pub fn push_n(&self, fault: Fault, n: usize) {
        let mut script = lock(&self.shared.script);
        for _ in 0..n {
            script.push_back(fault.clone());
        }
    }

    /// Replaces the default (what unscripted requests get).
    pub fn set_default(&self, fault: Fault) {
        *lock(&self.shared.default) = Chooser::Fixed(fault);
    }

    /// Sets how many content chunks a successful stream carries.
    pub fn set_stream_chunks(&self, n: usize) {
        self.shared.stream_chunks.store(n, Ordering::SeqCst);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// How many requests were served each fault kind.
    pub fn served_counts(&self) -> BTreeMap<String, usize> {
        lock(&self.shared.served).clone()
    }

    /// How many requests were served `kind` (see [`Fault::kind`]).
    pub fn served(&self, kind: &str) -> usize {
        lock(&self.shared.served).get(kind).copied().unwrap_or(0)
    }

    /// Per fault kind, how many connections the peer closed while the response was still
    /// open (a hang, a stall, a delay, a held or still-running stream).
    pub fn closed_early_counts(&self) -> BTreeMap<String, usize> {
        lock(&self.shared.closed_early).clone()
    }

    /// How many connections the peer closed early while serving `kind`.
    pub fn closed_early(&self, kind: &str) -> usize {
        lock(&self.shared.closed_early)
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until `cond` holds (checked on every request and early close); `false` when
    /// `timeout` ran out first.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&FaultServer) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Register before checking, so a change landing in between is not missed.
            changed.as_mut().enable();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return cond(self);
            }
        }
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.request_count() >= n).await
    }

    /// Waits until the peer closed `n` connections early while serving `kind`.
    pub async fn wait_closed_early(&self, kind: &str, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.closed_early(kind) >= n)
            .await
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on (bound, then released), as a provider `base_url`.
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("local addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}/v1")
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here so that aborting this task drops every connection task too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let _ = sock.set_nodelay(true);
                    serve_connection(Conn { sock, buf: Vec::new() }, shared).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

struct Conn {
    sock: TcpStream,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
}

struct Req {
    path: String,
    body: Vec<u8>,
    close: bool,
}

impl Conn {
    /// Reads one request; `None` when the peer closed or sent something unusable.
    async fn read_request(&mut self) -> Option<Req> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD || !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next()?;
        let mut parts = request_line.split_whitespace();
        let _method = parts.next()?;
        let path = parts.next()?.to_owned();
        let mut length = 0usize;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok()?,
                "transfer-encoding" => return None, // not sent by the proxy's client
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        if length > MAX_BODY {
            return None;
        }
        while self.buf.len() < head_end + length {
            if !self.fill().await {
                return None;
            }
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Some(Req { path, body, close })
    }

    /// Reads more into the buffer; `false` at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        match self.sock.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Returns when the peer closes the connection (anything it sends meanwhile is kept).
    async fn until_closed(&mut self) {
        while self.buf.len() <= MAX_HEAD + MAX_BODY && self.fill().await {}
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(bytes).await?;
        self.sock.flush().await
    }

    /// One chunk of a chunked body.
    async fn chunk(&mut self, data: &str) -> std::io::Result<()> {
        let framed = format!("{:x}\r\n{data}\r\n", data.len());
        self.write(framed.as_bytes()).await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What to do with the connection after a response.
enum After {
    KeepAlive,
    Close,
}

async fn serve_connection(mut conn: Conn, shared: Arc<Shared>) {
    // Bounded: a connection serves at most this many requests.
    for _ in 0..100_000 {
        let Some(req) = conn.read_request().await else {
            return;
        };
        let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let fault = shared.next_fault();
        let seen = Seen {
            path: req.path.clone(),
            model: v["model"].as_str().unwrap_or_default().to_owned(),
            stream: v["stream"].as_bool().unwrap_or(false),
            include_usage: v["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
            fault: fault.kind(),
        };
        let kind = seen.fault.clone();
        let spec = Answer {
            model: if seen.model.is_empty() {
                "fault-model".into()
            } else {
                seen.model.clone()
            },
            stream: seen.stream,
            include_usage: seen.include_usage,
            chunks: shared.stream_chunks.load(Ordering::SeqCst),
        };
        shared.record(seen);
        match serve_one(&mut conn, &spec, fault, &kind, &shared).await {
            After::KeepAlive if !req.close => {}
            _ => return,
        }
    }
}

/// What a successful answer looks like for one request.
struct Answer {
    model: String,
    stream: bool,
    include_usage: bool,
    chunks: usize,
}

impl Answer {
    fn completion(&self) -> String {
        json!({
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": unix_now(),
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": format!("answer from {}", self.model)},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        })
        .to_string()
    }

    /// Every SSE event of a complete stream, `[DONE]` included.
    fn events(&self) -> Vec<String> {
        let created = unix_now();
        let chunk = |delta: Value, finish: Value| {
            let v = json!({
                "id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            });
            format!("data: {v}\n\n")
        };
        let mut out = Vec::with_capacity(self.chunks + 3);
        for i in 0..self.chunks {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": format!("c{i} ")})
            } else {
                json!({"content": format!("c{i} ")})
            };
            out.push(chunk(delta, Value::Null));
        }
        out.push(chunk(json!({}), json!("stop")));
        if self.include_usage {
            let v = json!({
                "id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": created,
                "model": self.model, "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": self.chunks, "total_tokens": 5 + self.chunks}
            });
            out.push(format!("data: {v}\n\n"));
        }
        out.push("data: [DONE]\n\n".into());
        out
    }
}

fn reason_phrase(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

fn json_head(code: u16, len: usize, extra: &str) -> String {
    format!(
        "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n{extra}\r\n",
        reason_phrase(code)
    )
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

async fn serve_one(
    conn: &mut Conn,
    answer: &Answer,
    fault: Fault,
    kind: &str,
    shared: &Shared,
) -> After {
    match fault {
        Fault::Ok => ok(conn, answer, kind, shared).await,
        Fault::Status {
            code,
            body,
            retry_after,
        } => {
            let extra = retry_after
                .map(|r| format!("retry-after: {r}\r\n"))
                .unwrap_or_default();
            let head = json_head(code, body.len(), &extra);
            match conn.write(format!("{head}{body}").as_bytes()).await {
                Ok(()) => After::KeepAlive,
                Err(_) => After::Close,
            }
        }
        Fault::Delay(d) => {
            let closed = tokio::select! {
                _ = tokio::time::sleep(d) => false,
                _ = conn.until_closed() => true,
            };
            if closed {
                shared.closed_early(kind);
                return After::Close;
            }
            ok(conn, answer, kind, shared).await
        }
        Fault::Hang => {
            conn.until_closed().await;
            shared.closed_early(kind);
            After::Close
        }
        Fault::Reset => {
            let _ = conn.sock.set_zero_linger();
            After::Close
        }
        Fault::InvalidJson => {
            let body = "{\"choices\": [";
            let head = json_head(200, body.len(), "");
            match conn.write(format!("{head}{body}").as_bytes()).await {
                Ok(()) => After::KeepAlive,
                Err(_) => After::Close,
            }
        }
        Fault::StreamCutAfter(k) => {
            if answer.stream {
                let _ = stream_prefix(conn, answer, k).await;
            } else {
                let _ = half_body(conn, answer).await;
            }
            let _ = conn.sock.shutdown().await;
            After::Close
        }
        Fault::StreamStallAfter(k) => {
            let sent = if answer.stream {
                stream_prefix(conn, answer, k).await
            } else {
                half_body(conn, answer).await
            };
            if sent.is_ok() {
                conn.until_closed().await;
            }
            shared.closed_early(kind);
            After::Close
        }
        Fault::StreamEndWithoutDone(k) => {
            if !answer.stream {
                return ok(conn, answer, kind, shared).await;
            }
            if stream_prefix(conn, answer, k).await.is_err()
                || conn.write(b"0\r\n\r\n").await.is_err()
            {
                return After::Close;
            }
            After::KeepAlive
        }
        Fault::AnthropicErrorEvent => anthropic_error(conn, answer, None).await,
        Fault::AnthropicErrorAfter(k) => anthropic_error(conn, answer, Some(k)).await,
        Fault::Trickle(every) => {
            if answer.stream && conn.write(SSE_HEAD.as_bytes()).await.is_ok() {
                let template = answer.events();
                for i in 0..10_000 {
                    let event = &template[i % answer.chunks.max(1)];
                    let closed = tokio::select! {
                        _ = tokio::time::sleep(every) => false,
                        _ = conn.until_closed() => true,
                    };
                    if closed || conn.chunk(event).await.is_err() {
                        break;
                    }
                }
            } else {
                conn.until_closed().await;
            }
            shared.closed_early(kind);
            After::Close
        }
        Fault::SlowStream { chunks, gate } => {
            if answer.stream && stream_prefix(conn, answer, chunks).await.is_err() {
                shared.closed_early(kind);
                return After::Close;
            }
            let opened = tokio::select! {
                _ = gate.notified() => true,
                _ = conn.until_closed() => false,
            };
            if !opened {
                shared.closed_early(kind);
                return After::Close;
            }
            if !answer.stream {
                return ok(conn, answer, kind, shared).await;
            }
            for e in answer.events().iter().skip(chunks) {
                if conn.chunk(e).await.is_err() {
                    shared.closed_early(kind);
                    return After::Close;
                }
            }
            match conn.write(b"0\r\n\r\n").await {
                Ok(()) => After::KeepAlive,
                Err(_) => After::Close,
            }
        }
    }
}

/// Anthropic's overloaded error, as a stream event.
pub const ANTHROPIC_OVERLOADED: &str = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

/// An Anthropic stream ending in an error event: with `Some(k)`, a message with `k` text
/// deltas comes first.
async fn anthropic_error(conn: &mut Conn, answer: &Answer, deltas: Option<usize>) -> After {
    let mut events = Vec::new();
    if let Some(k) = deltas {
        let start = json!({"type": "message_start", "message": {
            "id": "msg_fault", "type": "message", "role": "assistant", "model": answer.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 1}
        }});
        events.push(format!("event: message_start\ndata: {start}\n\n"));
        let block = json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}});
        events.push(format!("event: content_block_start\ndata: {block}\n\n"));
        for i in 0..k {
            let delta = json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": format!("c{i} ")}});
            events.push(format!("event: content_block_delta\ndata: {delta}\n\n"));
        }
    }
    events.push(ANTHROPIC_OVERLOADED.to_owned());
    if conn.write(SSE_HEAD.as_bytes()).await.is_err() {
        return After::Close;
    }
    for e in &events {
        if conn.chunk(e).await.is_err() {
            return After::Close;
        }
    }
    match conn.write(b"0\r\n\r\n").await {
        Ok(()) => After::KeepAlive,
        Err(_) => After::Close,
    }
}

/// A complete successful answer.
async fn ok(conn: &mut Conn, answer: &Answer, kind: &str, shared: &Shared) -> After {
    if !answer.stream {
        let body = answer.completion();
        let head = json_head(200, body.len(), "");
        return match conn.write(format!("{head}{body}").as_bytes()).await {
            Ok(()) => After::KeepAlive,
            Err(_) => After::Close,
        };
    }
    if conn.write(SSE_HEAD.as_bytes()).await.is_err() {
        return After::Close;
    }
    for e in answer.events() {
        if conn.chunk(&e).await.is_err() {
            shared.closed_early(kind);
            return After::Close;
        }
    }
    match conn.write(b"0\r\n\r\n").await {
        Ok(()) => After::KeepAlive,
        Err(_) => After::Close,
    }
}

/// The SSE head and the first `k` events of a successful stream.
async fn stream_prefix(conn: &mut Conn, answer: &Answer, k: usize) -> std::io::Result<()> {
    conn.write(SSE_HEAD.as_bytes()).await?;
    for e in answer.events().iter().take(k) {
        conn.chunk(e).await?;
    }
    Ok(())
}

/// The head of a complete answer and the first half of its body.
async fn half_body(conn: &mut Conn, answer: &Answer) -> std::io::Result<()> {
    let body = answer.completion();
    let head = json_head(200, body.len(), "");
    conn.write(format!("{head}{}", &body[..body.len() / 2]).as_bytes())
        .await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

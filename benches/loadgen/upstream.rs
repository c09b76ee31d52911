//! A fast fake provider: `POST …/chat/completions` answers a fixed, small `chat.completion`,
//! or, for `"stream": true`, an SSE stream: the role chunk at once, then `chunks` content
//! chunks `interval` apart, the usage chunk when `stream_options.include_usage` was asked, and
//! `[DONE]`. It does as little work as possible so that what the benchmark sees is the proxy.
//! It speaks HTTP/1.1 and, with prior knowledge, HTTP/2 (for runs that hold more streams than
//! the descriptor limit allows connections).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use memchr::memmem;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::{Instant, Sleep};

/// How the fake provider answers.
pub struct Settings {
    /// Address to bind (loopback; port 0 picks a free one).
    pub listen: String,
    /// Content chunks per streamed answer.
    pub chunks: u32,
    /// Time between content chunks.
    pub interval: Duration,
}

const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"model":"gpt-4o","#,
    r#""choices":[{"index":0,"message":{"role":"assistant","content":"Check the capacity "#,
    r#"dashboard for eu-west-2, then retry in eu-west-1 if it stays pending."},"#,
    r#""finish_reason":"stop"}],"usage":{"prompt_tokens":182,"completion_tokens":21,"total_tokens":203}}"#
);

const ROLE_EVENT: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"#,
    r#""model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"#,
    r#""finish_reason":null}]}"#,
    "\n\n"
);

const CONTENT_EVENT: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"#,
    r#""model":"gpt-4o","choices":[{"index":0,"delta":{"content":" token"},"#,
    r#""finish_reason":null}]}"#,
    "\n\n"
);

const USAGE_EVENT: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"#,
    r#""model":"gpt-4o","choices":[],"usage":{"prompt_tokens":182,"completion_tokens":30,"#,
    r#""total_tokens":212}}"#,
    "\n\n"
);

const STOP_EVENT: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"#,
    r#""model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    "\n\n"
);

const DONE_EVENT: &str = "data: [DONE]\n\n";

/// A timed SSE answer.
struct SseBody {
    /// Content chunks still to send.
    remaining: u32,
    interval: Duration,
    usage: bool,
    started: bool,
    finished: bool,
    sleep: Pin<Box<Sleep>>,
}

impl HttpBody for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if !this.started {
            this.started = true;
            let next = Instant::now() + this.interval;
            this.sleep.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                ROLE_EVENT.as_bytes(),
            )))));
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if this.remaining > 0 {
            this.remaining -= 1;
            let next = this.sleep.deadline() + this.interval;
            this.sleep.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                CONTENT_EVENT.as_bytes(),
            )))));
        }
        this.finished = true;
        let mut tail = String::with_capacity(512);
        tail.push_str(STOP_EVENT);
        if this.usage {
            tail.push_str(USAGE_EVENT);
        }
        tail.push_str(DONE_EVENT);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))))
    }
}

type Answer = Either<Full<Bytes>, SseBody>;

fn contains(haystack: &[u8], needles: &[&[u8]]) -> bool {
    needles.iter().any(|n| memmem::find(haystack, n).is_some())
}

async fn answer(settings: Arc<Settings>, req: Request<Incoming>) -> Response<Answer> {
    let is_chat = req.method() == Method::POST && req.uri().path().ends_with("/chat/completions");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let (status, answer) = match body {
        Ok(body) if is_chat => {
            if contains(&body, &[b"\"stream\":true", b"\"stream\": true"]) {
                let usage = contains(
                    &body,
                    &[b"\"include_usage\":true", b"\"include_usage\": true"],
                );
                let sse = SseBody {
                    remaining: settings.chunks,
                    interval: settings.interval,
                    usage,
                    started: false,
                    finished: false,
                    sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                };
                let mut resp = Response::new(Either::Right(sse));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                return resp;
            }
            (StatusCode::OK, COMPLETION)
        }
        Ok(_) => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"not found","type":"invalid_request_error"}}"#,
        ),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"unreadable body","type":"invalid_request_error"}}"#,
        ),
    };
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(
        answer.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Binds `listen` (IP:PORT on loopback; port 0 picks a free one) with a deep accept queue:
/// streams are opened in bursts, and an overflowing queue costs a client a one-second SYN
/// retransmit, which would show up as time to first token.
pub fn listen_loopback(listen: &str) -> Result<TcpListener, String> {
    let wanted: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?}: write IP:PORT"))?;
    if !wanted.ip().is_loopback() {
        return Err(format!("{wanted} is not a loopback address"));
    }
    let socket = if wanted.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    socket
        .bind(wanted)
        .map_err(|e| format!("cannot bind {wanted}: {e}"))?;
    socket.listen(8192).map_err(|e| e.to_string())
}

/// Serves until the process is killed.
pub async fn serve(settings: Settings) -> Result<(), String> {
    let listener = listen_loopback(&settings.listen)?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The script reads this line to find the port.
    println!("upstream listening on http://{addr}");
    let settings = Arc::new(settings);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A proxy speaking h2c to it carries every stream on one connection (hyper's default
    // limit of 200 concurrent streams would queue the rest).
    builder.http2().max_concurrent_streams(65_536);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                eprintln!("upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let settings = settings.clone();
        let service = service_fn(move |req| {
            let settings = settings.clone();
            async move { Ok::<_, Infallible>(answer(settings, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

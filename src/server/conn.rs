//! One connection's clock: what it read and when, how many requests are in flight on it, and
//! the watchdog that closes it when a request head is too slow to arrive (`header_timeout`) or
//! a kept-alive connection sits idle too long (`idle_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::{Body, BodyError};

const NONE: u64 = u64::MAX;

/// What a connection has been doing, shared by its reader, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Requests whose handler runs or whose response body is still being sent.
    in_flight: AtomicUsize,
    /// Requests begun on this connection.
    started: AtomicU64,
    /// When (ms since `start`) the first byte of a request head still incomplete arrived.
    head_since: AtomicU64,
    /// When (ms) anything last happened: a read, or a response finished.
    last_activity: AtomicU64,
    /// The client spoke HTTP/2 (idle connections then carry pings and settings, not heads).
    h2: AtomicBool,
    first_read: AtomicBool,
}

impl Activity {
    /// A new connection's clock.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            last_activity: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            first_read: AtomicBool::new(true),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_read(&self, bytes: &[u8]) {
        let now = self.now_ms();
        if self.first_read.swap(false, Ordering::Relaxed) && bytes.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.last_activity.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// A request head arrived: it is in flight until the returned guard drops (with its
    /// response body).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// Waits until the connection should be closed, and says why.
    pub async fn watchdog(
        self: Arc<Self>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> &'static str {
        let header = header_timeout.as_millis() as u64;
        let idle = idle_timeout.as_millis() as u64;
        loop {
            let now = self.now_ms();
            let (deadline, reason) = if self.in_flight.load(Ordering::Acquire) > 0 {
                (now + header.min(idle), "")
            } else if self.h2.load(Ordering::Relaxed) {
                (
                    self.last_activity.load(Ordering::Relaxed) + idle,
                    "idle_timeout",
                )
            } else {
                let head = self.head_since.load(Ordering::Acquire);
                if head != NONE {
                    (head.saturating_add(header), "header_timeout")
                } else if self.started.load(Ordering::Relaxed) == 0 {
                    (header, "header_timeout")
                } else {
                    (
                        self.last_activity.load(Ordering::Relaxed) + idle,
                        "idle_timeout",
                    )
                }
            };
            if now >= deadline && !reason.is_empty() {
                return reason;
            }
            let wait = deadline.saturating_sub(now).max(10);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// A request in flight on a connection; dropping it marks the connection active again.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_activity.store(a.now_ms(), Ordering::Relaxed);
        a.head_since.store(NONE, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream that tells its [`Activity`] about every read, and gives the HTTP/1 parser's
/// own error answers (400, 414, 431: written while no request is in flight, with an empty
/// body) an OpenAI-shaped body.
#[derive(Debug)]
pub struct WatchedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// A replacement being written: the bytes, how far, and the length it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl WatchedStream {
    /// Wraps `inner`.
    pub fn new(inner: TcpStream, activity: Arc<Activity>) -> Self {
        WatchedStream {
            inner,
            activity,
            replacing: None,
        }
    }

    /// The parser's bare error answer in `head`, rewritten with a body.
    fn replacement(&self, head: &[u8]) -> Option<Vec<u8>> {
        if self.activity.in_flight.load(Ordering::Acquire) > 0 || !head.ends_with(b"\r\n\r\n") {
            return None;
        }
        let (status, message, code) = if head.starts_with(b"HTTP/1.1 400 ") {
            (
                "400 Bad Request",
                "the request could not be parsed as HTTP/1.1",
                "invalid_http",
            )
        } else if head.starts_with(b"HTTP/1.1 431 ") {
            (
                "431 Request Header Fields Too Large",
                "the request's header section is too large",
                "headers_too_large",
            )
        } else if head.starts_with(b"HTTP/1.1 414 ") {
            (
                "414 URI Too Long",
                "the request's URI is too long",
                "uri_too_long",
            )
        } else {
            return None;
        };
        let lower = head.to_ascii_lowercase();
        if !lower.windows(17).any(|w| w == b"content-length: 0") {
            return None;
        }
        let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}).to_string();
        Some(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// Writes the pending replacement; ready with the length it stands for once all is out.
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, pos, stands_for)) = self.replacing.as_mut() {
            if *pos >= bytes.len() {
                let n = *stands_for;
                self.replacing = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let filled = &buf.filled()[before..];
            if !filled.is_empty() {
                self.activity.on_read(filled);
            }
        }
        r
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() && buf.starts_with(b"HTTP/1.1 4") {
            if let Some(r) = self.replacement(buf) {
                self.replacing = Some((r, 0, buf.len()));
            }
        }
        if self.replacing.is_some() {
            return self.poll_replacing(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.replacing.is_none() {
            if let Some(first) = first.filter(|b| b.starts_with(b"HTTP/1.1 4")) {
                let total: usize = bufs.iter().map(|b| b.len()).sum();
                if total == first.len() {
                    if let Some(r) = self.replacement(first) {
                        self.replacing = Some((r, 0, total));
                    }
                }
            }
        }
        if self.replacing.is_some() {
            return self.poll_replacing(cx);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until it is sent, and — for an event
/// stream still open when the drain timeout cuts it — ends with a `server_shutting_down`
/// error event instead of stopping silently.
pub struct TrackedBody {
    inner: Body,
    _guard: InFlight,
    cut: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>,
    done: bool,
}

impl TrackedBody {
    /// Wraps `inner`; `cut` fires when the drain timeout is reached (event streams only).
    pub fn new(inner: Body, guard: InFlight, sse: bool, cut: &watch::Receiver<bool>) -> Self {
        // A body of known length cannot take an extra event.
        let cut = (sse && inner.size_hint().exact().is_none()).then(|| {
            let mut rx = cut.clone();
            let fut: Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>> =
                Box::pin(async move {
                    while !*rx.borrow_and_update() {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                });
            fut
        });
        TrackedBody {
            inner,
            _guard: guard,
            cut,
            done: false,
        }
    }
}

/// The event that ends a stream cut by shutdown.
pub fn shutting_down_event() -> Bytes {
    let v = serde_json::json!({"error": {"message": "the proxy is shutting down: the stream was cut at the drain timeout", "type": "server_error", "param": null, "code": "server_shutting_down"}});
    Bytes::from(format!("data: {v}\n\n"))
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(cut) = self.cut.as_mut() {
            if cut.as_mut().poll(cx).is_ready() {
                self.done = true;
                return Poll::Ready(Some(Ok(Frame::data(shutting_down_event()))));
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

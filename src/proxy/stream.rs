//! Phase 7 for streams: SSE relayed chunk by chunk as it arrives. The relay frames events only
//! to read what it must (first token, usage) and, when the proxy asked the provider for usage
//! on the client's behalf, to remove it again so the client gets exactly the stream shape it
//! asked for. Untouched events are passed on without copying.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use memchr::memmem;

use tokio::time::Sleep;

use crate::body::{Body, BodyError, StreamFault};
use crate::metrics::Outcome;
use crate::openai::{read_usage, ErrorClass};
use crate::providers::Timeouts;
use crate::proxy::context::Recorder;
use crate::proxy::request::RawObject;

/// The relaying body.
pub struct SseRelay {
    first: Option<Bytes>,
    inner: Body,
    buf: BytesMut,
    strip_usage: bool,
    recorder: Recorder,
    outcome: Outcome,
    finished: bool,
    saw_done: bool,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total_timer: Pin<Box<Sleep>>,
}

impl SseRelay {
    /// Relays `first` and then `rest`; `strip_usage` removes usage the client did not ask
    /// for; `outcome` is recorded when the stream completes; `timeouts.idle` bounds the
    /// silence between chunks and `timeouts.total` the whole stream.
    pub fn new(
        first: Bytes,
        rest: Body,
        strip_usage: bool,
        recorder: Recorder,
        outcome: Outcome,
        timeouts: Timeouts,
        deadline: Instant,
    ) -> SseRelay {
        let now = tokio::time::Instant::now();
        SseRelay {
            first: Some(first),
            inner: rest,
            buf: BytesMut::new(),
            strip_usage,
            recorder,
            outcome,
            finished: false,
            saw_done: false,
            idle: timeouts.idle,
            idle_timer: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
            total_timer: Box::pin(tokio::time::sleep_until(deadline.into())),
        }
    }
}

/// An SSE error event in OpenAI's shape, ending a stream that cannot complete.
pub fn error_event(message: &str, code: &str) -> Bytes {
    let v = serde_json::json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": code}});
    Bytes::from(format!("data: {v}\n\n"))
}

/// The end of the first complete event in `buf` (after its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The JSON payload of an event's `data:` line.
fn data_of(event: &[u8]) -> Option<&[u8]> {
    let start = memmem::find(event, b"data:")? + 5;
    let rest = &event[start..];
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
    Some(&rest[..end])
}

enum Edit {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

impl SseRelay {
    /// Looks at one complete event: records what it carries and says whether it changes.
    fn inspect(&mut self, event: &[u8]) -> Edit {
        let Some(data) = data_of(event) else {
            return Edit::Keep;
        };
        if data == b"[DONE]" {
            self.saw_done = true;
            return Edit::Keep;
        }
        self.recorder.first_token();
        if memmem::find(data, b"\"usage\"").is_none() {
            return Edit::Keep;
        }
        if let Some(usage) = read_usage(data) {
            self.recorder.usage(usage);
        }
        if !self.strip_usage {
            return Edit::Keep;
        }
        let Ok(obj) = RawObject::parse(data) else {
            return Edit::Keep;
        };
        let no_choices = obj.get("choices").is_some_and(|c| c.get().trim() == "[]");
        if no_choices {
            return Edit::Drop;
        }
        let mut out = Vec::with_capacity(event.len());
        out.extend_from_slice(b"data: {");
        let mut first = true;
        for (k, v) in obj.0.iter().filter(|(k, _)| k != "usage") {
            if !first {
                out.push(b',');
            }
            first = false;
            let _ = serde_json::to_writer(&mut out, k.as_ref());
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.extend_from_slice(b"}\n\n");
        Edit::Replace(out)
    }

    /// Takes every complete event out of the buffer and returns what the client gets.
    fn drain_events(&mut self) -> Bytes {
        let mut complete_len = 0;
        while let Some(end) = event_end(&self.buf[complete_len..]) {
            complete_len += end;
        }
        if complete_len == 0 {
            return Bytes::new();
        }
        let complete = self.buf.split_to(complete_len).freeze();
        let mut edited: Option<BytesMut> = None;
        let mut offset = 0;
        while offset < complete.len() {
            let end = offset + event_end(&complete[offset..]).unwrap_or(complete.len() - offset);
            let event = complete.slice(offset..end);
            let edit = self.inspect(&event);
            match edit {
                Edit::Keep => {
                    if let Some(out) = edited.as_mut() {
                        out.extend_from_slice(&event);
                    }
                }
                Edit::Drop | Edit::Replace(_) => {
                    let out = edited.get_or_insert_with(|| {
                        let mut out = BytesMut::with_capacity(complete.len());
                        out.extend_from_slice(&complete[..offset]);
                        out
                    });
                    if let Edit::Replace(bytes) = edit {
                        out.extend_from_slice(&bytes);
                    }
                }
            }
            offset = end;
        }
        match edited {
            Some(out) => out.freeze(),
            None => complete,
        }
    }

    /// Ends the stream with an error event: what the client has is all it gets, and it is
    /// told so (no `[DONE]`, so it never mistakes a cut stream for a complete one).
    fn interrupt(&mut self, message: &str, provider_error: Option<String>) -> Bytes {
        // A half-received event is dropped rather than relayed broken.
        self.buf.clear();
        self.recorder.stream_interrupted();
        self.finish(Outcome::UpstreamError, Some(ErrorClass::StreamInterrupted));
        match provider_error {
            Some(json) => Bytes::from(format!("data: {json}\n\n")),
            None => error_event(message, "stream_interrupted"),
        }
    }

    fn finish(&mut self, outcome: Outcome, error: Option<ErrorClass>) {
        if !self.finished {
            self.finished = true;
            self.recorder.finish(outcome, error);
        }
    }
}

impl HttpBody for SseRelay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let polled = match this.first.take() {
                Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
                None => Pin::new(&mut this.inner).poll_frame(cx),
            };
            match polled {
                Poll::Pending => {
                    if this.total_timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Ok(Frame::data(
                            this.interrupt("the stream exceeded its total timeout", None),
                        ))));
                    }
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        let msg =
                            format!("no data from the provider for {} ms", this.idle.as_millis());
                        return Poll::Ready(Some(Ok(Frame::data(this.interrupt(&msg, None)))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let t = Instant::now();
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.idle_timer.as_mut().reset(deadline);
                    let out = if this.buf.is_empty()
                        && data.ends_with(b"\n\n")
                        && !this.needs_edit(&data)
                    {
                        // Fast path: whole events, nothing to change.
                        this.inspect_only(&data);
                        data
                    } else {
                        this.buf.extend_from_slice(&data);
                        this.drain_events()
                    };
                    this.recorder.add_overhead(t.elapsed());
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let fault = e.downcast_ref::<StreamFault>().map(|f| f.0.clone());
                    let msg = format!("the provider's stream failed: {e}");
                    return Poll::Ready(Some(Ok(Frame::data(this.interrupt(&msg, fault)))));
                }
                Poll::Ready(None) => {
                    if !this.saw_done {
                        return Poll::Ready(Some(Ok(Frame::data(this.interrupt(
                            "the provider's stream ended before it was complete",
                            None,
                        )))));
                    }
                    let rest = std::mem::take(&mut this.buf).freeze();
                    let outcome = this.outcome;
                    this.finish(outcome, None);
                    return Poll::Ready(if rest.is_empty() {
                        None
                    } else {
                        Some(Ok(Frame::data(rest)))
                    });
                }
            }
        }
    }
}

impl SseRelay {
    /// Whether any event in `data` may need editing (only usage ever does).
    fn needs_edit(&self, data: &[u8]) -> bool {
        self.strip_usage && memmem::find(data, b"\"usage\"").is_some()
    }

    /// Records what whole events carry, without changing them.
    fn inspect_only(&mut self, data: &[u8]) {
        let mut offset = 0;
        while let Some(end) = event_end(&data[offset..]) {
            let _ = self.inspect(&data[offset..offset + end]);
            offset += end;
        }
    }
}

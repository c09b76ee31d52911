//! Phase 7 for streams: SSE relayed chunk by chunk as it arrives, in the client API's stream
//! format. The relay frames events only to read what it must (first token, usage, the
//! stream's end) and, when the proxy asked the provider for usage on a chat client's behalf,
//! to remove it again so the client gets exactly the stream shape it asked for. Untouched
//! events are passed on without copying. A stream that cannot complete ends with an error
//! event in the client's format.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use memchr::memmem;

use tokio::time::Sleep;

use crate::body::{Body, BodyError, StreamFault};
use crate::metrics::Outcome;
use crate::openai::{read_usage, ErrorClass};
use crate::providers::{Timeouts, WireFormat};
use crate::proxy::context::Recorder;
use crate::proxy::request::RawObject;

/// Receives a Responses stream's response id.
pub type IdSink = Box<dyn FnOnce(&str) + Send + Sync>;

/// How a stream is relayed.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Remove usage the chat client did not ask for.
    pub strip_usage: bool,
    /// Recorded when the stream completes.
    pub outcome: Outcome,
    /// `idle` bounds the silence between chunks, `total` the whole stream.
    pub timeouts: Timeouts,
    /// When the whole call must be over.
    pub deadline: Instant,
    /// The stream's format (the client's API).
    pub format: WireFormat,
}

/// The relaying body.
pub struct SseRelay {
    first: Option<Bytes>,
    format: WireFormat,
    /// The last `sequence_number` seen (Responses), so an error event continues the count.
    sequence: Option<u64>,
    on_id: Option<IdSink>,
    inner: Body,
    buf: BytesMut,
    strip_usage: bool,
    recorder: Recorder,
    outcome: Outcome,
    finished: bool,
    saw_done: bool,
    /// The provider's own error event was relayed (native Responses or Messages streams).
    provider_failed: bool,
    idle: Duration,
    /// When the last data arrived: the idle deadline counts from it.
    last_data: tokio::time::Instant,
    /// When the whole stream must be over.
    deadline: tokio::time::Instant,
    /// One timer, armed at the earlier of the idle and total deadlines. Data does not re-arm
    /// it (that would be a timer update per chunk); when it fires before the idle deadline
    /// counted from the last data, it is re-armed there.
    timer: Pin<Box<Sleep>>,
    /// Assembles the text for an online eval, when one sampled this request.
    tap: Option<crate::evals::answer::StreamTap>,
}

/// Searchers built once (building one per search cost more than the search on small events).
static EVENT_END_LF: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\n\n"));
static EVENT_END_CRLF: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
static DATA_FIELD: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"data:"));
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

impl SseRelay {
    /// Relays `first` and then `rest`, recording into `recorder`; `on_id` receives a Responses
    /// stream's response id.
    pub fn new(
        first: Bytes,
        rest: Body,
        recorder: Recorder,
        opts: RelayOptions,
        on_id: Option<IdSink>,
    ) -> SseRelay {
        let RelayOptions {
            strip_usage,
            outcome,
            timeouts,
            deadline,
            format,
        } = opts;
        let now = tokio::time::Instant::now();
        let deadline = tokio::time::Instant::from(deadline);
        SseRelay {
            first: Some(first),
            format,
            sequence: None,
            on_id,
            inner: rest,
            buf: BytesMut::new(),
            strip_usage,
            recorder,
            outcome,
            finished: false,
            saw_done: false,
            provider_failed: false,
            idle: timeouts.idle,
            last_data: now,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(
                (now + timeouts.idle).min(deadline),
            )),
            tap: None,
        }
    }

    /// Feeds the stream's text to an eval's tap; it is offered when the stream completes.
    pub fn with_tap(mut self, tap: Option<crate::evals::answer::StreamTap>) -> SseRelay {
        self.tap = tap;
        self
    }
}

/// An SSE error event in OpenAI's chat shape, ending a stream that cannot complete.
pub fn error_event(message: &str, code: &str) -> Bytes {
    error_event_for(WireFormat::Chat, message, "upstream_error", code, None)
}

/// An SSE error event in `format`'s shape: chat's `data: {"error": …}`, Responses' `error`
/// event (numbered after `sequence`), Anthropic's `error` event.
pub fn error_event_for(
    format: WireFormat,
    message: &str,
    kind: &str,
    code: &str,
    sequence: Option<u64>,
) -> Bytes {
    use serde_json::json;
    match format {
        WireFormat::Responses => {
            let v = json!({"type": "error", "code": code, "message": message, "param": null,
                "sequence_number": sequence.map_or(0, |s| s + 1)});
            Bytes::from(format!("event: error\ndata: {v}\n\n"))
        }
        WireFormat::Messages => {
            let anthropic_kind = match kind {
                "rate_limit_error" => "rate_limit_error",
                "invalid_request_error" => "invalid_request_error",
                _ if code == "overloaded" => "overloaded_error",
                _ => "api_error",
            };
            let v = json!({"type": "error", "error": {"type": anthropic_kind, "message": message}});
            Bytes::from(format!("event: error\ndata: {v}\n\n"))
        }
        WireFormat::Chat | WireFormat::Embeddings => {
            let v =
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
            Bytes::from(format!("data: {v}\n\n"))
        }
    }
}

/// A provider's error (OpenAI's error JSON) as an error event in `format`.
fn provider_error_event(format: WireFormat, openai_json: &str, sequence: Option<u64>) -> Bytes {
    if format == WireFormat::Chat {
        return Bytes::from(format!("data: {openai_json}\n\n"));
    }
    let v: serde_json::Value = serde_json::from_str(openai_json).unwrap_or_default();
    let e = &v["error"];
    error_event_for(
        format,
        e["message"]
            .as_str()
            .unwrap_or("the provider's stream failed"),
        e["type"].as_str().unwrap_or("upstream_error"),
        e["code"].as_str().unwrap_or("stream_interrupted"),
        sequence,
    )
}

static SEQUENCE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"sequence_number\":"));
static TYPE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"type\":\""));

static EVENT_FIELD: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"event:"));

/// An event's type: its `event:` line (Responses and Anthropic streams name every event),
/// else the first `"type":"…"` member of its data.
fn event_type<'e>(event: &'e [u8], data: &'e [u8]) -> &'e [u8] {
    let line_start = EVENT_FIELD
        .find(event)
        .filter(|at| *at == 0 || event[at - 1] == b'\n');
    if let Some(at) = line_start {
        let rest = &event[at + 6..];
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        return &rest[..end];
    }
    let Some(at) = TYPE_KEY.find(data) else {
        return b"";
    };
    let rest = &data[at + 8..];
    let end = memchr::memchr(b'"', rest).unwrap_or(rest.len());
    &rest[..end]
}

/// The end of the first complete event in `buf` (after its blank line), if any.
pub(crate) fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = EVENT_END_LF.find(buf).map(|i| i + 2);
    // A CRLF boundary contains no "\n\n": it can only come first if it ends before `lf`.
    let before = lf.map_or(buf, |end| &buf[..end]);
    let crlf = EVENT_END_CRLF.find(before).map(|i| i + 4);
    crlf.or(lf)
}

/// The JSON payload of an event's `data:` line.
fn data_of(event: &[u8]) -> Option<&[u8]> {
    let start = DATA_FIELD.find(event)? + 5;
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
        if let Some(tap) = self.tap.as_mut() {
            tap.data(data);
        }
        match self.format {
            WireFormat::Responses => {
                self.inspect_responses(event_type(event, data), data);
                return Edit::Keep;
            }
            WireFormat::Messages => {
                self.inspect_messages(event_type(event, data), data);
                return Edit::Keep;
            }
            WireFormat::Chat | WireFormat::Embeddings => {}
        }
        if data == b"[DONE]" {
            self.saw_done = true;
            return Edit::Keep;
        }
        self.recorder.first_token();
        if USAGE_KEY.find(data).is_none() {
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

    /// A Responses event: deltas are tokens, `response.completed` (or `.incomplete`) ends the
    /// stream with usage and the response id; sequence numbers are followed.
    fn inspect_responses(&mut self, kind: &[u8], data: &[u8]) {
        if let Some(at) = SEQUENCE_KEY.find(data) {
            let digits = &data[at + 18..];
            let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
            if let Some(n) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
            {
                self.sequence = Some(n);
            }
        }
        if kind.ends_with(b".delta") {
            self.recorder.first_token();
        }
        if kind == b"response.completed" || kind == b"response.incomplete" {
            self.saw_done = true;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                let r = &v["response"];
                if let Some(u) = crate::api::responses::read_usage_value(r.get("usage")) {
                    self.recorder.usage(u);
                }
                if let (Some(id), Some(sink)) = (r["id"].as_str(), self.on_id.take()) {
                    sink(id);
                }
            }
        } else if kind == b"response.failed" || kind == b"error" {
            self.provider_failed = true;
        }
    }

    /// A Messages event: deltas are tokens, `message_start` and `message_delta` carry usage,
    /// `message_stop` ends the stream.
    fn inspect_messages(&mut self, kind: &[u8], data: &[u8]) {
        match kind {
            b"content_block_delta" => self.recorder.first_token(),
            b"message_start" | b"message_delta" => {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                    let usage = v.get("usage").or_else(|| v["message"].get("usage"));
                    if let Some(u) = crate::api::messages::read_usage_value(usage) {
                        let mut merged = self.recorder.usage_so_far().unwrap_or_default();
                        merged.prompt_tokens = merged.prompt_tokens.max(u.prompt_tokens);
                        merged.completion_tokens =
                            merged.completion_tokens.max(u.completion_tokens);
                        self.recorder.usage(merged);
                    }
                }
            }
            b"message_stop" => self.saw_done = true,
            b"error" => self.provider_failed = true,
            _ => {}
        }
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
        tracing::debug!(reason = message, "stream interrupted");
        // A half-received event is dropped rather than relayed broken.
        self.buf.clear();
        self.recorder.stream_interrupted();
        self.finish(Outcome::UpstreamError, Some(ErrorClass::StreamInterrupted));
        match provider_error {
            Some(json) => provider_error_event(self.format, &json, self.sequence),
            None => error_event_for(
                self.format,
                message,
                "upstream_error",
                "stream_interrupted",
                self.sequence,
            ),
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
                Poll::Pending => loop {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let now = tokio::time::Instant::now();
                    if now >= this.deadline {
                        return Poll::Ready(Some(Ok(Frame::data(
                            this.interrupt("the stream exceeded its total timeout", None),
                        ))));
                    }
                    let idle_at = this.last_data + this.idle;
                    if now >= idle_at {
                        let msg =
                            format!("no data from the provider for {} ms", this.idle.as_millis());
                        return Poll::Ready(Some(Ok(Frame::data(this.interrupt(&msg, None)))));
                    }
                    this.timer.as_mut().reset(idle_at.min(this.deadline));
                },
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if this.saw_done {
                        // The stream is complete: whatever a provider sends after its end is
                        // not the client's (it still has to end for the relay to finish).
                        continue;
                    }
                    let t = Instant::now();
                    this.last_data = t.into();
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
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        let mut cause = String::new();
                        let mut source = std::error::Error::source(&*e);
                        while let Some(s) = source {
                            cause.push_str(": ");
                            cause.push_str(&s.to_string());
                            source = s.source();
                        }
                        tracing::debug!(error = %e, cause = %cause, "provider stream failed");
                    }
                    return Poll::Ready(Some(Ok(Frame::data(this.interrupt(&msg, fault)))));
                }
                Poll::Ready(None) => {
                    if this.provider_failed && !this.saw_done {
                        // The provider already sent its error event: the client has it.
                        this.buf.clear();
                        this.recorder.stream_interrupted();
                        this.finish(Outcome::UpstreamError, Some(ErrorClass::StreamInterrupted));
                        return Poll::Ready(None);
                    }
                    if !this.saw_done {
                        return Poll::Ready(Some(Ok(Frame::data(this.interrupt(
                            "the provider's stream ended before it was complete",
                            None,
                        )))));
                    }
                    let rest = std::mem::take(&mut this.buf).freeze();
                    let outcome = this.outcome;
                    this.finish(outcome, None);
                    if let Some(tap) = this.tap.take() {
                        tap.complete();
                    }
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
        self.strip_usage && self.format == WireFormat::Chat && USAGE_KEY.find(data).is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_end_finds_the_first_blank_line_of_either_kind() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"data: a\n\ndata: b\n\n", Some(9)),
            (b"data: a\r\n\r\ndata: b\n\n", Some(11)),
            (b"data: a\n\ndata: b\r\n\r\n", Some(9)),
            (b"data: a\r\n\n", Some(10)),
            (b"data: a\r\n", None),
            (b"data: a\n", None),
            (b"", None),
            (b"\n\n", Some(2)),
            (b"\r\n\r\n", Some(4)),
        ];
        for (buf, want) in cases {
            assert_eq!(event_end(buf), *want, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn data_of_reads_the_data_line() {
        assert_eq!(
            data_of(b"event: x\ndata: {\"a\":1}\n\n"),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(data_of(b"data:[DONE]\r\n\r\n"), Some(&b"[DONE]"[..]));
        assert_eq!(data_of(b": comment\n\n"), None);
    }
}

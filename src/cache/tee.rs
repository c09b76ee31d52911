//! A stream on its way to the client, copied as it passes so that a complete one can be
//! stored. Complete means its last event is the format's end (`data: [DONE]`,
//! `response.completed`, `message_stop`): a stream the relay had to cut ends with an error
//! event instead, and is not stored.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{Entry, EntryKind, Fill};
use crate::body::{Body, BodyError};
use crate::providers::WireFormat;

/// The copying body.
pub struct Tee {
    inner: Body,
    copy: BytesMut,
    /// `None` once the stream can no longer be stored (too large, or failed).
    fill: Option<Fill>,
    format: WireFormat,
}

impl Tee {
    /// Copies `inner` (a stream in `format`) into `fill`.
    pub fn new(inner: Body, fill: Fill, format: WireFormat) -> Tee {
        Tee {
            inner,
            copy: BytesMut::new(),
            fill: Some(fill),
            format,
        }
    }

    fn end(&mut self) {
        let Some(fill) = self.fill.take() else { return };
        let body = std::mem::take(&mut self.copy).freeze();
        if is_complete(self.format, &body) {
            fill.put(Entry {
                kind: EntryKind::Sse,
                body,
            });
        }
    }
}

/// Whether the last event of `stream` is `format`'s end of stream.
pub fn is_complete(format: WireFormat, stream: &[u8]) -> bool {
    let trimmed = stream.trim_ascii_end();
    let start = memchr::memmem::rfind(trimmed, b"\n\n").map_or(0, |i| i + 2);
    let last = &trimmed[start..];
    let marker: &[u8] = match format {
        WireFormat::Chat | WireFormat::Embeddings => b"[DONE]",
        WireFormat::Responses => b"response.completed",
        WireFormat::Messages => b"message_stop",
    };
    memchr::memmem::find(last, marker).is_some()
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(fill), Some(data)) = (&this.fill, frame.data_ref()) {
                    if this.copy.len() + data.len() > fill.max_bytes {
                        this.fill = None;
                        this.copy = BytesMut::new();
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.fill = None;
                this.copy = BytesMut::new();
            }
            Poll::Ready(None) => this.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_streams_that_end_properly_are_complete() {
        let chat = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        assert!(is_complete(WireFormat::Chat, chat));
        let cut = b"data: {\"a\":1}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n";
        assert!(!is_complete(WireFormat::Chat, cut));
        let responses = b"event: response.created\ndata: {}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
        assert!(is_complete(WireFormat::Responses, responses));
        let failed = b"event: response.completed\ndata: {}\n\nevent: error\ndata: {}\n\n";
        assert!(!is_complete(WireFormat::Responses, failed));
        let messages = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        assert!(is_complete(WireFormat::Messages, messages));
        assert!(!is_complete(WireFormat::Messages, b""));
    }
}

//! Chat SSE streams turned into another API's stream as the bytes arrive: one body type for
//! every client API, each API supplying a [`ChatStreamTranslator`] that turns chat chunks into
//! its own events.
//!
//! The translated stream ends the way the chat stream did: after `[DONE]` the translator
//! writes its closing events; a chat stream that ends without `[DONE]` or fails ends the
//! translated one without them, so the relay sees an incomplete stream and ends it with an
//! error event in the client's shape.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use serde::Deserialize;

use crate::body::{Body, BodyError};
use crate::openai::Usage;

/// One chat completion chunk, as far as translators read it.
#[derive(Debug, Default, Deserialize)]
pub struct ChatChunk {
    /// The chunk's model.
    #[serde(default)]
    pub model: Option<String>,
    /// Choices (translators read the first).
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Usage, on the last chunk when asked for.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One choice of a chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkChoice {
    /// What is new.
    #[serde(default)]
    pub delta: ChunkDelta,
    /// Set on the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A chunk's delta.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkDelta {
    /// Text.
    #[serde(default)]
    pub content: Option<String>,
    /// A refusal's text.
    #[serde(default)]
    pub refusal: Option<String>,
    /// Tool call fragments.
    #[serde(default)]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A fragment of a tool call.
#[derive(Debug, Default, Deserialize)]
pub struct ToolCallDelta {
    /// Which call of the answer.
    #[serde(default)]
    pub index: usize,
    /// The call id (first fragment).
    #[serde(default)]
    pub id: Option<String>,
    /// Name and arguments.
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

/// Name (first fragment) and a piece of the arguments.
#[derive(Debug, Default, Deserialize)]
pub struct FunctionDelta {
    /// The function's name.
    #[serde(default)]
    pub name: Option<String>,
    /// More of the JSON arguments.
    #[serde(default)]
    pub arguments: Option<String>,
}

/// Turns chat chunks into another API's events.
pub trait ChatStreamTranslator: Send + 'static {
    /// One chat chunk: the events it becomes (possibly none).
    fn chunk(&mut self, chunk: ChatChunk, out: &mut Vec<u8>);
    /// `[DONE]`: the closing events.
    fn done(&mut self, out: &mut Vec<u8>);
}

/// Writes one SSE event with an `event:` line.
pub fn write_event(out: &mut Vec<u8>, name: &str, data: &serde_json::Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// The translating body.
pub struct Translated<T> {
    inner: Body,
    buf: BytesMut,
    translator: T,
    ended: bool,
}

impl<T: ChatStreamTranslator> Translated<T> {
    /// Translates the chat stream `inner`.
    pub fn new(inner: Body, translator: T) -> Translated<T> {
        Translated {
            inner,
            buf: BytesMut::new(),
            translator,
            ended: false,
        }
    }

    /// Every complete event in the buffer, translated.
    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(end) = crate::proxy::stream::event_end(&self.buf) {
            let event = self.buf.split_to(end);
            for line in event[..].split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.strip_prefix(b" ").unwrap_or(data);
                if data == b"[DONE]" {
                    self.translator.done(&mut out);
                    self.ended = true;
                    return out;
                }
                if let Ok(chunk) = serde_json::from_slice::<ChatChunk>(data) {
                    self.translator.chunk(chunk, &mut out);
                }
            }
        }
        out
    }
}

impl<T: ChatStreamTranslator + Unpin> HttpBody for Translated<T> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.buf.extend_from_slice(&data);
                    let out = this.drain();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
            }
        }
    }
}

/// A tool call assembled from its fragments.
#[derive(Debug, Default, Clone)]
pub struct AssembledCall {
    /// The call id.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The JSON arguments so far.
    pub arguments: String,
}

/// A body that yields `first`, then everything of `rest`.
pub fn prefixed(first: Bytes, rest: Body) -> Body {
    use http_body_util::BodyExt;
    Prefixed {
        first: Some(first),
        rest,
    }
    .boxed()
}

struct Prefixed {
    first: Option<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    struct Echo;
    impl ChatStreamTranslator for Echo {
        fn chunk(&mut self, chunk: ChatChunk, out: &mut Vec<u8>) {
            for c in chunk.choices {
                out.extend_from_slice(c.delta.content.unwrap_or_default().as_bytes());
            }
        }
        fn done(&mut self, out: &mut Vec<u8>) {
            out.extend_from_slice(b"|end");
        }
    }

    /// A body yielding fixed frames.
    pub struct Frames(pub VecDeque<Bytes>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn events_split_anywhere_are_translated_once_and_done_closes() {
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\r\n\r\ndata: [DONE]\n\n";
        for split in 1..text.len() {
            let (a, b) = text.split_at(split);
            let frames = VecDeque::from(vec![Bytes::from(a.to_owned()), Bytes::from(b.to_owned())]);
            let body = Translated::new(Frames(frames).boxed(), Echo);
            let got = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            assert_eq!(&got[..], b"ab|end", "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_stream_cut_before_done_gets_no_closing_events() {
        let frames = VecDeque::from(vec![Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        )]);
        let body = Translated::new(Frames(frames).boxed(), Echo);
        let got = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        assert_eq!(&got[..], b"a");
    }
}

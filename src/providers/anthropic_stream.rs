//! Anthropic's SSE stream as an HTTP body of OpenAI chunks, translated as bytes arrive.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};

use crate::body::{Body, BodyError, StreamFault};
use crate::providers::anthropic::StreamTranslator;

/// The translating body. An Anthropic `error` event ends it with a [`StreamFault`] carrying
/// the error in OpenAI's shape; a stream cut before `message_stop` simply ends (without
/// `[DONE]`, which the relay reports as an interrupted stream).
pub struct AnthropicSse {
    inner: Body,
    translator: StreamTranslator,
    pending_fault: Option<String>,
    ended: bool,
}

impl AnthropicSse {
    /// Translates `inner`; `include_usage` adds the usage chunk before `[DONE]`.
    pub fn new(inner: Body, created: u64, include_usage: bool) -> AnthropicSse {
        AnthropicSse {
            inner,
            translator: StreamTranslator::new(created, include_usage),
            pending_fault: None,
            ended: false,
        }
    }
}

impl HttpBody for AnthropicSse {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(fault) = this.pending_fault.take() {
            this.ended = true;
            return Poll::Ready(Some(Err(Box::new(StreamFault(fault)))));
        }
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
                    match this.translator.feed(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) if e.preceding.is_empty() => {
                            this.ended = true;
                            return Poll::Ready(Some(Err(Box::new(StreamFault(
                                e.openai_error_json,
                            )))));
                        }
                        Err(e) => {
                            this.pending_fault = Some(e.openai_error_json);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(e.preceding)))));
                        }
                    }
                }
            }
        }
    }
}

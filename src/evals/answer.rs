//! The answer's text, as the client got it: read from a complete answer, or assembled from a
//! stream's deltas by a [`StreamTap`] the relay feeds (only for sampled requests).

use std::sync::Arc;

use serde_json::Value;

use super::Pending;
use crate::app::App;
use crate::providers::WireFormat;

/// Longest answer text kept for the judge (longer answers are cut here).
pub const MAX_ANSWER_CHARS: usize = 32 * 1024;

fn push_capped(out: &mut String, s: &str) {
    if out.len() >= MAX_ANSWER_CHARS {
        return;
    }
    let room = MAX_ANSWER_CHARS - out.len();
    if s.len() <= room {
        out.push_str(s);
    } else {
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&s[..end]);
    }
}

/// The text of a complete answer in `format` (chat, Responses or Messages).
pub fn text_of(format: WireFormat, body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut out = String::new();
    match format {
        WireFormat::Chat => {
            let content = &v["choices"][0]["message"]["content"];
            match content {
                Value::String(s) => push_capped(&mut out, s),
                Value::Array(parts) => {
                    for p in parts {
                        push_capped(&mut out, p["text"].as_str().unwrap_or(""));
                    }
                }
                _ => return None,
            }
        }
        WireFormat::Responses => {
            for item in v["output"].as_array()? {
                for part in item["content"].as_array().into_iter().flatten() {
                    push_capped(&mut out, part["text"].as_str().unwrap_or(""));
                }
            }
        }
        WireFormat::Messages => {
            for part in v["content"].as_array()? {
                push_capped(&mut out, part["text"].as_str().unwrap_or(""));
            }
        }
        WireFormat::Embeddings => return None,
    }
    Some(out)
}

/// Assembles a sampled stream's text; offered to the evals when the stream completes (a cut
/// stream is not judged).
pub struct StreamTap {
    app: Arc<App>,
    pending: Pending,
    format: WireFormat,
    text: String,
}

impl std::fmt::Debug for StreamTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamTap")
    }
}

impl StreamTap {
    /// A tap for a stream in `format`.
    pub fn new(app: Arc<App>, pending: Pending, format: WireFormat) -> StreamTap {
        StreamTap {
            app,
            pending,
            format,
            text: String::new(),
        }
    }

    /// One event's `data:` payload.
    pub fn data(&mut self, data: &[u8]) {
        if data == b"[DONE]" || self.text.len() >= MAX_ANSWER_CHARS {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let piece = match self.format {
            WireFormat::Chat => v["choices"][0]["delta"]["content"].as_str(),
            WireFormat::Responses if v["type"] == "response.output_text.delta" => {
                v["delta"].as_str()
            }
            WireFormat::Messages if v["type"] == "content_block_delta" => {
                v["delta"]["text"].as_str()
            }
            _ => None,
        };
        if let Some(p) = piece {
            push_capped(&mut self.text, p);
        }
    }

    /// The stream completed: the assembled answer goes to the evals.
    pub fn complete(self) {
        let StreamTap {
            app, pending, text, ..
        } = self;
        app.evals.submit(&app, pending, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_answers_of_each_format() {
        let chat = br#"{"choices":[{"message":{"role":"assistant","content":"hi there"}}]}"#;
        assert_eq!(text_of(WireFormat::Chat, chat).as_deref(), Some("hi there"));
        let responses = br#"{"output":[{"type":"message","content":[{"type":"output_text","text":"a"},{"type":"output_text","text":"b"}]}]}"#;
        assert_eq!(
            text_of(WireFormat::Responses, responses).as_deref(),
            Some("ab")
        );
        let messages = br#"{"content":[{"type":"text","text":"m"}]}"#;
        assert_eq!(
            text_of(WireFormat::Messages, messages).as_deref(),
            Some("m")
        );
        assert_eq!(text_of(WireFormat::Chat, b"nope"), None);
        let long = "é".repeat(MAX_ANSWER_CHARS);
        let body = serde_json::json!({"choices":[{"message":{"content": long}}]}).to_string();
        let t = text_of(WireFormat::Chat, body.as_bytes()).unwrap_or_default();
        assert!(t.len() <= MAX_ANSWER_CHARS && !t.is_empty());
    }
}

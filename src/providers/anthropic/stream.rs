//! Anthropic SSE → chat completion chunks, incrementally.

use super::*;

// ---------------------------------------------------------------------------------------------
// Streaming: Anthropic SSE -> OpenAI chunks
// ---------------------------------------------------------------------------------------------

/// An Anthropic `error` event (or an unreadable event) ended the stream.
#[derive(Debug)]
pub struct StreamError {
    /// The error as OpenAI's `{"error": {…}}` JSON, for an SSE error event.
    pub openai_error_json: String,
    /// OpenAI SSE bytes translated from the events that preceded the error in the same
    /// [`StreamTranslator::feed`] call; send them before the error event.
    pub preceding: Vec<u8>,
}

/// Translates an Anthropic SSE stream into OpenAI chunk SSE events, incrementally.
///
/// Bytes may be split anywhere (mid-line, mid-UTF-8): incomplete lines wait for the next
/// [`feed`](StreamTranslator::feed). Lines may end in `\n`, `\r\n` or `\r`. After
/// `message_stop` (or an error) further input is ignored.
#[derive(Debug)]
pub struct StreamTranslator {
    pub(super) created: u64,
    pub(super) include_usage: bool,
    /// `chatcmpl-` + the Anthropic message id.
    pub(super) id: String,
    pub(super) model: String,
    /// Bytes not yet forming a complete line.
    pub(super) pending: Vec<u8>,
    /// The current event's `event:` field.
    pub(super) event: String,
    /// The current event's `data:` lines, joined by `\n`.
    pub(super) data: Vec<u8>,
    pub(super) has_data: bool,
    /// The last line ended in a `\r` that was the last byte fed so far.
    pub(super) after_cr: bool,
    /// Anthropic content block index → OpenAI tool call index.
    pub(super) tool_calls: HashMap<u64, u32>,
    pub(super) next_tool_call: u32,
    pub(super) tokens: Tokens,
    pub(super) finish_sent: bool,
    pub(super) done: bool,
    pub(super) failed: bool,
}

#[derive(Serialize)]
pub(super) struct Chunk<'a> {
    pub(super) id: &'a str,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) model: &'a str,
    pub(super) choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) usage: Option<OpenAiUsage>,
}

#[derive(Serialize)]
pub(super) struct ChunkChoice<'a> {
    pub(super) index: u32,
    pub(super) delta: Delta<'a>,
    pub(super) finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
pub(super) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
pub(super) struct ToolCallDelta<'a> {
    pub(super) index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<&'static str>,
    pub(super) function: FunctionDelta<'a>,
}

#[derive(Serialize)]
pub(super) struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<&'a str>,
    pub(super) arguments: &'a str,
}

impl StreamError {
    fn new(body: Vec<u8>) -> Self {
        StreamError {
            openai_error_json: String::from_utf8_lossy(&body).into_owned(),
            preceding: Vec::new(),
        }
    }

    fn invalid_event(detail: &str) -> Self {
        StreamError::new(openai_error_json(
            &format!("the upstream stream sent an invalid event: {detail}"),
            "upstream_error",
            Some("upstream_invalid_response"),
        ))
    }
}

impl StreamTranslator {
    /// A translator for one stream. `include_usage`: emit the final usage chunk
    /// (`{"choices":[], "usage":{…}}`) before `[DONE]`.
    pub fn new(created: u64, include_usage: bool) -> Self {
        StreamTranslator {
            created,
            include_usage,
            id: String::from("chatcmpl-"),
            model: String::new(),
            pending: Vec::new(),
            event: String::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            tool_calls: HashMap::new(),
            next_tool_call: 0,
            tokens: Tokens::default(),
            finish_sent: false,
            done: false,
            failed: false,
        }
    }

    /// Feeds raw bytes as they arrive; returns the OpenAI SSE bytes (`data: {…}\n\n` events,
    /// and `data: [DONE]\n\n` after `message_stop`) ready to send.
    ///
    /// Errs on an Anthropic `error` event or an event whose data is not JSON, carrying the
    /// OpenAI-shaped error so the caller can emit an SSE error event and end the stream
    /// without `[DONE]`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<u8>, StreamError> {
        if self.done || self.failed {
            return Ok(Vec::new());
        }
        self.pending.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut result = Ok(());
        while !self.done {
            if self.after_cr {
                // The previous line ended in a `\r` at the end of a feed: a `\n` now
                // belongs to it.
                match buf.get(pos) {
                    None => break,
                    Some(b'\n') => pos += 1,
                    Some(_) => {}
                }
                self.after_cr = false;
            }
            let rest = &buf[pos..];
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                break;
            };
            let mut next = end + 1;
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    None => self.after_cr = true,
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                }
            }
            result = self.line(&rest[..end], &mut out);
            pos += next;
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => {
                if !self.done {
                    self.pending = buf;
                    self.pending.drain(..pos);
                }
                Ok(out)
            }
            Err(mut e) => {
                self.failed = true;
                e.preceding = out;
                Err(e)
            }
        }
    }

    /// Whether `message_stop` was seen (the stream completed properly).
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Usage so far: (prompt_tokens, completion_tokens). Prompt tokens include cache writes
    /// and reads.
    pub fn usage(&self) -> (u64, u64) {
        (self.tokens.prompt(), self.tokens.output)
    }

    /// One SSE line (without its terminator).
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if line.is_empty() {
            return self.dispatch(out);
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let value = &line[c + 1..];
                (&line[..c], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
        Ok(())
    }

    /// The end of an event: translate it.
    fn dispatch(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        let had_data = std::mem::replace(&mut self.has_data, false);
        if !had_data || data.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let v: Value = serde_json::from_slice(&data)
            .map_err(|e| StreamError::invalid_event(&format!("{e}")))?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event.as_str());
        match kind {
            "message_start" => {
                let msg = v.get("message");
                if let Some(id) = msg.and_then(|m| m.get("id")).and_then(Value::as_str) {
                    self.id = format!("chatcmpl-{id}");
                }
                if let Some(model) = msg.and_then(|m| m.get("model")).and_then(Value::as_str) {
                    self.model = model.to_owned();
                }
                self.read_usage(msg.and_then(|m| m.get("usage")));
                self.emit(
                    out,
                    Delta {
                        role: Some("assistant"),
                        content: Some(""),
                        tool_calls: None,
                    },
                    None,
                )?;
            }
            "content_block_start" => {
                let block = v.get("content_block");
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("text") => {
                        let text = block
                            .and_then(|b| b.get("text"))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        self.text(out, text)?;
                    }
                    Some("tool_use") => {
                        let index = v.get("index").and_then(Value::as_u64).unwrap_or_default();
                        let n = self.next_tool_call;
                        self.next_tool_call += 1;
                        self.tool_calls.insert(index, n);
                        let field = |k: &str| {
                            block
                                .and_then(|b| b.get(k))
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                        };
                        let delta = ToolCallDelta {
                            index: n,
                            id: Some(field("id")),
                            kind: Some("function"),
                            function: FunctionDelta {
                                name: Some(field("name")),
                                arguments: "",
                            },
                        };
                        self.emit(
                            out,
                            Delta {
                                tool_calls: Some([delta]),
                                ..Delta::default()
                            },
                            None,
                        )?;
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = v.get("delta");
                let field = |k: &str| {
                    delta
                        .and_then(|d| d.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                };
                match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => self.text(out, field("text"))?,
                    Some("input_json_delta") => {
                        let index = v.get("index").and_then(Value::as_u64).unwrap_or_default();
                        let partial = field("partial_json");
                        if let Some(&n) = self.tool_calls.get(&index) {
                            if !partial.is_empty() {
                                let delta = ToolCallDelta {
                                    index: n,
                                    id: None,
                                    kind: None,
                                    function: FunctionDelta {
                                        name: None,
                                        arguments: partial,
                                    },
                                };
                                self.emit(
                                    out,
                                    Delta {
                                        tool_calls: Some([delta]),
                                        ..Delta::default()
                                    },
                                    None,
                                )?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.read_usage(v.get("usage"));
                let stop = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if let Some(stop) = stop {
                    self.finish(out, finish_reason(Some(stop)))?;
                }
            }
            "message_stop" => {
                if !self.finish_sent {
                    self.finish(out, "stop")?;
                }
                if self.include_usage {
                    let chunk = Chunk {
                        id: &self.id,
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: &self.model,
                        choices: Vec::new(),
                        usage: Some(self.tokens.openai()),
                    };
                    write_event(out, &chunk)?;
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            "error" => {
                let body = error_value_to_openai(&v).unwrap_or_else(|| {
                    openai_error_json("the upstream stream failed", "upstream_error", None)
                });
                return Err(StreamError::new(body));
            }
            // ping, content_block_stop and anything new.
            _ => {}
        }
        Ok(())
    }

    fn read_usage(&mut self, usage: Option<&Value>) {
        if let Some(u) = usage.and_then(|u| AnthropicUsage::deserialize(u).ok()) {
            self.tokens.update(&u);
        }
    }

    fn text(&self, out: &mut Vec<u8>, text: &str) -> Result<(), StreamError> {
        if text.is_empty() {
            return Ok(());
        }
        self.emit(
            out,
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            None,
        )
    }

    fn finish(&mut self, out: &mut Vec<u8>, reason: &'static str) -> Result<(), StreamError> {
        self.finish_sent = true;
        self.emit(out, Delta::default(), Some(reason))
    }

    fn emit(
        &self,
        out: &mut Vec<u8>,
        delta: Delta<'_>,
        finish_reason: Option<&'static str>,
    ) -> Result<(), StreamError> {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
        };
        write_event(out, &chunk)
    }
}

pub(super) fn write_event(out: &mut Vec<u8>, chunk: &Chunk<'_>) -> Result<(), StreamError> {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, chunk)
        .map_err(|e| StreamError::invalid_event(&format!("cannot encode a chunk: {e}")))?;
    out.extend_from_slice(b"\n\n");
    Ok(())
}

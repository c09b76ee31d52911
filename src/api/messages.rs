//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API. Sent as
//! it is to providers that accept it (Anthropic), with the variation's model, `system`,
//! `max_tokens` (always present: that API requires it), `temperature` and tool policy
//! rewritten; translated through chat for the others, answers and streams translated back
//! (`message_start` … `message_stop`). Errors take Anthropic's envelope.

use serde_json::{json, Map, Value};

use super::sse::{AssembledCall, ChatChunk, ChatStreamTranslator, Translated};
use super::{kept_tools, new_id, number_json, parse_object, ClientApi, Edit, Inbound, Parsed};
use crate::body::Body;
use crate::flags::{PromptMode, Variation};
use crate::openai::{ApiError, Usage};

/// `max_tokens` sent to a chat provider when a Messages request is translated and the
/// variation sets no budget (the Messages API always carries one, so this is only a floor).
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A parsed Messages request.
pub struct MessagesRequest<'a> {
    body: &'a [u8],
    parsed: Parsed<'a>,
}

impl<'a> MessagesRequest<'a> {
    /// Parses and checks a `/v1/messages` body.
    pub fn parse(body: &'a [u8]) -> Result<MessagesRequest<'a>, ApiError> {
        let req = Self::parse_count(body)?;
        if req.parsed.positive_int("max_tokens")?.is_none() {
            return Err(ApiError::field("max_tokens", "`max_tokens` is required"));
        }
        req.parsed.number("temperature")?;
        Ok(req)
    }

    /// Parses and checks a `/v1/messages/count_tokens` body (no `max_tokens`).
    pub fn parse_count(body: &'a [u8]) -> Result<MessagesRequest<'a>, ApiError> {
        let parsed = parse_object(body)?;
        match parsed.value.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => {}
            Some(Value::Array(_)) => {
                return Err(ApiError::field("messages", "`messages` must not be empty"))
            }
            None => return Err(ApiError::field("messages", "`messages` is required")),
            Some(_) => {
                return Err(ApiError::field(
                    "messages",
                    "`messages` must be an array of message objects",
                ))
            }
        }
        if let Some(t) = parsed.value.get("tools") {
            if !matches!(t, Value::Array(_) | Value::Null) {
                return Err(ApiError::field("tools", "`tools` must be an array"));
            }
        }
        if !matches!(
            parsed.value.get("system"),
            None | Some(Value::String(_) | Value::Array(_) | Value::Null)
        ) {
            return Err(ApiError::field(
                "system",
                "`system` must be a string or an array of text blocks",
            ));
        }
        Ok(MessagesRequest { body, parsed })
    }

    /// The body for `v`: model, system, temperature, token budget and tool policy applied
    /// (`count`: only what `count_tokens` takes: model, system, tools).
    pub fn rewrite(
        &self,
        v: &Variation,
        mode: PromptMode,
        count: bool,
    ) -> Result<Vec<u8>, ApiError> {
        let mut edits: Vec<Edit> =
            vec![("model", Some(Value::from(v.model_id.as_str()).to_string()))];
        if let Some((_, prompt)) = &v.system_prompt {
            let ours = json!({"type": "text", "text": prompt.as_ref()});
            let system = match (mode, self.parsed.value.get("system")) {
                (PromptMode::Insert, Some(Value::String(s))) if !s.is_empty() => {
                    json!([ours, {"type": "text", "text": s}])
                }
                (PromptMode::Insert, Some(Value::Array(blocks))) => {
                    let mut all = vec![ours];
                    all.extend(blocks.iter().cloned());
                    Value::Array(all)
                }
                _ => Value::from(prompt.as_ref()),
            };
            edits.push(("system", Some(system.to_string())));
        }
        if let Some(t) = v.temperature.filter(|_| !count) {
            // Anthropic's range is 0..=1; OpenAI-style temperatures above it are clamped.
            edits.push(("temperature", Some(number_json(t.min(1.0)))));
        }
        if let Some(budget) = v.token_budget.filter(|_| !count) {
            let asked = self.parsed.positive_int("max_tokens")?;
            let n = asked.map_or(u64::from(budget), |a| a.min(u64::from(budget)));
            edits.push(("max_tokens", Some(n.to_string())));
        }
        if let Some(kept) = kept_tools(self.tools(), &v.tool_policy, tool_name) {
            if kept.is_empty() {
                edits.push(("tools", None));
                edits.push(("tool_choice", None));
            } else {
                let names: Vec<&str> = kept.iter().filter_map(|t| tool_name(t)).collect();
                let chosen = self
                    .parsed
                    .value
                    .get("tool_choice")
                    .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool"))
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str);
                if chosen.is_some_and(|c| !names.contains(&c)) {
                    edits.push(("tool_choice", None));
                }
                edits.push((
                    "tools",
                    Some(Value::from(kept.into_iter().cloned().collect::<Vec<_>>()).to_string()),
                ));
            }
        }
        Ok(super::rewrite_object(&self.parsed.raw, &edits))
    }

    fn tools(&self) -> &[Value] {
        self.parsed
            .value
            .get("tools")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// A rough token count of the request (4 characters a token), for providers that cannot
    /// count: says so in its answer.
    pub fn estimate_tokens(&self) -> u64 {
        let mut chars = 0usize;
        for key in ["system", "messages", "tools"] {
            if let Some(v) = self.parsed.value.get(key) {
                chars += text_len(v);
            }
        }
        (chars as u64).div_ceil(4).max(1)
    }
}

/// Characters of text in a JSON value (strings anywhere in it).
fn text_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_len).sum(),
        Value::Object(o) => o.values().map(text_len).sum(),
        _ => 0,
    }
}

fn tool_name(t: &Value) -> Option<&str> {
    t.get("name").and_then(Value::as_str)
}

impl Inbound for MessagesRequest<'_> {
    fn api(&self) -> ClientApi {
        ClientApi::Messages
    }

    fn parsed(&self) -> Option<&Parsed<'_>> {
        Some(&self.parsed)
    }

    fn last_user_text(&self) -> String {
        let messages = self.parsed.value.get("messages").and_then(Value::as_array);
        messages
            .into_iter()
            .flatten()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(blocks)) => blocks
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .unwrap_or_default()
    }

    fn rewrite_native(
        &self,
        variation: Option<&Variation>,
        mode: PromptMode,
    ) -> Result<Vec<u8>, ApiError> {
        let Some(v) = variation else {
            return Ok(self.body.to_vec());
        };
        self.rewrite(v, mode, false)
    }

    fn to_chat(&self) -> Result<Vec<u8>, ApiError> {
        to_chat(&self.parsed.value).map(|v| v.to_string().into_bytes())
    }

    fn answer_from_chat(&self, chat: &[u8]) -> Result<Vec<u8>, ApiError> {
        let v: Value = serde_json::from_slice(chat)
            .map_err(|e| ApiError::Internal(format!("a chat answer did not parse: {e}")))?;
        Ok(from_chat_completion(&v, self.parsed.model())
            .to_string()
            .into_bytes())
    }

    fn stream_from_chat(&self, chat: Body) -> Body {
        use http_body_util::BodyExt;
        Translated::new(chat, ChatToMessages::new(self.parsed.model())).boxed()
    }
}

fn untranslatable(field: &'static str, what: impl std::fmt::Display) -> ApiError {
    super::untranslatable(field, what, "an Anthropic provider")
}

/// A Messages request as a chat completion request.
pub fn to_chat(req: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut chat = Map::new();
    let mut messages = Vec::new();
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "temperature" | "top_p" => {
                chat.insert(key.clone(), value.clone());
            }
            "max_tokens" => {
                chat.insert("max_tokens".into(), value.clone());
            }
            "stream" => super::chat_stream(&mut chat, value),
            "stop_sequences" => {
                chat.insert("stop".into(), value.clone());
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").and_then(Value::as_str) {
                    chat.insert("user".into(), Value::from(user));
                }
            }
            "system" | "messages" | "tools" | "tool_choice" | "service_tier" => {}
            "thinking" if value.get("type").and_then(Value::as_str) == Some("disabled") => {}
            other => return Err(untranslatable("messages", format!("`{other}`"))),
        }
    }
    if !chat.contains_key("max_tokens") {
        chat.insert("max_tokens".into(), Value::from(DEFAULT_MAX_TOKENS));
    }
    match req.get("system") {
        Some(Value::String(s)) if !s.is_empty() => {
            messages.push(json!({"role": "system", "content": s}));
        }
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text.join("\n\n")}));
            }
        }
        _ => {}
    }
    for (i, m) in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        message(i, m, &mut messages)?;
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let custom = t
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(|k| k == "custom");
            if !custom || t.get("input_schema").is_none() {
                return Err(untranslatable(
                    "tools",
                    format!("`tools[{i}]` (a server tool)"),
                ));
            }
            let mut f = Map::new();
            f.insert("name".into(), t.get("name").cloned().unwrap_or(Value::Null));
            if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                f.insert("description".into(), d.clone());
            }
            f.insert(
                "parameters".into(),
                t.get("input_schema").cloned().unwrap_or(Value::Null),
            );
            out.push(json!({"type": "function", "function": f}));
        }
        if !out.is_empty() {
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    if let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) {
        let mapped = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => Value::from("auto"),
            Some("any") => Value::from("required"),
            Some("none") => Value::from("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => return Err(untranslatable("tool_choice", "this `tool_choice`")),
        };
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            chat.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
        chat.insert("tool_choice".into(), mapped);
    }
    Ok(Value::Object(chat))
}

/// One Messages message as chat messages (tool results become `tool` messages).
fn message(i: usize, m: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(ApiError::field(
                "messages",
                format!("`messages[{i}].role` must be \"user\" or \"assistant\""),
            ))
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => {
            return Err(ApiError::field(
                "messages",
                format!("`messages[{i}].content` must be a string or an array of blocks"),
            ))
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or_else(|| Value::from(""))})),
            Some("image") if role == "user" => {
                let source = b.get("source").cloned().unwrap_or(Value::Null);
                let url = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
                        source.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    Some("url") => source.get("url").and_then(Value::as_str).unwrap_or("").to_owned(),
                    _ => {
                        return Err(untranslatable(
                            "messages",
                            format!("`messages[{i}].content[{j}]` (an image from a file)"),
                        ))
                    }
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                }
            })),
            Some("tool_result") if role == "user" => {
                let content = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .filter_map(|x| x.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => String::new(),
                };
                out.push(json!({"role": "tool", "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null), "content": content}));
            }
            other => {
                return Err(untranslatable(
                    "messages",
                    format!("`messages[{i}].content[{j}]` (a block of type {:?})", other.unwrap_or("?")),
                ))
            }
        }
    }
    if role == "assistant" {
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::from(text) }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

fn usage_json(u: Option<Usage>) -> Value {
    let u = u.unwrap_or_default();
    json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens})
}

fn tool_use_block(call: &AssembledCall) -> Value {
    let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input})
}

/// A complete chat answer as an Anthropic `message`.
pub fn from_chat_completion(chat: &Value, requested_model: &str) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message["content"]
        .as_str()
        .or_else(|| message["refusal"].as_str())
    {
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        content.push(tool_use_block(&AssembledCall {
            id: call["id"].as_str().unwrap_or_default().to_owned(),
            name: call["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            arguments: call["function"]["arguments"]
                .as_str()
                .unwrap_or("{}")
                .to_owned(),
        }));
    }
    let usage = serde_json::from_value::<Usage>(chat["usage"].clone()).ok();
    json!({
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": chat["model"].as_str().unwrap_or(requested_model),
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": usage_json(usage),
    })
}

/// Usage of a complete Messages answer: `None` when `body` is not a `message`.
pub fn read_answer(body: &[u8]) -> Option<Option<Usage>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    Some(read_usage_value(v.get("usage")))
}

/// Anthropic's usage as the proxy counts it (cache writes and reads are prompt tokens).
pub fn read_usage_value(usage: Option<&Value>) -> Option<Usage> {
    let u = usage?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: n("input_tokens")
            + n("cache_creation_input_tokens")
            + n("cache_read_input_tokens"),
        completion_tokens: n("output_tokens"),
    })
}

/// Anthropic's error `type` for a status.
pub fn error_type(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 414 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error in Anthropic's envelope.
pub fn error_json(status: http::StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// Chat chunks as Messages events.
pub struct ChatToMessages {
    id: String,
    model: String,
    started: bool,
    /// The open content block: its index and whether it is text (else a tool call).
    open: Option<(usize, Option<usize>)>,
    next_block: usize,
    usage: Option<Usage>,
    finish_reason: Option<String>,
}

impl ChatToMessages {
    /// A translator answering for `model`.
    pub fn new(model: &str) -> ChatToMessages {
        ChatToMessages {
            id: new_id("msg_"),
            model: model.to_owned(),
            started: false,
            open: None,
            next_block: 0,
            usage: None,
            finish_reason: None,
        }
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            super::sse::write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }
}

impl ChatStreamTranslator for ChatToMessages {
    fn chunk(&mut self, chunk: ChatChunk, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            if let Some(m) = chunk.model.as_deref().filter(|m| !m.is_empty()) {
                self.model = m.to_owned();
            }
            super::sse::write_event(
                out,
                "message_start",
                &json!({
                    "type": "message_start",
                    "message": {
                        "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                        "content": [], "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 0, "output_tokens": 0}
                    }
                }),
            );
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for choice in chunk.choices.into_iter().take(1) {
            let text = choice
                .delta
                .content
                .or(choice.delta.refusal)
                .unwrap_or_default();
            if !text.is_empty() {
                let index = match self.open {
                    Some((i, None)) => i,
                    _ => {
                        self.close_block(out);
                        let i = self.next_block;
                        self.next_block += 1;
                        self.open = Some((i, None));
                        super::sse::write_event(
                            out,
                            "content_block_start",
                            &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                        );
                        i
                    }
                };
                super::sse::write_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
                );
            }
            for call in choice.delta.tool_calls {
                let index = match self.open {
                    Some((i, Some(t))) if t == call.index => i,
                    _ => {
                        self.close_block(out);
                        let i = self.next_block;
                        self.next_block += 1;
                        self.open = Some((i, Some(call.index)));
                        let name = call
                            .function
                            .as_ref()
                            .and_then(|f| f.name.clone())
                            .unwrap_or_default();
                        let id = call.id.clone().unwrap_or_else(|| new_id("toolu_"));
                        super::sse::write_event(
                            out,
                            "content_block_start",
                            &json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                        );
                        i
                    }
                };
                let delta = call.function.and_then(|f| f.arguments).unwrap_or_default();
                if !delta.is_empty() {
                    super::sse::write_event(
                        out,
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": delta}}),
                    );
                }
            }
            if let Some(r) = choice.finish_reason {
                self.finish_reason = Some(r);
            }
        }
    }

    fn done(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.chunk(ChatChunk::default(), out);
        }
        self.close_block(out);
        let u = self.usage.unwrap_or_default();
        super::sse::write_event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
                "usage": {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}
            }),
        );
        super::sse::write_event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn blocks_become_chat_messages() {
        let chat = to_chat(&req(json!({
            "model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "be kind"}],
            "metadata": {"user_id": "u-1"}, "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "calling"}, {"type": "tool_use", "id": "t1", "name": "kb", "input": {"q": "x"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found"}]}
            ],
            "tools": [{"name": "kb", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"}
        })))
        .unwrap_or_default();
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "be kind"})
        );
        assert_eq!(chat["user"], "u-1");
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":\"x\"}"
        );
        assert_eq!(
            chat["messages"][3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "found"})
        );
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn thinking_and_server_tools_are_refused_by_name() {
        let e = to_chat(&req(
            json!({"model": "m", "max_tokens": 1, "messages": [], "thinking": {"type": "enabled", "budget_tokens": 1024}}),
        ));
        assert!(
            matches!(
                e,
                Err(ApiError::InvalidField {
                    field: "messages",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = to_chat(&req(
            json!({"model": "m", "max_tokens": 1, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ));
        assert!(
            matches!(e, Err(ApiError::InvalidField { field: "tools", .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_stream_has_anthropic_events_in_order() {
        let mut t = ChatToMessages::new("flag");
        let mut out = Vec::new();
        let chunk = |s: &str| serde_json::from_str::<ChatChunk>(s).unwrap_or_default();
        t.chunk(
            chunk(r#"{"model":"claude","choices":[{"delta":{"content":"Hi"}}]}"#),
            &mut out,
        );
        t.chunk(chunk(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"kb","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#), &mut out);
        t.chunk(
            chunk(r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#),
            &mut out,
        );
        t.done(&mut out);
        let text = String::from_utf8(out).unwrap_or_default();
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains(r#""stop_reason":"tool_use""#));
        assert!(text.contains(r#""output_tokens":7"#));
    }
}

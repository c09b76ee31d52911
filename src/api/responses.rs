//! `POST /v1/responses`: OpenAI's Responses API. Sent as it is to providers that accept it
//! (`apis = ["responses", …]`), with the variation's model, `instructions`, `temperature`,
//! `max_output_tokens` and tool policy (on the flat function tools) rewritten; translated
//! through chat for the others, answers and streams translated back into Responses' shape.

use serde_json::{json, Map, Value};

use super::sse::Translated;
use super::{kept_tools, number_json, parse_object, ClientApi, Edit, Inbound, Parsed};
use crate::body::Body;
use crate::flags::{PromptMode, Variation};
use crate::openai::ApiError;

/// A parsed Responses request.
pub struct ResponsesRequest<'a> {
    body: &'a [u8],
    parsed: Parsed<'a>,
}

impl<'a> ResponsesRequest<'a> {
    /// Parses and checks a body.
    pub fn parse(body: &'a [u8]) -> Result<ResponsesRequest<'a>, ApiError> {
        let parsed = parse_object(body)?;
        match parsed.value.get("input") {
            None => return Err(ApiError::field("input", "`input` is required")),
            Some(Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(ApiError::field(
                    "input",
                    "`input` must be a string or an array of input items",
                ))
            }
        }
        parsed.positive_int("max_output_tokens")?;
        parsed.number("temperature")?;
        if let Some(t) = parsed.value.get("tools") {
            if !matches!(t, Value::Array(_) | Value::Null) {
                return Err(ApiError::field("tools", "`tools` must be an array"));
            }
        }
        for key in [
            "instructions",
            "previous_response_id",
            "user",
            "safety_identifier",
        ] {
            if !matches!(
                parsed.value.get(key),
                None | Some(Value::String(_) | Value::Null)
            ) {
                return Err(ApiError::InvalidField {
                    field: match key {
                        "instructions" => "instructions",
                        "previous_response_id" => "previous_response_id",
                        "user" => "user",
                        _ => "safety_identifier",
                    },
                    message: format!("`{key}` must be a string"),
                });
            }
        }
        Ok(ResponsesRequest { body, parsed })
    }

    fn tools(&self) -> &[Value] {
        self.parsed
            .value
            .get("tools")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

mod affinity;
mod answer;

pub use affinity::Affinity;
pub use answer::{answer_id, from_chat_completion, read_answer, read_usage_value, ChatToResponses};

/// A Responses tool's name for tool policies: a function's `name`, a built-in tool's `type`.
fn tool_name(t: &Value) -> Option<&str> {
    match t.get("type").and_then(Value::as_str) {
        Some("function") => t.get("name").and_then(Value::as_str),
        other => other,
    }
}

impl Inbound for ResponsesRequest<'_> {
    fn api(&self) -> ClientApi {
        ClientApi::Responses
    }

    fn parsed(&self) -> Option<&Parsed<'_>> {
        Some(&self.parsed)
    }

    fn previous_response_id(&self) -> Option<&str> {
        self.parsed
            .value
            .get("previous_response_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    fn last_user_text(&self) -> String {
        match self.parsed.value.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .rev()
                .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
                .map(|i| content_text(i.get("content")))
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    fn rewrite_native(
        &self,
        variation: Option<&Variation>,
        mode: PromptMode,
    ) -> Result<Vec<u8>, ApiError> {
        let Some(v) = variation else {
            return Ok(self.body.to_vec());
        };
        let mut edits: Vec<Edit> =
            vec![("model", Some(Value::from(v.model_id.as_str()).to_string()))];
        if let Some((_, prompt)) = &v.system_prompt {
            let text = match (mode, self.parsed.string("instructions")) {
                (PromptMode::Insert, Some(theirs)) if !theirs.is_empty() => {
                    format!("{prompt}\n\n{theirs}")
                }
                _ => prompt.to_string(),
            };
            edits.push(("instructions", Some(Value::from(text).to_string())));
        }
        if let Some(t) = v.temperature {
            edits.push(("temperature", Some(number_json(t))));
        }
        if let Some(budget) = v.token_budget {
            let asked = self.parsed.positive_int("max_output_tokens")?;
            let n = asked.map_or(u64::from(budget), |a| a.min(u64::from(budget)));
            edits.push(("max_output_tokens", Some(n.to_string())));
        }
        if let Some(kept) = kept_tools(self.tools(), &v.tool_policy, tool_name) {
            if kept.is_empty() {
                edits.push(("tools", None));
                edits.push(("tool_choice", None));
                edits.push(("parallel_tool_calls", None));
            } else {
                let names: Vec<&str> = kept.iter().filter_map(|t| tool_name(t)).collect();
                edits.push((
                    "tools",
                    Some(Value::from(kept.into_iter().cloned().collect::<Vec<_>>()).to_string()),
                ));
                let chosen = self
                    .parsed
                    .value
                    .get("tool_choice")
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str);
                if chosen.is_some_and(|c| !names.contains(&c)) {
                    edits.push(("tool_choice", None));
                }
            }
        }
        Ok(super::rewrite_object(&self.parsed.raw, &edits))
    }

    fn to_chat(&self) -> Result<Vec<u8>, ApiError> {
        to_chat(&self.parsed.value).map(|v| v.to_string().into_bytes())
    }

    fn answer_from_chat(&self, chat: &[u8]) -> Result<Vec<u8>, ApiError> {
        let v: Value = serde_json::from_slice(chat)
            .map_err(|e| ApiError::Internal(format!("a chat answer did not parse: {e}")))?;
        Ok(from_chat_completion(&v, &self.parsed.value)
            .to_string()
            .into_bytes())
    }

    fn stream_from_chat(&self, chat: Body) -> Body {
        use http_body_util::BodyExt;
        Translated::new(
            chat,
            ChatToResponses::new(self.parsed.model(), &self.parsed.value),
        )
        .boxed()
    }
}

/// The text of a message's `content`: a string, or its text parts joined.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Members that do not change the answer and that chat has no place for.
const IGNORED: &[&str] = &[
    "store",
    "include",
    "truncation",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "background",
    "stream_options",
    "top_logprobs",
];

fn untranslatable(field: &'static str, what: impl std::fmt::Display) -> ApiError {
    super::untranslatable(field, what, "a provider with apis = [\"responses\"]")
}

/// A Responses request as a chat completion request.
pub fn to_chat(req: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut chat = Map::new();
    let mut messages = Vec::new();
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model"
            | "temperature"
            | "top_p"
            | "user"
            | "safety_identifier"
            | "parallel_tool_calls" => {
                chat.insert(key.clone(), value.clone());
            }
            "stream" => super::chat_stream(&mut chat, value),
            "max_output_tokens" => {
                chat.insert("max_tokens".into(), value.clone());
            }
            "instructions" | "input" | "tools" | "tool_choice" | "text" | "reasoning" => {}
            "previous_response_id" => {
                return Err(untranslatable(
                    "previous_response_id",
                    "`previous_response_id` (a response stored by the provider)",
                ))
            }
            k if IGNORED.contains(&k) => {}
            "background" | "conversation" | "prompt" => {
                return Err(untranslatable("input", format!("`{key}`")))
            }
            _ => {
                return Err(ApiError::field(
                    "input",
                    format!("unknown member `{key}` cannot be translated to chat completions"),
                ))
            }
        }
    }
    if let Some(instructions) = req.get("instructions").and_then(Value::as_str) {
        if !instructions.is_empty() {
            messages.push(json!({"role": "system", "content": instructions}));
        }
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => input_items(items, &mut messages)?,
        _ => {}
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut out = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut f = Map::new();
                    for k in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                            f.insert(k.into(), v.clone());
                        }
                    }
                    out.push(json!({"type": "function", "function": f}));
                }
                other => {
                    return Err(untranslatable(
                        "tools",
                        format!(
                            "`tools[{i}]` (the built-in tool {:?})",
                            other.unwrap_or("?")
                        ),
                    ))
                }
            }
        }
        if !out.is_empty() {
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            chat.insert("tool_choice".into(), Value::from(s.as_str()));
        }
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": c.get("name").cloned().unwrap_or(Value::Null)}}),
            );
        }
        Some(_) => return Err(untranslatable("tool_choice", "this `tool_choice`")),
    }
    if let Some(format) = req.get("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            None | Some("text") => {}
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(k).filter(|v| !v.is_null()) {
                        schema.insert(k.into(), v.clone());
                    }
                }
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some(other) => {
                return Err(untranslatable(
                    "text",
                    format!("`text.format.type` {other:?}"),
                ))
            }
        }
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
    {
        chat.insert("reasoning_effort".into(), Value::from(effort));
    }
    Ok(Value::Object(chat))
}

/// Input items as chat messages.
fn input_items(items: &[Value], messages: &mut Vec<Value>) -> Result<(), ApiError> {
    for (i, item) in items.iter().enumerate() {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                let role = match role {
                    "user" | "assistant" | "system" => role,
                    "developer" => "system",
                    other => {
                        return Err(ApiError::field(
                            "input",
                            format!("`input[{i}].role` {other:?} is not a message role"),
                        ))
                    }
                };
                let content = match item.get("content") {
                    Some(Value::String(s)) => Value::from(s.as_str()),
                    Some(Value::Array(parts)) => Value::Array(content_parts(parts, i, role)?),
                    _ => {
                        return Err(ApiError::field(
                            "input",
                            format!("`input[{i}].content` must be a string or an array of parts"),
                        ))
                    }
                };
                messages.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": item.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": item.get("arguments").cloned().unwrap_or_else(|| Value::from("{}")),
                    }
                });
                // Consecutive calls belong to one assistant turn.
                let merged = messages.last_mut().and_then(|m| {
                    (m.get("role").and_then(Value::as_str) == Some("assistant")
                        && m.get("tool_calls").is_some())
                    .then_some(m)
                });
                match merged
                    .and_then(|m| m.get_mut("tool_calls"))
                    .and_then(Value::as_array_mut)
                {
                    Some(calls) => calls.push(call),
                    None => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => Value::from(s.as_str()),
                    Some(Value::Array(parts)) => Value::from(
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join(""),
                    ),
                    Some(other) => Value::from(other.to_string()),
                    None => Value::from(""),
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "content": output,
                }));
            }
            other => {
                return Err(untranslatable(
                    "input",
                    format!("`input[{i}]` (an item of type {other:?})"),
                ))
            }
        }
    }
    Ok(())
}

fn content_parts(parts: &[Value], i: usize, role: &str) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                out.push(json!({"type": "text", "text": p.get("text").cloned().unwrap_or_else(|| Value::from(""))}));
            }
            Some("refusal") if role == "assistant" => {
                out.push(json!({"type": "text", "text": p.get("refusal").cloned().unwrap_or_else(|| Value::from(""))}));
            }
            Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
                Some(url) => {
                    let mut image = json!({"url": url});
                    if let Some(d) = p.get("detail").filter(|d| !d.is_null()) {
                        image["detail"] = d.clone();
                    }
                    out.push(json!({"type": "image_url", "image_url": image}));
                }
                None => {
                    return Err(untranslatable(
                        "input",
                        format!("`input[{i}].content[{j}]` (an image by file id)"),
                    ))
                }
            },
            other => {
                return Err(untranslatable(
                    "input",
                    format!(
                        "`input[{i}].content[{j}]` (a part of type {:?})",
                        other.unwrap_or("?")
                    ),
                ))
            }
        }
    }
    // An assistant turn of plain text parts is sent as a string (some providers want that).
    if role == "assistant" && out.iter().all(|p| p["type"] == "text") {
        let text: String = out.iter().filter_map(|p| p["text"].as_str()).collect();
        return Ok(vec![json!({"type": "text", "text": text})]);
    }
    Ok(out)
}

/// The `response` object around `output`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sse::{ChatChunk, ChatStreamTranslator};

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn input_items_become_chat_messages_with_tool_calls_and_outputs() {
        let r = req(json!({
            "model": "m", "instructions": "be brief", "max_output_tokens": 50,
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]}
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "stream": true, "store": false
        }));
        let chat = to_chat(&r).unwrap_or_default();
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert_eq!(
            chat["messages"][3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        assert_eq!(chat["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(chat["tool_choice"]["function"]["name"], "get_weather");
    }

    #[test]
    fn built_in_tools_and_stored_responses_are_refused_by_name() {
        let e = to_chat(&req(
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
        ));
        assert!(
            matches!(e, Err(ApiError::InvalidField { field: "tools", .. })),
            "{e:?}"
        );
        let e = to_chat(&req(
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
        ));
        assert!(matches!(
            e,
            Err(ApiError::InvalidField {
                field: "previous_response_id",
                ..
            })
        ));
        let e = to_chat(&req(
            json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}),
        ));
        assert!(matches!(
            e,
            Err(ApiError::InvalidField { field: "input", .. })
        ));
    }

    #[test]
    fn a_stream_is_numbered_and_completes_with_usage() {
        let mut t = ChatToResponses::new("m", &req(json!({"model": "m", "input": "hi"})));
        let mut out = Vec::new();
        let chunk = |s: &str| serde_json::from_str::<ChatChunk>(s).unwrap_or_default();
        t.chunk(
            chunk(r#"{"model":"gpt","choices":[{"delta":{"content":"Hel"}}]}"#),
            &mut out,
        );
        t.chunk(
            chunk(r#"{"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}"#),
            &mut out,
        );
        t.chunk(
            chunk(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#),
            &mut out,
        );
        t.done(&mut out);
        let text = String::from_utf8(out).unwrap_or_default();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(kinds.first(), Some(&"response.created"));
        assert_eq!(kinds.get(1), Some(&"response.in_progress"));
        assert_eq!(kinds.last(), Some(&"response.completed"));
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let done = events.last().cloned().unwrap_or_default();
        assert_eq!(done["response"]["usage"]["input_tokens"], 3);
        assert_eq!(done["response"]["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["response"]["model"], "gpt");
    }
}

//! Translation between OpenAI chat completions and Anthropic's Messages API.
//!
//! Clients always speak OpenAI; a variation routed to Anthropic has its request translated
//! into a Messages request ([`to_anthropic_request`]), and the answer translated back: a whole
//! message with [`from_anthropic_response`], an SSE stream incrementally with
//! [`StreamTranslator`], an error body with [`error_to_openai`].
//!
//! Everything here is pure (bytes in, bytes out, no I/O) so it can be tested exhaustively.
//!
//! What does not translate:
//! - `n` > 1 is refused (Anthropic answers with one message);
//! - legacy `functions` / `function_call` and `role: "function"` are refused (use tools);
//! - audio parts and files other than base64 PDFs are refused;
//! - OpenAI-only knobs (`logit_bias`, `frequency_penalty`, `presence_penalty`, `seed`,
//!   `logprobs`, `top_logprobs`, `response_format`, `stream_options`, `store`, `metadata`,
//!   `service_tier`, `reasoning_effort`, …) are dropped;
//! - Anthropic-only output (thinking blocks, server tool blocks, citations) is dropped.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// Request: OpenAI -> Anthropic
// ---------------------------------------------------------------------------------------------

/// Errors translating a request (become a 400 for the client).
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The request (or response) cannot be expressed on the other side; says why.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(message.into())
}

#[derive(Serialize)]
struct Request {
    model: String,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
}

#[derive(Serialize)]
struct Message {
    role: Role,
    content: Vec<Block>,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Role {
    User,
    Assistant,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: Source,
    },
    Document {
        source: Source,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolResultContent {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Serialize)]
struct Tool {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Value,
}

#[derive(Serialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

impl ToolChoice {
    fn of(kind: &'static str) -> Self {
        ToolChoice {
            kind,
            name: None,
            disable_parallel_tool_use: None,
        }
    }
}

#[derive(Serialize)]
struct Metadata {
    user_id: String,
}

/// A field that is present and not `null`.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// OpenAI chat request body (already rewritten by the proxy: `model` is the Anthropic model
/// id) → Anthropic Messages request body bytes.
///
/// `default_max_tokens` is used when the request has neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires one). System and developer messages become the
/// top-level `system` (joined with a blank line), tool messages become `tool_result` blocks of
/// a user message, and consecutive messages of one role are merged since Anthropic requires the
/// roles to alternate.
pub fn to_anthropic_request(
    openai_body: &[u8],
    default_max_tokens: u32,
) -> Result<Vec<u8>, TranslateError> {
    let req: Value = serde_json::from_slice(openai_body)
        .map_err(|e| invalid(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(req) = req else {
        return Err(invalid("the request body must be a JSON object"));
    };

    let model = match present(&req, "model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(invalid("`model` must be a non-empty string")),
    };

    if let Some(n) = present(&req, "n") {
        match n.as_u64() {
            Some(1) => {}
            Some(k) if k > 1 => {
                return Err(invalid(format!(
                    "`n` = {k} is not supported by this model's provider: it returns one choice"
                )))
            }
            _ => return Err(invalid("`n` must be a positive integer")),
        }
    }
    for legacy in ["functions", "function_call"] {
        if present(&req, legacy).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(invalid(format!(
                "`{legacy}` is not supported by this model's provider; use `tools` and `tool_choice`"
            )));
        }
    }

    let max_tokens = match ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|k| present(&req, k).map(|v| (k, v)))
    {
        None => u64::from(default_max_tokens),
        Some((key, v)) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return Err(invalid(format!("`{key}` must be a positive integer"))),
        },
    };

    let (system, messages) = translate_messages(&req)?;

    let temperature = match present(&req, "temperature") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(t) if t.is_finite() => Some(t.clamp(0.0, 1.0)),
            _ => return Err(invalid("`temperature` must be a number")),
        },
    };
    let top_p = match present(&req, "top_p") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(p) if p.is_finite() => Some(p.clamp(0.0, 1.0)),
            _ => return Err(invalid("`top_p` must be a number")),
        },
    };
    let stop_sequences = match present(&req, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("`stop` must be a string or an array of strings"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(invalid("`stop` must be a string or an array of strings")),
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();
    let stream = match present(&req, "stream") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(invalid("`stream` must be a boolean")),
    };
    let metadata = match present(&req, "user") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(Metadata { user_id: s.clone() }),
        Some(_) => return Err(invalid("`user` must be a string")),
    };

    let tools = translate_tools(&req)?;
    let tool_choice = translate_tool_choice(&req, !tools.is_empty())?;

    let out = Request {
        model,
        max_tokens,
        system,
        messages,
        temperature,
        top_p,
        stop_sequences,
        stream,
        tools,
        tool_choice,
        metadata,
    };
    serde_json::to_vec(&out).map_err(|e| invalid(format!("cannot encode the request: {e}")))
}

/// The messages: the joined system text and the alternating user/assistant messages.
fn translate_messages(
    req: &Map<String, Value>,
) -> Result<(Option<String>, Vec<Message>), TranslateError> {
    let Some(Value::Array(msgs)) = req.get("messages") else {
        return Err(invalid("`messages` must be an array"));
    };
    let mut system: Vec<String> = Vec::new();
    let mut out: Vec<Message> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(invalid(format!("messages[{i}] must be an object")));
        };
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role must be a string")))?;
        let content = present(m, "content");
        match role {
            "system" | "developer" => system_texts(content, i, &mut system)?,
            "user" => {
                let content =
                    content.ok_or_else(|| invalid(format!("messages[{i}].content is required")))?;
                push(&mut out, Role::User, user_blocks(content, i)?);
            }
            "assistant" => {
                if present(m, "function_call").is_some() {
                    return Err(invalid(format!(
                        "messages[{i}].function_call is not supported; use `tool_calls`"
                    )));
                }
                let mut blocks = match content {
                    None => Vec::new(),
                    Some(c) => assistant_blocks(c, i)?,
                };
                if let Some(calls) = present(m, "tool_calls") {
                    tool_use_blocks(calls, i, &mut blocks)?;
                }
                push(&mut out, Role::Assistant, blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(format!("messages[{i}].tool_call_id must be a string"))
                    })?;
                let block = Block::ToolResult {
                    tool_use_id: id.to_owned(),
                    content: tool_result_content(content, i)?,
                };
                push(&mut out, Role::User, vec![block]);
            }
            "function" => {
                return Err(invalid(format!(
                    "messages[{i}]: role `function` is not supported; use tool messages"
                )))
            }
            other => {
                return Err(invalid(format!(
                    "messages[{i}]: role `{other}` is not supported"
                )))
            }
        }
    }
    // Anthropic wants a user turn's tool results before anything else in it.
    for m in out.iter_mut().filter(|m| m.role == Role::User) {
        m.content
            .sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
    }
    if out.is_empty() {
        return Err(invalid(
            "`messages` must hold at least one user or assistant message with content",
        ));
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, out))
}

/// Appends a turn, merging it into the previous one when the role repeats; empty turns vanish.
fn push(out: &mut Vec<Message>, role: Role, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => out.push(Message {
            role,
            content: blocks,
        }),
    }
}

/// The text of a system or developer message (text parts only).
fn system_texts(
    content: Option<&Value>,
    i: usize,
    system: &mut Vec<String>,
) -> Result<(), TranslateError> {
    match content {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => system.push(s.clone()),
        Some(Value::Array(parts)) => {
            for part in parts {
                if part.get("type").and_then(Value::as_str) == Some("text") {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        if !t.is_empty() {
                            system.push(t.to_owned());
                        }
                    }
                }
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array of parts"
            )))
        }
    }
    Ok(())
}

fn text_block(text: &str) -> Option<Block> {
    // Anthropic refuses empty text blocks.
    (!text.is_empty()).then(|| Block::Text {
        text: text.to_owned(),
    })
}

fn part_type(part: &Value, i: usize, j: usize) -> Result<&str, TranslateError> {
    part.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].content[{j}].type must be a string")))
}

fn part_text(part: &Value, key: &str, i: usize, j: usize) -> Result<String, TranslateError> {
    part.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| invalid(format!("messages[{i}].content[{j}].{key} must be a string")))
}

/// A user message's content: text, images, PDF files.
fn user_blocks(content: &Value, i: usize) -> Result<Vec<Block>, TranslateError> {
    let parts = match content {
        Value::String(s) => return Ok(text_block(s).into_iter().collect()),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array of parts"
            )))
        }
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match part_type(part, i, j)? {
            "text" => blocks.extend(text_block(&part_text(part, "text", i, j)?)),
            "image_url" => {
                let url = match part.get("image_url") {
                    Some(Value::String(u)) => Some(u.as_str()),
                    Some(obj) => obj.get("url").and_then(Value::as_str),
                    None => None,
                }
                .ok_or_else(|| {
                    invalid(format!(
                        "messages[{i}].content[{j}].image_url.url must be a string"
                    ))
                })?;
                blocks.push(Block::Image {
                    source: image_source(url, i, j)?,
                });
            }
            "file" => blocks.push(file_block(part, i, j)?),
            "input_audio" => {
                return Err(invalid(format!(
                "messages[{i}].content[{j}]: audio input is not supported by this model's provider"
            )))
            }
            other => {
                return Err(invalid(format!(
                    "messages[{i}].content[{j}]: part type `{other}` is not supported"
                )))
            }
        }
    }
    Ok(blocks)
}

/// Splits a `data:` URL into its media type and base64 payload.
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let meta = meta.strip_suffix(";base64")?;
    let media_type = meta.split(';').next().unwrap_or_default().trim();
    (!media_type.is_empty()).then_some((media_type, data))
}

fn image_source(url: &str, i: usize, j: usize) -> Result<Source, TranslateError> {
    if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url).ok_or_else(|| {
            invalid(format!(
                "messages[{i}].content[{j}]: image data URLs must look like data:<media type>;base64,<data>"
            ))
        })?;
        return Ok(Source::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        });
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(Source::Url {
            url: url.to_owned(),
        });
    }
    Err(invalid(format!(
        "messages[{i}].content[{j}]: image URLs must be http(s) or data URLs"
    )))
}

/// A `file` part carrying an inline PDF (`file.file_data` as a data URL) → a document block.
fn file_block(part: &Value, i: usize, j: usize) -> Result<Block, TranslateError> {
    let data = part
        .get("file")
        .and_then(|f| f.get("file_data"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(format!(
                "messages[{i}].content[{j}]: only files sent inline as file.file_data are supported"
            ))
        })?;
    match parse_data_url(data) {
        Some(("application/pdf", payload)) => Ok(Block::Document {
            source: Source::Base64 {
                media_type: "application/pdf".to_owned(),
                data: payload.to_owned(),
            },
        }),
        _ => Err(invalid(format!(
            "messages[{i}].content[{j}]: only PDF files (data:application/pdf;base64,…) are supported"
        ))),
    }
}

/// An assistant message's content: text (and refusal) parts.
fn assistant_blocks(content: &Value, i: usize) -> Result<Vec<Block>, TranslateError> {
    match content {
        Value::String(s) => Ok(text_block(s).into_iter().collect()),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part_type(part, i, j)? {
                    "text" => blocks.extend(text_block(&part_text(part, "text", i, j)?)),
                    "refusal" => blocks.extend(text_block(&part_text(part, "refusal", i, j)?)),
                    other => {
                        return Err(invalid(format!(
                            "messages[{i}].content[{j}]: part type `{other}` is not supported in assistant messages"
                        )))
                    }
                }
            }
            Ok(blocks)
        }
        _ => Err(invalid(format!(
            "messages[{i}].content must be a string or an array of parts"
        ))),
    }
}

/// An assistant message's `tool_calls` → `tool_use` blocks.
fn tool_use_blocks(calls: &Value, i: usize, out: &mut Vec<Block>) -> Result<(), TranslateError> {
    let Value::Array(calls) = calls else {
        return Err(invalid(format!(
            "messages[{i}].tool_calls must be an array"
        )));
    };
    for (k, call) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{k}]");
        if let Some(kind) = call.get("type").and_then(Value::as_str) {
            if kind != "function" {
                return Err(invalid(format!(
                    "{at}: tool call type `{kind}` is not supported"
                )));
            }
        }
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}.id must be a string")))?;
        let function = call
            .get("function")
            .ok_or_else(|| invalid(format!("{at}.function is required")))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}.function.name must be a string")))?;
        let input = match function.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .map_err(|e| invalid(format!("{at}.function.arguments is not valid JSON: {e}")))?,
            Some(_) => return Err(invalid(format!("{at}.function.arguments must be a string"))),
        };
        if !input.is_object() {
            return Err(invalid(format!(
                "{at}.function.arguments must encode a JSON object"
            )));
        }
        out.push(Block::ToolUse {
            id: id.to_owned(),
            name: name.to_owned(),
            input,
        });
    }
    Ok(())
}

/// A tool message's content → a `tool_result`'s content.
fn tool_result_content(
    content: Option<&Value>,
    i: usize,
) -> Result<Option<ToolResultContent>, TranslateError> {
    match content {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(ToolResultContent::Text(s.clone()))),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part_type(part, i, j)? {
                    "text" => blocks.extend(text_block(&part_text(part, "text", i, j)?)),
                    "image_url" => {
                        let url = part
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                invalid(format!(
                                    "messages[{i}].content[{j}].image_url.url must be a string"
                                ))
                            })?;
                        blocks.push(Block::Image {
                            source: image_source(url, i, j)?,
                        });
                    }
                    other => {
                        return Err(invalid(format!(
                            "messages[{i}].content[{j}]: part type `{other}` is not supported in tool messages"
                        )))
                    }
                }
            }
            Ok((!blocks.is_empty()).then_some(ToolResultContent::Blocks(blocks)))
        }
        Some(_) => Err(invalid(format!(
            "messages[{i}].content must be a string or an array of parts"
        ))),
    }
}

fn translate_tools(req: &Map<String, Value>) -> Result<Vec<Tool>, TranslateError> {
    let tools = match present(req, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(invalid("`tools` must be an array")),
    };
    tools
        .iter()
        .enumerate()
        .map(|(k, tool)| {
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if kind != "function" {
                return Err(invalid(format!(
                    "tools[{k}]: tool type `{kind}` is not supported"
                )));
            }
            let function = tool
                .get("function")
                .ok_or_else(|| invalid(format!("tools[{k}].function is required")))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("tools[{k}].function.name must be a string")))?;
            let description = match function.get("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) if d.is_empty() => None,
                Some(Value::String(d)) => Some(d.clone()),
                Some(_) => {
                    return Err(invalid(format!(
                        "tools[{k}].function.description must be a string"
                    )))
                }
            };
            let input_schema = match function.get("parameters") {
                None | Some(Value::Null) => {
                    serde_json::json!({"type": "object", "properties": {}})
                }
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => {
                    return Err(invalid(format!(
                        "tools[{k}].function.parameters must be a JSON schema object"
                    )))
                }
            };
            Ok(Tool {
                name: name.to_owned(),
                description,
                input_schema,
            })
        })
        .collect()
}

fn translate_tool_choice(
    req: &Map<String, Value>,
    has_tools: bool,
) -> Result<Option<ToolChoice>, TranslateError> {
    let mut choice = match present(req, "tool_choice") {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::of("auto"),
            "required" => ToolChoice::of("any"),
            "none" => ToolChoice::of("none"),
            other => return Err(invalid(format!("`tool_choice` `{other}` is not supported"))),
        }),
        Some(obj @ Value::Object(_)) => {
            let kind = obj
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (kind, name) {
                ("function", Some(name)) => Some(ToolChoice {
                    kind: "tool",
                    name: Some(name.to_owned()),
                    disable_parallel_tool_use: None,
                }),
                ("function", None) => {
                    return Err(invalid("`tool_choice.function.name` must be a string"))
                }
                (other, _) => {
                    return Err(invalid(format!(
                        "`tool_choice` of type `{other}` is not supported"
                    )))
                }
            }
        }
        Some(_) => return Err(invalid("`tool_choice` must be a string or an object")),
    };
    if !has_tools {
        return match choice {
            Some(c) if c.kind == "any" || c.kind == "tool" => {
                Err(invalid("`tool_choice` requires `tools`"))
            }
            _ => Ok(None),
        };
    }
    if present(req, "parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| ToolChoice::of("auto"));
        if c.kind != "none" {
            c.disable_parallel_tool_use = Some(true);
        }
    }
    Ok(choice)
}

// ---------------------------------------------------------------------------------------------
// Response: Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------------

/// Anthropic's usage block (every field optional; the cache ones may be `null`).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// Running token counts, Anthropic-side.
#[derive(Debug, Default, Clone, Copy)]
struct Tokens {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl Tokens {
    /// Takes every count the usage block carries (Anthropic's counts are cumulative).
    fn update(&mut self, u: &AnthropicUsage) {
        if let Some(n) = u.input_tokens {
            self.input = n;
        }
        if let Some(n) = u.cache_creation_input_tokens {
            self.cache_creation = n;
        }
        if let Some(n) = u.cache_read_input_tokens {
            self.cache_read = n;
        }
        if let Some(n) = u.output_tokens {
            self.output = n;
        }
    }

    /// OpenAI's prompt tokens: everything read, cached or not.
    fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    fn openai(&self) -> OpenAiUsage {
        let prompt_tokens = self.prompt();
        OpenAiUsage {
            prompt_tokens,
            completion_tokens: self.output,
            total_tokens: prompt_tokens.saturating_add(self.output),
            prompt_tokens_details: PromptDetails {
                cached_tokens: self.cache_read,
            },
        }
    }
}

#[derive(Serialize)]
struct OpenAiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice; 1],
    usage: OpenAiUsage,
}

#[derive(Serialize)]
struct CompletionChoice {
    index: u32,
    message: CompletionMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct CompletionMessage {
    role: &'static str,
    content: Option<String>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall>,
}

#[derive(Serialize)]
struct ToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall,
}

#[derive(Serialize)]
struct FunctionCall {
    name: String,
    arguments: String,
}

/// Anthropic non-streamed response body → OpenAI `chat.completion` JSON bytes. `created` is
/// a unix timestamp supplied by the caller.
///
/// Text blocks are concatenated into `message.content` (`null` when the answer is only tool
/// calls), `tool_use` blocks become `tool_calls`, other blocks (thinking, server tools) are
/// dropped. Prompt tokens include cache writes and reads.
pub fn from_anthropic_response(body: &[u8], created: u64) -> Result<Vec<u8>, TranslateError> {
    let msg: AnthropicMessage = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the response is not an Anthropic message: {e}")))?;
    if let Some(kind) = msg.kind.as_deref() {
        if kind != "message" {
            return Err(invalid(format!(
                "the response is not an Anthropic message (type `{kind}`)"
            )));
        }
    }
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in &msg.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = block.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
            Some("tool_use") => {
                let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let arguments = match block.get("input") {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(input) => serde_json::to_string(input)
                        .map_err(|e| invalid(format!("cannot encode tool input: {e}")))?,
                };
                tool_calls.push(ToolCall {
                    id: id.to_owned(),
                    kind: "function",
                    function: FunctionCall {
                        name: name.to_owned(),
                        arguments,
                    },
                });
            }
            _ => {}
        }
    }
    let content = if text.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(text)
    };
    let mut tokens = Tokens::default();
    tokens.update(&msg.usage);
    let out = Completion {
        id: format!("chatcmpl-{}", msg.id),
        object: "chat.completion",
        created,
        model: &msg.model,
        choices: [CompletionChoice {
            index: 0,
            message: CompletionMessage {
                role: "assistant",
                content,
                refusal: None,
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(msg.stop_reason.as_deref()),
        }],
        usage: tokens.openai(),
    };
    serde_json::to_vec(&out).map_err(|e| invalid(format!("cannot encode the response: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorBody<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<()>,
    code: Option<&'a str>,
}

/// Anthropic error type → OpenAI error (`type`, `code`).
fn openai_error_kind(anthropic_type: &str) -> (&str, Option<&str>) {
    match anthropic_type {
        "invalid_request_error" => ("invalid_request_error", Some("invalid_request")),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "permission_error" => ("invalid_request_error", Some("permission_denied")),
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "rate_limit_error" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "billing_error" => ("insufficient_quota", Some("insufficient_quota")),
        "api_error" => ("server_error", Some("internal_error")),
        "overloaded_error" => ("server_error", Some("overloaded")),
        "timeout_error" => ("server_error", Some("timeout")),
        other => ("upstream_error", Some(other)),
    }
}

fn openai_error_json(message: &str, kind: &str, code: Option<&str>) -> Vec<u8> {
    let err = OpenAiError {
        error: OpenAiErrorBody {
            message,
            kind,
            param: None,
            code,
        },
    };
    // Serializing strings into a Vec cannot fail; the fallback keeps this panic-free anyway.
    serde_json::to_vec(&err).unwrap_or_else(|_| {
        br#"{"error":{"message":"upstream error","type":"upstream_error","param":null,"code":null}}"#
            .to_vec()
    })
}

/// `{"type":"error","error":{"type","message"}}` (already parsed) → OpenAI error JSON.
fn error_value_to_openai(v: &Value) -> Option<Vec<u8>> {
    if v.get("type").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let err = v.get("error")?;
    let anthropic_type = err.get("type").and_then(Value::as_str)?;
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or(anthropic_type);
    let (kind, code) = openai_error_kind(anthropic_type);
    Some(openai_error_json(message, kind, code))
}

/// An Anthropic error body (`{"type":"error","error":{"type","message"}}`) → OpenAI error JSON
/// bytes (`{"error":{"message","type","param","code"}}`), or `None` if it is not one.
///
/// `overloaded_error`, `api_error` and `timeout_error` become `server_error`,
/// `rate_limit_error` keeps its type with code `rate_limit_exceeded`, client-side errors become
/// `invalid_request_error` with a specific code (`invalid_api_key`, `not_found`, …).
pub fn error_to_openai(body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    error_value_to_openai(&v)
}

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
    created: u64,
    include_usage: bool,
    /// `chatcmpl-` + the Anthropic message id.
    id: String,
    model: String,
    /// Bytes not yet forming a complete line.
    pending: Vec<u8>,
    /// The current event's `event:` field.
    event: String,
    /// The current event's `data:` lines, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The last line ended in a `\r` that was the last byte fed so far.
    after_cr: bool,
    /// Anthropic content block index → OpenAI tool call index.
    tool_calls: HashMap<u64, u32>,
    next_tool_call: u32,
    tokens: Tokens,
    finish_sent: bool,
    done: bool,
    failed: bool,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
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

fn write_event(out: &mut Vec<u8>, chunk: &Chunk<'_>) -> Result<(), StreamError> {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, chunk)
        .map_err(|e| StreamError::invalid_event(&format!("cannot encode a chunk: {e}")))?;
    out.extend_from_slice(b"\n\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    fn req(v: Value) -> Value {
        let out = to_anthropic_request(v.to_string().as_bytes(), 1024).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn req_err(v: Value) -> String {
        match to_anthropic_request(v.to_string().as_bytes(), 1024) {
            Err(TranslateError::Invalid(m)) => m,
            Ok(b) => panic!("expected an error, got {}", String::from_utf8_lossy(&b)),
        }
    }

    fn resp(v: Value) -> Value {
        serde_json::from_slice(
            &from_anthropic_response(v.to_string().as_bytes(), 1700000000).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn minimal_request_gets_default_max_tokens() {
        let out =
            req(json!({"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            out,
            json!({
                "model": "claude-x",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            })
        );
    }

    #[test]
    fn max_tokens_and_max_completion_tokens() {
        let base = |extra: Value| {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            req(v)["max_tokens"].clone()
        };
        assert_eq!(base(json!({"max_tokens": 50})), 50);
        assert_eq!(base(json!({"max_completion_tokens": 70})), 70);
        assert_eq!(
            base(json!({"max_tokens": 50, "max_completion_tokens": 70})),
            70
        );
        assert_eq!(base(json!({"max_tokens": null})), 1024);
        let e = req_err(
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
        );
        assert!(e.contains("max_tokens"), "{e}");
        let e = req_err(
            json!({"model": "m", "max_tokens": "9", "messages": [{"role": "user", "content": "x"}]}),
        );
        assert!(e.contains("max_tokens"), "{e}");
    }

    #[test]
    fn system_and_developer_messages_merge_into_system() {
        let out = req(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "hi"},
                {"role": "system", "content": ""}
            ]
        }));
        assert_eq!(out["system"], "You are terse.\n\nAnswer in French.");
        assert_eq!(out["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn multipart_content_with_images_and_pdf() {
        let out = req(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
            ]}]
        }));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
            ])
        );
        let e = req_err(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
        );
        assert!(e.contains("http"), "{e}");
        let e = req_err(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}]}),
        );
        assert!(e.contains("base64"), "{e}");
        let e = req_err(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}),
        );
        assert!(e.contains("audio"), "{e}");
    }

    #[test]
    fn tool_calls_and_tool_results_round_trip() {
        let out = req(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "24C"}]},
                {"role": "user", "content": "Thanks, and tomorrow?"}
            ]
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "24C"}]},
                    {"type": "text", "text": "Thanks, and tomorrow?"}
                ]}
            ])
        );

        // The response side: a tool_use answer becomes tool_calls whose arguments parse back.
        let back = resp(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {"city": "Oslo", "days": 2}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}
        }));
        let call = &back["choices"][0]["message"]["tool_calls"][0];
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Oslo", "days": 2}));
        // … and fed back as history, it becomes the same tool_use again.
        let again = req(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            back["choices"][0]["message"].clone(),
            {"role": "tool", "tool_call_id": "toolu_3", "content": "cold"}
        ]}));
        assert_eq!(
            again["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {"city": "Oslo", "days": 2}}])
        );
        assert_eq!(again["messages"][2]["content"][0]["type"], "tool_result");
    }

    #[test]
    fn assistant_text_with_tool_calls_and_empty_arguments() {
        let out = req(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}]}
        ]}));
        assert_eq!(
            out["messages"][1]["content"],
            json!([
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "t1", "name": "now", "input": {}}
            ])
        );
    }

    #[test]
    fn invalid_tool_arguments_are_an_error() {
        let e = req_err(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}
        ]}));
        assert!(e.contains("arguments is not valid JSON"), "{e}");
        let e = req_err(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}
        ]}));
        assert!(e.contains("object"), "{e}");
    }

    #[test]
    fn tools_and_tool_choice_variants() {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}
        ]);
        let with = |choice: Value, parallel: Value| {
            req(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel}),
            )
        };
        let out = with(Value::Null, Value::Null);
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get_weather", "description": "Weather now",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert!(out.get("tool_choice").is_none());
        assert_eq!(
            with(json!("auto"), Value::Null)["tool_choice"],
            json!({"type": "auto"})
        );
        assert_eq!(
            with(json!("required"), Value::Null)["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            with(json!("none"), Value::Null)["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            with(
                json!({"type": "function", "function": {"name": "now"}}),
                Value::Null
            )["tool_choice"],
            json!({"type": "tool", "name": "now"})
        );
        assert_eq!(
            with(Value::Null, json!(false))["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            with(json!("required"), json!(false))["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            with(json!("none"), json!(false))["tool_choice"],
            json!({"type": "none"})
        );
        assert!(with(json!("auto"), json!(true))
            .get("tool_choice")
            .is_some());
        assert_eq!(
            with(json!("auto"), json!(true))["tool_choice"],
            json!({"type": "auto"})
        );

        // Without tools, a choice that cannot matter is dropped and one that would is refused.
        let no_tools = req(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}),
        );
        assert!(no_tools.get("tool_choice").is_none());
        let e = req_err(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}),
        );
        assert!(e.contains("requires `tools`"), "{e}");
        let e = req_err(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "sometimes"}),
        );
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn stop_temperature_top_p_stream_user() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            req(b)
        };
        assert_eq!(with("stop", json!("END"))["stop_sequences"], json!(["END"]));
        assert_eq!(
            with("stop", json!(["a", "b"]))["stop_sequences"],
            json!(["a", "b"])
        );
        assert!(with("stop", json!([])).get("stop_sequences").is_none());
        assert!(with("stop", Value::Null).get("stop_sequences").is_none());
        assert_eq!(with("temperature", json!(1.7))["temperature"], json!(1.0));
        assert_eq!(with("temperature", json!(0.3))["temperature"], json!(0.3));
        assert_eq!(with("temperature", json!(-1))["temperature"], json!(0.0));
        assert_eq!(with("top_p", json!(0.9))["top_p"], json!(0.9));
        assert_eq!(with("stream", json!(true))["stream"], json!(true));
        assert_eq!(
            with("user", json!("u-42"))["metadata"],
            json!({"user_id": "u-42"})
        );
        let e = req_err(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3}),
        );
        assert!(e.contains("stop"), "{e}");
    }

    #[test]
    fn openai_only_fields_are_dropped_but_n_above_one_is_refused() {
        let out = req(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "n": 1, "logit_bias": {"50256": -100}, "frequency_penalty": 0.5, "presence_penalty": 0.1,
            "seed": 7, "logprobs": true, "top_logprobs": 2, "response_format": {"type": "json_object"},
            "stream_options": {"include_usage": true}, "store": true, "metadata": {"a": "b"}
        }));
        let keys: Vec<&str> = out
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["max_tokens", "messages", "model"]);
        let e =
            req_err(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}));
        assert!(e.contains("`n`"), "{e}");
    }

    #[test]
    fn same_role_runs_are_merged() {
        let out = req(json!({"model": "m", "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "three"}
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "user", "content": [{"type": "text", "text": "three"}]}
            ])
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(req_err(json!([1])).contains("object"));
        assert!(req_err(json!({"messages": []})).contains("model"));
        assert!(req_err(json!({"model": "m"})).contains("messages"));
        assert!(
            req_err(json!({"model": "m", "messages": [{"role": "system", "content": "s"}]}))
                .contains("at least one")
        );
        assert!(req_err(
            json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]})
        )
        .contains("function"));
        assert!(req_err(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "functions": [{"name": "f"}]})
        )
        .contains("functions"));
        assert!(
            req_err(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
                .contains("tool_call_id")
        );
        assert!(to_anthropic_request(b"{not json", 1).is_err());
    }

    // -- responses ------------------------------------------------------------------------

    fn message(content: Value, stop_reason: &str) -> Value {
        json!({
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929", "content": content,
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20}
        })
    }

    #[test]
    fn text_response() {
        let out = resp(message(
            json!([{"type": "text", "text": "Hello"}, {"type": "text", "text": ", world"}]),
            "end_turn",
        ));
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-msg_013Zva2CMHLNnXjNJJKqJ2EF",
                "object": "chat.completion",
                "created": 1700000000,
                "model": "claude-sonnet-4-5-20250929",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello, world", "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
                    "prompt_tokens_details": {"cached_tokens": 0}}
            })
        );
    }

    #[test]
    fn tool_use_response() {
        let out = resp(message(
            json!([
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"x": [1, 2]}},
                {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}
            ]),
            "tool_use",
        ));
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([
                {"id": "toolu_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":[1,2]}"}},
                {"id": "toolu_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ])
        );
        // Text before a tool call is kept.
        let out = resp(message(
            json!([{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}]),
            "tool_use",
        ));
        assert_eq!(out["choices"][0]["message"]["content"], "Checking.");
        // An empty answer still has a string content.
        let out = resp(message(json!([]), "end_turn"));
        assert_eq!(out["choices"][0]["message"]["content"], "");
    }

    #[test]
    fn every_stop_reason() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
        ] {
            let out = resp(message(json!([{"type": "text", "text": "x"}]), stop));
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        }
    }

    #[test]
    fn usage_counts_cache_tokens_as_prompt() {
        let mut m = message(json!([{"type": "text", "text": "x"}]), "end_turn");
        m["usage"] = json!({"input_tokens": 12, "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 2000, "output_tokens": 40});
        assert_eq!(
            resp(m.clone())["usage"],
            json!({"prompt_tokens": 2312, "completion_tokens": 40, "total_tokens": 2352,
                "prompt_tokens_details": {"cached_tokens": 2000}})
        );
        m["usage"] = json!({"input_tokens": 12, "cache_creation_input_tokens": null,
            "cache_read_input_tokens": null, "output_tokens": 40});
        assert_eq!(resp(m)["usage"]["prompt_tokens"], 12);
    }

    #[test]
    fn non_messages_are_refused() {
        assert!(from_anthropic_response(
            b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"x\"}}",
            0
        )
        .is_err());
        assert!(from_anthropic_response(b"nope", 0).is_err());
    }

    // -- errors ---------------------------------------------------------------------------

    fn mapped(kind: &str) -> Value {
        let body = json!({"type": "error", "error": {"type": kind, "message": "Something happened"},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"});
        serde_json::from_slice(&error_to_openai(body.to_string().as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn errors_map_to_openai_types_and_codes() {
        assert_eq!(
            mapped("overloaded_error"),
            json!({"error": {"message": "Something happened", "type": "server_error", "param": null, "code": "overloaded"}})
        );
        let e = mapped("rate_limit_error");
        assert_eq!(
            (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
            (Some("rate_limit_error"), Some("rate_limit_exceeded"))
        );
        let e = mapped("invalid_request_error");
        assert_eq!(
            (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
            (Some("invalid_request_error"), Some("invalid_request"))
        );
        let e = mapped("authentication_error");
        assert_eq!(
            (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
            (Some("invalid_request_error"), Some("invalid_api_key"))
        );
        let e = mapped("api_error");
        assert_eq!(e["error"]["type"], "server_error");
        let e = mapped("brand_new_error");
        assert_eq!(
            (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
            (Some("upstream_error"), Some("brand_new_error"))
        );
    }

    #[test]
    fn non_errors_are_not_mapped() {
        assert!(error_to_openai(b"not json").is_none());
        assert!(error_to_openai(br#"{"error":{"message":"x","type":"y"}}"#).is_none());
        assert!(error_to_openai(br#"{"type":"message","id":"m"}"#).is_none());
    }

    // -- streaming ------------------------------------------------------------------------

    const RECORDED: &str = include_str!("../../tests/fixtures/anthropic/stream_text_tool.sse");

    fn run(chunks: &[&[u8]], include_usage: bool) -> (Vec<u8>, StreamTranslator) {
        let mut t = StreamTranslator::new(1700000000, include_usage);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(t.feed(c).unwrap());
        }
        (out, t)
    }

    /// The `data:` payloads of an OpenAI SSE stream.
    fn events(out: &[u8]) -> Vec<String> {
        let s = std::str::from_utf8(out).unwrap();
        assert!(s.ends_with("\n\n") || s.is_empty());
        s.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    /// Deterministic pseudo-random split points.
    fn random_splits(data: &[u8], seed: u64) -> Vec<&[u8]> {
        let mut x = seed | 1;
        let mut parts = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 40) as usize;
            let n = n.min(rest.len());
            let (a, b) = rest.split_at(n);
            parts.push(a);
            rest = b;
        }
        parts
    }

    #[test]
    fn recorded_stream_translates() {
        let (out, t) = run(&[RECORDED.as_bytes()], true);
        assert!(t.finished());
        assert_eq!(t.usage(), (472 + 100 + 2048, 89));
        let ev = events(&out);
        let chunks: Vec<Value> = ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let head = json!({"id": "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL", "object": "chat.completion.chunk",
            "created": 1700000000, "model": "claude-sonnet-4-5-20250929"});
        for c in &chunks {
            for k in ["id", "object", "created", "model"] {
                assert_eq!(c[k], head[k]);
            }
        }
        let deltas: Vec<Value> = chunks
            .iter()
            .filter(|c| !c["choices"].as_array().unwrap().is_empty())
            .map(|c| {
                json!([
                    c["choices"][0]["delta"].clone(),
                    c["choices"][0]["finish_reason"].clone()
                ])
            })
            .collect();
        assert_eq!(
            deltas,
            vec![
                json!([{"role": "assistant", "content": ""}, null]),
                json!([{"content": "Okay, let me check the weather in "}, null]),
                json!([{"content": "Zürich — ☀️ or 🌧?"}, null]),
                json!([{"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}, null]),
                json!([{"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}, null]),
                json!([{"tool_calls": [{"index": 0, "function": {"arguments": " \"Zürich, CH\", \"unit\": \"c"}}]}, null]),
                json!([{"tool_calls": [{"index": 0, "function": {"arguments": "elsius\"}"}}]}, null]),
                json!([{}, "tool_calls"]),
            ]
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens": 2620, "completion_tokens": 89, "total_tokens": 2709,
                "prompt_tokens_details": {"cached_tokens": 2048}})
        );
        // Every non-usage chunk has exactly the OpenAI chunk keys.
        let keys: Vec<&str> = chunks[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["choices", "created", "id", "model", "object"]);
        // The arguments reassemble into the tool input.
        let args: String = deltas
            .iter()
            .filter_map(|d| d[0]["tool_calls"][0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"location": "Zürich, CH", "unit": "celsius"})
        );
    }

    #[test]
    fn splitting_never_changes_the_output() {
        let data = RECORDED.as_bytes();
        let (whole, _) = run(&[data], true);
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        let (by_byte, t) = run(&bytes, true);
        assert!(t.finished());
        assert_eq!(whole, by_byte);
        for seed in 1..200u64 {
            let (split, t) = run(
                &random_splits(data, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                true,
            );
            assert!(t.finished());
            assert_eq!(whole, split, "seed {seed}");
        }
        // CRLF and CR line endings give the same result, however they are split.
        for ending in ["\r\n", "\r"] {
            let converted = RECORDED.replace('\n', ending);
            let (out, _) = run(&[converted.as_bytes()], true);
            assert_eq!(whole, out, "{ending:?}");
            let bytes: Vec<&[u8]> = converted.as_bytes().chunks(1).collect();
            let (out, _) = run(&bytes, true);
            assert_eq!(whole, out, "{ending:?} byte by byte");
            for seed in 1..50u64 {
                let (out, _) = run(&random_splits(converted.as_bytes(), seed), true);
                assert_eq!(whole, out, "{ending:?} seed {seed}");
            }
        }
    }

    #[test]
    fn include_usage_off_has_no_usage_chunk() {
        let (on, _) = run(&[RECORDED.as_bytes()], true);
        let (off, t) = run(&[RECORDED.as_bytes()], false);
        assert!(t.finished());
        assert_eq!(t.usage(), (2620, 89));
        let (on, off) = (events(&on), events(&off));
        assert_eq!(on.len(), off.len() + 1);
        assert!(off.iter().all(|e| !e.contains("\"usage\"")));
        assert_eq!(off.last().unwrap(), "[DONE]");
        assert_eq!(on[..on.len() - 2], off[..off.len() - 1]);
    }

    #[test]
    fn error_event_mid_stream_is_an_error() {
        let head = RECORDED.split("event: content_block_stop").next().unwrap();
        let stream = format!(
            "{head}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n"
        );
        // Fed whole: the text before the error comes back with the error.
        let mut t = StreamTranslator::new(1, false);
        let err = t.feed(stream.as_bytes()).unwrap_err();
        let e: Value = serde_json::from_str(&err.openai_error_json).unwrap();
        assert_eq!(
            e,
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
        );
        assert_eq!(events(&err.preceding).len(), 3);
        assert!(!t.finished());
        assert!(t
            .feed(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
            .unwrap()
            .is_empty());
        assert!(!t.finished());

        // Fed byte by byte: everything before arrives as Ok, then the Err.
        let mut t = StreamTranslator::new(1, false);
        let mut ok = Vec::new();
        let mut failed = None;
        for b in stream.as_bytes().chunks(1) {
            match t.feed(b) {
                Ok(o) => ok.extend(o),
                Err(e) => {
                    ok.extend(&e.preceding);
                    failed = Some(e);
                    break;
                }
            }
        }
        assert_eq!(events(&ok).len(), 3);
        assert!(failed.unwrap().openai_error_json.contains("overloaded"));
    }

    #[test]
    fn invalid_event_data_is_an_error() {
        let mut t = StreamTranslator::new(1, false);
        let err = t
            .feed(b"event: message_start\ndata: {oops\n\n")
            .unwrap_err();
        assert!(err.openai_error_json.contains("upstream_invalid_response"));
    }

    #[test]
    fn truncated_stream_is_not_finished() {
        let head = RECORDED.split("event: message_stop").next().unwrap();
        let (out, t) = run(&[head.as_bytes()], true);
        assert!(!t.finished());
        let ev = events(&out);
        assert!(!ev.iter().any(|e| e == "[DONE]"));
        assert!(!ev.iter().any(|e| e.contains("\"usage\"")));
        assert_eq!(t.usage(), (2620, 89));
        // A stop without a message_delta still closes the choice.
        let (out, t) = run(
            &[b"data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\n",
              b": keep-alive comment\n\ndata: {\"type\":\"message_stop\"}\n\n"],
            false,
        );
        assert!(t.finished());
        let ev = events(&out);
        assert_eq!(ev.len(), 3);
        assert!(ev[1].contains("\"finish_reason\":\"stop\""));
    }

    #[test]
    fn unknown_events_and_pings_are_ignored() {
        let (out, _) = run(
            &[b"event: ping\ndata: {\"type\":\"ping\"}\n\nevent: brand_new\ndata: {\"type\":\"brand_new\",\"x\":1}\n\n\
               event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n\
               event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n"],
            false,
        );
        assert!(out.is_empty());
    }
}

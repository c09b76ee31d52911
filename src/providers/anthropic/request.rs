//! Chat completions request → Anthropic Messages request.

use super::*;

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

pub(super) fn invalid(message: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(message.into())
}

#[derive(Serialize)]
pub(super) struct Request {
    pub(super) model: String,
    pub(super) max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) system: Option<String>,
    pub(super) messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stream: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) metadata: Option<Metadata>,
}

#[derive(Serialize)]
pub(super) struct Message {
    pub(super) role: Role,
    pub(super) content: Vec<Block>,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Role {
    User,
    Assistant,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Block {
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
pub(super) enum ToolResultContent {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Source {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Serialize)]
pub(super) struct Tool {
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
    pub(super) input_schema: Value,
}

#[derive(Serialize)]
pub(super) struct ToolChoice {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) disable_parallel_tool_use: Option<bool>,
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
pub(super) struct Metadata {
    pub(super) user_id: String,
}

/// A field that is present and not `null`.
pub(super) fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
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
pub(super) fn translate_messages(
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
pub(super) fn push(out: &mut Vec<Message>, role: Role, blocks: Vec<Block>) {
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
pub(super) fn system_texts(
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

pub(super) fn text_block(text: &str) -> Option<Block> {
    // Anthropic refuses empty text blocks.
    (!text.is_empty()).then(|| Block::Text {
        text: text.to_owned(),
    })
}

pub(super) fn part_type(part: &Value, i: usize, j: usize) -> Result<&str, TranslateError> {
    part.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}].content[{j}].type must be a string")))
}

pub(super) fn part_text(
    part: &Value,
    key: &str,
    i: usize,
    j: usize,
) -> Result<String, TranslateError> {
    part.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| invalid(format!("messages[{i}].content[{j}].{key} must be a string")))
}

/// A user message's content: text, images, PDF files.
pub(super) fn user_blocks(content: &Value, i: usize) -> Result<Vec<Block>, TranslateError> {
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
pub(super) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let meta = meta.strip_suffix(";base64")?;
    let media_type = meta.split(';').next().unwrap_or_default().trim();
    (!media_type.is_empty()).then_some((media_type, data))
}

pub(super) fn image_source(url: &str, i: usize, j: usize) -> Result<Source, TranslateError> {
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
pub(super) fn file_block(part: &Value, i: usize, j: usize) -> Result<Block, TranslateError> {
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
pub(super) fn assistant_blocks(content: &Value, i: usize) -> Result<Vec<Block>, TranslateError> {
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
pub(super) fn tool_use_blocks(
    calls: &Value,
    i: usize,
    out: &mut Vec<Block>,
) -> Result<(), TranslateError> {
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
pub(super) fn tool_result_content(
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

pub(super) fn translate_tools(req: &Map<String, Value>) -> Result<Vec<Tool>, TranslateError> {
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

pub(super) fn translate_tool_choice(
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

//! Anthropic message → chat completion.

use super::*;

// ---------------------------------------------------------------------------------------------
// Response: Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------------

/// Anthropic's usage block (every field optional; the cache ones may be `null`).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) struct AnthropicUsage {
    #[serde(default)]
    pub(super) input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) output_tokens: Option<u64>,
    #[serde(default)]
    pub(super) cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) cache_read_input_tokens: Option<u64>,
}

/// Running token counts, Anthropic-side.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tokens {
    pub(super) input: u64,
    pub(super) cache_creation: u64,
    pub(super) cache_read: u64,
    pub(super) output: u64,
}

impl Tokens {
    /// Takes every count the usage block carries (Anthropic's counts are cumulative).
    pub(super) fn update(&mut self, u: &AnthropicUsage) {
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
    pub(super) fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    pub(super) fn openai(&self) -> OpenAiUsage {
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
pub(super) struct OpenAiUsage {
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) total_tokens: u64,
    pub(super) prompt_tokens_details: PromptDetails,
}

#[derive(Serialize)]
pub(super) struct PromptDetails {
    pub(super) cached_tokens: u64,
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub(super) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

#[derive(Deserialize)]
pub(super) struct AnthropicMessage {
    #[serde(rename = "type", default)]
    pub(super) kind: Option<String>,
    pub(super) id: String,
    #[serde(default)]
    pub(super) model: String,
    #[serde(default)]
    pub(super) content: Vec<Value>,
    #[serde(default)]
    pub(super) stop_reason: Option<String>,
    #[serde(default)]
    pub(super) usage: AnthropicUsage,
}

#[derive(Serialize)]
pub(super) struct Completion<'a> {
    pub(super) id: String,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) model: &'a str,
    pub(super) choices: [CompletionChoice; 1],
    pub(super) usage: OpenAiUsage,
}

#[derive(Serialize)]
pub(super) struct CompletionChoice {
    pub(super) index: u32,
    pub(super) message: CompletionMessage,
    pub(super) logprobs: Option<()>,
    pub(super) finish_reason: &'static str,
}

#[derive(Serialize)]
pub(super) struct CompletionMessage {
    pub(super) role: &'static str,
    pub(super) content: Option<String>,
    pub(super) refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) tool_calls: Vec<ToolCall>,
}

#[derive(Serialize)]
pub(super) struct ToolCall {
    pub(super) id: String,
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) function: FunctionCall,
}

#[derive(Serialize)]
pub(super) struct FunctionCall {
    pub(super) name: String,
    pub(super) arguments: String,
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

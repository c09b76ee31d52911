//! Chat answers in the Responses shape: a complete `response` object, and chat chunks as
//! Responses events (`ChatToResponses`).

use serde_json::{json, Map, Value};

use crate::api::new_id;
use crate::api::sse::{AssembledCall, ChatChunk, ChatStreamTranslator};
use crate::openai::Usage;

pub(super) fn response_object(
    id: &str,
    created_at: u64,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Option<Usage>,
    req: &Map<String, Value>,
) -> Value {
    let get = |k: &str| req.get(k).cloned().unwrap_or(Value::Null);
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": get("instructions"),
        "max_output_tokens": get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls").cloned().unwrap_or(Value::Bool(true)),
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice").cloned().unwrap_or_else(|| Value::from("auto")),
        "tools": req.get("tools").cloned().unwrap_or_else(|| json!([])),
        "top_p": get("top_p"),
        "truncation": "disabled",
        "usage": usage.map(usage_json),
        "user": get("user"),
        "metadata": req.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

pub(super) fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

pub(super) fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

pub(super) fn call_item(id: &str, call: &AssembledCall, status: &str) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    })
}

/// A complete chat answer as a Responses `response`.
pub fn from_chat_completion(chat: &Value, req: &Map<String, Value>) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut output = Vec::new();
    let text = message["content"]
        .as_str()
        .or_else(|| message["refusal"].as_str())
        .unwrap_or("");
    if !text.is_empty()
        || message["tool_calls"]
            .as_array()
            .is_none_or(|c| c.is_empty())
    {
        output.push(message_item(&new_id("msg_"), text, "completed"));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let assembled = AssembledCall {
            id: call["id"].as_str().unwrap_or_default().to_owned(),
            name: call["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            arguments: call["function"]["arguments"]
                .as_str()
                .unwrap_or("{}")
                .to_owned(),
        };
        output.push(call_item(&new_id("fc_"), &assembled, "completed"));
    }
    let usage = serde_json::from_value::<Usage>(chat["usage"].clone()).ok();
    let status = if choice["finish_reason"] == "length" {
        "incomplete"
    } else {
        "completed"
    };
    let model = chat["model"].as_str().unwrap_or("");
    response_object(
        &new_id("resp_"),
        chat["created"]
            .as_u64()
            .unwrap_or_else(crate::clock::now_secs),
        model,
        status,
        output,
        usage,
        req,
    )
}

/// Usage of a complete Responses answer: `None` when `body` is not a `response` object.
pub fn read_answer(body: &[u8]) -> Option<Option<Usage>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("object").and_then(Value::as_str) != Some("response") {
        return None;
    }
    Some(read_usage_value(v.get("usage")))
}

/// Responses' usage (`input_tokens`, `output_tokens`) as the proxy counts it.
pub fn read_usage_value(usage: Option<&Value>) -> Option<Usage> {
    let u = usage?;
    Some(Usage {
        prompt_tokens: u.get("input_tokens")?.as_u64()?,
        completion_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// The `id` of a complete Responses answer.
pub fn answer_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(body).ok().map(|i| i.id)
}

pub(super) enum Item {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call: AssembledCall,
        tool_index: usize,
    },
}

/// Chat chunks as Responses events: `response.created`, `response.in_progress`, output items
/// with their parts and deltas, `response.completed` with usage. `sequence_number` grows by one
/// per event.
pub struct ChatToResponses {
    id: String,
    created_at: u64,
    model: String,
    req: Map<String, Value>,
    seq: u64,
    started: bool,
    items: Vec<Item>,
    open_message: Option<usize>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
}

impl ChatToResponses {
    /// A translator for a request whose members are `req`.
    pub fn new(model: &str, req: &Map<String, Value>) -> ChatToResponses {
        let mut req = req.clone();
        req.remove("input");
        ChatToResponses {
            id: new_id("resp_"),
            created_at: crate::clock::now_secs(),
            model: model.to_owned(),
            req,
            seq: 0,
            started: false,
            items: Vec::new(),
            open_message: None,
            usage: None,
            finish_reason: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = Value::from(kind);
        data["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        crate::api::sse::write_event(out, kind, &data);
    }

    fn response(&self, status: &str, output: Vec<Value>) -> Value {
        response_object(
            &self.id,
            self.created_at,
            &self.model,
            status,
            output,
            self.usage,
            &self.req,
        )
    }

    fn close_message(&mut self, out: &mut Vec<u8>) {
        let Some(index) = self.open_message.take() else {
            return;
        };
        let Some(Item::Message { id, text }) = self.items.get(index) else {
            return;
        };
        let (id, text) = (id.clone(), text.clone());
        self.emit(out, "response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
        self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": message_item(&id, &text, "completed")}),
        );
    }

    fn item_json(item: &Item, status: &str) -> Value {
        match item {
            Item::Message { id, text } => message_item(id, text, status),
            Item::Call { id, call, .. } => call_item(id, call, status),
        }
    }
}

impl ChatStreamTranslator for ChatToResponses {
    fn chunk(&mut self, chunk: ChatChunk, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            if let Some(m) = chunk.model.as_deref().filter(|m| !m.is_empty()) {
                self.model = m.to_owned();
            }
            let r = self.response("in_progress", Vec::new());
            self.emit(out, "response.created", json!({"response": r}));
            let r = self.response("in_progress", Vec::new());
            self.emit(out, "response.in_progress", json!({"response": r}));
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
                let index = match self.open_message {
                    Some(i) => i,
                    None => {
                        let id = new_id("msg_");
                        let index = self.items.len();
                        self.items.push(Item::Message {
                            id: id.clone(),
                            text: String::new(),
                        });
                        self.open_message = Some(index);
                        self.emit(out, "response.output_item.added", json!({"output_index": index, "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
                        self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
                        index
                    }
                };
                let mut item_id = String::new();
                if let Some(Item::Message { id, text: all }) = self.items.get_mut(index) {
                    all.push_str(&text);
                    item_id = id.clone();
                }
                self.emit(out, "response.output_text.delta", json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}));
            }
            for call in choice.delta.tool_calls {
                self.close_message(out);
                let existing = self.items.iter().position(
                    |i| matches!(i, Item::Call { tool_index, .. } if *tool_index == call.index),
                );
                let index = match existing {
                    Some(i) => i,
                    None => {
                        let id = new_id("fc_");
                        let assembled = AssembledCall {
                            id: call.id.clone().unwrap_or_else(|| new_id("call_")),
                            name: call
                                .function
                                .as_ref()
                                .and_then(|f| f.name.clone())
                                .unwrap_or_default(),
                            arguments: String::new(),
                        };
                        let index = self.items.len();
                        let item = call_item(&id, &assembled, "in_progress");
                        self.items.push(Item::Call {
                            id,
                            call: assembled,
                            tool_index: call.index,
                        });
                        self.emit(
                            out,
                            "response.output_item.added",
                            json!({"output_index": index, "item": item}),
                        );
                        index
                    }
                };
                let delta = call.function.and_then(|f| f.arguments).unwrap_or_default();
                if !delta.is_empty() {
                    let mut item_id = String::new();
                    if let Some(Item::Call { id, call, .. }) = self.items.get_mut(index) {
                        call.arguments.push_str(&delta);
                        item_id = id.clone();
                    }
                    self.emit(
                        out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": delta}),
                    );
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
    }

    fn done(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.chunk(ChatChunk::default(), out);
        }
        self.close_message(out);
        let calls: Vec<(usize, String, AssembledCall)> = self
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Item::Call { id, call, .. } => Some((i, id.clone(), call.clone())),
                Item::Message { .. } => None,
            })
            .collect();
        for (index, id, call) in calls {
            self.emit(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "arguments": call.arguments}),
            );
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": index, "item": call_item(&id, &call, "completed")}),
            );
        }
        let status = if self.finish_reason.as_deref() == Some("length") {
            "incomplete"
        } else {
            "completed"
        };
        let output: Vec<Value> = self
            .items
            .iter()
            .map(|i| Self::item_json(i, "completed"))
            .collect();
        let r = self.response(status, output);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": r}));
    }
}

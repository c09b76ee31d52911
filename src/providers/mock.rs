//! The built-in `mock` provider: answers in-process, offline and deterministically, echoing
//! what it received (model, temperature, max tokens, system prompt, tool names) so a demo or a
//! test can see the rewrite at work.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use serde_json::{json, Value};
use tokio::time::Sleep;

use crate::body::BodyError;

/// `[providers.NAME]` with `kind = "mock"`.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// Delay before the answer (or before the first chunk).
    pub latency: Duration,
    /// Content chunks in a streamed answer.
    pub stream_chunks: u32,
    /// Delay between streamed chunks.
    pub chunk_interval: Duration,
}

/// What the mock read from a request.
struct Echo {
    model: String,
    content: String,
    prompt_tokens: u64,
    include_usage: bool,
}

fn approx_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

fn read(body: &[u8]) -> Echo {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = v["model"].as_str().unwrap_or("mock").to_owned();
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    let text_of = |m: &Value| -> String {
        match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    };
    let system = messages.iter().find(|m| m["role"] == "system").map(text_of);
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(text_of)
        .unwrap_or_default();
    let prompt_chars: String = messages.iter().map(text_of).collect();
    let tools: Vec<&str> = v["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let fmt_num = |x: &Value| {
        if x.is_null() {
            "unset".to_owned()
        } else {
            x.to_string()
        }
    };
    let max_tokens = if v["max_completion_tokens"].is_null() {
        &v["max_tokens"]
    } else {
        &v["max_completion_tokens"]
    };
    if model.starts_with("judge") {
        return Echo {
            content: judge_answer(&last_user),
            model,
            prompt_tokens: approx_tokens(&prompt_chars),
            include_usage: v["stream_options"]["include_usage"] == Value::Bool(true),
        };
    }
    let content = format!(
        "[mock {model}] temperature={} max_tokens={} system={} tools=[{}] | you said: {}",
        fmt_num(&v["temperature"]),
        fmt_num(max_tokens),
        system.map_or("none".to_owned(), |s| format!("{s:?}")),
        tools.join(","),
        last_user,
    );
    Echo {
        model,
        prompt_tokens: approx_tokens(&prompt_chars),
        include_usage: v["stream_options"]["include_usage"] == Value::Bool(true),
        content,
    }
}

/// The mock as a judge (a model id starting with `judge`): `{"score": S}`, S 1 for about one
/// prompt in five and 0 otherwise, a pure function of the prompt. It judges nothing; it lets an
/// `[evals]` section run offline, deterministically.
fn judge_answer(prompt: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in prompt.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let score = u8::from(h.is_multiple_of(5));
    format!("{{\"score\": {score}}}")
}

fn completion_id() -> String {
    format!("chatcmpl-mock{:016x}", fastrand::u64(..))
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A non-streamed answer to `body`.
pub fn complete(body: &[u8]) -> Bytes {
    let echo = read(body);
    let completion_tokens = approx_tokens(&echo.content);
    let v = json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": crate::clock::now_secs(),
        "model": echo.model,
        "system_fingerprint": "switchyard-mock",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": echo.content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": usage(echo.prompt_tokens, completion_tokens),
    });
    Bytes::from(v.to_string())
}

/// A streamed answer to `body`: SSE events as an HTTP body, paced by `settings`.
pub fn stream(body: &[u8], settings: &MockSettings) -> MockStream {
    let echo = read(body);
    let id = completion_id();
    let created = crate::clock::now_secs();
    let chunk = |delta: Value, finish: Value| {
        let v = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": echo.model,
            "system_fingerprint": "switchyard-mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut events = VecDeque::new();
    events.push_back(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    let chars: Vec<char> = echo.content.chars().collect();
    let n = settings.stream_chunks.max(1) as usize;
    let per = chars.len().div_ceil(n).max(1);
    for piece in chars.chunks(per) {
        events.push_back(chunk(
            json!({"content": piece.iter().collect::<String>()}),
            Value::Null,
        ));
    }
    events.push_back(chunk(json!({}), json!("stop")));
    if echo.include_usage {
        let v = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": echo.model,
            "system_fingerprint": "switchyard-mock", "choices": [],
            "usage": usage(echo.prompt_tokens, approx_tokens(&echo.content)),
        });
        events.push_back(Bytes::from(format!("data: {v}\n\n")));
    }
    events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    MockStream {
        events,
        interval: settings.chunk_interval,
        sleep: None,
        first: true,
    }
}

/// The mock's SSE body: one frame per event, `interval` apart.
pub struct MockStream {
    events: VecDeque<Bytes>,
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    first: bool,
}

impl HttpBody for MockStream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.events.is_empty() {
            return Poll::Ready(None);
        }
        if !self.first && !self.interval.is_zero() {
            let interval = self.interval;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        self.first = false;
        Poll::Ready(self.events.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty()
    }
}

/// An embeddings answer to `body`: one deterministic unit vector per input (from a hash of
/// the text), `dimensions` long (8 unless asked), so equal inputs embed equally.
pub fn embeddings(body: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = v["model"].as_str().unwrap_or("mock-embedding").to_owned();
    let dims = v["dimensions"].as_u64().unwrap_or(8).clamp(1, 4096) as usize;
    let inputs: Vec<String> = match &v["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += approx_tokens(text);
            let raw: Vec<f64> = (0..dims)
                .map(|d| {
                    let h = crate::flags::bucket::murmur3_x86_32(&[text.as_bytes()], d as u32 + 1);
                    f64::from(h) / f64::from(u32::MAX) * 2.0 - 1.0
                })
                .collect();
            let norm = raw
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                .max(f64::EPSILON);
            let vector: Vec<f64> = raw.iter().map(|x| (x / norm * 1e6).round() / 1e6).collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Bytes::from(answer.to_string())
}

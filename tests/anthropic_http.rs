//! The Anthropic provider through the real proxy: a chat completion in OpenAI's shape goes out
//! as a Messages API request (x-api-key, anthropic-version, system, max_tokens, tools) and the
//! answer — complete or streamed — comes back in OpenAI's shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/upstream.rs"]
mod upstream;

use std::time::Duration;

use serde_json::{json, Value};
use upstream::{MockUpstream, SseStep};

fn config(base_url: &str, key_var: &str) -> String {
    format!(
        r#"
[providers.claude]
kind = "anthropic"
base_url = "{base_url}"
api_key_env = "{key_var}"
default_max_tokens = 321
retry = {{ attempts = 1 }}

[prompts]
p = "BE BRIEF"

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "claude"
model_id = "claude-sonnet-4-5"
system_prompt_variant = "p"
temperature = 0.4
[[flags.f.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]
"#
    )
}

fn anthropic_message() -> Value {
    json!({
        "id": "msg_123", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "Let me look that up."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Zürich"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 40, "output_tokens": 12}
    })
}

const KEY: &str = "sk-ant-test-key-never-logged";

#[tokio::test]
async fn a_chat_completion_becomes_a_messages_call_and_back() {
    let var = "SWITCHYARD_TEST_ANTHROPIC_KEY_1";
    std::env::set_var(var, KEY);
    let up = MockUpstream::builder()
        .json_body(anthropic_message())
        .start()
        .await;
    let p = proxy::TestProxy::start(&config(&up.base_url(), var)).await;
    let body = json!({
        "model": "f", "user": "u-1",
        "messages": [{"role": "system", "content": "client system"}, {"role": "user", "content": "Weather in Zürich?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
        "tool_choice": "auto"
    });
    let r = client::post_json(
        &p.url("/v1/chat/completions"),
        &body.to_string(),
        &[("authorization", "Bearer client-key")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Let me look that up."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["location"], "Zürich");
    assert_eq!(v["usage"]["prompt_tokens"], 40);
    assert_eq!(v["usage"]["completion_tokens"], 12);

    let sent = &up.requests()[0];
    assert!(sent.path.ends_with("/messages"), "{}", sent.path);
    assert_eq!(sent.header("x-api-key").as_deref(), Some(KEY));
    assert!(sent.header("anthropic-version").is_some());
    assert!(
        sent.header("authorization").is_none(),
        "the client's key must not be forwarded"
    );
    let m = sent.json();
    assert_eq!(m["model"], "claude-sonnet-4-5");
    assert_eq!(
        m["system"], "BE BRIEF",
        "the variation's prompt replaced the client's: {m}"
    );
    assert_eq!(m["max_tokens"], 321);
    assert_eq!(m["temperature"], 0.4);
    assert_eq!(m["tools"][0]["name"], "get_weather");
    assert_eq!(m["messages"][0]["role"], "user");

    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(!metrics.contains(KEY));
    assert!(metrics.contains(r#"switchyard_tokens_total{api="chat",direction="in",flag="f",model="claude-sonnet-4-5",variation="a"} 40"#), "{metrics}");
}

#[tokio::test]
async fn a_stream_is_translated_on_the_fly() {
    let var = "SWITCHYARD_TEST_ANTHROPIC_KEY_2";
    std::env::set_var(var, KEY);
    let fixture = include_str!("fixtures/anthropic/stream_text_tool.sse");
    let up = MockUpstream::builder()
        .sse(vec![SseStep::Raw(fixture.to_owned())])
        .start()
        .await;
    let p = proxy::TestProxy::start(&config(&up.base_url(), var)).await;
    let body = json!({"model": "f", "user": "u-1", "stream": true, "messages": [{"role": "user", "content": "Weather?"}]});
    let s = client::post_stream(&p.url("/v1/chat/completions"), &body.to_string(), &[]).await;
    assert_eq!(s.status, 200);
    let text = String::from_utf8(s.rest(Duration::from_secs(10)).await.to_vec()).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let mut content = String::new();
    let mut tool_args = String::new();
    let mut finish = None;
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
    {
        let c: Value = serde_json::from_str(line).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert!(
            c.get("usage").is_none_or(Value::is_null),
            "usage the client did not ask for: {c}"
        );
        let d = &c["choices"][0]["delta"];
        content.push_str(d["content"].as_str().unwrap_or(""));
        if let Some(a) = d["tool_calls"][0]["function"]["arguments"].as_str() {
            tool_args.push_str(a);
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert!(content.contains("Zürich"), "{content}");
    let args: Value = serde_json::from_str(&tool_args).unwrap();
    assert!(args["location"].is_string());
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let sent = up.requests()[0].json();
    assert_eq!(sent["stream"], true);
}

#[tokio::test]
async fn an_anthropic_error_status_comes_back_openai_shaped() {
    let var = "SWITCHYARD_TEST_ANTHROPIC_KEY_3";
    std::env::set_var(var, KEY);
    let up = MockUpstream::builder()
        .status(400)
        .json_body(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}))
        .start()
        .await;
    let p = proxy::TestProxy::start(&config(&up.base_url(), var)).await;
    let r = client::post_json(
        &p.url("/v1/chat/completions"),
        r#"{"model":"f","user":"u","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["message"], "max_tokens: too large");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(!r.text().contains(KEY));
}

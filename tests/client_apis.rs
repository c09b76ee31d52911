//! Every client API through the real proxy on a real socket: OpenAI Responses, Anthropic
//! Messages (and count_tokens), embeddings and passthrough — native to providers that accept
//! the format (captured upstream bodies: only the variation's members rewritten), translated
//! through chat for the others, streams and errors in each API's own shape.
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

const WAIT: Duration = Duration::from_secs(10);

/// One flag `f` on one provider; `provider` is the TOML body of `[providers.up]`.
fn config(provider: &str) -> String {
    format!(
        r#"
[providers.up]
{provider}
timeout = "5s"
retry = {{ attempts = 1 }}

[prompts]
p = "VARIATION PROMPT"

[tool_policies]
weather-only = ["get_weather"]

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "up"
model_id = "model-a"
system_prompt_variant = "p"
temperature = 0.5
token_budget = 100
tool_policy = "weather-only"
fallback_behavior = "rule-based"
[[flags.f.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]
"#
    )
}

fn openai_provider(base: &str, apis: &str) -> String {
    format!("kind = \"openai\"\nbase_url = \"{base}\"\napis = {apis}")
}

/// Data payloads of an SSE body, with their `event:` names.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter_map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name, serde_json::from_str(data).unwrap_or(Value::Null)))
        })
        .collect()
}

fn responses_answer(id: &str) -> Value {
    json!({
        "id": id, "object": "response", "created_at": 1, "status": "completed", "model": "model-a",
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "native answer", "annotations": []}]}],
        "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
    })
}

#[tokio::test]
async fn responses_go_native_with_only_the_variations_members_rewritten() {
    let up = MockUpstream::builder()
        .json_body(responses_answer("resp_native_1"))
        .start()
        .await;
    let p = proxy::TestProxy::start(&config(&openai_provider(
        &up.base_url(),
        r#"["chat", "responses"]"#,
    )))
    .await;
    let body = r#"{"model":"f","input":"Where is my order?","instructions":"client instructions","temperature":1.2,"max_output_tokens":5000,"user":"u-1","store":false,"metadata":{"k":"v"},"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}},{"type":"function","name":"delete_account","parameters":{}},{"type":"web_search"}],"tool_choice":{"type":"function","name":"delete_account"}}"#;
    let r = client::post_json(
        &p.url("/v1/responses"),
        body,
        &[("authorization", "Bearer sk-client-secret")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "resp_native_1");
    assert_eq!(r.header("x-switchyard-variation").as_deref(), Some("a"));
    let sent = &up.requests()[0];
    assert!(sent.path.ends_with("/responses"), "{}", sent.path);
    assert_ne!(
        sent.header("authorization").as_deref(),
        Some("Bearer sk-client-secret")
    );
    let m = sent.json();
    assert_eq!(m["model"], "model-a");
    assert_eq!(m["instructions"], "VARIATION PROMPT");
    assert_eq!(m["temperature"], 0.5);
    assert_eq!(m["max_output_tokens"], 100);
    assert_eq!(
        m["tools"],
        json!([{"type":"function","name":"get_weather","parameters":{"type":"object"}}])
    );
    assert!(m.get("tool_choice").is_none(), "{m}");
    // Untouched members byte for byte, in order.
    let text = String::from_utf8_lossy(&sent.body);
    assert!(
        text.contains(r#""input":"Where is my order?","#)
            && text.contains(r#""store":false,"metadata":{"k":"v"}"#),
        "{text}"
    );
    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(r#"switchyard_tokens_total{api="responses",direction="in",flag="f",model="model-a",variation="a"} 11"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn responses_to_a_chat_only_provider_are_translated_both_ways() {
    let up = MockUpstream::builder().start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let body = json!({
        "model": "f", "user": "u-2", "instructions": "theirs", "max_output_tokens": 50,
        "input": [
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    });
    let r = client::post_json(&p.url("/v1/responses"), &body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("echo:"));
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let sent = up.requests()[0].json();
    assert!(up.requests()[0].path.ends_with("/chat/completions"));
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "VARIATION PROMPT"})
    );
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(sent["messages"][2]["tool_calls"][0]["id"], "c1");
    assert_eq!(sent["messages"][3]["role"], "tool");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
}

#[tokio::test]
async fn a_translated_responses_stream_has_the_event_order_and_usage() {
    let up = MockUpstream::builder().start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let s = client::post_stream(
        &p.url("/v1/responses"),
        r#"{"model":"f","user":"u","input":"stream please","stream":true}"#,
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-switchyard-flag").as_deref(), Some("f"));
    let body = s.rest(WAIT).await;
    let ev = events(&body);
    let kinds: Vec<&str> = ev
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        &kinds[..2],
        ["response.created", "response.in_progress"],
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"response.completed"));
    assert!(kinds.contains(&"response.output_text.delta"));
    for (i, (name, v)) in ev.iter().enumerate() {
        assert_eq!(v["sequence_number"], i as u64, "{kinds:?}");
        assert_eq!(name, v["type"].as_str().unwrap_or(""));
    }
    let done = &ev.last().unwrap().1["response"];
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    // The proxy asked the chat provider for usage so it could report it.
    assert_eq!(
        up.requests()[0].json()["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn what_chat_cannot_express_is_a_400_naming_the_field() {
    let up = MockUpstream::builder().start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","input":"x","tools":[{"type":"file_search","vector_store_ids":["vs"]}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "tools");
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","input":[{"type":"reasoning","summary":[]}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "input");
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","input":"x","previous_response_id":"resp_unknown"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "previous_response_id");
    assert_eq!(up.request_count(), 0);
}

/// Two variations, each on its own native Responses provider.
fn two_native_variations(a: &str, b: &str) -> String {
    format!(
        r#"
[providers.pa]
kind = "openai"
base_url = "{a}"
apis = ["responses"]
[providers.pb]
kind = "openai"
base_url = "{b}"
apis = ["responses"]
[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "pa"
model_id = "model-a"
[flags.f.variations.b]
provider = "pb"
model_id = "model-b"
[[flags.f.rules]]
id = "split"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]
"#
    )
}

#[tokio::test]
async fn previous_response_id_continues_on_the_variation_that_answered() {
    let up_a = MockUpstream::builder()
        .json_body(responses_answer("resp_from_a"))
        .start()
        .await;
    let up_b = MockUpstream::builder()
        .json_body(responses_answer("resp_from_b"))
        .start()
        .await;
    let p =
        proxy::TestProxy::start(&two_native_variations(&up_a.base_url(), &up_b.base_url())).await;
    let mut users = std::collections::HashMap::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        let d = client::get(&p.url(&format!("/v1/decide?flag=f&user={user}")))
            .await
            .json();
        users
            .entry(d["variation"].as_str().unwrap().to_owned())
            .or_insert(user);
    }
    let (ua, ub) = (users["a"].clone(), users["b"].clone());
    let first = client::post_json(
        &p.url("/v1/responses"),
        &json!({"model": "f", "user": ua, "input": "hi"}).to_string(),
        &[],
    )
    .await;
    assert_eq!(first.json()["id"], "resp_from_a");
    // A user bucketed into b continues a's response: it stays on a.
    let next = client::post_json(
        &p.url("/v1/responses"),
        &json!({"model": "f", "user": ub, "input": "and?", "previous_response_id": "resp_from_a"})
            .to_string(),
        &[],
    )
    .await;
    assert_eq!(next.header("x-switchyard-variation").as_deref(), Some("a"));
    assert_eq!(up_a.request_count(), 2);
    assert_eq!(
        up_a.requests()[1].json()["previous_response_id"],
        "resp_from_a"
    );
    // An unknown id goes, as sent, to the user's own variation.
    let other = client::post_json(
        &p.url("/v1/responses"),
        &json!({"model": "f", "user": ub, "input": "x", "previous_response_id": "resp_elsewhere"})
            .to_string(),
        &[],
    )
    .await;
    assert_eq!(other.header("x-switchyard-variation").as_deref(), Some("b"));
    assert_eq!(
        up_b.requests()[0].json()["previous_response_id"],
        "resp_elsewhere"
    );
}

#[tokio::test]
async fn messages_to_a_chat_provider_are_translated_both_ways() {
    let up = MockUpstream::builder().start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let body = json!({
        "model": "f", "max_tokens": 1000, "system": "client system",
        "metadata": {"user_id": "anthropic-user-1"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    });
    let r = client::post_json(
        &p.url("/v1/messages"),
        &body.to_string(),
        &[
            ("x-api-key", "sk-ant-client"),
            ("anthropic-version", "2023-06-01"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("hello there"));
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let sent = &up.requests()[0];
    assert!(sent.header("x-api-key").is_none(), "client key forwarded");
    let m = sent.json();
    assert_eq!(
        m["messages"][0],
        json!({"role": "system", "content": "VARIATION PROMPT"})
    );
    assert_eq!(m["max_tokens"], 100, "the budget caps max_tokens");
    assert_eq!(m["user"], "anthropic-user-1");
    // metadata.user_id is the bucketing id: the same user decides the same way on every API.
    let d = client::get(&p.url("/v1/decide?flag=f&user=anthropic-user-1"))
        .await
        .json();
    assert_eq!(
        r.header("x-switchyard-variation").as_deref(),
        d["variation"].as_str()
    );
}

#[tokio::test]
async fn a_translated_messages_stream_has_anthropics_events() {
    let up = MockUpstream::builder().start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let s = client::post_stream(
        &p.url("/v1/messages"),
        r#"{"model":"f","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let ev = events(&s.rest(WAIT).await);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta"));
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert!(delta.1["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

fn anthropic_config(base: &str) -> String {
    config(&format!(
        "kind = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"SWITCHYARD_TEST_CLIENT_APIS_KEY\""
    ))
}

#[tokio::test]
async fn messages_go_native_to_anthropic_and_stream_unchanged() {
    std::env::set_var("SWITCHYARD_TEST_CLIENT_APIS_KEY", "sk-ant-provider");
    let sse = include_str!("fixtures/anthropic/stream_text_tool.sse");
    let up = MockUpstream::builder()
        .json_body(json!({"id": "msg_n", "type": "message", "role": "assistant", "model": "model-a",
            "content": [{"type": "text", "text": "native"}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 9, "output_tokens": 4}}))
        .sse(vec![SseStep::Raw(sse.to_owned())])
        .start()
        .await;
    let p = proxy::TestProxy::start(&anthropic_config(&up.base_url())).await;
    let body = r#"{"model":"f","max_tokens":4000,"temperature":0.9,"system":"theirs","messages":[{"role":"user","content":"hi"}],"tools":[{"name":"get_weather","input_schema":{"type":"object"}},{"name":"rm_rf","input_schema":{"type":"object"}}],"top_k":5}"#;
    let r = client::post_json(
        &p.url("/v1/messages"),
        body,
        &[("x-api-key", "sk-ant-client")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "native");
    let sent = &up.requests()[0];
    assert!(sent.path.ends_with("/messages"));
    assert_eq!(sent.header("x-api-key").as_deref(), Some("sk-ant-provider"));
    let m = sent.json();
    assert_eq!(m["system"], "VARIATION PROMPT");
    assert_eq!(m["max_tokens"], 100);
    assert_eq!(m["temperature"], 0.5);
    assert_eq!(m["top_k"], 5, "members the variation does not govern pass");
    assert_eq!(m["tools"].as_array().unwrap().len(), 1);

    let stream_body = r#"{"model":"f","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let s = client::post_stream(&p.url("/v1/messages"), stream_body, &[]).await;
    let got = s.rest(WAIT).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        sse,
        "a native stream is relayed unchanged"
    );
    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(r#"switchyard_requests_total{api="messages",flag="f",model="model-a",outcome="success",provider="up",variation="a"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn count_tokens_asks_anthropic_and_estimates_elsewhere() {
    std::env::set_var("SWITCHYARD_TEST_CLIENT_APIS_KEY", "sk-ant-provider");
    let up = MockUpstream::builder()
        .json_body(json!({"input_tokens": 42}))
        .start()
        .await;
    let p = proxy::TestProxy::start(&anthropic_config(&up.base_url())).await;
    let body = r#"{"model":"f","messages":[{"role":"user","content":"count me"}]}"#;
    let r = client::post_json(&p.url("/v1/messages/count_tokens"), body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["input_tokens"], 42);
    let sent = &up.requests()[0];
    assert!(sent.path.ends_with("/messages/count_tokens"));
    assert_eq!(sent.json()["model"], "model-a");
    assert_eq!(sent.json()["system"], "VARIATION PROMPT");
    assert!(sent.json().get("max_tokens").is_none());

    let chat_up = MockUpstream::builder().start().await;
    let p2 = proxy::TestProxy::start(&config(&openai_provider(
        &chat_up.base_url(),
        r#"["chat"]"#,
    )))
    .await;
    let r = client::post_json(&p2.url("/v1/messages/count_tokens"), body, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-switchyard-token-count").as_deref(),
        Some("estimate")
    );
    assert_eq!(r.json()["estimated"], true);
    assert!(r.json()["input_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(chat_up.request_count(), 0);
}

#[tokio::test]
async fn messages_errors_take_anthropics_envelope() {
    let up = MockUpstream::builder().status(400).start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/messages", "not json", 400, "invalid_request_error"),
        (
            "/v1/messages",
            r#"{"model":"f","messages":[{"role":"user","content":"x"}]}"#,
            400,
            "invalid_request_error",
        ),
        (
            "/v1/messages",
            r#"{"model":"nope","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
            404,
            "not_found_error",
        ),
        (
            "/v1/messages",
            r#"{"model":"f","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
            400,
            "invalid_request_error",
        ),
        (
            "/v1/messages/count_tokens",
            r#"{"model":"f"}"#,
            400,
            "invalid_request_error",
        ),
    ];
    for (path, body, status, kind) in cases {
        let r = client::post_json(&p.url(path), body, &[]).await;
        assert_eq!(r.status, *status, "{path} {body}: {}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], *kind, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 3);
    }
    let r = client::get(&p.url("/v1/messages")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["type"], "error");
}

#[tokio::test]
async fn bad_input_on_every_endpoint_is_a_400_in_its_shape() {
    let up = MockUpstream::builder().start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(
        &up.base_url(),
        r#"["chat","embeddings"]"#,
    )))
    .await;
    let cases: &[(&str, &str, &str)] = &[
        ("/v1/responses", "[1,2]", ""),
        ("/v1/responses", r#"{"model":"f"}"#, "input"),
        ("/v1/responses", r#"{"model":"f","input":5}"#, "input"),
        (
            "/v1/responses",
            r#"{"model":"f","input":"x","max_output_tokens":-1}"#,
            "max_output_tokens",
        ),
        ("/v1/responses", r#"{"model":7,"input":"x"}"#, "model"),
        ("/v1/embeddings", r#"{"model":"f"}"#, "input"),
        ("/v1/embeddings", r#"{"model":"f","input":[]}"#, "input"),
        (
            "/v1/embeddings",
            r#"{"model":"f","input":"x","stream":true}"#,
            "stream",
        ),
        ("/v1/embeddings", "{", ""),
    ];
    for (path, body, param) in cases {
        let r = client::post_json(&p.url(path), body, &[]).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        let v = r.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        if !param.is_empty() {
            assert_eq!(v["error"]["param"], *param, "{body}: {v}");
        }
    }
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn embeddings_are_decided_rewritten_and_measured() {
    let up = MockUpstream::builder()
        .json_body(json!({"object": "list", "model": "model-a",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
        .start()
        .await;
    let p = proxy::TestProxy::start(&config(&openai_provider(
        &up.base_url(),
        r#"["chat","embeddings"]"#,
    )))
    .await;
    let r = client::post_json(
        &p.url("/v1/embeddings"),
        r#"{"model":"f","input":"kb article","user":"u-9","encoding_format":"float"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["embedding"], json!([0.1, 0.2]));
    let sent = &up.requests()[0];
    assert!(sent.path.ends_with("/embeddings"));
    let m = sent.json();
    assert_eq!(
        m,
        json!({"model": "model-a", "input": "kb article", "user": "u-9", "encoding_format": "float"})
    );
    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(
            r#"api="embeddings",direction="in",flag="f",model="model-a",variation="a"} 3"#
        ),
        "{metrics}"
    );

    // A provider that does not take embeddings: a clear 400.
    let p2 =
        proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let r = client::post_json(
        &p2.url("/v1/embeddings"),
        r#"{"model":"f","input":"x"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("embeddings"), "{}", r.text());
}

#[tokio::test]
async fn the_mock_provider_speaks_every_api() {
    let p = proxy::TestProxy::start(&config("kind = \"mock\"")).await;
    let e = client::post_json(
        &p.url("/v1/embeddings"),
        r#"{"model":"f","input":["a","b"],"dimensions":4}"#,
        &[],
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.text());
    let v = e.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let again = client::post_json(
        &p.url("/v1/embeddings"),
        r#"{"model":"f","input":["a","b"],"dimensions":4}"#,
        &[],
    )
    .await;
    assert_eq!(again.json()["data"], v["data"], "deterministic");
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","input":"hi"}"#,
        &[],
    )
    .await;
    assert_eq!(r.json()["object"], "response", "{}", r.text());
    let m = client::post_json(
        &p.url("/v1/messages"),
        r#"{"model":"f","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(m.json()["type"], "message", "{}", m.text());
}

#[tokio::test]
async fn a_stream_failing_before_its_first_byte_falls_back_in_the_clients_shape() {
    let up = MockUpstream::builder().status(503).start().await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let s = client::post_stream(
        &p.url("/v1/responses"),
        r#"{"model":"f","input":"refund?","stream":true}"#,
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("x-switchyard-fallback").as_deref(),
        Some("upstream_5xx")
    );
    let ev = events(&s.rest(WAIT).await);
    assert_eq!(ev.last().unwrap().1["type"], "response.completed");
    let m = client::post_json(
        &p.url("/v1/messages"),
        r#"{"model":"f","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("x-switchyard-fallback").as_deref(),
        Some("upstream_5xx")
    );
    assert_eq!(m.json()["type"], "message");
    let ms = client::post_stream(
        &p.url("/v1/messages"),
        r#"{"model":"f","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    let ev = events(&ms.rest(WAIT).await);
    assert_eq!(ev.last().unwrap().0, "message_stop");
}

#[tokio::test]
async fn a_stream_cut_after_its_first_byte_ends_with_an_error_event_in_the_clients_shape() {
    let chunk = upstream::chunk_json("model-a", "partial");
    let up = MockUpstream::builder()
        .sse(vec![SseStep::Data(chunk)])
        .start()
        .await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let s = client::post_stream(
        &p.url("/v1/responses"),
        r#"{"model":"f","input":"x","stream":true}"#,
        &[],
    )
    .await;
    let ev = events(&s.rest(WAIT).await);
    let last = &ev.last().unwrap().1;
    assert_eq!(last["type"], "error", "{ev:?}");
    assert_eq!(last["code"], "stream_interrupted");
    assert_eq!(
        last["sequence_number"].as_u64().unwrap() as usize,
        ev.len() - 1
    );
    assert!(!ev.iter().any(|(_, v)| v["type"] == "response.completed"));

    let s = client::post_stream(
        &p.url("/v1/messages"),
        r#"{"model":"f","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        &[],
    )
    .await;
    let ev = events(&s.rest(WAIT).await);
    let (name, last) = ev.last().unwrap();
    assert_eq!(name, "error", "{ev:?}");
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(!ev.iter().any(|(n, _)| n == "message_stop"));
}

#[tokio::test]
async fn other_v1_paths_pass_through_streamed_with_the_providers_credentials() {
    std::env::set_var("SWITCHYARD_TEST_PASSTHROUGH_KEY", "sk-provider-pt");
    let up = MockUpstream::builder()
        .json_body(json!({"id": "file-1", "object": "file"}))
        .start()
        .await;
    let toml = format!(
        r#"
[server]
max_body_bytes = 4096
[providers.up]
kind = "openai"
base_url = "{}"
api_key_env = "SWITCHYARD_TEST_PASSTHROUGH_KEY"
[passthrough]
provider = "up"
[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "up"
model_id = "m"
[[flags.f.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]
"#,
        up.base_url()
    );
    let p = proxy::TestProxy::start(&toml).await;
    // A multipart upload 500 times larger than max_body_bytes.
    let boundary = "XyZ";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n").into_bytes();
    body.extend(std::iter::repeat_n(b'x', 2 << 20));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = client::request(
        http::Method::POST,
        &p.url("/v1/files?purpose=batch"),
        body.clone(),
        &[
            ("content-type", ct.as_str()),
            ("authorization", "Bearer sk-client"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "file-1");
    let sent = &up.requests()[0];
    assert!(sent.path.ends_with("/files"), "{}", sent.path);
    assert_eq!(sent.body.len(), body.len());
    assert!(sent.body == body, "the upload arrived byte for byte");
    assert_eq!(
        sent.header("authorization").as_deref(),
        Some("Bearer sk-provider-pt")
    );
    assert_eq!(sent.header("content-type").as_deref(), Some(ct.as_str()));
    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(
        metrics
            .contains(r#"switchyard_passthrough_requests_total{endpoint="files",status="2xx"} 1"#),
        "{metrics}"
    );

    // Without [passthrough]: a clear 404.
    let p2 =
        proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let r = client::post_json(&p2.url("/v1/moderations"), r#"{"input":"x"}"#, &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("passthrough"));
}

#[tokio::test]
async fn responses_to_an_anthropic_provider_cross_both_translations() {
    std::env::set_var("SWITCHYARD_TEST_CLIENT_APIS_KEY", "sk-ant-provider");
    let up = MockUpstream::builder()
        .json_body(json!({"id": "msg_x", "type": "message", "role": "assistant", "model": "model-a",
            "content": [{"type": "text", "text": "from claude"}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 3}}))
        .start()
        .await;
    let p = proxy::TestProxy::start(&anthropic_config(&up.base_url())).await;
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","input":"hello","instructions":"theirs","max_output_tokens":500,"user":"u"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], "from claude");
    assert_eq!(v["usage"]["input_tokens"], 12);
    let sent = &up.requests()[0];
    assert!(sent.path.ends_with("/messages"));
    let m = sent.json();
    assert_eq!(m["system"], "VARIATION PROMPT");
    assert_eq!(m["max_tokens"], 100);
    assert_eq!(
        m["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    );
}

#[tokio::test]
async fn kill_switch_forced_fallback_and_feedback_work_on_every_api() {
    std::env::set_var("SWITCHYARD_TEST_CLIENT_APIS_ADMIN", "tok-apis");
    let up = MockUpstream::builder().start().await;
    let toml = format!(
        "[admin]\ntokens = [{{ name = \"ops\", token_env = \"SWITCHYARD_TEST_CLIENT_APIS_ADMIN\" }}]\n{}",
        config(&openai_provider(&up.base_url(), r#"["chat"]"#))
    );
    let p = proxy::TestProxy::start(&toml).await;
    let auth = [("authorization", "Bearer tok-apis")];
    // Feedback by the x-request-id of a Responses answer and of a Messages answer.
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","user":"fb-1","input":"hi"}"#,
        &[],
    )
    .await;
    let m = client::post_json(&p.url("/v1/messages"), r#"{"model":"f","max_tokens":9,"metadata":{"user_id":"fb-2"},"messages":[{"role":"user","content":"hi"}]}"#, &[]).await;
    let ids = [
        r.header("x-request-id").unwrap(),
        m.header("x-request-id").unwrap(),
    ];
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"event_id": format!("e{i}"), "metric": "conversion", "value": 1, "request_id": id}))
        .collect();
    let mut accepted = Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        // Request ids reach the store off the request path: retry until both are known.
        let fb = client::post_json(
            &p.url("/v1/feedback"),
            &json!({"events": events}).to_string(),
            &[],
        )
        .await;
        accepted = fb.json();
        if accepted["accepted"].as_u64().unwrap_or(0) + accepted["duplicates"].as_u64().unwrap_or(0)
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        accepted["accepted"].as_u64().unwrap_or(0) + accepted["duplicates"].as_u64().unwrap_or(0),
        2,
        "{accepted}"
    );

    // Forced fallback: rule-based answers in each API's shape.
    let f = client::request(
        http::Method::PUT,
        &p.admin_url("/admin/flags/f/fallback"),
        r#"{"forced":true,"variation":null}"#,
        &auth,
    )
    .await;
    assert_eq!(f.status, 200, "{}", f.text());
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","user":"u","input":"refund?"}"#,
        &[],
    )
    .await;
    assert_eq!(r.header("x-switchyard-fallback").as_deref(), Some("forced"));
    assert_eq!(r.json()["object"], "response");
    let m = client::post_json(
        &p.url("/v1/messages"),
        r#"{"model":"f","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(m.header("x-switchyard-fallback").as_deref(), Some("forced"));
    assert_eq!(m.json()["type"], "message");
    let before = up.request_count();
    let f = client::request(
        http::Method::PUT,
        &p.admin_url("/admin/flags/f/fallback"),
        r#"{"forced":false,"variation":null}"#,
        &auth,
    )
    .await;
    assert_eq!(f.status, 200);

    // Kill switch: the off variation, marked.
    let k = client::request(
        http::Method::PUT,
        &p.admin_url("/admin/flags/f/enabled"),
        r#"{"enabled":false}"#,
        &auth,
    )
    .await;
    assert_eq!(k.status, 200, "{}", k.text());
    let r = client::post_json(
        &p.url("/v1/responses"),
        r#"{"model":"f","user":"u","input":"hi"}"#,
        &[],
    )
    .await;
    assert_eq!(
        r.header("x-switchyard-fallback").as_deref(),
        Some("kill_switch")
    );
    assert_eq!(r.header("x-switchyard-variation").as_deref(), Some("a"));
    assert_eq!(up.request_count(), before + 1);
}

#[tokio::test]
async fn nothing_a_provider_sends_after_the_end_of_a_stream_reaches_the_client() {
    let chunk = upstream::chunk_json("model-a", "hello");
    let up = MockUpstream::builder()
        .sse(vec![
            SseStep::Data(chunk),
            SseStep::Done,
            SseStep::Delay(Duration::from_millis(30)),
            SseStep::Data(r#"{"junk":"after the end"}"#.to_owned()),
        ])
        .start()
        .await;
    let p = proxy::TestProxy::start(&config(&openai_provider(&up.base_url(), r#"["chat"]"#))).await;
    let s = client::post_stream(
        &p.url("/v1/chat/completions"),
        r#"{"model":"f","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        &[],
    )
    .await;
    let body = String::from_utf8_lossy(&s.rest(WAIT).await).into_owned();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(!body.contains("junk"), "{body}");
}

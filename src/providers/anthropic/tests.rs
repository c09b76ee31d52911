//! Translation tests: requests, responses, errors and streams, on recorded and edge-case bodies.

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
    serde_json::from_slice(&from_anthropic_response(v.to_string().as_bytes(), 1700000000).unwrap())
        .unwrap()
}

#[test]
fn minimal_request_gets_default_max_tokens() {
    let out = req(json!({"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}));
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
    let e =
        req_err(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3}));
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
    let e = req_err(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}));
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

const RECORDED: &str = include_str!("../../../tests/fixtures/anthropic/stream_text_tool.sse");

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

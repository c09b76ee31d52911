//! Tests of the mock upstream itself, through a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/upstream.rs"]
mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::Notify;
use upstream::{MockUpstream, SseStep};

const WAIT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post_json(
    client: &HttpClient,
    up: &MockUpstream,
    path: &str,
    body: &Value,
) -> http::Response<Incoming> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{path}", up.addr()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-upstream-test")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    client.request(req).await.unwrap()
}

async fn body_string(resp: http::Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn chat(content: &str) -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": content},
        ],
    })
}

#[tokio::test]
async fn default_chat_completion_echoes_the_last_user_message() {
    let up = MockUpstream::builder().start().await;
    assert!(up.base_url().starts_with("http://127.0.0.1:"));
    assert!(up.base_url().ends_with("/v1"));

    let resp = post_json(&client(), &up, "/v1/chat/completions", &chat("hello")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();

    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert_eq!(choices[0]["message"]["content"], "echo: hello");
    assert_eq!(choices[0]["finish_reason"], "stop");
    let usage = &v["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(prompt > 0 && completion > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
}

#[tokio::test]
async fn content_parts_are_echoed_as_text() {
    let up = MockUpstream::builder().start().await;
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "part one, "},
            {"type": "text", "text": "part two"},
        ]}],
    });
    let resp = post_json(&client(), &up, "/v1/chat/completions", &body).await;
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "echo: part one, part two"
    );
}

#[tokio::test]
async fn models_endpoint_lists_one_model() {
    let up = MockUpstream::builder().start().await;
    let resp = client()
        .get(format!("{}/models", up.base_url()).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["id"], upstream::DEFAULT_MODEL);
}

#[tokio::test]
async fn unknown_path_is_an_openai_shaped_404() {
    let up = MockUpstream::builder().start().await;
    let resp = post_json(&client(), &up, "/v1/nothing-here", &json!({})).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn status_raw_body_and_extra_headers() {
    let up = MockUpstream::builder()
        .status(502)
        .raw_body("text/html", "<html><body>Bad gateway</body></html>")
        .header("retry-after", "1")
        .header("x-upstream-trace", "abc")
        .start()
        .await;
    let resp = post_json(&client(), &up, "/v1/chat/completions", &chat("hi")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["content-type"], "text/html");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["x-upstream-trace"], "abc");
    assert_eq!(
        body_string(resp).await,
        "<html><body>Bad gateway</body></html>"
    );
}

#[tokio::test]
async fn error_status_without_body_answers_an_openai_error() {
    let up = MockUpstream::builder().status(429).start().await;
    let resp = post_json(&client(), &up, "/v1/chat/completions", &chat("hi")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("429"));
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn fixed_json_body_and_helpers() {
    let fixed = upstream::chat_completion_json("fixed-model", "fixed answer");
    let up = MockUpstream::builder()
        .json_body(fixed.clone())
        .start()
        .await;
    let resp = post_json(&client(), &up, "/v1/chat/completions", &chat("hi")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert_eq!(v, fixed);
    assert_eq!(v["choices"][0]["message"]["content"], "fixed answer");
    assert_eq!(v["model"], "fixed-model");

    let chunk: Value = serde_json::from_str(&upstream::chunk_json("m", "tok")).unwrap();
    assert_eq!(chunk["object"], "chat.completion.chunk");
    assert_eq!(chunk["model"], "m");
    assert_eq!(chunk["choices"][0]["delta"]["content"], "tok");
}

#[tokio::test]
async fn latency_delays_the_response_headers() {
    let delay = Duration::from_millis(150);
    let up = MockUpstream::builder().latency(delay).start().await;
    let started = Instant::now();
    let resp = post_json(&client(), &up, "/v1/chat/completions", &chat("hi")).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn default_stream_without_usage() {
    let up = MockUpstream::builder().start().await;
    let mut body = chat("stream me");
    body["stream"] = json!(true);
    let resp = post_json(&client(), &up, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let data = sse_data(&body_string(resp).await);

    // role, three content deltas, finish, [DONE]
    assert_eq!(data.len(), 6, "{data:?}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..5]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o");
        assert!(c.get("usage").is_none() || c["usage"].is_null());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "echo: stream me");
    assert!(chunks[1..4]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn default_stream_with_include_usage_ends_with_a_usage_chunk() {
    let up = MockUpstream::builder().start().await;
    let mut body = chat("count me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post_json(&client(), &up, "/v1/chat/completions", &body).await;
    let data = sse_data(&body_string(resp).await);

    assert_eq!(data.len(), 7, "{data:?}");
    assert_eq!(data[6], "[DONE]");
    let last: Value = serde_json::from_str(&data[5]).unwrap();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    for d in &data[..5] {
        let c: Value = serde_json::from_str(d).unwrap();
        assert!(c["usage"].is_null());
    }
}

#[tokio::test]
async fn scripted_stream_delivers_chunks_before_the_gate_opens() {
    let gate = Arc::new(Notify::new());
    let up = MockUpstream::builder()
        .sse(vec![
            SseStep::Data(upstream::chunk_json("gpt-4o", "first")),
            SseStep::Gate(Arc::clone(&gate)),
            SseStep::Delay(Duration::from_millis(10)),
            SseStep::Raw(": keep-alive comment\n\n".to_owned()),
            SseStep::Data(upstream::chunk_json("gpt-4o", "second")),
            SseStep::Done,
        ])
        .start()
        .await;
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let resp = post_json(&client(), &up, "/v1/chat/completions", &body).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();

    // The first chunk arrives while the upstream is held at the gate.
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk before the gate opens")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    let payload = first
        .strip_prefix("data: ")
        .and_then(|s| s.strip_suffix("\n\n"))
        .expect("one whole SSE event per frame");
    let chunk: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(chunk["choices"][0]["delta"]["content"], "first");

    // Nothing more while the gate is closed.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), body.frame())
            .await
            .is_err(),
        "a chunk got past a closed gate"
    );

    gate.notify_one();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("rest of the stream")
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8(rest.to_vec()).unwrap();
    assert!(
        rest.starts_with(": keep-alive comment\n\ndata: {"),
        "{rest}"
    );
    assert!(rest.contains("\"second\""));
    assert!(rest.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn scripted_stream_only_answers_streaming_requests() {
    let up = MockUpstream::builder()
        .sse(vec![SseStep::Data("{}".to_owned()), SseStep::Done])
        .start()
        .await;
    let resp = post_json(&client(), &up, "/v1/chat/completions", &chat("plain")).await;
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: plain");
}

#[tokio::test]
async fn captures_requests_in_order() {
    let up = MockUpstream::builder().start().await;
    let client = client();
    post_json(&client, &up, "/v1/chat/completions", &chat("one")).await;
    let resp = client
        .get(format!("{}/models", up.base_url()).parse().unwrap())
        .await
        .unwrap();
    body_string(resp).await;
    assert!(up.wait_for_requests(2, WAIT).await);
    assert_eq!(up.request_count(), 2);

    let reqs = up.requests();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(
        reqs[0].header("authorization").as_deref(),
        Some("Bearer sk-upstream-test")
    );
    assert_eq!(
        reqs[0].header("Content-Type").as_deref(),
        Some("application/json")
    );
    assert_eq!(reqs[0].header("x-absent"), None);
    assert_eq!(reqs[0].json(), chat("one"));
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].path, "/v1/models");
    assert!(reqs[1].body.is_empty());

    // Fewer requests than asked for: false once the timeout runs out.
    assert!(!up.wait_for_requests(3, Duration::from_millis(50)).await);
}

#[tokio::test]
async fn wait_for_requests_wakes_on_arrival() {
    let up = MockUpstream::builder().start().await;
    let url = up.addr();
    let waiter = up.wait_for_requests(1, WAIT);
    let sender = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let req = Request::post(format!("http://{url}/v1/chat/completions"))
            .body(Full::new(Bytes::from(chat("late").to_string())))
            .unwrap();
        client().request(req).await.unwrap()
    };
    let (arrived, resp) = tokio::join!(waiter, sender);
    assert!(arrived);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn hang_captures_the_request_but_never_answers() {
    let up = MockUpstream::builder().hang().start().await;
    let client = client();
    let body = chat("anyone?");
    let pending = post_json(&client, &up, "/v1/chat/completions", &body);
    let outcome = tokio::time::timeout(Duration::from_millis(200), pending).await;
    assert!(outcome.is_err(), "a hanging upstream answered");
    assert!(up.wait_for_requests(1, WAIT).await);
    assert_eq!(up.requests()[0].json()["messages"][3]["content"], "anyone?");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let up = MockUpstream::builder().start().await;
    let pooled = client();
    for i in 0..3 {
        let resp = post_json(&pooled, &up, "/v1/chat/completions", &chat(&format!("{i}"))).await;
        body_string(resp).await;
    }
    assert_eq!(up.request_count(), 3);
    assert_eq!(up.connections_accepted(), 1);

    // A second client opens a second connection.
    let other = client();
    let resp = post_json(&other, &up, "/v1/chat/completions", &chat("x")).await;
    body_string(resp).await;
    assert_eq!(up.connections_accepted(), 2);
}

#[tokio::test]
async fn serves_http2_with_prior_knowledge() {
    let up = MockUpstream::builder().start().await;
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = post_json(&h2, &up, "/v1/chat/completions", &chat("h2")).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let v: Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: h2");
}

#[tokio::test]
async fn dropping_the_upstream_closes_its_listener() {
    let up = MockUpstream::builder().start().await;
    let addr = up.addr();
    drop(up);
    // Give the aborted accept task a moment to release the socket.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "listener still accepting after drop");
}

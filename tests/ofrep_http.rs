//! OFREP details the SDK tests do not reach: evaluations count as exposures only when
//! `[ofrep] exposures = true`, and the protocol's routes answer wrong methods and paths in its
//! error shape. (The OpenFeature SDKs drive OFREP in `tests/python/test_ofrep.py` and
//! `tests/node/ofrep.test.mjs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use proxy::TestProxy;

fn config(dir: &std::path::Path, exposures: bool) -> String {
    let token = dir.join("token");
    std::fs::write(&token, "ofrep-http-admin").unwrap();
    format!(
        r#"
[admin]
tokens = [{{ name = "ops", token_file = "{token}" }}]

[ofrep]
exposures = {exposures}

[state]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m-a"
[flags.f.variations.b]
provider = "mock"
model_id = "m-b"
[[flags.f.rules]]
id = "split"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]
"#,
        token = token.display()
    )
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "switchyard-ofrep-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn users_in_results(p: &TestProxy) -> u64 {
    let r = client::request(
        Method::GET,
        &p.admin_url("/admin/flags/f/results"),
        "",
        &[("authorization", "Bearer ofrep-http-admin")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Users per variation of the experiment's rule (the sample-ratio check's counts).
    r.json()["srm"]["observed"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap_or(0))
        .sum()
}

async fn evaluate(p: &TestProxy, user: &str) -> Value {
    let body = json!({"context": {"targetingKey": user}}).to_string();
    let r = client::post_json(&p.url("/ofrep/v1/evaluate/flags/f"), &body, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn evaluations_are_exposures_only_when_configured() {
    let dir = temp_dir("exposed");
    let on = TestProxy::start(&config(&dir, true)).await;
    for i in 0..6 {
        evaluate(&on, &format!("u{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while users_in_results(&on).await < 6 {
        assert!(
            Instant::now() < deadline,
            "the exposures never reached the results"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let off = TestProxy::start(&config(&temp_dir("not-exposed"), false)).await;
    for i in 0..6 {
        evaluate(&off, &format!("u{i}")).await;
    }
    // A chat request is an exposure: once it is counted, the evaluations before it would be too.
    let chat =
        json!({"model": "f", "user": "chat-user", "messages": [{"role": "user", "content": "hi"}]});
    let r = client::post_json(&off.url("/v1/chat/completions"), &chat.to_string(), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    while users_in_results(&off).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the chat exposure never reached the results"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(users_in_results(&off).await, 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn wrong_methods_and_paths_answer_in_the_protocol_shape() {
    let p = TestProxy::start(&config(&temp_dir("routes"), false)).await;
    let r = client::get(&p.url("/ofrep/v1/evaluate/flags/f")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
    assert_eq!(r.json()["errorCode"], "GENERAL");
    let r = client::post_json(&p.url("/ofrep/v2/evaluate/flags/f"), "{}", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["errorCode"], "GENERAL");
    // A percent-encoded key is decoded; a variable of the flag is read with `flag.variable`.
    let body = json!({"context": {"targetingKey": "u1"}}).to_string();
    let r = client::post_json(&p.url("/ofrep/v1/evaluate/flags/f%2Emodel_id"), &body, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert!(v["value"] == "m-a" || v["value"] == "m-b", "{v}");
    assert_eq!(v["key"], "f.model_id");
}

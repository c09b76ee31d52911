//! Bounded inputs and readable errors through HTTP on a real socket: bucketing id and attribute
//! limits (400 naming the limit), where the bucketing id came from (`x-switchyard-identity` and
//! the counter of requests without one), 413 with `Connection: close` read by a client still
//! sending, 408 for a stalled body, OpenAI-shaped bodies on the parser's own 400/414/431, and
//! the `Bearer` scheme matched case-insensitively.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use client::Resp;
use proxy::TestProxy;

const CHAT: &str = "/v1/chat/completions";

const CONFIG: &str = r#"
[server]
body_timeout = "1s"
linger_timeout = "10s"

[identity]
bucketing_id = ["header:x-switchyard-user", "body:user", "body:safety_identifier", "metadata:account"]
max_attributes = 4
max_attribute_name_bytes = 16
max_attribute_value_bytes = 32

[admin]
tokens = [{ name = "ops", token_env = "SWITCHYARD_LIMITS_TEST_TOKEN" }]

[providers.mock]
kind = "mock"
latency = "0ms"

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "model-a"
[flags.f.variations.b]
provider = "mock"
model_id = "model-b"
[[flags.f.rules]]
id = "split"
allocation = [{ variation = "a", end = 5000 }, { variation = "b", end = 10000 }]
"#;

async fn start() -> TestProxy {
    std::env::set_var("SWITCHYARD_LIMITS_TEST_TOKEN", "limits-secret-token");
    TestProxy::start(CONFIG).await
}

fn assert_limit(resp: &Resp, limit: &str) -> Value {
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], limit, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(limit),
        "the message names the limit: {message}"
    );
    v
}

fn chat_body(extra: Value) -> String {
    let mut body = json!({"model": "f", "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body.to_string()
}

#[tokio::test]
async fn bucketing_ids_and_attributes_beyond_their_limits_get_a_400_naming_the_limit() {
    let proxy = start().await;
    let url = proxy.url(CHAT);
    // At the limit: served.
    let ok = client::post_json(&url, &chat_body(json!({"user": "u".repeat(256)})), &[]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    // One byte over, from each source.
    let long = "u".repeat(257);
    let v = assert_limit(
        &client::post_json(&url, &chat_body(json!({"user": long})), &[]).await,
        "max_id_bytes",
    );
    assert_eq!(v["error"]["param"], "user");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("256"),
        "{v}"
    );
    assert_limit(
        &client::post_json(&url, &chat_body(json!({})), &[("x-switchyard-user", &long)]).await,
        "max_id_bytes",
    );
    assert_limit(
        &client::post_json(&url, &chat_body(json!({"safety_identifier": long})), &[]).await,
        "max_id_bytes",
    );
    assert_limit(
        &client::post_json(
            &url,
            &chat_body(json!({"metadata": {"account": long}})),
            &[],
        )
        .await,
        "max_id_bytes",
    );
    // A 1 MB id, as in the report that found it.
    let huge = "x".repeat(1 << 20);
    assert_limit(
        &client::post_json(&url, &chat_body(json!({"user": huge})), &[]).await,
        "max_id_bytes",
    );
    // Attributes: too many, a long name, a long value (headers and metadata alike).
    let many =
        json!({"user": "u1", "metadata": {"a1": "1", "a2": "2", "a3": "3", "a4": "4", "a5": "5"}});
    assert_limit(
        &client::post_json(&url, &chat_body(many), &[]).await,
        "max_attributes",
    );
    let long_name = json!({"user": "u1", "metadata": {"a-very-long-attribute-name": "1"}});
    assert_limit(
        &client::post_json(&url, &chat_body(long_name), &[]).await,
        "max_attribute_name_bytes",
    );
    let long_value = "v".repeat(33);
    assert_limit(
        &client::post_json(
            &url,
            &chat_body(json!({"user": "u1"})),
            &[("x-switchyard-attr-plan", &long_value)],
        )
        .await,
        "max_attribute_value_bytes",
    );
    // /v1/decide holds the same limits.
    let resp = client::get(&proxy.url(&format!("/v1/decide?flag=f&user={long}"))).await;
    assert_limit(&resp, "max_id_bytes");
    let resp =
        client::get(&proxy.url(&format!("/v1/decide?flag=f&user=u1&attr.plan={long_value}"))).await;
    assert_limit(&resp, "max_attribute_value_bytes");
}

#[tokio::test]
async fn the_identity_header_says_where_the_bucketing_id_came_from() {
    let proxy = start().await;
    let url = proxy.url(CHAT);
    type Case<'a> = (Value, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 5] = [
        (
            json!({"user": "u1"}),
            vec![("x-switchyard-user", "h1")],
            "header:x-switchyard-user",
        ),
        (json!({"user": "u1"}), vec![], "body:user"),
        (
            json!({"safety_identifier": "s1"}),
            vec![],
            "body:safety_identifier",
        ),
        (
            json!({"metadata": {"account": "acct-1"}}),
            vec![],
            "metadata:account",
        ),
        (json!({}), vec![], "random"),
    ];
    for (extra, headers, expected) in cases {
        let resp = client::post_json(&url, &chat_body(extra), &headers).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        assert_eq!(
            resp.header("x-switchyard-identity").as_deref(),
            Some(expected),
            "{headers:?}"
        );
    }
    // Requests without an id are counted per flag.
    for _ in 0..2 {
        client::post_json(&url, &chat_body(json!({})), &[]).await;
    }
    let metrics = client::get(&proxy.admin_url("/metrics")).await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_requests_without_id_total{flag=\"f\"}"))
        .unwrap_or_else(|| panic!("no without-id counter in\n{metrics}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, 3.0, "{line}");
}

/// Sends a head announcing `len` bytes, then streams the body in 64 KiB pieces while reading
/// the answer, as a client that does not look before it sends would; returns what it read.
async fn send_large_body(proxy: &TestProxy, path: &str, len: usize, chunked: bool) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {len}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let piece = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let res = if chunked {
                let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
                c.extend_from_slice(&piece);
                c.extend_from_slice(b"\r\n");
                wr.write_all(&c).await
            } else {
                wr.write_all(&piece[..piece.len().min(len - sent)]).await
            };
            if res.is_err() {
                return Err(sent);
            }
            sent += piece.len();
        }
        if chunked {
            let _ = wr.write_all(b"0\r\n\r\n").await;
        }
        Ok(sent)
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    let written = writer.await.unwrap();
    assert!(
        written.is_ok(),
        "the client could not send its body: the server closed too early ({written:?})"
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_16_mb_body_gets_a_readable_413_with_connection_close() {
    let proxy = start().await;
    for chunked in [false, true] {
        let text = send_large_body(&proxy, CHAT, 16 << 20, chunked).await;
        assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{text}");
        assert!(text.contains("\"code\":\"body_too_large\""), "{text}");
    }
    // Feedback too.
    let text = send_large_body(&proxy, "/v1/feedback", 16 << 20, false).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    // An early 404 while a body is on its way is read too.
    let text = send_large_body(&proxy, "/v1/nowhere", 8 << 20, false).await;
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stalled_body_gets_a_408_in_the_openai_shape() {
    let proxy = start().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!("POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{\"model\"")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server must answer and close");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
}

#[tokio::test]
async fn parser_errors_get_an_openai_shaped_body() {
    let proxy = start().await;
    let within = Duration::from_secs(10);
    let cases: [(Vec<u8>, u16, &str); 3] = [
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "invalid_http"),
        (
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let raw = client::raw_exchange(proxy.addr, &request, false, within).await;
        assert_eq!(raw.status(), Some(status), "{}", raw.text());
        let body: Value =
            serde_json::from_str(&raw.body()).unwrap_or_else(|e| panic!("{e}: {}", raw.text()));
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_readyz_shows_no_details() {
    let proxy = start().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let resp = client::request(
            Method::GET,
            &proxy.admin_url("/admin/flags"),
            "",
            &[("authorization", &format!("{scheme} limits-secret-token"))],
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{scheme}: {}", resp.text());
    }
    let wrong = client::request(
        Method::GET,
        &proxy.admin_url("/admin/flags"),
        "",
        &[("authorization", "bearer LIMITS-SECRET-TOKEN")],
    )
    .await;
    assert_eq!(
        wrong.status,
        StatusCode::UNAUTHORIZED,
        "the token itself is exact"
    );
    let ready = client::get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    // Ready, and which replica leads the fleet (names only: no file, figures or secrets).
    let mut ready = ready.json();
    let fleet = ready
        .as_object_mut()
        .and_then(|o| o.remove("fleet"))
        .expect("/readyz says who leads");
    assert_eq!(ready, json!({"status": "ready"}));
    let mut keys: Vec<&str> = fleet
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["leader", "leader_replica", "replica"], "{fleet}");
    let status = client::request(
        Method::GET,
        &proxy.admin_url("/admin/status"),
        "",
        &[("authorization", "bearer limits-secret-token")],
    )
    .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text());
    assert_eq!(status.json()["config"].as_str().map(str::len), Some(16));
}

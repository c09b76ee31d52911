//! Fuzzing that keeps running: property-based fuzzers over the request parsers of every client
//! API, the config loader, audience evaluation and the SSE relay (through a real proxy in
//! front of an upstream sending arbitrary bytes), and a protocol-level fuzz of the real server
//! (malformed HTTP, framing tricks, huge headers): never a panic, a 5xx of its own or a hang.
//!
//! The default run is a quick pass; `SWITCHYARD_FUZZ_CASES=N` runs N cases per fuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use proxy::TestProxy;

fn cases(default: u32) -> u32 {
    std::env::var("SWITCHYARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: cases(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Arbitrary JSON, biased towards the members the parsers look at.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let keys = prop_oneof![
            Just("model".to_owned()),
            Just("messages".to_owned()),
            Just("input".to_owned()),
            Just("stream".to_owned()),
            Just("user".to_owned()),
            Just("metadata".to_owned()),
            Just("max_tokens".to_owned()),
            Just("temperature".to_owned()),
            Just("tools".to_owned()),
            Just("system".to_owned()),
            Just("role".to_owned()),
            Just("content".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies: raw bytes, or arbitrary JSON.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

#[test]
fn the_request_parsers_of_every_client_api_never_panic() {
    runner(256)
        .run(&body(), |b| {
            use switchyard::api::Inbound;
            let _ = switchyard::proxy::request::ChatRequest::parse(&b);
            // Whatever parses is translated to chat and answers are translated back: the
            // translations never panic either (an arbitrary body doubles as an arbitrary answer).
            if let Ok(r) = switchyard::api::responses::ResponsesRequest::parse(&b) {
                let _ = r.to_chat();
                let _ = r.answer_from_chat(&b);
                let _ = r.last_user_text();
            }
            if let Ok(r) = switchyard::api::messages::MessagesRequest::parse(&b) {
                let _ = r.to_chat();
                let _ = r.answer_from_chat(&b);
                let _ = r.last_user_text();
            }
            if let Ok(r) = switchyard::api::messages::MessagesRequest::parse_count(&b) {
                let _ = r.estimate_tokens();
            }
            let _ = switchyard::api::embeddings::EmbeddingsRequest::parse(&b);
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_config_loader_never_panics_on_mangled_files() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let lines: Vec<String> = shipped.lines().map(str::to_owned).collect();
    let n = lines.len();
    // Delete, duplicate or mangle lines of the shipped file; or arbitrary text.
    let edit = (0..n, 0..4u8, ".{0,16}");
    let strategy = prop_oneof![
        prop::collection::vec(edit, 1..6).prop_map(move |edits| {
            let mut l = lines.clone();
            for (i, kind, text) in edits {
                let i = i.min(l.len().saturating_sub(1));
                if l.is_empty() {
                    break;
                }
                match kind {
                    0 => {
                        l.remove(i);
                    }
                    1 => {
                        let dup = l[i].clone();
                        l.insert(i, dup);
                    }
                    2 => l[i] = text,
                    _ => l[i].push_str(&text),
                }
            }
            l.join("\n")
        }),
        ".{0,200}",
    ];
    runner(128)
        .run(&strategy, |src| {
            let _ = switchyard::Config::parse(&src, "fuzz.toml");
            Ok(())
        })
        .unwrap();
}

#[test]
fn audience_evaluation_never_panics() {
    use switchyard::flags::audience::{Attributes, Condition};
    let attrs = prop::collection::btree_map("[a-c]", json_value(), 0..4);
    runner(256)
        .run(&(json_value(), attrs), |(cond, attrs)| {
            let map: serde_json::Map<String, Value> = attrs.into_iter().collect();
            let attrs = Attributes::from_json_object(&map);
            if let Ok(c) = Condition::from_json(&cond) {
                let _ = c.evaluate(&attrs);
            }
            Ok(())
        })
        .unwrap();
}

/// An upstream that answers each connection with the next queued raw response, then closes.
async fn raw_upstream(queue: Arc<Mutex<VecDeque<Vec<u8>>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let next = queue.lock().unwrap().pop_front().unwrap_or_default();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut head = Vec::new();
                // Read the request (head and a small body) before answering.
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&next).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_sse_relay_ends_every_stream_cleanly_whatever_the_upstream_sends() {
    let queue = Arc::new(Mutex::new(VecDeque::new()));
    let up = raw_upstream(queue.clone()).await;
    let config = proxy::basic_config(&format!("http://{up}/v1")).replace(
        "timeout = \"5s\"",
        "timeout = \"5s\"\nretry = { attempts = 1 }",
    );
    let proxy = TestProxy::start(&config).await;
    let piece = prop_oneof![
        Just(b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n".to_vec()),
        Just(b"data: [DONE]\n\n".to_vec()),
        Just(b": comment\n\n".to_vec()),
        Just(b"event: error\ndata: {\"error\":{\"message\":\"x\"}}\n\n".to_vec()),
        Just(b"\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    let mut runner = runner(24);
    let samples: Vec<Vec<Vec<u8>>> = (0..runner.config().cases)
        .map(|_| {
            prop::collection::vec(piece.clone(), 0..8)
                .new_tree(&mut runner)
                .unwrap()
                .current()
        })
        .collect();
    let body = json!({"model": "f", "user": "u1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for pieces in samples {
        let mut resp =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                .to_vec();
        for p in &pieces {
            resp.extend_from_slice(p);
        }
        queue.lock().unwrap().push_back(resp);
        let r = client::post_json(&proxy.url("/v1/chat/completions"), &body, &[]).await;
        let text = r.text();
        match r.status.as_u16() {
            // Bytes an upstream sends after its [DONE] are relayed too; a client stops at [DONE].
            200 => assert!(
                text.contains("data: [DONE]\n\n") || text.contains("\"error\""),
                "a stream that ends neither with [DONE] nor an error event: {text:?} from {pieces:?}"
            ),
            502 | 504 => assert!(text.contains("\"error\""), "{text}"),
            s => panic!("status {s} for {pieces:?}: {text}"),
        }
    }
}

/// Sends `request` on a fresh connection; returns the status of the answer, if any.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let raw = client::raw_exchange(addr, request, true, Duration::from_secs(20)).await;
    assert!(
        raw.closed || raw.status().is_some(),
        "no answer and no close: a hang"
    );
    raw.status()
}

#[tokio::test]
async fn the_real_server_survives_malformed_http_framing_tricks_and_huge_headers() {
    let config = "[server]\nheader_timeout = \"2s\"\n[providers.mock]\nkind = \"mock\"\n[flags.f]\noff_variation = \"a\"\n[flags.f.variations.a]\nprovider = \"mock\"\nmodel_id = \"m\"\n[[flags.f.rules]]\nid = \"r\"\nallocation = [{ variation = \"a\", end = 10000 }]\n";
    let proxy = TestProxy::start(config).await;
    let chat = json!({"model": "f", "user": "u", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let mut tricks: Vec<Vec<u8>> = vec![
        b"\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: x\r\nx: \x00\x01\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n".to_vec(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ngarbage-frames".to_vec(),
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE\r\n\r\n".to_vec(),
        format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(100_000)).into_bytes(),
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "b".repeat(2 << 20)).into_bytes(),
        {
            let mut many = b"GET / HTTP/1.1\r\nhost: x\r\n".to_vec();
            for i in 0..5000 {
                many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
            many.extend_from_slice(b"\r\n");
            many
        },
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nx-switchyard-user: {}\r\n\r\n{chat}",
            chat.len(),
            "u".repeat(100_000)
        )
        .into_bytes(),
    ];
    // And random mutations of a valid request.
    let valid = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{chat}",
        chat.len()
    )
    .into_bytes();
    let mut runner = runner(64);
    let mutation = prop::collection::vec((0..valid.len(), any::<u8>(), 0..3u8), 1..8);
    for _ in 0..runner.config().cases {
        let edits = mutation.new_tree(&mut runner).unwrap().current();
        let mut r = valid.clone();
        for (i, b, kind) in edits {
            let i = i.min(r.len().saturating_sub(1));
            match kind {
                0 => r[i] = b,
                1 => r.insert(i, b),
                _ => {
                    r.remove(i);
                }
            }
        }
        tricks.push(r);
    }
    for t in &tricks {
        if let Some(status) = exchange(proxy.addr, t).await {
            assert!(
                status < 500,
                "status {status} for {:?}",
                String::from_utf8_lossy(&t[..t.len().min(200)])
            );
        }
        // The admin listener's parser is the same; it must hold too.
        if let Some(status) = exchange(proxy.admin_addr, t).await {
            assert!(status < 500, "admin: status {status}");
        }
    }
    // Still serving.
    let r = client::post_json(&proxy.url("/v1/chat/completions"), &chat, &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let _: Option<TcpStream> = None;
}

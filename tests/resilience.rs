//! Resilience through the real interfaces: the proxy on a real socket in front of a
//! fault-injecting upstream (`support/faults.rs`), every scenario checked from the client's
//! side (status, body shape, headers) and on `/metrics` (each counter equal to the faults
//! injected).
//!
//! Anthropic's in-stream `event: error` is covered too, through the anthropic provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/faults.rs"]
mod faults;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use client::{Http, Resp};
use faults::{closed_port_url, Fault, FaultServer, Rng};
use proxy::TestProxy;

const CHAT: &str = "/v1/chat/completions";

const FALLBACK_HEADER: &str = "x-switchyard-fallback";
const SERVED_BY_HEADER: &str = "x-switchyard-served-by";
const VARIATION_HEADER: &str = "x-switchyard-variation";

const ATTEMPTS: &str = "switchyard_upstream_attempts_total";
const RETRIES: &str = "switchyard_retries_total";
const TRIGGERS: &str = "switchyard_fallback_triggers_total";
const REQUESTS: &str = "switchyard_requests_total";
const ERRORS: &str = "switchyard_errors_total";
const CIRCUIT: &str = "switchyard_circuit_state";

/// The global rule-based responder every config here carries.
const GLOBAL_FALLBACK: &str = r#"
[fallback]
default_reply = "GLOBAL-DEFAULT"
rules = [{ pattern = "(?i)refund", reply = "GLOBAL-REFUND" }]
"#;

/// Three attempts in all, with short backoffs so tests stay quick.
const FAST_RETRY: &str = r#"retry = { attempts = 3, backoff = "5ms", max_backoff = "20ms" }"#;
/// No retries.
const NO_RETRY: &str = "retry = { attempts = 1 }";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An OpenAI-compatible provider section.
fn provider(name: &str, base_url: &str, extra: &str) -> String {
    format!("\n[providers.{name}]\nkind = \"openai\"\nbase_url = \"{base_url}\"\ntimeout = \"10s\"\n{extra}\n")
}

/// A flag whose only rule sends everyone to the first variation. `flag_lines` are the flag's
/// own keys (they must include `off_variation`); each variation is `(key, provider, extra
/// lines)` and gets `model_id = "model-<key>"`.
fn flag(key: &str, flag_lines: &str, variations: &[(&str, &str, &str)]) -> String {
    let mut out = format!("\n[flags.{key}]\n{flag_lines}\n");
    for (v, p, extra) in variations {
        out.push_str(&format!(
            "\n[flags.{key}.variations.{v}]\nprovider = \"{p}\"\nmodel_id = \"model-{v}\"\n{extra}\n"
        ));
    }
    out.push_str(&format!(
        "\n[[flags.{key}.rules]]\nid = \"everyone\"\nallocation = [{{ variation = \"{}\", end = 10000 }}]\n",
        variations[0].0
    ));
    out
}

/// A chat request for `model` with one user message.
fn chat(model: &str, text: &str, stream: bool) -> String {
    json!({
        "model": model,
        "user": "user-1",
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
    .to_string()
}

async fn post(proxy: &TestProxy, body: &str) -> Resp {
    Http::new().post_json(&proxy.url(CHAT), body, &[]).await
}

/// `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim().to_owned())
        })
        .collect()
}

/// The assistant text of a streamed answer (its `delta.content` pieces joined).
fn stream_text(data: &[String]) -> String {
    data.iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A rule-based (non-streamed) answer with `reason` and `reply`.
fn assert_rule_based(resp: &Resp, reason: &str, reply: &str) {
    assert_eq!(resp.status, StatusCode::OK, "body: {}", resp.text());
    assert_eq!(
        resp.header(FALLBACK_HEADER).as_deref(),
        Some(reason),
        "fallback header; body {}",
        resp.text()
    );
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["model"], "rule-based", "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], reply, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
}

/// A rule-based streamed answer with `reason` and `reply`, ending in `[DONE]`.
fn assert_rule_based_stream(resp: &Resp, reason: &str, reply: &str) {
    assert_eq!(resp.status, StatusCode::OK, "body: {}", resp.text());
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "content-type {:?}",
        resp.header("content-type")
    );
    assert_eq!(resp.header(FALLBACK_HEADER).as_deref(), Some(reason));
    let text = resp.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    let data = sse_data(&text);
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        assert_eq!(v["model"], "rule-based", "{v}");
    }
    assert_eq!(stream_text(&data), reply, "{text}");
}

/// An OpenAI-shaped error with `status` and `code`.
fn assert_openai_error(resp: &Resp, status: u16, code: &str) -> Value {
    assert_eq!(resp.status.as_u16(), status, "body {}", resp.text());
    let v = resp.json();
    let err = &v["error"];
    assert!(err["message"].is_string(), "error.message: {v}");
    assert!(err["type"].is_string(), "error.type: {v}");
    assert_eq!(err["code"], code, "error.code: {v}");
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    v
}

/// The samples of a Prometheus text exposition.
struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => (
                    name.to_owned(),
                    parse_labels(rest.strip_suffix('}').expect("closing brace")),
                ),
            };
            out.push((name, labels, value));
        }
        Metrics(out)
    }

    /// The sum over every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Asserts `sum(name, labels) == want`, showing the family when it is not.
    fn expect(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let got = self.sum(name, labels);
        if got != want {
            let family: Vec<String> = self
                .0
                .iter()
                .filter(|(n, _, v)| n == name && *v != 0.0)
                .map(|(_, l, v)| format!("{l:?} = {v}"))
                .collect();
            panic!(
                "{name}{labels:?} = {got}, expected {want}; non-zero series:\n{}",
                family.join("\n")
            );
        }
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "label value quote in {s}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

async fn scrape(proxy: &TestProxy) -> Metrics {
    let resp = client::get(&proxy.admin_url("/metrics")).await;
    assert_eq!(resp.status, StatusCode::OK);
    Metrics::parse(&resp.text())
}

/// Scrapes until `sum(name, labels) == want` or `within` runs out (bounded polling of a
/// condition the proxy reaches asynchronously), and returns the last scrape.
async fn scrape_until(
    proxy: &TestProxy,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
    within: Duration,
) -> Metrics {
    let deadline = Instant::now() + within;
    loop {
        let m = scrape(proxy).await;
        if m.sum(name, labels) == want || Instant::now() >= deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Connection failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_error_is_retried_then_answered_rule_based() {
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &closed_port_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "I want a refund", false)).await;
    assert_rule_based(&resp, "connect_error", "GLOBAL-REFUND");
    assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("a"));
    assert_eq!(resp.header("x-switchyard-flag").as_deref(), Some("f"));
    assert!(resp.header("x-request-id").is_some());
    assert_eq!(resp.header(SERVED_BY_HEADER), None);

    let m = scrape(&proxy).await;
    // 1 attempt + 2 retries.
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "connect_error")],
        3.0,
    );
    m.expect(ATTEMPTS, &[], 3.0);
    m.expect(
        RETRIES,
        &[("provider", "up"), ("reason", "connect_error")],
        2.0,
    );
    m.expect(RETRIES, &[], 2.0);
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("variation", "a"),
            ("reason", "connect_error"),
            ("behavior", "rule-based"),
        ],
        1.0,
    );
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(REQUESTS, &[("flag", "f"), ("outcome", "fallback")], 1.0);
    m.expect(REQUESTS, &[], 1.0);
}

#[tokio::test]
async fn reset_before_the_answer_is_retried_as_a_connect_error() {
    let up = FaultServer::start(Fault::Ok).await;
    up.push(Fault::Reset);
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    assert_eq!(resp.json()["model"], "model-a");
    assert_eq!(up.served("reset"), 1);
    assert_eq!(up.served("ok"), 1);

    let m = scrape(&proxy).await;
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "connect_error")],
        1.0,
    );
    m.expect(ATTEMPTS, &[("provider", "up"), ("outcome", "success")], 1.0);
    m.expect(
        RETRIES,
        &[("provider", "up"), ("reason", "connect_error")],
        1.0,
    );
    m.expect(TRIGGERS, &[], 0.0);
    m.expect(REQUESTS, &[("outcome", "success")], 1.0);
    m.expect(REQUESTS, &[], 1.0);
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hung_upstream_falls_back_at_the_first_byte_timeout() {
    let up = FaultServer::start(Fault::Hang).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider(
            "up",
            &up.base_url(),
            &format!("first_byte_timeout = \"200ms\"\n{FAST_RETRY}")
        ),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let started = Instant::now();
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    let elapsed = started.elapsed();
    assert_rule_based(&resp, "timeout", "GLOBAL-DEFAULT");
    assert!(
        elapsed >= Duration::from_millis(180) && elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    // The proxy gave up on the hung connection.
    assert!(
        up.wait_closed_early("hang", 1, Duration::from_secs(2))
            .await,
        "the proxy never closed the hung connection"
    );
    assert_eq!(up.served("hang"), 1, "a timeout is not retried");

    let m = scrape(&proxy).await;
    m.expect(ATTEMPTS, &[("provider", "up"), ("outcome", "timeout")], 1.0);
    m.expect(ATTEMPTS, &[], 1.0);
    m.expect(RETRIES, &[], 0.0);
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("reason", "timeout"),
            ("behavior", "rule-based"),
        ],
        1.0,
    );
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 1.0);
}

#[tokio::test]
async fn the_total_timeout_bounds_a_body_that_stops_midway() {
    // The head arrives at once, half the body, then nothing: only the total timeout can end it.
    let up = FaultServer::start(Fault::StreamStallAfter(1)).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), NO_RETRY)
            .replace("timeout = \"10s\"", "timeout = \"400ms\""),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let started = Instant::now();
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    let elapsed = started.elapsed();
    assert_rule_based(&resp, "timeout", "GLOBAL-DEFAULT");
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    assert!(
        up.wait_closed_early("stream_stall", 1, Duration::from_secs(2))
            .await
    );

    let m = scrape(&proxy).await;
    m.expect(ATTEMPTS, &[("provider", "up"), ("outcome", "timeout")], 1.0);
    m.expect(TRIGGERS, &[("reason", "timeout")], 1.0);
    m.expect(TRIGGERS, &[], 1.0);
}

#[tokio::test]
async fn the_total_timeout_ends_a_stream_that_never_finishes() {
    let up = FaultServer::start(Fault::Trickle(Duration::from_millis(40))).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), NO_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[(
                "a",
                "up",
                "fallback_behavior = \"rule-based\"\ntimeout = \"600ms\"\nidle_timeout = \"5s\""
            )]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let started = Instant::now();
    let resp = post(&proxy, &chat("f", "hello", true)).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "ended after {elapsed:?}");
    assert_eq!(resp.status, StatusCode::OK);
    let text = resp.text();
    let data = sse_data(&text);
    assert!(data.len() >= 2, "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{last}");
    assert_eq!(last["error"]["type"], "upstream_error", "{last}");
    assert!(
        up.wait_closed_early("trickle", 1, Duration::from_secs(2))
            .await
    );

    let m = scrape(&proxy).await;
    m.expect(TRIGGERS, &[("reason", "stream_interrupted")], 1.0);
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(REQUESTS, &[("outcome", "upstream_error")], 1.0);
}

#[tokio::test]
async fn the_total_timeout_of_a_stream_counts_from_the_request_start() {
    // The first chunk takes 1.5 s, then one every 1.5 s; the whole request may take 2 s. Counted
    // from the request's start the stream ends near 2 s; counted from the first chunk it would
    // end near 3.5 s: the bound below sits between, with room for a loaded machine.
    let up = FaultServer::start(Fault::Trickle(Duration::from_millis(1500))).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), NO_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[(
                "a",
                "up",
                "fallback_behavior = \"rule-based\"\ntimeout = \"2s\"\nidle_timeout = \"10s\""
            )]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let started = Instant::now();
    let resp = post(&proxy, &chat("f", "hello", true)).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, StatusCode::OK);
    let text = resp.text();
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{text}");
    assert!(
        elapsed < Duration::from_millis(3200),
        "a stream with a 2 s total timeout ran for {elapsed:?}"
    );
}

#[tokio::test]
async fn a_variation_timeout_overrides_the_providers() {
    // Every answer takes 700 ms; the provider allows 10 s.
    let up = FaultServer::start(Fault::Delay(Duration::from_millis(700))).await;
    let variation = "fallback_behavior = \"rule-based\"";
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}{}{}",
        provider("up", &up.base_url(), NO_RETRY),
        flag(
            "short",
            "off_variation = \"a\"",
            &[("a", "up", &format!("{variation}\ntimeout = \"300ms\""))]
        ),
        flag(
            "short_first_byte",
            "off_variation = \"c\"",
            &[(
                "c",
                "up",
                &format!("{variation}\nfirst_byte_timeout = \"300ms\"")
            )]
        ),
        flag(
            "inherits",
            "off_variation = \"b\"",
            &[("b", "up", variation)]
        ),
    );
    let proxy = TestProxy::start(&cfg).await;

    for model in ["short", "short_first_byte"] {
        let started = Instant::now();
        let resp = post(&proxy, &chat(model, "hello", false)).await;
        let elapsed = started.elapsed();
        assert_rule_based(&resp, "timeout", "GLOBAL-DEFAULT");
        assert!(
            elapsed < Duration::from_millis(650),
            "{model}: answered after {elapsed:?}"
        );
    }
    let started = Instant::now();
    let resp = post(&proxy, &chat("inherits", "hello", false)).await;
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    assert_eq!(resp.json()["model"], "model-b");

    let m = scrape(&proxy).await;
    m.expect(ATTEMPTS, &[("provider", "up"), ("outcome", "timeout")], 2.0);
    m.expect(ATTEMPTS, &[("provider", "up"), ("outcome", "success")], 1.0);
    m.expect(TRIGGERS, &[("flag", "short"), ("reason", "timeout")], 1.0);
    m.expect(
        TRIGGERS,
        &[("flag", "short_first_byte"), ("reason", "timeout")],
        1.0,
    );
    m.expect(TRIGGERS, &[], 2.0);
    m.expect(
        REQUESTS,
        &[("flag", "inherits"), ("outcome", "success")],
        1.0,
    );
}

// ---------------------------------------------------------------------------------------------
// Error statuses
// ---------------------------------------------------------------------------------------------

/// Providers `up_a` (→ `fa`) and `up_b` (→ `fb`), flag `f` with variations `a` (on `up_a`,
/// falling back to the stable `b`) and `b` (on `up_b`, falling back rule-based).
fn stable_chain(fa: &FaultServer, fb: &FaultServer, a_extra: &str, b_extra: &str) -> String {
    format!(
        "{GLOBAL_FALLBACK}{}{}{}",
        provider("up_a", &fa.base_url(), a_extra),
        provider("up_b", &fb.base_url(), b_extra),
        flag(
            "f",
            "off_variation = \"a\"\nstable_variation = \"b\"",
            &[
                ("a", "up_a", "fallback_behavior = \"stable\""),
                ("b", "up_b", "fallback_behavior = \"rule-based\""),
            ]
        )
    )
}

#[tokio::test]
async fn upstream_5xx_is_retried_then_the_stable_variation_answers() {
    let fa = FaultServer::start(Fault::status(500)).await;
    let fb = FaultServer::start(Fault::Ok).await;
    let proxy = TestProxy::start(&stable_chain(&fa, &fb, FAST_RETRY, FAST_RETRY)).await;

    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.header(FALLBACK_HEADER).as_deref(),
        Some("upstream_5xx")
    );
    assert_eq!(resp.header(SERVED_BY_HEADER).as_deref(), Some("b"));
    assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("a"));
    let v = resp.json();
    assert_eq!(v["model"], "model-b", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "answer from model-b");
    assert_eq!(fa.served("status_500"), 3, "attempts = 3");
    assert_eq!(fb.request_count(), 1);
    assert_eq!(fb.requests()[0].model, "model-b");

    // The same for a stream: the stable variation's stream, relayed whole.
    let resp = post(&proxy, &chat("f", "hello", true)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.header(FALLBACK_HEADER).as_deref(),
        Some("upstream_5xx")
    );
    assert_eq!(resp.header(SERVED_BY_HEADER).as_deref(), Some("b"));
    let text = resp.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let data = sse_data(&text);
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["model"], "model-b", "{text}");
    assert_eq!(stream_text(&data), "c0 c1 c2 c3 ");
    assert!(
        !text.contains("\"usage\""),
        "usage the client did not ask for"
    );
    assert_eq!(fa.served("status_500"), 6);
    assert_eq!(fb.request_count(), 2);

    let m = scrape(&proxy).await;
    m.expect(
        ATTEMPTS,
        &[("provider", "up_a"), ("outcome", "upstream_5xx")],
        6.0,
    );
    m.expect(
        ATTEMPTS,
        &[("provider", "up_b"), ("outcome", "success")],
        2.0,
    );
    m.expect(ATTEMPTS, &[], 8.0);
    m.expect(
        RETRIES,
        &[("provider", "up_a"), ("reason", "upstream_5xx")],
        4.0,
    );
    m.expect(RETRIES, &[], 4.0);
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("variation", "a"),
            ("reason", "upstream_5xx"),
            ("behavior", "stable"),
        ],
        2.0,
    );
    m.expect(TRIGGERS, &[], 2.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 2.0);
    m.expect(REQUESTS, &[], 2.0);
}

#[tokio::test]
async fn rate_limited_with_retry_after_zero_is_retried_and_succeeds() {
    let up = FaultServer::start(Fault::Ok).await;
    up.push(Fault::status_retry_after(429, "0"));
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    assert_eq!(resp.json()["model"], "model-a");
    assert_eq!(up.served("status_429"), 1);
    assert_eq!(up.served("ok"), 1);

    let m = scrape(&proxy).await;
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "rate_limited")],
        1.0,
    );
    m.expect(ATTEMPTS, &[("provider", "up"), ("outcome", "success")], 1.0);
    m.expect(
        RETRIES,
        &[("provider", "up"), ("reason", "rate_limited")],
        1.0,
    );
    m.expect(RETRIES, &[], 1.0);
    m.expect(TRIGGERS, &[], 0.0);
    m.expect(REQUESTS, &[("outcome", "success")], 1.0);
    m.expect(REQUESTS, &[], 1.0);
}

#[tokio::test]
async fn rate_limited_with_retry_after_inside_the_cap_waits_that_long_then_succeeds() {
    let up = FaultServer::start(Fault::Ok).await;
    up.push(Fault::status_retry_after(429, "1"));
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider(
            "up",
            &up.base_url(),
            r#"retry = { attempts = 3, backoff = "5ms", retry_after_cap = "5s" }"#
        ),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let started = Instant::now();
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    let took = started.elapsed();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    // The retry waited the second the provider asked for (not the 5 ms backoff).
    assert!(took >= Duration::from_millis(950), "retried after {took:?}");
    assert_eq!(up.served("status_429"), 1);
    assert_eq!(up.served("ok"), 1);
}

#[tokio::test]
async fn rate_limited_with_retry_after_over_the_cap_falls_back_at_once() {
    let up = FaultServer::start(Fault::status_retry_after(429, "60")).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider(
            "up",
            &up.base_url(),
            r#"retry = { attempts = 3, backoff = "5ms", retry_after_cap = "5s" }"#
        ),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let started = Instant::now();
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    // Far below the 60 s it would have waited; generous for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_rule_based(&resp, "rate_limited", "GLOBAL-DEFAULT");
    assert_eq!(up.request_count(), 1, "no retry past the cap");

    let m = scrape(&proxy).await;
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "rate_limited")],
        1.0,
    );
    m.expect(ATTEMPTS, &[], 1.0);
    m.expect(RETRIES, &[], 0.0);
    m.expect(
        TRIGGERS,
        &[("reason", "rate_limited"), ("behavior", "rule-based")],
        1.0,
    );
    m.expect(TRIGGERS, &[], 1.0);
}

#[tokio::test]
async fn upstream_4xx_is_passed_through_without_retry_or_fallback() {
    let body = json!({"error": {
        "message": "temperature is out of range",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value"
    }})
    .to_string();
    let up = FaultServer::start(Fault::Status {
        code: 400,
        body: body.clone(),
        retry_after: None,
    })
    .await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(resp.text(), body, "the upstream's body, unchanged");
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("a"));
    assert_eq!(up.request_count(), 1);

    let m = scrape(&proxy).await;
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "upstream_4xx")],
        1.0,
    );
    m.expect(ATTEMPTS, &[], 1.0);
    m.expect(RETRIES, &[], 0.0);
    m.expect(TRIGGERS, &[], 0.0);
    m.expect(ERRORS, &[("flag", "f"), ("class", "upstream_4xx")], 1.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 0.0);
    m.expect(REQUESTS, &[], 1.0);
}

// ---------------------------------------------------------------------------------------------
// Invalid answers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_answers_fall_back_with_reason_invalid_response() {
    let up = FaultServer::start(Fault::Ok).await;
    // Invalid JSON; a stream cut before any data; a stream ending cleanly before any data.
    up.push(Fault::InvalidJson);
    up.push(Fault::StreamCutAfter(0));
    up.push(Fault::StreamEndWithoutDone(0));
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "refund?", false)).await;
    assert_rule_based(&resp, "invalid_response", "GLOBAL-REFUND");
    for _ in 0..2 {
        let resp = post(&proxy, &chat("f", "hello", true)).await;
        assert_rule_based_stream(&resp, "invalid_response", "GLOBAL-DEFAULT");
    }
    assert_eq!(up.request_count(), 3, "invalid answers are not retried");

    let m = scrape(&proxy).await;
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "invalid_response")],
        3.0,
    );
    m.expect(ATTEMPTS, &[], 3.0);
    m.expect(RETRIES, &[], 0.0);
    m.expect(
        TRIGGERS,
        &[("reason", "invalid_response"), ("behavior", "rule-based")],
        3.0,
    );
    m.expect(TRIGGERS, &[], 3.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 3.0);
}

// ---------------------------------------------------------------------------------------------
// Fallback behaviours
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn variation_behavior_goes_to_the_named_variation() {
    let fa = FaultServer::start(Fault::status(502)).await;
    let fc = FaultServer::start(Fault::Ok).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}{}",
        provider("up_a", &fa.base_url(), NO_RETRY),
        provider("up_c", &fc.base_url(), NO_RETRY),
        flag(
            "f",
            "off_variation = \"a\"\nstable_variation = \"b\"",
            &[
                ("a", "up_a", "fallback_behavior = \"variation:c\""),
                ("b", "up_c", "fallback_behavior = \"rule-based\""),
                ("c", "up_c", "fallback_behavior = \"rule-based\""),
            ]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.header(FALLBACK_HEADER).as_deref(),
        Some("upstream_5xx")
    );
    assert_eq!(resp.header(SERVED_BY_HEADER).as_deref(), Some("c"));
    assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("a"));
    assert_eq!(resp.json()["model"], "model-c");
    let models: Vec<String> = fc.requests().into_iter().map(|s| s.model).collect();
    assert_eq!(models, ["model-c"], "only the named variation was asked");

    let m = scrape(&proxy).await;
    m.expect(
        TRIGGERS,
        &[
            ("variation", "a"),
            ("reason", "upstream_5xx"),
            ("behavior", "variation:c"),
        ],
        1.0,
    );
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(
        ATTEMPTS,
        &[("provider", "up_c"), ("outcome", "success")],
        1.0,
    );
    m.expect(REQUESTS, &[("outcome", "fallback")], 1.0);
}

#[tokio::test]
async fn error_behavior_returns_an_openai_error_without_fallback_header() {
    let hang = FaultServer::start(Fault::Hang).await;
    let unavailable = FaultServer::start(Fault::status(503)).await;
    let error = "fallback_behavior = \"error\"";
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}{}{}{}{}",
        provider("dead", &closed_port_url(), NO_RETRY),
        provider(
            "slow",
            &hang.base_url(),
            &format!("first_byte_timeout = \"200ms\"\n{NO_RETRY}")
        ),
        provider("sick", &unavailable.base_url(), NO_RETRY),
        flag("fd", "off_variation = \"a\"", &[("a", "dead", error)]),
        flag("fs", "off_variation = \"a\"", &[("a", "slow", error)]),
        flag("fx", "off_variation = \"a\"", &[("a", "sick", error)]),
    );
    let proxy = TestProxy::start(&cfg).await;

    let resp = post(&proxy, &chat("fd", "hello", false)).await;
    assert_openai_error(&resp, 502, "upstream_unreachable");
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("a"));

    let resp = post(&proxy, &chat("fs", "hello", false)).await;
    assert_openai_error(&resp, 504, "upstream_timeout");
    assert_eq!(resp.header(FALLBACK_HEADER), None);

    let resp = post(&proxy, &chat("fx", "hello", false)).await;
    assert_openai_error(&resp, 503, "server_error");
    assert_eq!(
        resp.text(),
        faults::openai_error_body(503, "injected fault"),
        "the provider's OpenAI error is relayed as it is"
    );
    assert_eq!(resp.header(FALLBACK_HEADER), None);

    let m = scrape(&proxy).await;
    for (flag, reason) in [
        ("fd", "connect_error"),
        ("fs", "timeout"),
        ("fx", "upstream_5xx"),
    ] {
        m.expect(
            TRIGGERS,
            &[("flag", flag), ("reason", reason), ("behavior", "error")],
            1.0,
        );
        m.expect(
            REQUESTS,
            &[("flag", flag), ("outcome", "upstream_error")],
            1.0,
        );
    }
    m.expect(TRIGGERS, &[], 3.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 0.0);
    m.expect(ERRORS, &[("class", "upstream_unreachable")], 1.0);
    m.expect(ERRORS, &[("class", "upstream_timeout")], 1.0);
    m.expect(ERRORS, &[("class", "upstream_5xx")], 1.0);
}

#[tokio::test]
async fn a_chain_of_two_failures_ends_rule_based_with_two_triggers() {
    let fa = FaultServer::start(Fault::status(500)).await;
    let fb = FaultServer::start(Fault::Hang).await;
    let cfg = stable_chain(
        &fa,
        &fb,
        NO_RETRY,
        &format!("first_byte_timeout = \"200ms\"\n{NO_RETRY}"),
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_rule_based(&resp, "timeout", "GLOBAL-DEFAULT");
    assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("a"));
    assert_eq!(fa.request_count(), 1);
    assert_eq!(fb.request_count(), 1);
    assert_eq!(
        fb.requests()[0].model,
        "model-b",
        "the stable variation was tried"
    );

    let m = scrape(&proxy).await;
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("variation", "a"),
            ("reason", "upstream_5xx"),
            ("behavior", "stable"),
        ],
        1.0,
    );
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("variation", "a"),
            ("reason", "timeout"),
            ("behavior", "rule-based"),
        ],
        1.0,
    );
    m.expect(TRIGGERS, &[], 2.0);
    m.expect(
        ATTEMPTS,
        &[("provider", "up_a"), ("outcome", "upstream_5xx")],
        1.0,
    );
    m.expect(
        ATTEMPTS,
        &[("provider", "up_b"), ("outcome", "timeout")],
        1.0,
    );
    m.expect(REQUESTS, &[("outcome", "fallback")], 1.0);
    m.expect(REQUESTS, &[], 1.0);
}

#[test]
fn a_looping_fallback_chain_is_rejected_at_load() {
    let cfg = format!(
        "{}{}",
        provider("up", "http://127.0.0.1:9/v1", ""),
        flag(
            "f",
            "off_variation = \"a\"\nstable_variation = \"b\"",
            &[
                ("a", "up", "fallback_behavior = \"stable\""),
                ("b", "up", "fallback_behavior = \"variation:a\""),
            ]
        )
    );
    let err = switchyard::Config::parse(&cfg, "t.toml").expect_err("a looping chain must not load");
    let text = err.to_string();
    assert!(text.contains("loops"), "{text}");
    assert!(text.contains("t.toml"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker and retry budget
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_circuit_opens_rejects_without_the_upstream_then_probes_and_closes() {
    let up = FaultServer::start(Fault::status(500)).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider(
            "up",
            &up.base_url(),
            &format!(
                "{NO_RETRY}\ncircuit = {{ min_requests = 4, error_rate = 0.5, window = \"10s\", cooldown = \"3s\" }}"
            )
        ),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    for _ in 0..4 {
        let resp = post(&proxy, &chat("f", "hello", false)).await;
        assert_rule_based(&resp, "upstream_5xx", "GLOBAL-DEFAULT");
    }
    assert_eq!(up.request_count(), 4);
    // Open: requests go straight to their fallback.
    for _ in 0..2 {
        let resp = post(&proxy, &chat("f", "hello", false)).await;
        assert_rule_based(&resp, "circuit_open", "GLOBAL-DEFAULT");
    }
    let m = scrape(&proxy).await;
    m.expect(CIRCUIT, &[("provider", "up")], 2.0);
    assert_eq!(up.request_count(), 4, "an open circuit keeps requests away");

    // After the cooldown (3 s: long enough that a loaded machine does not reach it while the
    // open circuit is checked above) one probe goes through; it succeeds and the circuit closes.
    up.set_default(Fault::Ok);
    let m = scrape_until(
        &proxy,
        CIRCUIT,
        &[("provider", "up")],
        1.0,
        Duration::from_secs(20),
    )
    .await;
    m.expect(CIRCUIT, &[("provider", "up")], 1.0);
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    assert_eq!(resp.json()["model"], "model-a");
    assert_eq!(up.request_count(), 5);

    let m = scrape(&proxy).await;
    m.expect(CIRCUIT, &[("provider", "up")], 0.0);
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "upstream_5xx")],
        4.0,
    );
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "circuit_open")],
        2.0,
    );
    m.expect(ATTEMPTS, &[("provider", "up"), ("outcome", "success")], 1.0);
    m.expect(TRIGGERS, &[("reason", "upstream_5xx")], 4.0);
    m.expect(TRIGGERS, &[("reason", "circuit_open")], 2.0);
    m.expect(TRIGGERS, &[], 6.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 6.0);
    m.expect(REQUESTS, &[("outcome", "success")], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_in_an_outage() {
    const N: usize = 100;
    let up = FaultServer::start(Fault::status(500)).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider(
            "up",
            &up.base_url(),
            "retry = { attempts = 3, backoff = \"1ms\", max_backoff = \"2ms\", budget = 0.1 }\ncircuit = { enabled = false }"
        ),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = Arc::new(TestProxy::start(&cfg).await);
    let http = Http::new();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..10 {
        let (proxy, http, next) = (proxy.clone(), http.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < N {
                let resp = http
                    .post_json(&proxy.url(CHAT), &chat("f", "hello", false), &[])
                    .await;
                assert_rule_based(&resp, "upstream_5xx", "GLOBAL-DEFAULT");
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }

    let m = scrape(&proxy).await;
    let granted = m.sum(RETRIES, &[("provider", "up"), ("reason", "upstream_5xx")]);
    let refused = m.sum(
        RETRIES,
        &[("provider", "up"), ("reason", "budget_exhausted")],
    );
    assert!(refused > 0.0, "the budget never ran out");
    assert!(
        granted <= 0.1 * N as f64 + 5.0,
        "{granted} retries for {N} requests"
    );
    assert!(granted >= 5.0, "the floor allows a few retries: {granted}");
    m.expect(
        ATTEMPTS,
        &[("provider", "up"), ("outcome", "upstream_5xx")],
        N as f64 + granted,
    );
    assert_eq!(up.served("status_500") as f64, N as f64 + granted);
    m.expect(TRIGGERS, &[("reason", "upstream_5xx")], N as f64);
    m.expect(REQUESTS, &[("outcome", "fallback")], N as f64);
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stream_failing_before_its_first_byte_fails_over_like_a_complete_answer() {
    let up = FaultServer::start(Fault::Ok).await;
    up.push(Fault::status(500));
    up.push(Fault::Hang);
    // The head arrives but no chunk does: the first-chunk wait times out.
    up.push(Fault::StreamStallAfter(0));
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider(
            "up",
            &up.base_url(),
            &format!("first_byte_timeout = \"200ms\"\n{NO_RETRY}")
        ),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    for reason in ["upstream_5xx", "timeout", "timeout"] {
        let started = Instant::now();
        let resp = post(&proxy, &chat("f", "a refund please", true)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_rule_based_stream(&resp, reason, "GLOBAL-REFUND");
        assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("a"));
    }
    assert!(up.requests().iter().all(|s| s.stream));

    let m = scrape(&proxy).await;
    m.expect(TRIGGERS, &[("reason", "upstream_5xx")], 1.0);
    m.expect(TRIGGERS, &[("reason", "timeout")], 2.0);
    m.expect(TRIGGERS, &[], 3.0);
    m.expect(ATTEMPTS, &[("outcome", "upstream_5xx")], 1.0);
    m.expect(ATTEMPTS, &[("outcome", "timeout")], 2.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 3.0);
}

#[tokio::test]
async fn a_stream_failing_before_its_first_byte_is_retried() {
    let up = FaultServer::start(Fault::Ok).await;
    up.push(Fault::status(500));
    up.push(Fault::Reset);
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", true)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    let text = resp.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(stream_text(&sse_data(&text)), "c0 c1 c2 c3 ");
    assert_eq!(up.request_count(), 3);

    let m = scrape(&proxy).await;
    m.expect(RETRIES, &[("reason", "upstream_5xx")], 1.0);
    m.expect(RETRIES, &[("reason", "connect_error")], 1.0);
    m.expect(ATTEMPTS, &[("outcome", "success")], 1.0);
    m.expect(ATTEMPTS, &[], 3.0);
    m.expect(TRIGGERS, &[], 0.0);
    m.expect(REQUESTS, &[("outcome", "success")], 1.0);
}

/// A stream interrupted after `chunks` content chunks: what the client must see.
fn assert_interrupted_stream(resp: &Resp, chunks: usize) {
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    let text = resp.text();
    assert!(
        !text.contains("[DONE]"),
        "a cut stream must not end with [DONE]: {text}"
    );
    let data = sse_data(&text);
    assert_eq!(
        data.len(),
        chunks + 1,
        "{chunks} chunks and the error: {text}"
    );
    for (i, d) in data[..chunks].iter().enumerate() {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        assert_eq!(v["model"], "model-a", "{v}");
        assert_eq!(v["choices"][0]["delta"]["content"], format!("c{i} "), "{v}");
    }
    let last: Value = serde_json::from_str(&data[chunks]).unwrap();
    let err = &last["error"];
    assert!(err["message"].is_string(), "{last}");
    assert_eq!(err["type"], "upstream_error", "{last}");
    assert_eq!(err["code"], "stream_interrupted", "{last}");
}

async fn interrupted_stream_scenario(fault: Fault, variation_extra: &str) {
    let up = FaultServer::start(fault).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[(
                "a",
                "up",
                &format!("fallback_behavior = \"rule-based\"\n{variation_extra}")
            )]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let started = Instant::now();
    let resp = post(&proxy, &chat("f", "hello", true)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ended after {:?}",
        started.elapsed()
    );
    assert_interrupted_stream(&resp, 2);
    assert_eq!(
        up.request_count(),
        1,
        "nothing is retried once the client has data"
    );

    let m = scrape(&proxy).await;
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("variation", "a"),
            ("reason", "stream_interrupted"),
        ],
        1.0,
    );
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(ERRORS, &[("class", "stream_interrupted")], 1.0);
    m.expect(REQUESTS, &[("outcome", "upstream_error")], 1.0);
    m.expect(REQUESTS, &[], 1.0);
    m.expect(ATTEMPTS, &[("outcome", "success")], 1.0);
    m.expect(RETRIES, &[], 0.0);
}

#[tokio::test]
async fn a_stream_cut_after_two_chunks_ends_with_an_error_event_and_no_done() {
    interrupted_stream_scenario(Fault::StreamCutAfter(2), "").await;
}

#[tokio::test]
async fn a_stream_stalled_after_two_chunks_ends_at_the_idle_timeout() {
    // The variation's idle timeout (200 ms) overrides the provider's (10 s).
    interrupted_stream_scenario(Fault::StreamStallAfter(2), "idle_timeout = \"200ms\"").await;
}

#[tokio::test]
async fn a_stream_ending_without_done_is_reported_as_interrupted() {
    interrupted_stream_scenario(Fault::StreamEndWithoutDone(2), "").await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_upstream() {
    let gate = Arc::new(Notify::new());
    let up = FaultServer::start(Fault::Ok).await;
    up.push(Fault::SlowStream {
        chunks: 1,
        gate: gate.clone(),
    });
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "up", "fallback_behavior = \"rule-based\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;

    // A raw client: send the request, read up to the first chunk, then hang up.
    let body = chat("f", "hello", true);
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        proxy.addr,
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_first = async {
        while !String::from_utf8_lossy(&got).contains("c0 ") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed before the first chunk");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_first)
        .await
        .expect("the first chunk within 5 s");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    drop(sock);

    // The upstream (still holding its stream open at the gate) sees the proxy hang up.
    let started = Instant::now();
    assert!(
        up.wait_closed_early("slow_stream", 1, Duration::from_secs(2))
            .await,
        "the upstream connection stayed open after the client left"
    );
    let took = started.elapsed();
    let m = scrape_until(
        &proxy,
        REQUESTS,
        &[("outcome", "client_cancelled")],
        1.0,
        Duration::from_secs(2),
    )
    .await;
    m.expect(
        REQUESTS,
        &[("flag", "f"), ("outcome", "client_cancelled")],
        1.0,
    );
    m.expect(REQUESTS, &[], 1.0);
    m.expect(TRIGGERS, &[], 0.0);
    println!("upstream closed {took:?} after the client left");
    gate.notify_one();
}

fn anthropic_config(up: &FaultServer) -> String {
    format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("claude", &up.base_url(), NO_RETRY)
            .replace("kind = \"openai\"", "kind = \"anthropic\""),
        flag(
            "f",
            "off_variation = \"a\"",
            &[("a", "claude", "fallback_behavior = \"rule-based\"")]
        )
    )
}

#[tokio::test]
async fn an_anthropic_error_event_before_any_data_fails_over() {
    let up = FaultServer::start(Fault::AnthropicErrorEvent).await;
    let proxy = TestProxy::start(&anthropic_config(&up)).await;
    let resp = post(&proxy, &chat("f", "hello", true)).await;
    assert_rule_based_stream(&resp, "invalid_response", "GLOBAL-DEFAULT");
    assert_eq!(up.request_count(), 1);
    assert!(up.requests()[0].path.ends_with("/messages"));

    let m = scrape(&proxy).await;
    m.expect(
        ATTEMPTS,
        &[("provider", "claude"), ("outcome", "invalid_response")],
        1.0,
    );
    m.expect(TRIGGERS, &[("reason", "invalid_response")], 1.0);
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 1.0);
}

#[tokio::test]
async fn an_anthropic_error_event_mid_stream_ends_with_the_providers_error() {
    let up = FaultServer::start(Fault::AnthropicErrorAfter(2)).await;
    let proxy = TestProxy::start(&anthropic_config(&up)).await;
    let resp = post(&proxy, &chat("f", "hello", true)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header(FALLBACK_HEADER), None);
    let text = resp.text();
    assert!(!text.contains("[DONE]"), "{text}");
    let data = sse_data(&text);
    let (last, chunks) = data.split_last().expect("events");
    for d in chunks {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
    }
    assert_eq!(stream_text(chunks), "c0 c1 ", "{text}");
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["error"]["message"], "Overloaded", "{last}");
    assert_eq!(last["error"]["code"], "overloaded", "{last}");

    let m = scrape(&proxy).await;
    m.expect(TRIGGERS, &[("reason", "stream_interrupted")], 1.0);
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(ERRORS, &[("class", "stream_interrupted")], 1.0);
    m.expect(REQUESTS, &[("outcome", "upstream_error")], 1.0);
}

// ---------------------------------------------------------------------------------------------
// Operator-forced fallbacks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_forced_variation_answers_rule_based_without_the_upstream() {
    let up = FaultServer::start(Fault::Ok).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"",
            &[(
                "a",
                "up",
                "fallback_behavior = \"error\"\nforce_fallback = true"
            )]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "refund", false)).await;
    assert_rule_based(&resp, "forced", "GLOBAL-REFUND");
    let resp = post(&proxy, &chat("f", "hi", true)).await;
    assert_rule_based_stream(&resp, "forced", "GLOBAL-DEFAULT");
    assert_eq!(up.request_count(), 0);
    assert_eq!(up.connections(), 0);

    let m = scrape(&proxy).await;
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("variation", "a"),
            ("reason", "forced"),
            ("behavior", "rule-based"),
        ],
        2.0,
    );
    m.expect(TRIGGERS, &[], 2.0);
    m.expect(ATTEMPTS, &[], 0.0);
    m.expect(REQUESTS, &[("outcome", "fallback")], 2.0);
}

#[tokio::test]
async fn a_forced_flag_answers_rule_based_without_the_upstream() {
    let up = FaultServer::start(Fault::Ok).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "off_variation = \"a\"\nforce_fallback = true",
            &[("a", "up", "fallback_behavior = \"error\"")]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_rule_based(&resp, "forced", "GLOBAL-DEFAULT");
    assert_eq!(up.request_count(), 0);

    let m = scrape(&proxy).await;
    m.expect(TRIGGERS, &[("flag", "f"), ("reason", "forced")], 1.0);
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(ATTEMPTS, &[], 0.0);
}

#[tokio::test]
async fn the_kill_switch_serves_the_off_variation_with_a_header() {
    let up = FaultServer::start(Fault::Ok).await;
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag(
            "f",
            "enabled = false\noff_variation = \"off\"",
            &[
                ("a", "up", "fallback_behavior = \"rule-based\""),
                ("off", "up", "fallback_behavior = \"rule-based\""),
            ]
        )
    );
    let proxy = TestProxy::start(&cfg).await;
    let resp = post(&proxy, &chat("f", "hello", false)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header(FALLBACK_HEADER).as_deref(), Some("kill_switch"));
    assert_eq!(resp.header(VARIATION_HEADER).as_deref(), Some("off"));
    assert_eq!(resp.json()["model"], "model-off");
    let models: Vec<String> = up.requests().into_iter().map(|s| s.model).collect();
    assert_eq!(models, ["model-off"]);

    let m = scrape(&proxy).await;
    m.expect(
        TRIGGERS,
        &[
            ("flag", "f"),
            ("variation", "off"),
            ("reason", "kill_switch"),
        ],
        1.0,
    );
    m.expect(TRIGGERS, &[], 1.0);
    m.expect(
        REQUESTS,
        &[("variation", "off"), ("outcome", "fallback")],
        1.0,
    );
    m.expect(REQUESTS, &[], 1.0);
}

// ---------------------------------------------------------------------------------------------
// The rule-based responder
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn per_flag_rules_override_the_global_ones_and_stream_when_asked() {
    let up = FaultServer::start(Fault::Ok).await;
    let forced = "off_variation = \"a\"\nforce_fallback = true";
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}{}{}{}",
        provider("up", &up.base_url(), FAST_RETRY),
        flag("own", forced, &[("a", "up", "")]),
        "\n[flags.own.fallback]\ndefault_reply = \"OWN-DEFAULT\"\nrules = [{ pattern = \"(?i)refund\", reply = \"OWN-REFUND\" }, { pattern = \"(?i)password\", reply = \"OWN-PASSWORD\" }]\n",
        flag("global", forced, &[("a", "up", "")]),
        flag("rules_only", forced, &[("a", "up", "")])
            + "\n[flags.rules_only.fallback]\nrules = [{ pattern = \"(?i)invoice\", reply = \"RULES-ONLY-INVOICE\" }]\n",
    );
    let proxy = TestProxy::start(&cfg).await;
    for (model, text, reply) in [
        ("own", "I want a REFUND", "OWN-REFUND"),
        ("own", "forgot my password", "OWN-PASSWORD"),
        ("own", "hello", "OWN-DEFAULT"),
        ("global", "I want a refund", "GLOBAL-REFUND"),
        ("global", "hello", "GLOBAL-DEFAULT"),
        ("rules_only", "where is my invoice", "RULES-ONLY-INVOICE"),
        ("rules_only", "hello", "GLOBAL-DEFAULT"),
    ] {
        let resp = post(&proxy, &chat(model, text, false)).await;
        assert_rule_based(&resp, "forced", reply);
    }

    // Streamed when the client asks, with usage when it asks for that too.
    let resp = post(&proxy, &chat("own", "refund", true)).await;
    assert_rule_based_stream(&resp, "forced", "OWN-REFUND");
    assert!(!resp.text().contains("\"usage\""));
    let with_usage = json!({
        "model": "own", "user": "u", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "refund"}],
    })
    .to_string();
    let resp = post(&proxy, &with_usage).await;
    assert_rule_based_stream(&resp, "forced", "OWN-REFUND");
    let data = sse_data(&resp.text());
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(usage["usage"].is_object(), "{usage}");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(up.request_count(), 0);

    let m = scrape(&proxy).await;
    m.expect(TRIGGERS, &[("reason", "forced")], 9.0);
    m.expect(TRIGGERS, &[], 9.0);
}

// ---------------------------------------------------------------------------------------------
// Soak
// ---------------------------------------------------------------------------------------------

/// What the soak's clients saw.
#[derive(Debug, Default)]
struct Tally {
    /// Answered by the decided variation (200, no fallback header), complete.
    success: usize,
    /// Answered by a fallback (200 with the header), complete.
    fallback: usize,
    /// Of those, rule-based.
    rule_based: usize,
    /// An OpenAI-shaped error status, by status.
    errors: BTreeMap<u16, usize>,
    /// Streams that ended with an error event.
    stream_errors: usize,
    /// Streams that ended with `[DONE]`.
    stream_done: usize,
    /// Complete (non-streamed) answers.
    complete: usize,
    /// Fallback reasons seen in the header.
    reasons: BTreeMap<String, usize>,
    /// Requests that got no answer in time, a broken connection, or a malformed answer.
    broken: Vec<String>,
}

fn classify(
    tally: &mut Tally,
    stream: bool,
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
) {
    let text = String::from_utf8_lossy(body);
    let fallback = headers
        .get(FALLBACK_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if status != StatusCode::OK {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if v["error"]["message"].is_string() && v["error"]["type"].is_string() {
            *tally.errors.entry(status.as_u16()).or_default() += 1;
        } else {
            tally
                .broken
                .push(format!("{status} not an OpenAI error: {text}"));
        }
        return;
    }
    let complete_answer = |tally: &mut Tally, model: &str| {
        if model == "rule-based" && fallback.is_none() {
            tally
                .broken
                .push(format!("rule-based answer without the header: {text}"));
            return;
        }
        match &fallback {
            Some(reason) => {
                tally.fallback += 1;
                *tally.reasons.entry(reason.clone()).or_default() += 1;
                if model == "rule-based" {
                    tally.rule_based += 1;
                }
            }
            None => tally.success += 1,
        }
    };
    if stream {
        if !is_sse {
            tally
                .broken
                .push(format!("a stream answered without SSE: {text}"));
            return;
        }
        let data = sse_data(&text);
        let Some(last) = data.last() else {
            tally.broken.push("an empty stream".into());
            return;
        };
        if last == "[DONE]" && text.ends_with("data: [DONE]\n\n") {
            let model = data
                .first()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .and_then(|v| v["model"].as_str().map(str::to_owned))
                .unwrap_or_default();
            tally.stream_done += 1;
            complete_answer(tally, &model);
            return;
        }
        let v: Value = serde_json::from_str(last).unwrap_or(Value::Null);
        if v["error"]["code"].is_string() && !text.contains("[DONE]") {
            tally.stream_errors += 1;
        } else {
            tally.broken.push(format!(
                "a stream ending neither in [DONE] nor an error: {text}"
            ));
        }
        return;
    }
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if v["object"] != "chat.completion" || !v["choices"][0]["message"].is_object() {
        tally
            .broken
            .push(format!("200 that is not a completion: {text}"));
        return;
    }
    tally.complete += 1;
    complete_answer(tally, v["model"].as_str().unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_thousand_mixed_requests_against_random_faults() {
    const N: usize = 2_000;
    const CONCURRENCY: usize = 32;
    let weights = vec![
        (Fault::Ok, 40),
        (Fault::Delay(Duration::from_millis(30)), 11),
        (Fault::status(500), 6),
        (Fault::status(503), 3),
        (Fault::status_retry_after(429, "0"), 4),
        (Fault::status_retry_after(429, "60"), 2),
        (Fault::status(400), 3),
        (Fault::Hang, 3),
        (Fault::Reset, 6),
        (Fault::InvalidJson, 5),
        (Fault::StreamCutAfter(2), 7),
        (Fault::StreamStallAfter(2), 4),
        (Fault::StreamEndWithoutDone(2), 4),
        (Fault::StreamCutAfter(0), 2),
    ];
    let up = FaultServer::random(0x5eed_2026, weights).await;
    let limits = format!(
        "first_byte_timeout = \"300ms\"\nidle_timeout = \"300ms\"\n{}",
        r#"retry = { attempts = 3, backoff = "10ms", max_backoff = "50ms" }"#
    );
    let cfg = format!(
        "{GLOBAL_FALLBACK}{}{}{}{}",
        provider("rand", &up.base_url(), &limits).replace("timeout = \"10s\"", "timeout = \"2s\""),
        flag(
            "s",
            "off_variation = \"a\"\nstable_variation = \"b\"",
            &[
                ("a", "rand", "fallback_behavior = \"stable\""),
                ("b", "rand", "fallback_behavior = \"rule-based\""),
            ]
        ),
        flag(
            "r",
            "off_variation = \"a\"",
            &[("a", "rand", "fallback_behavior = \"rule-based\"")]
        ),
        flag(
            "e",
            "off_variation = \"a\"",
            &[("a", "rand", "fallback_behavior = \"error\"")]
        ),
    );
    let proxy = Arc::new(TestProxy::start(&cfg).await);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (proxy, client, next, tally) =
            (proxy.clone(), client.clone(), next.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= N {
                    return;
                }
                let mut rng = Rng::new(i as u64);
                let model = ["s", "r", "e"][rng.below(3) as usize];
                let stream = rng.below(2) == 0;
                let text = if rng.below(4) == 0 { "refund" } else { "hello" };
                let body = json!({
                    "model": model, "user": format!("user-{i}"), "stream": stream,
                    "messages": [{"role": "user", "content": text}],
                })
                .to_string();
                let req = Request::post(proxy.url(CHAT))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let exchange = async {
                    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                    let (parts, body) = resp.into_parts();
                    let bytes = body
                        .collect()
                        .await
                        .map_err(|e| format!("body: {e:?}"))?
                        .to_bytes();
                    Ok::<_, String>((parts.status, parts.headers, bytes))
                };
                let result = tokio::time::timeout(Duration::from_secs(10), exchange).await;
                let mut t = tally.lock().unwrap();
                match result {
                    Err(_) => t.broken.push(format!("request {i} unanswered after 10 s")),
                    Ok(Err(e)) => t.broken.push(format!("request {i} failed: {e}")),
                    Ok(Ok((status, headers, bytes))) => {
                        classify(&mut t, stream, status, &headers, &bytes)
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();

    let m = scrape(&proxy).await;
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let outcomes: BTreeMap<&str, f64> = [
        "success",
        "fallback",
        "client_error",
        "upstream_error",
        "client_cancelled",
    ]
    .into_iter()
    .map(|o| (o, m.sum(REQUESTS, &[("outcome", o)])))
    .collect();
    let triggers: BTreeMap<String, f64> =
        m.0.iter()
            .filter(|(n, _, v)| n == TRIGGERS && *v != 0.0)
            .fold(BTreeMap::new(), |mut acc, (_, l, v)| {
                *acc.entry(l["reason"].clone()).or_default() += v;
                acc
            });
    let attempts: BTreeMap<String, f64> =
        m.0.iter()
            .filter(|(n, _, v)| n == ATTEMPTS && *v != 0.0)
            .map(|(_, l, v)| (l["outcome"].clone(), *v))
            .collect();
    let retries: BTreeMap<String, f64> =
        m.0.iter()
            .filter(|(n, _, v)| n == RETRIES && *v != 0.0)
            .map(|(_, l, v)| (l["reason"].clone(), *v))
            .collect();
    println!("soak: {N} requests, concurrency {CONCURRENCY}, {elapsed:?}");
    println!(
        "soak: faults served by the upstream: {:?}",
        up.served_counts()
    );
    println!(
        "soak: upstream connections closed early by the proxy: {:?}",
        up.closed_early_counts()
    );
    println!("soak: outcomes on /metrics: {outcomes:?}");
    println!("soak: fallback triggers by reason: {triggers:?}");
    println!("soak: upstream attempts by outcome: {attempts:?}");
    println!("soak: retries by reason: {retries:?}");
    println!(
        "soak: client saw success {}, fallback {} (rule-based {}), error statuses {:?}, streams ended by [DONE] {} / by an error event {}, complete answers {}, fallback reasons {:?}",
        tally.success,
        tally.fallback,
        tally.rule_based,
        tally.errors,
        tally.stream_done,
        tally.stream_errors,
        tally.complete,
        tally.reasons
    );

    assert!(
        tally.broken.is_empty(),
        "{} requests broken, e.g. {:?}",
        tally.broken.len(),
        &tally.broken[..tally.broken.len().min(5)]
    );
    let error_statuses: usize = tally.errors.values().sum();
    assert_eq!(
        tally.success + tally.fallback + error_statuses + tally.stream_errors,
        N,
        "every request answered once"
    );
    m.expect(REQUESTS, &[], N as f64);
    assert_eq!(outcomes["client_cancelled"], 0.0);
    assert_eq!(outcomes["success"], tally.success as f64);
    assert_eq!(outcomes["fallback"], tally.fallback as f64);
    assert_eq!(
        outcomes["upstream_error"] + outcomes["client_error"],
        (error_statuses + tally.stream_errors) as f64
    );
    m.expect(
        TRIGGERS,
        &[("reason", "stream_interrupted")],
        tally.stream_errors as f64,
    );
    // Every upstream request is one attempt on /metrics (circuit-open ones never arrive). An
    // attempt that timed out or failed to connect before the fake upstream read its request is
    // counted by the proxy but never seen upstream: on a loaded machine a few may.
    let sent: f64 = attempts
        .iter()
        .filter(|(o, _)| o.as_str() != "circuit_open")
        .map(|(_, v)| v)
        .sum();
    let unseen_possible: f64 = attempts
        .iter()
        .filter(|(o, _)| matches!(o.as_str(), "timeout" | "connect_error"))
        .map(|(_, v)| v)
        .sum();
    let seen = up.request_count() as f64;
    assert!(
        sent >= seen && sent - seen <= unseen_possible,
        "attempts {sent}, seen upstream {seen}, timeouts and connect errors {unseen_possible}"
    );
}

//! The proxy through its real interfaces: HTTP on a real socket in front of a mock OpenAI
//! upstream, and the Prometheus text on the admin listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/upstream.rs"]
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio::sync::Notify;

use client::{Http, Resp};
use proxy::{basic_config, TestProxy};
use upstream::{MockUpstream, SseStep};

const CHAT: &str = "/v1/chat/completions";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A minimal chat request for `model` on behalf of `user`.
fn chat(model: &str, user: &str) -> String {
    json!({
        "model": model,
        "user": user,
        "messages": [{"role": "user", "content": "hello"}],
    })
    .to_string()
}

/// A unique environment variable name holding `value` (set before a config that names it is
/// parsed).
fn secret_env(tag: &str, value: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "SWITCHYARD_TEST_KEY_{}_{}_{}",
        tag.to_ascii_uppercase(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    std::env::set_var(&name, value);
    name
}

/// `basic_config` whose provider sends the key held in the environment variable `env`.
fn config_with_key(base_url: &str, env: &str) -> String {
    basic_config(base_url).replace(
        "timeout = \"5s\"",
        &format!("timeout = \"5s\"\napi_key_env = \"{env}\""),
    )
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET /v1/decide` for one user; must answer 200.
async fn decide(proxy: &TestProxy, flag: &str, user: &str) -> Value {
    let resp = client::get(&proxy.url(&format!("/v1/decide?flag={flag}&user={user}"))).await;
    assert_eq!(resp.status, StatusCode::OK, "decide: {}", resp.text());
    resp.json()
}

/// The variation `/v1/decide` gives `user`.
async fn variation_of(proxy: &TestProxy, flag: &str, user: &str) -> String {
    decide(proxy, flag, user).await["variation"]
        .as_str()
        .expect("a variation")
        .to_owned()
}

/// The first `{prefix}{n}` that `/v1/decide` puts in `variation`.
async fn user_in(proxy: &TestProxy, flag: &str, variation: &str, prefix: &str) -> String {
    for n in 0..2000 {
        let user = format!("{prefix}{n}");
        if variation_of(proxy, flag, &user).await == variation {
            return user;
        }
    }
    panic!("no user lands in {flag}/{variation}");
}

/// Two users, from `prefix`, that `/v1/decide` puts in different variations (first, second).
async fn users_apart(proxy: &TestProxy, flag: &str, prefix: &str) -> (String, String) {
    let first = format!("{prefix}first");
    let v = variation_of(proxy, flag, &first).await;
    for n in 0..2000 {
        let other = format!("{prefix}{n}");
        if variation_of(proxy, flag, &other).await != v {
            return (first, other);
        }
    }
    panic!("every user lands in {v}");
}

/// Asserts an OpenAI-shaped error with `status` and `code`; returns the error object.
fn assert_openai_error(resp: &Resp, status: u16, code: &str) -> Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "expected {status} {code}, got body {}",
        resp.text()
    );
    let v = resp.json();
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("no `error` object in {v}"));
    assert!(err["message"].is_string(), "error.message: {v}");
    assert!(err["type"].is_string(), "error.type: {v}");
    assert_eq!(err["code"], code, "error.code: {v}");
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type of an error"
    );
    err.clone()
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut chars = rest.chars().peekable();
                loop {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    if key.is_empty() {
                        break;
                    }
                    assert_eq!(chars.next(), Some('"'), "label value quote in {line}");
                    let mut val = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some(n) = chars.next() {
                                    val.push(if n == 'n' { '\n' } else { n });
                                }
                            }
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.insert(key.trim_start_matches(',').to_owned(), val);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of every sample of `name` whose labels include all of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
        .sum()
}

async fn metrics_text(proxy: &TestProxy) -> String {
    let resp = client::get(&proxy.admin_url("/metrics")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    resp.text()
}

async fn metrics(proxy: &TestProxy) -> Vec<Sample> {
    parse_metrics(&metrics_text(proxy).await)
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

/// A config with one provider `up`, prompt `p1`, tool policy `search-only`, and one
/// single-variation flag per entry of `flags` (`(flag key, extra variation lines)`).
fn single_variation_flags(base_url: &str, flag_lines: &str, flags: &[(&str, &str)]) -> String {
    let mut out = format!(
        r#"
[providers.up]
kind = "openai"
base_url = "{base_url}"
timeout = "5s"

[prompts]
p1 = "SYSTEM PROMPT ONE"

[tool_policies]
search-only = ["web_search"]
"#
    );
    for (key, extra) in flags {
        out.push_str(&format!(
            r#"
[flags.{key}]
off_variation = "v"
{flag_lines}
[flags.{key}.variations.v]
provider = "up"
model_id = "model-{key}"
{extra}
[[flags.{key}.rules]]
id = "everyone"
allocation = [{{ variation = "v", end = 10000 }}]
"#
        ));
    }
    out
}

/// Flag `f` (a/b as in `basic_config`) with an identity section rejecting anonymous requests,
/// and a first rule `team` sending `team = ai` to `b`.
fn identity_config(base_url: &str) -> String {
    format!(
        r#"
[identity]
bucketing_id = ["header:x-switchyard-user", "body:user", "body:safety_identifier", "metadata:uid"]
on_missing = "reject"

[providers.up]
kind = "openai"
base_url = "{base_url}"
timeout = "5s"

[prompts]
p1 = "SYSTEM PROMPT ONE"

[audiences.team-ai]
conditions = ["or", {{ attribute = "team", match = "exact", value = "ai" }}]

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "up"
model_id = "model-a"
system_prompt_variant = "p1"
temperature = 0.3
token_budget = 100
[flags.f.variations.b]
provider = "up"
model_id = "model-b"
temperature = 0.9
[[flags.f.rules]]
id = "team"
audience = "team-ai"
allocation = [{{ variation = "b", end = 10000 }}]
[[flags.f.rules]]
id = "split"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]
"#
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Non-streaming relay and decision headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn non_streaming_answer_is_the_upstream_body_with_decision_headers() {
    let fixed = upstream::chat_completion_json("upstream-model", "a fixed answer");
    let up = MockUpstream::builder()
        .json_body(fixed.clone())
        .start()
        .await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;

    let resp = client::post_json(
        &proxy.url(CHAT),
        &chat("f", "u-1"),
        &[("authorization", "Bearer client-own-key")],
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.body,
        fixed.to_string().as_bytes(),
        "body relayed as is"
    );
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(resp.header("x-switchyard-flag").as_deref(), Some("f"));
    let variation = resp.header("x-switchyard-variation").expect("variation");
    assert!(variation == "a" || variation == "b", "{variation}");
    assert_eq!(resp.header("x-switchyard-rule").as_deref(), Some("split"));
    let generated = resp
        .header("x-request-id")
        .expect("a generated x-request-id");
    assert!(!generated.is_empty());

    // A second request gets a different generated id; a client's own id is echoed and sent
    // upstream.
    let again = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_ne!(again.header("x-request-id"), Some(generated));
    assert_eq!(again.header("x-switchyard-variation"), Some(variation));
    let echoed = client::post_json(
        &proxy.url(CHAT),
        &chat("f", "u-1"),
        &[("x-request-id", "client-req-42")],
    )
    .await;
    assert_eq!(echoed.status, StatusCode::OK);
    assert_eq!(
        echoed.header("x-request-id").as_deref(),
        Some("client-req-42")
    );

    let captured = up.requests();
    assert_eq!(captured.len(), 3);
    assert_eq!(captured[0].method, "POST");
    assert_eq!(captured[0].path, "/v1/chat/completions");
    // No provider key configured: no Authorization at all, the client's is never forwarded.
    assert_eq!(captured[0].header("authorization"), None);
    assert_eq!(
        captured[2].header("x-request-id").as_deref(),
        Some("client-req-42")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Rewrite
// ---------------------------------------------------------------------------------------------

const LOGIT_RAW: &str = r#"{"50256" :  -100, "15":3}"#;
const META_RAW: &str = r#"{ "trace" : "t\u00e9-1" ,"n":1}"#;
const VENDOR_RAW: &str = r#"{"nested": [1, 2 ,{"k":"v\ud83d\ude00"}],  "e":1.50E+3}"#;

fn rewrite_body(user: &str, tail: &str) -> String {
    let body = r#"{"model" : "f",
  "logit_bias": LOGIT,
  "messages": [{"role":"system","content":"client system"}, {"role": "user", "content": "hello"}],
  "temperature": 1.7,
  "metadata":META,
  "user": "USER",
  "x_vendor_field" :  VENDOR TAIL}"#;
    body.replace("LOGIT", LOGIT_RAW)
        .replace("META", META_RAW)
        .replace("VENDOR", VENDOR_RAW)
        .replace("USER", user)
        .replace("TAIL", tail)
}

#[tokio::test]
async fn rewrite_applies_the_variation_and_keeps_everything_else_byte_for_byte() {
    let key = "sk-provider-rewrite-0123456789";
    let env = secret_env("rewrite", key);
    let up = MockUpstream::builder().start().await;
    let proxy = TestProxy::start(&config_with_key(&up.base_url(), &env)).await;
    let user_a = user_in(&proxy, "f", "a", "rw-").await;
    let user_b = user_in(&proxy, "f", "b", "rw-").await;

    let send = |user: String, tail: &'static str| {
        let url = proxy.url(CHAT);
        async move {
            let resp = client::post_json(
                &url,
                &rewrite_body(&user, tail),
                &[("authorization", "Bearer client-secret-zzz")],
            )
            .await;
            assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
            resp
        }
    };

    // Variation a: prompt p1, temperature 0.3, budget 100.
    let resp = send(user_a.clone(), "").await;
    assert_eq!(resp.header("x-switchyard-variation").as_deref(), Some("a"));
    let resp_lo = send(user_a.clone(), r#", "max_tokens": 50"#).await;
    assert_eq!(resp_lo.status, StatusCode::OK);
    send(user_a.clone(), r#", "max_tokens": 500"#).await;
    send(user_a.clone(), r#", "max_completion_tokens": 500"#).await;
    send(user_a.clone(), r#", "max_completion_tokens": 20"#).await;
    // Variation b: no prompt, no budget, temperature 0.9.
    send(user_b.clone(), r#", "max_tokens": 500"#).await;

    let captured = up.requests();
    assert_eq!(captured.len(), 6);
    for c in &captured {
        let text = String::from_utf8(c.body.to_vec()).unwrap();
        // Untouched members: byte for byte, in their original relative order.
        let positions: Vec<usize> = [LOGIT_RAW, META_RAW, VENDOR_RAW]
            .iter()
            .map(|raw| {
                text.find(raw)
                    .unwrap_or_else(|| panic!("{raw} not forwarded verbatim in {text}"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "order of untouched members changed: {text}"
        );
        assert!(text.find("\"logit_bias\"").unwrap() < text.find("\"metadata\"").unwrap());
        assert!(text.find("\"metadata\"").unwrap() < text.find("\"x_vendor_field\"").unwrap());
        // Credentials: the provider's key, never the client's.
        assert_eq!(
            c.header("authorization").as_deref(),
            Some(format!("Bearer {key}").as_str())
        );
        assert!(!text.contains("client-secret-zzz"));
        for (_, v) in c.headers.iter() {
            assert!(!v.as_bytes().windows(17).any(|w| w == b"client-secret-zzz"));
        }
        let v = c.json();
        assert_eq!(
            v["user"],
            json!(if v["model"] == "model-a" {
                &user_a
            } else {
                &user_b
            })
        );
        assert_eq!(v["x_vendor_field"]["nested"][2]["k"], "v\u{1F600}");
    }

    let a = captured[0].json();
    assert_eq!(a["model"], "model-a");
    assert_eq!(
        a["messages"],
        json!([
            {"role": "system", "content": "SYSTEM PROMPT ONE"},
            {"role": "user", "content": "hello"}
        ]),
        "the variation's prompt replaces the client's system message and comes first"
    );
    assert_eq!(a["temperature"], json!(0.3));
    assert_eq!(a["max_tokens"], json!(100), "budget set when absent");
    assert_eq!(
        captured[1].json()["max_tokens"],
        json!(50),
        "kept when smaller"
    );
    assert_eq!(
        captured[2].json()["max_tokens"],
        json!(100),
        "capped when larger"
    );
    assert_eq!(
        captured[3].json()["max_completion_tokens"],
        json!(100),
        "max_completion_tokens capped"
    );
    assert_eq!(
        captured[4].json()["max_completion_tokens"],
        json!(20),
        "max_completion_tokens kept when smaller"
    );

    let b = captured[5].json();
    assert_eq!(b["model"], "model-b");
    assert_eq!(b["temperature"], json!(0.9));
    assert_eq!(b["max_tokens"], json!(500), "no budget: untouched");
    assert_eq!(
        b["messages"][0],
        json!({"role": "system", "content": "client system"}),
        "no prompt in the variation: the client's system message stays"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Tool policy
// ---------------------------------------------------------------------------------------------

const WEB_SEARCH: &str =
    r#"{"type": "function", "function": {"name": "web_search", "parameters": {"type":"object"}}}"#;
const CODE_EXEC: &str = r#"{"type":"function","function":{"name":"code_exec","parameters":{}}}"#;

fn tools_body(model: &str, tools: &[&str], tool_choice: &str) -> String {
    format!(
        r#"{{"model":"{model}","user":"u-tools","messages":[{{"role":"user","content":"hi"}}],"tools":[{}],"tool_choice":{tool_choice},"parallel_tool_calls":true}}"#,
        tools.join(", ")
    )
}

#[tokio::test]
async fn tool_policy_none_allow_list_and_all() {
    let up = MockUpstream::builder().start().await;
    let config = single_variation_flags(
        &up.base_url(),
        "",
        &[
            ("t-none", "tool_policy = \"none\""),
            ("t-allow", "tool_policy = \"search-only\""),
            ("t-all", "tool_policy = \"all\""),
        ],
    );
    let proxy = TestProxy::start(&config).await;
    let choose = |name: &str| format!(r#"{{"type":"function","function":{{"name":"{name}"}}}}"#);
    let cases = [
        tools_body("t-none", &[WEB_SEARCH, CODE_EXEC], "\"auto\""),
        tools_body("t-allow", &[WEB_SEARCH, CODE_EXEC], &choose("code_exec")),
        tools_body("t-allow", &[WEB_SEARCH, CODE_EXEC], &choose("web_search")),
        tools_body("t-allow", &[WEB_SEARCH, CODE_EXEC], "\"required\""),
        tools_body("t-allow", &[CODE_EXEC], &choose("code_exec")),
        tools_body("t-all", &[WEB_SEARCH, CODE_EXEC], &choose("code_exec")),
    ];
    for body in &cases {
        let resp = client::post_json(&proxy.url(CHAT), body, &[]).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    let c = up.requests();
    assert_eq!(c.len(), cases.len());
    let web: Value = serde_json::from_str(WEB_SEARCH).unwrap();

    // none: every tool-related member goes.
    let v = c[0].json();
    for k in ["tools", "tool_choice", "parallel_tool_calls"] {
        assert!(v.get(k).is_none(), "`{k}` kept under tool_policy none: {v}");
    }
    assert_eq!(v["model"], "model-t-none");

    // allow-list: only allowed tools; a tool_choice naming a removed tool goes.
    let v = c[1].json();
    assert_eq!(v["tools"], json!([web]));
    assert!(
        v.get("tool_choice").is_none(),
        "tool_choice naming a removed tool: {v}"
    );
    assert_eq!(v["parallel_tool_calls"], json!(true));
    let text = String::from_utf8(c[1].body.to_vec()).unwrap();
    assert!(
        text.contains(WEB_SEARCH),
        "kept tool forwarded verbatim: {text}"
    );

    let v = c[2].json();
    assert_eq!(v["tools"], json!([web]));
    assert_eq!(
        v["tool_choice"],
        serde_json::from_str::<Value>(&choose("web_search")).unwrap()
    );

    let v = c[3].json();
    assert_eq!(v["tool_choice"], "required");
    assert_eq!(v["tools"], json!([web]));

    // allow-list removing every tool: no empty `tools` array, nothing referring to tools.
    let v = c[4].json();
    for k in ["tools", "tool_choice", "parallel_tool_calls"] {
        assert!(
            v.get(k).is_none(),
            "`{k}` kept with every tool removed: {v}"
        );
    }

    // all: untouched.
    let text = String::from_utf8(c[5].body.to_vec()).unwrap();
    assert!(
        text.contains(&format!("[{WEB_SEARCH}, {CODE_EXEC}]")),
        "tools untouched under `all`: {text}"
    );
    assert!(text.contains(&choose("code_exec")), "{text}");
}

// ---------------------------------------------------------------------------------------------
// 4. System prompt mode "insert"
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn insert_mode_keeps_the_clients_system_message_after_ours() {
    let up = MockUpstream::builder().start().await;
    let config = single_variation_flags(
        &up.base_url(),
        "system_prompt_mode = \"insert\"",
        &[("ins", "system_prompt_variant = \"p1\"")],
    );
    let proxy = TestProxy::start(&config).await;
    let body = json!({
        "model": "ins",
        "user": "u-ins",
        "messages": [
            {"role": "system", "content": "client system"},
            {"role": "user", "content": "hi"}
        ],
    })
    .to_string();
    let resp = client::post_json(&proxy.url(CHAT), &body, &[]).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        up.requests()[0].json()["messages"],
        json!([
            {"role": "system", "content": "SYSTEM PROMPT ONE"},
            {"role": "system", "content": "client system"},
            {"role": "user", "content": "hi"}
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Identity
// ---------------------------------------------------------------------------------------------

async fn chat_variation(
    http: &Http,
    proxy: &TestProxy,
    body: Value,
    headers: &[(&str, &str)],
) -> String {
    let resp = http
        .post_json(&proxy.url(CHAT), &body.to_string(), headers)
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.header("x-switchyard-variation")
        .expect("variation header")
}

#[tokio::test]
async fn identity_sources_precedence_stickiness_spread_audience_and_reject() {
    let up = MockUpstream::builder().start().await;
    let proxy = TestProxy::start(&identity_config(&up.base_url())).await;
    let http = Http::new();
    let msgs = json!([{"role": "user", "content": "hi"}]);

    // header:x-switchyard-user wins over body:user.
    let (h, u) = users_apart(&proxy, "f", "id-h-").await;
    let got = chat_variation(
        &http,
        &proxy,
        json!({"model": "f", "user": u, "messages": msgs}),
        &[("x-switchyard-user", &h)],
    )
    .await;
    assert_eq!(got, variation_of(&proxy, "f", &h).await, "the header wins");

    // body:user wins over body:safety_identifier; the latter is used when user is absent.
    let (u, s) = users_apart(&proxy, "f", "id-u-").await;
    let got = chat_variation(
        &http,
        &proxy,
        json!({"model": "f", "user": u, "safety_identifier": s, "messages": msgs}),
        &[],
    )
    .await;
    assert_eq!(got, variation_of(&proxy, "f", &u).await, "user wins");
    let got = chat_variation(
        &http,
        &proxy,
        json!({"model": "f", "safety_identifier": s, "messages": msgs}),
        &[],
    )
    .await;
    assert_eq!(
        got,
        variation_of(&proxy, "f", &s).await,
        "safety_identifier used"
    );

    // metadata:uid.
    let (m1, m2) = users_apart(&proxy, "f", "id-m-").await;
    for m in [&m1, &m2] {
        let got = chat_variation(
            &http,
            &proxy,
            json!({"model": "f", "metadata": {"other": "x", "uid": m}, "messages": msgs}),
            &[],
        )
        .await;
        assert_eq!(got, variation_of(&proxy, "f", m).await, "metadata:uid used");
    }

    // Sticky.
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(
            chat_variation(
                &http,
                &proxy,
                json!({"model": "f", "user": "sticky-1", "messages": msgs}),
                &[],
            )
            .await,
        );
    }
    assert_eq!(seen.len(), 1, "one user, one variation: {seen:?}");

    // Spread over 400 users.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..400 {
        let v = chat_variation(
            &http,
            &proxy,
            json!({"model": "f", "user": format!("spread-{n}"), "messages": msgs}),
            &[],
        )
        .await;
        *counts.entry(v).or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(
        counts.values().all(|&n| n >= 120),
        "a 50/50 split: {counts:?}"
    );

    // An audience on a header attribute.
    for n in 0..20 {
        let user = format!("team-{n}");
        let resp = http
            .post_json(
                &proxy.url(CHAT),
                &json!({"model": "f", "user": user, "messages": msgs}).to_string(),
                &[("x-switchyard-attr-team", "ai")],
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.header("x-switchyard-variation").as_deref(), Some("b"));
        assert_eq!(resp.header("x-switchyard-rule").as_deref(), Some("team"));
    }
    let other_team = http
        .post_json(
            &proxy.url(CHAT),
            &json!({"model": "f", "user": "team-0", "messages": msgs}).to_string(),
            &[("x-switchyard-attr-team", "web")],
        )
        .await;
    assert_eq!(
        other_team.header("x-switchyard-rule").as_deref(),
        Some("split")
    );

    // on_missing = "reject".
    let requests_before = up.request_count();
    let resp = http
        .post_json(
            &proxy.url(CHAT),
            &json!({"model": "f", "messages": msgs}).to_string(),
            &[],
        )
        .await;
    assert_openai_error(&resp, 400, "missing_user");
    assert_eq!(up.request_count(), requests_before, "nothing forwarded");
}

// ---------------------------------------------------------------------------------------------
// 6. Streaming
// ---------------------------------------------------------------------------------------------

fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(c) => json!({"content": c}),
        None => json!({}),
    };
    json!({
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "model-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": null,
    })
    .to_string()
}

fn usage_chunk() -> String {
    json!({
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "model-x",
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    })
    .to_string()
}

#[tokio::test]
async fn streaming_is_relayed_incrementally_and_usage_is_counted_but_hidden() {
    let gate = Arc::new(Notify::new());
    let up = MockUpstream::builder()
        .sse(vec![
            SseStep::Data(chunk(Some("FIRST-PIECE"), None)),
            SseStep::Gate(gate.clone()),
            SseStep::Data(chunk(Some("SECOND-PIECE"), None)),
            SseStep::Data(chunk(None, Some("stop"))),
            SseStep::Data(usage_chunk()),
            SseStep::Done,
        ])
        .start()
        .await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;

    // The client did not ask for usage.
    let body = json!({
        "model": "f", "user": "s-1", "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let mut stream = client::post_stream(&proxy.url(CHAT), &body, &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert!(stream
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert_eq!(stream.header("x-switchyard-flag").as_deref(), Some("f"));
    assert!(stream.header("x-switchyard-variation").is_some());
    assert!(stream.header("x-request-id").is_some());
    // The first chunk arrives while the upstream is still held at the gate.
    let first = stream.next_data(WAIT).await;
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains("FIRST-PIECE"), "{first}");
    assert!(!first.contains("SECOND-PIECE"), "{first}");
    gate.notify_one();
    let rest = String::from_utf8_lossy(&stream.rest(WAIT).await).into_owned();
    let all = format!("{first}{rest}");
    assert!(all.contains("SECOND-PIECE"), "{all}");
    assert!(all.ends_with("data: [DONE]\n\n"), "{all:?}");
    assert!(
        !all.contains("\"usage\""),
        "usage the client did not ask for: {all}"
    );
    let data = sse_data(&all);
    assert_eq!(
        data.len(),
        4,
        "three chunks and [DONE], the usage chunk removed: {data:?}"
    );
    for d in &data[..3] {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(v["object"], "chat.completion.chunk");
    }
    let forwarded = up.requests()[0].json();
    assert_eq!(forwarded["stream"], json!(true));
    assert_eq!(forwarded["stream_options"]["include_usage"], json!(true));

    // The client asked for usage: it gets it.
    let body = json!({
        "model": "f", "user": "s-2", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let mut stream = client::post_stream(&proxy.url(CHAT), &body, &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    let first = stream.next_data(WAIT).await;
    assert!(String::from_utf8_lossy(&first).contains("FIRST-PIECE"));
    gate.notify_one();
    let rest = String::from_utf8_lossy(&stream.rest(WAIT).await).into_owned();
    let usage: Vec<Value> = sse_data(&rest)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .collect();
    assert_eq!(
        usage,
        vec![json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})],
        "{rest}"
    );
    assert!(rest.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        up.requests()[1].json()["stream_options"]["include_usage"],
        json!(true)
    );

    // Both streams' usage counted; time to first token observed twice.
    let m = metrics(&proxy).await;
    let f = [("flag", "f")];
    assert_eq!(
        sum(
            &m,
            "switchyard_tokens_total",
            &[("flag", "f"), ("direction", "in")]
        ),
        22.0
    );
    assert_eq!(
        sum(
            &m,
            "switchyard_tokens_total",
            &[("flag", "f"), ("direction", "out")]
        ),
        14.0
    );
    assert_eq!(
        sum(&m, "switchyard_time_to_first_token_seconds_count", &f),
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "switchyard_requests_total",
            &[("flag", "f"), ("outcome", "success")]
        ),
        2.0
    );
}

#[tokio::test]
async fn events_split_across_writes_or_crlf_framed_are_relayed_whole() {
    let usage = usage_chunk();
    let (u1, u2) = usage.split_at(usage.len() / 2);
    let first = chunk(Some("PIECE-ONE"), None);
    let (c1, c2) = first.split_at(20);
    let up = MockUpstream::builder()
        .sse(vec![
            SseStep::Raw(format!("data: {c1}")),
            SseStep::Raw(format!("{c2}\n\n")),
            SseStep::Raw(format!("data: {}\r\n\r\n", chunk(Some("CRLF-PIECE"), None))),
            SseStep::Raw(": keep-alive\n\n".to_owned()),
            SseStep::Raw(format!("data: {u1}")),
            SseStep::Raw(format!("{u2}\n\ndata: [DONE]\n\n")),
        ])
        .start()
        .await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
    let body = json!({
        "model": "f", "user": "s-3", "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let stream = client::post_stream(&proxy.url(CHAT), &body, &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    let all = String::from_utf8_lossy(&stream.rest(WAIT).await).into_owned();
    assert!(!all.contains("\"usage\""), "{all}");
    let data: Vec<String> = all
        .split("\n\n")
        .flat_map(|e| e.split("\r\n\r\n"))
        .filter_map(|e| {
            e.trim_start()
                .strip_prefix("data:")
                .map(|d| d.trim().to_owned())
        })
        .collect();
    assert_eq!(data.len(), 3, "two chunks and [DONE]: {all:?}");
    for d in &data[..2] {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(v["object"], "chat.completion.chunk");
    }
    assert!(data[0].contains("PIECE-ONE") && data[1].contains("CRLF-PIECE"));
    assert_eq!(data[2], "[DONE]");
    let m = metrics(&proxy).await;
    assert_eq!(
        sum(
            &m,
            "switchyard_tokens_total",
            &[("flag", "f"), ("direction", "out")]
        ),
        7.0,
        "usage read from an event split across writes"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. /v1/models and /v1/decide
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn models_lists_flags_and_decide_agrees_with_the_chat_headers() {
    let up = MockUpstream::builder().start().await;
    let mut config = identity_config(&up.base_url());
    config.push_str(
        r#"
[flags.g]
off_variation = "only"
[flags.g.variations.only]
provider = "up"
model_id = "model-g"
[[flags.g.rules]]
id = "all"
allocation = [{ variation = "only", end = 10000 }]
"#,
    );
    let proxy = TestProxy::start(&config).await;

    let models = client::get(&proxy.url("/v1/models")).await;
    assert_eq!(models.status, StatusCode::OK);
    let v = models.json();
    assert_eq!(v["object"], "list");
    let ids: BTreeSet<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, BTreeSet::from(["f".to_owned(), "g".to_owned()]));

    let keys: BTreeSet<&str> = ["flag", "variation", "rule", "bucket", "reason", "variables"]
        .into_iter()
        .collect();
    let http = Http::new();
    for n in 1..=20 {
        let user = format!("u-{n}");
        let d = decide(&proxy, "f", &user).await;
        let got: BTreeSet<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(got, keys, "{d}");
        assert_eq!(d["flag"], "f");
        let bucket = d["bucket"].as_u64().expect("a bucket");
        assert!(bucket < 10_000);
        assert!(d["reason"].is_string());
        assert!(d["variables"].is_object());
        let resp = http
            .post_json(&proxy.url(CHAT), &chat("f", &user), &[])
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.header("x-switchyard-variation").as_deref(),
            d["variation"].as_str()
        );
        assert_eq!(
            resp.header("x-switchyard-rule").as_deref(),
            d["rule"].as_str()
        );
        let model = if d["variation"] == "a" {
            "model-a"
        } else {
            "model-b"
        };
        assert_eq!(d["variables"]["model_id"], model);
    }

    // attr.k=v
    let resp = client::get(&proxy.url("/v1/decide?flag=f&user=u-1&attr.team=ai")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let d = resp.json();
    assert_eq!(d["variation"], "b");
    assert_eq!(d["rule"], "team");

    let resp = client::get(&proxy.url("/v1/decide?flag=nope&user=u-1")).await;
    assert_openai_error(&resp, 404, "flag_not_found");
    let resp = client::get(&proxy.url("/v1/decide?flag=f")).await;
    let err = assert_openai_error(&resp, 400, "invalid_value");
    assert!(err["message"].as_str().unwrap().contains("user"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 8. Passthrough
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_forwards_unknown_models_unchanged_under_a_bounded_label() {
    let up = MockUpstream::builder().start().await;
    let mut config = basic_config(&up.base_url());
    config.push_str("\n[passthrough]\nprovider = \"up\"\n");
    let proxy = TestProxy::start(&config).await;
    let model = "gpt-x-PASSMARK7319";
    let resp = client::post_json(&proxy.url(CHAT), &chat(model, "u-1"), &[]).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header("x-switchyard-flag"), None);
    let forwarded = up.requests()[0].json();
    assert_eq!(forwarded["model"], model);
    assert_eq!(
        forwarded["messages"],
        json!([{"role": "user", "content": "hello"}])
    );
    assert!(
        forwarded.get("temperature").is_none(),
        "no variation applied: {forwarded}"
    );
    let text = metrics_text(&proxy).await;
    assert!(!text.contains("PASSMARK7319"), "raw model name in /metrics");
    let m = parse_metrics(&text);
    assert_eq!(
        sum(
            &m,
            "switchyard_requests_total",
            &[("flag", "_passthrough"), ("outcome", "success")]
        ),
        1.0
    );

    // Without [passthrough]: 404 model_not_found, nothing forwarded.
    let up2 = MockUpstream::builder().start().await;
    let proxy2 = TestProxy::start(&basic_config(&up2.base_url())).await;
    let resp = client::post_json(&proxy2.url(CHAT), &chat(model, "u-1"), &[]).await;
    assert_openai_error(&resp, 404, "model_not_found");
    assert_eq!(up2.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 9. Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_requests_get_openai_shaped_400s_naming_the_field() {
    let up = MockUpstream::builder().start().await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
    let url = proxy.url(CHAT);
    let msgs = r#"[{"role":"user","content":"hi"}]"#;

    for body in [
        r#"{"model": "f", "messages": ["#,
        "not json at all",
        "",
        "{\"a\":1}x",
    ] {
        let resp = client::post_json(&url, body, &[]).await;
        assert_openai_error(&resp, 400, "invalid_json");
    }
    for body in ["[1, 2]", "\"a string\"", "42", "null"] {
        let resp = client::post_json(&url, body, &[]).await;
        let err = assert_openai_error(&resp, 400, "invalid_json");
        assert!(err["message"].as_str().unwrap().contains("object"), "{err}");
    }
    let field_cases: Vec<(String, &str)> = vec![
        (r#"{"model":"f","user":"u"}"#.into(), "messages"),
        (
            r#"{"model":"f","user":"u","messages":[]}"#.into(),
            "messages",
        ),
        (
            r#"{"model":"f","user":"u","messages":"hi"}"#.into(),
            "messages",
        ),
        (
            format!(r#"{{"model":"f","user":"u","messages":{msgs},"temperature":"hot"}}"#),
            "temperature",
        ),
        (
            format!(r#"{{"model":"f","user":"u","messages":{msgs},"stream":"yes"}}"#),
            "stream",
        ),
        (
            format!(r#"{{"model":"f","user":"u","messages":{msgs},"max_tokens":-1}}"#),
            "max_tokens",
        ),
        (
            format!(r#"{{"model":3,"user":"u","messages":{msgs}}}"#),
            "model",
        ),
        (format!(r#"{{"user":"u","messages":{msgs}}}"#), "model"),
    ];
    for (body, field) in &field_cases {
        let resp = client::post_json(&url, body, &[]).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            resp.text()
        );
        let err = resp.json()["error"].clone();
        assert!(
            err["type"].is_string() && err["code"].is_string(),
            "{body}: {err}"
        );
        let message = err["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{body}: message {message:?} should name `{field}`"
        );
    }
    assert_eq!(up.request_count(), 0, "nothing invalid is forwarded");
}

#[tokio::test]
async fn oversized_bodies_get_413_with_content_length_and_chunked() {
    let up = MockUpstream::builder().start().await;
    let config = format!(
        "[server]\nmax_body_bytes = 1024\n{}",
        basic_config(&up.base_url())
    );
    let proxy = TestProxy::start(&config).await;
    let big = json!({
        "model": "f", "user": "u-1",
        "messages": [{"role": "user", "content": "x".repeat(4000)}],
    })
    .to_string();

    let resp = client::post_json(&proxy.url(CHAT), &big, &[]).await;
    assert_openai_error(&resp, 413, "body_too_large");

    // Chunked, no content-length: the limit holds while reading.
    let mut req = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        proxy.addr
    )
    .into_bytes();
    for piece in big.as_bytes().chunks(500) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let raw = client::raw_exchange(proxy.addr, &req, false, WAIT).await;
    assert_eq!(raw.status(), Some(413), "{}", raw.text());
    assert!(raw.body().contains("body_too_large"), "{}", raw.text());

    // Under the limit: served.
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn wrong_method_unknown_path_and_broken_requests() {
    let up = MockUpstream::builder().start().await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;

    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let resp = client::request(method.clone(), &proxy.url(CHAT), "", &[]).await;
        assert_openai_error(&resp, 405, "method_not_allowed");
    }
    let resp = client::request(Method::POST, &proxy.url("/v1/models"), "{}", &[]).await;
    assert_openai_error(&resp, 405, "method_not_allowed");
    for path in ["/v1/nope", "/", "/v1/chat/completions/extra"] {
        let resp = client::get(&proxy.url(path)).await;
        assert_openai_error(&resp, 404, "not_found");
    }

    // Truncated body: the client promises 100 bytes, sends 10 and stops writing.
    let req = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":"
    );
    let raw = client::raw_exchange(proxy.addr, req.as_bytes(), true, WAIT).await;
    assert!(raw.closed, "the proxy must not hang on a truncated body");
    if let Some(status) = raw.status() {
        assert!(status < 500, "{}", raw.text());
    }
    // Not HTTP at all.
    let raw = client::raw_exchange(proxy.addr, b"HELLO THERE\r\n\r\n", true, WAIT).await;
    assert!(raw.closed);
    if let Some(status) = raw.status() {
        assert_eq!(status, 400, "{}", raw.text());
    }
    // A request cut inside the head.
    let raw = client::raw_exchange(proxy.addr, b"POST /v1/chat/comp", true, WAIT).await;
    assert!(raw.closed);
    if let Some(status) = raw.status() {
        assert!(status < 500, "{}", raw.text());
    }
    assert_eq!(up.request_count(), 0);

    // The proxy still serves.
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let base = format!("http://127.0.0.1:{}/v1", closed_port());
    let proxy = TestProxy::start(&basic_config(&base)).await;
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_openai_error(&resp, 502, "upstream_unreachable");
    assert_eq!(resp.header("x-switchyard-flag").as_deref(), Some("f"));
    assert!(resp.header("x-request-id").is_some());
}

#[tokio::test]
async fn hanging_upstream_times_out_with_504() {
    let up = MockUpstream::builder().hang().start().await;
    let config = basic_config(&up.base_url()).replace("timeout = \"5s\"", "timeout = \"300ms\"");
    let proxy = TestProxy::start(&config).await;
    let started = Instant::now();
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_openai_error(&resp, 504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(up.wait_for_requests(1, WAIT).await);
    let m = metrics(&proxy).await;
    assert_eq!(
        sum(
            &m,
            "switchyard_errors_total",
            &[("flag", "f"), ("class", "upstream_timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_with_status_and_body() {
    for (status, body) in [
        (
            429,
            json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
        ),
        (
            400,
            json!({"error": {"message": "context too long", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
        ),
        (
            503,
            json!({"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}}),
        ),
    ] {
        let up = MockUpstream::builder()
            .status(status)
            .json_body(body.clone())
            .start()
            .await;
        let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
        let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
        assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
        assert_eq!(resp.body, body.to_string().as_bytes(), "body relayed as is");
        assert_eq!(resp.header("x-switchyard-flag").as_deref(), Some("f"));
    }

    // A non-JSON 500 is wrapped into OpenAI's error shape.
    let up = MockUpstream::builder()
        .status(500)
        .raw_body("text/html", "<html><body>Internal oops</body></html>")
        .start()
        .await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    let err = assert_openai_error(&resp, 500, "upstream_error");
    assert!(err["message"].as_str().unwrap().contains("500"), "{err}");
    let m = metrics(&proxy).await;
    assert_eq!(
        sum(
            &m,
            "switchyard_errors_total",
            &[("flag", "f"), ("class", "upstream_5xx")]
        ),
        1.0
    );
}

/// JSON-ish values: scalars, arrays and objects, nested a few levels.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z\\\\\"\u{e9}\u{1F600} ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "metadata",
    "logit_bias",
    "n",
    "stop",
];

/// A chat body with some members right and some random.
fn arb_chat_body() -> impl Strategy<Value = String> {
    let member = (prop::sample::select(KNOWN_FIELDS), arb_json());
    (
        prop::collection::vec(member, 0..6),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(members, good_model, good_messages, stream)| {
            let mut obj = serde_json::Map::new();
            if good_model {
                obj.insert("model".into(), json!("f"));
            }
            if good_messages {
                obj.insert(
                    "messages".into(),
                    json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]),
                );
            }
            if stream {
                obj.insert("stream".into(), json!(true));
            }
            for (k, v) in members {
                obj.insert(k.to_owned(), v);
            }
            Value::Object(obj).to_string()
        })
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        arb_chat_body().prop_map(String::into_bytes),
        // A valid body with a random byte flipped.
        (arb_chat_body(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(s, i, b)| {
            let mut bytes = s.into_bytes();
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            bytes
        }),
    ]
}

#[test]
fn fuzzed_bodies_never_yield_a_proxy_5xx_nor_hang() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (up, proxy) = rt.block_on(async {
        let up = MockUpstream::builder().start().await;
        let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
        (up, proxy)
    });
    let http = rt.block_on(async { Http::new() });
    let url = proxy.url(CHAT);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&arb_body(), |body| {
        let resp = rt.block_on(async {
            tokio::time::timeout(WAIT, http.request(Method::POST, &url, body.clone(), &[])).await
        });
        let resp = resp.map_err(|_| TestCaseError::fail("request hung"))?;
        let status = resp.status.as_u16();
        // The upstream always answers 200, so any 5xx is the proxy's own.
        prop_assert!(
            status < 500,
            "status {status} for {:?}: {}",
            String::from_utf8_lossy(&body),
            resp.text()
        );
        if status >= 400 {
            let v: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| TestCaseError::fail(format!("error body not JSON: {e}")))?;
            prop_assert!(v["error"]["message"].is_string(), "{v}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Whatever the proxy forwarded is valid JSON: the rewrite never breaks a body.
    for c in up.requests() {
        let v: Result<Value, _> = serde_json::from_slice(&c.body);
        assert!(
            v.as_ref().is_ok_and(Value::is_object),
            "forwarded body is not a JSON object: {:?}",
            String::from_utf8_lossy(&c.body)
        );
    }
    drop(proxy);
    drop(up);
}

// ---------------------------------------------------------------------------------------------
// 10. Connection reuse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sequential_requests_reuse_upstream_connections() {
    let up = MockUpstream::builder().start().await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
    for n in 0..20 {
        // A fresh client connection each time: only the proxy's upstream pool can reuse.
        let resp =
            client::post_json(&proxy.url(CHAT), &chat("f", &format!("reuse-{n}")), &[]).await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    assert_eq!(up.request_count(), 20);
    assert!(
        up.connections_accepted() <= 2,
        "{} upstream connections for 20 sequential requests",
        up.connections_accepted()
    );
}

#[tokio::test]
async fn an_h2c_provider_carries_concurrent_requests_and_streams_on_one_connection() {
    let up = MockUpstream::builder().start().await;
    let config = basic_config(&up.base_url()).replacen(
        "kind = \"openai\"\n",
        "kind = \"openai\"\nhttp2_prior_knowledge = true\n",
        1,
    );
    assert!(config.contains("http2_prior_knowledge"), "{config}");
    let proxy = TestProxy::start(&config).await;
    let first = client::post_json(&proxy.url(CHAT), &chat("f", "h2c-0"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let mut calls = tokio::task::JoinSet::new();
    for n in 1..=24 {
        let url = proxy.url(CHAT);
        let mut body: Value = serde_json::from_str(&chat("f", &format!("h2c-{n}"))).unwrap();
        if n % 2 == 0 {
            body["stream"] = Value::Bool(true);
        }
        calls.spawn(async move { (n, client::post_json(&url, &body.to_string(), &[]).await) });
    }
    while let Some(done) = calls.join_next().await {
        let (n, resp) = done.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "request {n}: {}", resp.text());
        if n % 2 == 0 {
            assert!(
                resp.text().contains("data: [DONE]"),
                "stream {n}: {}",
                resp.text()
            );
        } else {
            let v: Value = serde_json::from_slice(&resp.body).unwrap();
            assert!(v["choices"].is_array(), "request {n}: {v}");
        }
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 25);
    assert!(
        seen.iter().all(|r| r.version == "HTTP/2.0"),
        "{:?}",
        seen.iter().map(|r| &r.version).collect::<Vec<_>>()
    );
    assert_eq!(
        up.connections_accepted(),
        1,
        "one multiplexed provider connection"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Metrics, health
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_per_variation_with_bounded_labels() {
    let up = MockUpstream::builder().start().await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
    let marker = "LEAKMARK5521";
    let http = Http::new();
    let n = 12;
    let mut per_variation: BTreeMap<String, f64> = BTreeMap::new();
    for i in 0..n {
        let user = format!("{marker}-user-{i}");
        let body = json!({
            "model": "f", "user": user,
            "metadata": {"note": marker},
            "messages": [{"role": "user", "content": marker}],
        })
        .to_string();
        let resp = http
            .post_json(
                &proxy.url(CHAT),
                &body,
                &[
                    ("x-switchyard-attr-team", marker),
                    ("x-request-id", &format!("{marker}-req-{i}")),
                ],
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        *per_variation
            .entry(resp.header("x-switchyard-variation").unwrap())
            .or_default() += 1.0;
    }
    // Error cases: an unknown model named with the marker, a malformed body.
    let resp = http
        .post_json(
            &proxy.url(CHAT),
            &chat(&format!("{marker}-model"), marker),
            &[],
        )
        .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let resp = http.post_json(&proxy.url(CHAT), "{oops", &[]).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);

    let text = metrics_text(&proxy).await;
    assert!(!text.contains(marker), "user input in a label:\n{text}");
    let m = parse_metrics(&text);
    let success = [("flag", "f"), ("outcome", "success")];
    assert_eq!(sum(&m, "switchyard_requests_total", &success), f64::from(n));
    for (variation, count) in &per_variation {
        let v = variation.as_str();
        let labels = [("flag", "f"), ("variation", v)];
        assert_eq!(
            sum(
                &m,
                "switchyard_requests_total",
                &[("flag", "f"), ("variation", v), ("outcome", "success")]
            ),
            *count
        );
        assert_eq!(
            sum(&m, "switchyard_request_duration_seconds_count", &labels),
            *count
        );
        assert_eq!(
            sum(&m, "switchyard_overhead_seconds_count", &labels),
            *count
        );
        let model = format!("model-{v}");
        assert!(
            m.iter().any(|s| s.name == "switchyard_requests_total"
                && s.labels.get("provider").map(String::as_str) == Some("up")
                && s.labels.get("model") == Some(&model)),
            "provider and model labels"
        );
        let p95: Vec<&Sample> = m
            .iter()
            .filter(|s| {
                s.name == "switchyard_latency_quantile_seconds"
                    && s.labels.get("flag").map(String::as_str) == Some("f")
                    && s.labels.get("variation").map(String::as_str) == Some(v)
                    && s.labels.get("quantile").map(String::as_str) == Some("0.95")
            })
            .collect();
        assert_eq!(p95.len(), 1, "one p95 quantile for {v}");
        assert!(p95[0].value > 0.0 && p95[0].value < 10.0, "{:?}", p95[0]);
    }
    assert!(
        sum(&m, "switchyard_errors_total", &[("class", "not_found")]) >= 1.0,
        "errors by class"
    );
    assert!(
        sum(
            &m,
            "switchyard_errors_total",
            &[("class", "invalid_request")]
        ) >= 1.0
    );
    assert!(
        text.contains("# TYPE switchyard_latency_quantile_seconds summary"),
        "the rolling quantiles are a summary"
    );
    for family in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds",
        "switchyard_overhead_seconds",
        "switchyard_errors_total",
        "switchyard_latency_quantile_seconds",
        "switchyard_tokens_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "family {family}"
        );
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "help of {family}"
        );
    }
    // Every flag, variation, provider and model label is a name from the config or a reserved
    // `_…` value (`_passthrough`, `_none`, …), never something a client sent.
    for s in &m {
        for (k, v) in &s.labels {
            let reserved = v.starts_with('_');
            let ok = match k.as_str() {
                "flag" => reserved || v == "f",
                "variation" => reserved || ["a", "b"].contains(&v.as_str()),
                "provider" => reserved || v == "up",
                "model" => reserved || ["model-a", "model-b"].contains(&v.as_str()),
                _ => true,
            };
            assert!(ok, "unexpected label {k}={v} on {}", s.name);
        }
    }

    let health = client::get(&proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = client::get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    // The admin listener is not the API.
    let resp = client::get(&proxy.url("/metrics")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn fallback_triggers_are_a_registered_family_counting_fallbacks() {
    // The prometheus crate renders no HELP/TYPE for a family without children, so the family
    // is checked once a fallback has happened.
    let base = format!("http://127.0.0.1:{}/v1", closed_port());
    let config = basic_config(&base)
        .replace(
            "model_id = \"model-a\"",
            "model_id = \"model-a\"\nfallback_behavior = \"rule-based\"",
        )
        .replace(
            "model_id = \"model-b\"",
            "model_id = \"model-b\"\nfallback_behavior = \"rule-based\"",
        );
    let proxy = TestProxy::start(&config).await;
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert!(
        resp.header("x-switchyard-fallback").is_some(),
        "a fallback answer says so"
    );
    let text = metrics_text(&proxy).await;
    assert!(text.contains("# HELP switchyard_fallback_triggers_total "));
    assert!(text.contains("# TYPE switchyard_fallback_triggers_total counter"));
    let m = parse_metrics(&text);
    assert_eq!(
        sum(
            &m,
            "switchyard_fallback_triggers_total",
            &[("flag", "f"), ("behavior", "rule-based")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "switchyard_requests_total",
            &[("flag", "f"), ("outcome", "fallback")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Graceful shutdown
// ---------------------------------------------------------------------------------------------

async fn refuses_connections(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let gate = Arc::new(Notify::new());
    let up = MockUpstream::builder()
        .sse(vec![
            SseStep::Data(chunk(Some("BEFORE"), None)),
            SseStep::Gate(gate.clone()),
            SseStep::Data(chunk(Some("AFTER"), None)),
            SseStep::Data(chunk(None, Some("stop"))),
            SseStep::Done,
        ])
        .start()
        .await;
    let proxy = TestProxy::start(&basic_config(&up.base_url())).await;
    let addr = proxy.addr;
    let body = json!({
        "model": "f", "user": "u-1", "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let mut stream = client::post_stream(&proxy.url(CHAT), &body, &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    let first = stream.next_data(WAIT).await;
    assert!(String::from_utf8_lossy(&first).contains("BEFORE"));

    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_secs(20)));
    // Shutdown has begun once the listener is gone; the stream is still held at the gate.
    assert!(refuses_connections(addr).await, "the listener stays open");
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the stream in flight"
    );
    gate.notify_one();
    let rest = String::from_utf8_lossy(&stream.rest(WAIT).await).into_owned();
    assert!(rest.contains("AFTER"), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest:?}");
    let clean = tokio::time::timeout(Duration::from_secs(25), shutdown)
        .await
        .expect("shutdown returns")
        .expect("shutdown task");
    assert!(clean, "shutdown reports a clean stop");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// 13. Secrets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_provider_key_never_leaks() {
    let key = "sk-live-SECRETMARK-8f3a2b";
    let env = secret_env("leak", key);

    // Debug of the parsed config.
    let up = MockUpstream::builder().start().await;
    let text = config_with_key(&up.base_url(), &env);
    let config = switchyard::Config::parse(&text, "test.toml").unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("SECRETMARK"), "key in Debug of Config");

    // It is sent upstream, and never shows in /metrics.
    let proxy = TestProxy::start_config(config).await;
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(!resp.text().contains("SECRETMARK"));
    assert_eq!(
        up.requests()[0].header("authorization").as_deref(),
        Some(format!("Bearer {key}").as_str())
    );
    assert!(!metrics_text(&proxy).await.contains("SECRETMARK"));

    // Nor in error bodies: unreachable and timed-out providers.
    let base = format!("http://127.0.0.1:{}/v1", closed_port());
    let proxy = TestProxy::start(&config_with_key(&base, &env)).await;
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_openai_error(&resp, 502, "upstream_unreachable");
    assert!(!resp.text().contains("SECRETMARK"), "{}", resp.text());
    for (k, v) in resp.headers.iter() {
        assert!(
            !v.to_str().unwrap_or("").contains("SECRETMARK"),
            "header {k}"
        );
    }
    assert!(!metrics_text(&proxy).await.contains("SECRETMARK"));

    let hang = MockUpstream::builder().hang().start().await;
    let text =
        config_with_key(&hang.base_url(), &env).replace("timeout = \"5s\"", "timeout = \"200ms\"");
    let proxy = TestProxy::start(&text).await;
    let resp = client::post_json(&proxy.url(CHAT), &chat("f", "u-1"), &[]).await;
    assert_openai_error(&resp, 504, "upstream_timeout");
    assert!(!resp.text().contains("SECRETMARK"));
}

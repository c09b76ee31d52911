//! The response cache through the real proxy on a real socket: one upstream call for a
//! repeated request, none shared between variations, streams replayed as the same events in
//! the client's own format, `cache-control` honoured, ttl expiry, errors and fallbacks never
//! stored, Redis (a throwaway server killed mid-test: misses, never errors), and the hit
//! ratio, bytes and `cached` outcome in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/redis.rs"]
mod redis;
#[path = "support/upstream.rs"]
mod upstream;

use std::time::{Duration, Instant};

use serde_json::json;
use upstream::MockUpstream;

const WAIT: Duration = Duration::from_secs(10);

/// Flag `f`: variation `a` (everyone) and `b` (attribute group = b), both cached, both at
/// temperature 0; variation `free` of flag `g` caches without forcing a temperature; flag
/// `short` caches for 300 ms; `[cache]` is the TOML body of that section.
fn config(base: &str, cache: &str) -> String {
    format!(
        r#"
[cache]
{cache}

[providers.up]
kind = "openai"
base_url = "{base}"
timeout = "5s"
retry = {{ attempts = 1 }}

[audiences.group-b]
conditions = ["and", {{ attribute = "group", match = "exact", value = "b" }}]

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "up"
model_id = "model-a"
temperature = 0
cache = {{ ttl = "10m" }}
fallback_behavior = "rule-based"
[flags.f.variations.b]
provider = "up"
model_id = "model-b"
temperature = 0
cache = {{ ttl = "10m" }}
[[flags.f.rules]]
id = "to-b"
audience = "group-b"
allocation = [{{ variation = "b", end = 10000 }}]
[[flags.f.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]

[flags.g]
off_variation = "free"
[flags.g.variations.free]
provider = "up"
model_id = "model-free"
cache = {{ ttl = "10m" }}
[[flags.g.rules]]
id = "all"
allocation = [{{ variation = "free", end = 10000 }}]

[flags.short]
off_variation = "s"
[flags.short.variations.s]
provider = "up"
model_id = "model-s"
temperature = 0
cache = {{ ttl = "300ms" }}
[[flags.short.rules]]
id = "all"
allocation = [{{ variation = "s", end = 10000 }}]

[flags.plain]
off_variation = "p"
[flags.plain.variations.p]
provider = "up"
model_id = "model-p"
temperature = 0
[[flags.plain.rules]]
id = "all"
allocation = [{{ variation = "p", end = 10000 }}]
"#
    )
}

fn chat(model: &str, text: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string()
}

/// A mock upstream, and a proxy in front of it with `cache` as its `[cache]` section.
async fn start(cache: &str) -> (MockUpstream, proxy::TestProxy) {
    let up = MockUpstream::builder().start().await;
    let p = proxy::TestProxy::start(&config(&up.base_url(), cache)).await;
    (up, p)
}

async fn post(p: &proxy::TestProxy, body: &str, headers: &[(&str, &str)]) -> client::Resp {
    client::post_json(&p.url("/v1/chat/completions"), body, headers).await
}

/// The value of the sample `name{labels}` (labels in any order) in `/metrics`, or 0.
async fn metric(p: &proxy::TestProxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client::get(&p.admin_url("/metrics")).await.text();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !rest.starts_with('{') && !rest.starts_with(' ') {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            let value = rest.rsplit(' ').next().unwrap_or("0");
            return value.parse().unwrap_or(0.0);
        }
    }
    0.0
}

#[tokio::test]
async fn the_same_request_twice_calls_the_upstream_once_and_counts_as_cached() {
    let (up, p) = start("").await;
    let body = chat("f", "hello cache");
    let first = post(&p, &body, &[("x-switchyard-user", "u1")]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-switchyard-cache").as_deref(), Some("miss"));
    let second = post(&p, &body, &[("x-switchyard-user", "u2")]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-switchyard-cache").as_deref(), Some("hit"));
    assert_eq!(
        second.header("x-switchyard-variation").as_deref(),
        Some("a")
    );
    assert_eq!(
        second.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        second.body, first.body,
        "the cached answer is the first one"
    );
    assert_eq!(up.request_count(), 1, "one upstream call for two requests");
    // Another text is another request.
    let other = post(&p, &chat("f", "something else"), &[]).await;
    assert_eq!(other.header("x-switchyard-cache").as_deref(), Some("miss"));
    assert_eq!(up.request_count(), 2);
    // A variation without a cache: no header, every request goes up.
    for _ in 0..2 {
        let r = post(&p, &chat("plain", "hi"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-switchyard-cache"), None);
    }
    assert_eq!(up.request_count(), 4);

    let (f, a) = (("flag", "f"), ("variation", "a"));
    let hits = metric(
        &p,
        "switchyard_cache_requests_total",
        &[f, a, ("result", "hit")],
    )
    .await;
    let misses = metric(
        &p,
        "switchyard_cache_requests_total",
        &[f, a, ("result", "miss")],
    )
    .await;
    assert_eq!((hits, misses), (1.0, 2.0));
    let ratio = metric(&p, "switchyard_cache_hit_ratio", &[f, a]).await;
    assert!((ratio - 1.0 / 3.0).abs() < 1e-9, "hit ratio {ratio}");
    let served = metric(
        &p,
        "switchyard_cache_bytes_total",
        &[f, a, ("direction", "served")],
    )
    .await;
    assert_eq!(served, first.body.len() as f64);
    let stored = metric(
        &p,
        "switchyard_cache_bytes_total",
        &[f, a, ("direction", "stored")],
    )
    .await;
    assert!(stored >= served, "stored {stored}, served {served}");
    let cached = metric(
        &p,
        "switchyard_requests_total",
        &[f, a, ("outcome", "cached")],
    )
    .await;
    assert_eq!(cached, 1.0, "the hit counts as a request of its variation");
    let success = metric(
        &p,
        "switchyard_requests_total",
        &[f, a, ("outcome", "success")],
    )
    .await;
    assert_eq!(success, 2.0);
}

#[tokio::test]
async fn the_same_body_in_two_variations_is_two_upstream_calls() {
    let (up, p) = start("url = \"memory\"").await;
    let body = chat("f", "same words");
    let in_a = [("x-switchyard-user", "ua")];
    let in_b = [
        ("x-switchyard-user", "ub"),
        ("x-switchyard-attr-group", "b"),
    ];
    let a1 = post(&p, &body, &in_a).await;
    let b1 = post(&p, &body, &in_b).await;
    assert_eq!(a1.header("x-switchyard-variation").as_deref(), Some("a"));
    assert_eq!(b1.header("x-switchyard-variation").as_deref(), Some("b"));
    assert_eq!(a1.header("x-switchyard-cache").as_deref(), Some("miss"));
    assert_eq!(b1.header("x-switchyard-cache").as_deref(), Some("miss"));
    assert_eq!(up.request_count(), 2, "one call per variation");
    let a2 = post(&p, &body, &in_a).await;
    let b2 = post(&p, &body, &in_b).await;
    assert_eq!(a2.header("x-switchyard-cache").as_deref(), Some("hit"));
    assert_eq!(b2.header("x-switchyard-cache").as_deref(), Some("hit"));
    assert_eq!(up.request_count(), 2);
    assert_eq!(a2.json()["model"], "model-a", "a's answer stays a's");
    assert_eq!(b2.json()["model"], "model-b", "b's answer stays b's");
}

#[tokio::test]
async fn a_stream_is_replayed_as_the_same_events_in_the_clients_format() {
    let (up, p) = start("").await;
    let body = json!({"model": "f", "stream": true,
        "messages": [{"role": "user", "content": "stream me please"}]})
    .to_string();
    let url = p.url("/v1/chat/completions");
    let first = client::post_stream(&url, &body, &[]).await;
    assert_eq!(first.header("x-switchyard-cache").as_deref(), Some("miss"));
    let first = first.rest(WAIT).await;
    assert!(first.ends_with(b"data: [DONE]\n\n"), "{first:?}");
    let second = client::post_stream(&url, &body, &[]).await;
    assert_eq!(second.header("x-switchyard-cache").as_deref(), Some("hit"));
    assert_eq!(
        second.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let second = second.rest(WAIT).await;
    assert_eq!(second, first, "the replay carries the same events");
    assert_eq!(up.request_count(), 1);

    // An Anthropic Messages client on the same (chat) provider: its stream is translated,
    // cached as Messages events and replayed as Messages events.
    let msg = json!({"model": "f", "stream": true, "max_tokens": 50,
        "messages": [{"role": "user", "content": "stream me please"}]})
    .to_string();
    let murl = p.url("/v1/messages");
    let m1 = client::post_stream(&murl, &msg, &[]).await;
    assert_eq!(m1.header("x-switchyard-cache").as_deref(), Some("miss"));
    let m1 = m1.rest(WAIT).await;
    let m2 = client::post_stream(&murl, &msg, &[]).await;
    assert_eq!(m2.header("x-switchyard-cache").as_deref(), Some("hit"));
    let m2 = m2.rest(WAIT).await;
    assert_eq!(m2, m1);
    let text = String::from_utf8_lossy(&m2);
    assert!(text.contains("event: message_start"), "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(
        !text.contains("[DONE]"),
        "no chat events in a Messages stream: {text}"
    );
    assert_eq!(
        up.request_count(),
        2,
        "the Messages client has its own entry"
    );
}

#[tokio::test]
async fn cache_control_no_store_and_no_cache_are_honoured() {
    let (up, p) = start("").await;
    let body = chat("f", "private question");
    for _ in 0..2 {
        let r = post(&p, &body, &[("cache-control", "no-store")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("bypass"));
    }
    assert_eq!(
        up.request_count(),
        2,
        "no-store: never answered from the cache"
    );
    let r = post(&p, &body, &[]).await;
    assert_eq!(
        r.header("x-switchyard-cache").as_deref(),
        Some("miss"),
        "no-store answers were not stored"
    );
    assert_eq!(up.request_count(), 3);
    // no-cache: a fresh answer (stored), never the cached one.
    let r = post(&p, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("bypass"));
    assert_eq!(up.request_count(), 4);
    let r = post(&p, &body, &[]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("hit"));
    assert_eq!(up.request_count(), 4);
    let bypass = metric(
        &p,
        "switchyard_cache_requests_total",
        &[("flag", "f"), ("variation", "a"), ("result", "bypass")],
    )
    .await;
    assert_eq!(bypass, 3.0);
}

#[tokio::test]
async fn only_temperature_zero_is_cached_unless_the_variation_says_otherwise() {
    let (up, p) = start("").await;
    let warm = json!({"model": "g", "temperature": 0.7,
        "messages": [{"role": "user", "content": "t"}]})
    .to_string();
    for _ in 0..2 {
        let r = post(&p, &warm, &[]).await;
        assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("bypass"));
    }
    let no_temperature = chat("g", "t");
    let r = post(&p, &no_temperature, &[]).await;
    assert_eq!(
        r.header("x-switchyard-cache").as_deref(),
        Some("bypass"),
        "the provider's default temperature is not 0"
    );
    assert_eq!(up.request_count(), 3);
    let cold = json!({"model": "g", "temperature": 0,
        "messages": [{"role": "user", "content": "t"}]})
    .to_string();
    let r = post(&p, &cold, &[]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("miss"));
    let r = post(&p, &cold, &[]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("hit"));
    assert_eq!(up.request_count(), 4);

    // any_temperature = true caches whatever the temperature.
    let toml = config(&up.base_url(), "").replace(
        "model_id = \"model-free\"\ncache = { ttl = \"10m\" }",
        "model_id = \"model-free\"\ncache = { ttl = \"10m\", any_temperature = true }",
    );
    let p = proxy::TestProxy::start(&toml).await;
    let r = post(&p, &warm, &[]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("miss"));
    let r = post(&p, &warm, &[]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("hit"));
    assert_eq!(up.request_count(), 5);
}

#[tokio::test]
async fn an_entry_expires_after_its_ttl() {
    let (up, p) = start("").await;
    let body = chat("short", "brief");
    // Taken before the first request: the entry is stored before its answer arrives, so a clock
    // read after the answer would start the ttl late.
    let stored_at = Instant::now();
    let r = post(&p, &body, &[]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("miss"));
    let deadline = Instant::now() + WAIT;
    let mut hits = 0;
    loop {
        let r = post(&p, &body, &[]).await;
        match r.header("x-switchyard-cache").as_deref() {
            Some("hit") => hits += 1,
            Some("miss") => break,
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stored_at.elapsed() >= Duration::from_millis(300),
        "expired before its ttl"
    );
    assert!(hits >= 1, "served from the cache before it expired");
    assert_eq!(
        up.request_count(),
        2,
        "a call at the start and one after expiry"
    );
}

#[tokio::test]
async fn errors_and_fallback_answers_are_never_stored() {
    let failing = MockUpstream::builder().status(500).start().await;
    let p = proxy::TestProxy::start(&config(&failing.base_url(), "")).await;
    let body = chat("f", "fails");
    for _ in 0..2 {
        let r = post(&p, &body, &[]).await;
        assert_eq!(r.status, 200, "a rule-based fallback answers");
        assert!(r.header("x-switchyard-fallback").is_some());
        assert_ne!(r.header("x-switchyard-cache").as_deref(), Some("hit"));
    }
    assert_eq!(
        failing.request_count(),
        2,
        "the fallback answer was not stored"
    );
    let refusing = MockUpstream::builder().status(400).start().await;
    let p = proxy::TestProxy::start(&config(&refusing.base_url(), "")).await;
    let body_b = chat("f", "bad");
    for _ in 0..2 {
        let r = post(&p, &body_b, &[("x-switchyard-attr-group", "b")]).await;
        assert_eq!(r.status, 400);
        assert_ne!(r.header("x-switchyard-cache").as_deref(), Some("hit"));
    }
    assert_eq!(refusing.request_count(), 2, "the error was not stored");
}

/// Sends `body` until its answer is a hit (a Redis store lands in the background).
async fn until_hit(p: &proxy::TestProxy, body: &str) -> client::Resp {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = post(p, body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if r.header("x-switchyard-cache").as_deref() == Some("hit") {
            return r;
        }
        assert!(Instant::now() < deadline, "never a hit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn redis_is_shared_by_two_proxies_and_its_outage_is_only_misses() {
    let mut redis = redis::Redis::start();
    let up = MockUpstream::builder().start().await;
    let section = format!("url = \"{}\"\ntimeout = \"200ms\"", redis.url());
    let p1 = proxy::TestProxy::start(&config(&up.base_url(), &section)).await;
    let p2 = proxy::TestProxy::start(&config(&up.base_url(), &section)).await;
    let body = chat("f", "shared by the fleet");
    let r = post(&p1, &body, &[]).await;
    assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("miss"));
    // The other replica answers from Redis.
    let hit = until_hit(&p2, &body).await;
    assert_eq!(hit.body, r.body);
    let calls = up.request_count();

    // Redis dies: every request still answers 200, as a miss, without waiting long.
    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let r = post(&p1, &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-cache").as_deref(), Some("miss"));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    assert_eq!(up.request_count(), calls + 5);
    let stream = json!({"model": "f", "stream": true,
        "messages": [{"role": "user", "content": "during the outage"}]})
    .to_string();
    let s = client::post_stream(&p1.url("/v1/chat/completions"), &stream, &[]).await;
    assert_eq!(s.status, 200);
    assert!(s.rest(WAIT).await.ends_with(b"data: [DONE]\n\n"));

    // Back on the same port: the cache works again (after its short back-off).
    let port = redis.port;
    let _back = redis::Redis::start_on(port);
    let body = chat("f", "after the outage");
    let hit = until_hit(&p1, &body).await;
    assert_eq!(
        hit.json()["choices"][0]["message"]["content"],
        "echo: after the outage"
    );
    // The other replica's old connection died with the server: it reconnects too.
    // (Concurrent misses may each store an answer: the last one stored wins.)
    let again = until_hit(&p2, &body).await;
    assert_eq!(again.json()["choices"], hit.json()["choices"]);
}

#[test]
fn bad_cache_settings_are_named_by_key() {
    let base = config(
        "http://127.0.0.1:1",
        "url = \"memcached://x\"\nmax_bytes = 10",
    )
    .replace("cache = { ttl = \"300ms\" }", "cache = { ttl = \"0s\" }");
    let err = switchyard::Config::parse(&base, "test.toml")
        .expect_err("refused")
        .to_string();
    assert!(err.contains("cache.url"), "{err}");
    assert!(err.contains("cache.max_bytes"), "{err}");
    assert!(err.contains("flags.short.variations.s.cache.ttl"), "{err}");
    let secret = config(
        "http://127.0.0.1:1",
        "url = \"redis://:hunter2@127.0.0.1:6379\"",
    );
    let parsed = switchyard::Config::parse(&secret, "test.toml").unwrap();
    assert!(
        !format!("{parsed:?}").contains("hunter2"),
        "no password in Debug"
    );
}

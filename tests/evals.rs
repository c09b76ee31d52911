//! Online evals through the real interface: a flag's answers (plain and streamed) are sampled,
//! scored by a judge upstream that scores by content, and the per-variation hallucination rate
//! in `GET /admin/flags/F/results` is the scripted one; a full queue drops (counted) without
//! touching requests; judge failures and unreadable scores are counted, never retried; a
//! request is scored once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::Notify;

const ADMIN: &str = "evals-test-admin-token";

/// The scripted hallucination rate of each model, in thousandths.
fn scripted_rate(model: &str) -> u64 {
    match model {
        "model-a" => 100,
        _ => 400,
    }
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether `model` answers `question` with a made-up claim (the script).
fn fabricates(model: &str, question: &str) -> bool {
    fnv(question) % 1000 < scripted_rate(model)
}

/// How the judge behaves.
#[derive(Clone, Copy, PartialEq)]
enum JudgeMode {
    /// Scores 1 when the answer holds a made-up claim, else 0.
    Content,
    /// Waits until released.
    Blocked,
    /// Answers 500.
    Failing,
    /// Answers text with no score in it.
    Garbled,
}

/// One upstream that answers the flag's models (by the script) and judges (by content).
struct Upstream {
    addr: SocketAddr,
    judge_calls: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

fn answer_text(model: &str, question: &str) -> String {
    if fabricates(model, question) {
        format!("FABRICATED: the moon is made of cheese ({question})")
    } else {
        format!("grounded answer to {question}")
    }
}

async fn serve(
    req: Request<Incoming>,
    mode: JudgeMode,
    calls: Arc<AtomicUsize>,
    release: Arc<Notify>,
) -> Response<Full<Bytes>> {
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let model = v["model"].as_str().unwrap_or("").to_owned();
    let last = v["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let json_resp = |status: u16, v: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .unwrap()
    };
    let completion = |content: &str| {
        json!({"id": "c1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}})
    };
    if model.starts_with("judge") {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(
            last.starts_with("QUESTION: "),
            "the judge's prompt is filled in: {last}"
        );
        return match mode {
            JudgeMode::Content => {
                let score = u8::from(last.contains("FABRICATED"));
                json_resp(200, completion(&format!("verdict: {{\"score\": {score}}}")))
            }
            JudgeMode::Blocked => {
                release.notified().await;
                json_resp(200, completion("{\"score\": 0}"))
            }
            JudgeMode::Failing => json_resp(
                500,
                json!({"error": {"message": "judge down", "type": "server_error"}}),
            ),
            JudgeMode::Garbled => json_resp(200, completion("I would rather not say.")),
        };
    }
    let text = answer_text(&model, &last);
    if v["stream"] == json!(true) {
        let mut sse = String::new();
        for piece in text.as_bytes().chunks(7) {
            let piece = String::from_utf8_lossy(piece);
            let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
            sse.push_str(&format!("data: {chunk}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from(sse)))
            .unwrap();
    }
    json_resp(200, completion(&text))
}

impl Upstream {
    async fn start(mode: JudgeMode) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let judge_calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (calls, rel) = (judge_calls.clone(), release.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (calls, rel) = (calls.clone(), rel.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (calls, rel) = (calls.clone(), rel.clone());
                        async move { Ok::<_, Infallible>(serve(req, mode, calls, rel).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            judge_calls,
            release,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

fn config(upstream: &str, sample: f64, extra: &str) -> String {
    format!(
        r#"
[admin]
tokens = [{{ name = "ops", token_env = "EVALS_TEST_ADMIN" }}]

[providers.up]
kind = "openai"
base_url = "{upstream}"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}

[prompts]
groundedness-judge = "QUESTION: {{question}}\nANSWER: {{answer}}\nReply with JSON: {{\"score\": 1}} when the answer makes claims the question does not support, else {{\"score\": 0}}."

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "up"
model_id = "model-a"
[flags.f.variations.b]
provider = "up"
model_id = "model-b"
[[flags.f.rules]]
id = "exp"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]

[evals.groundedness]
flags = ["f"]
sample = {sample}
provider = "up"
model = "judge-1"
prompt = "groundedness-judge"
score = "json:score"
metric = "hallucination"
{extra}
"#
    )
}

async fn start(toml: &str) -> (proxy::TestProxy, switchyard::Config) {
    std::env::set_var("EVALS_TEST_ADMIN", ADMIN);
    let parsed = switchyard::Config::parse(toml, "test.toml").unwrap();
    (proxy::TestProxy::start(toml).await, parsed)
}

/// The sum of a family's samples whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(p: &proxy::TestProxy) -> String {
    client::get(&p.admin_url("/metrics")).await.text()
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Sent {
    request_id: String,
    variation: String,
    question: String,
}

async fn ask(
    p: &proxy::TestProxy,
    user: &str,
    question: &str,
    stream: bool,
    request_id: Option<&str>,
) -> Sent {
    let body = json!({"model": "f", "user": user, "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": question}]});
    let mut headers = vec![];
    if let Some(id) = request_id {
        headers.push(("x-request-id", id));
    }
    let r = client::post_json(&p.url("/v1/chat/completions"), &body.to_string(), &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let variation = r.header("x-switchyard-variation").unwrap();
    let text = if stream {
        let t = r.text();
        assert!(t.contains("[DONE]"), "{t}");
        t
    } else {
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let model = format!("model-{variation}");
    if !stream {
        assert_eq!(text, answer_text(&model, question));
    }
    Sent {
        request_id: r.header("x-request-id").unwrap(),
        variation,
        question: question.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judged_rates_per_variation_match_the_script() {
    let up = Upstream::start(JudgeMode::Content).await;
    let (p, parsed) = start(&config(&up.base_url(), 0.5, "")).await;
    let eval = &parsed.evals[0];
    let mut sent = Vec::new();
    for i in 0..600 {
        // One request in four streams: streams are judged on the assembled answer.
        let s = ask(
            &p,
            &format!("user-{i}"),
            &format!("question number {i}?"),
            i % 4 == 0,
            None,
        )
        .await;
        sent.push(s);
    }
    let sampled: Vec<&Sent> = sent
        .iter()
        .filter(|s| switchyard::evals::sampled(eval, s.request_id.as_bytes()))
        .collect();
    assert!(
        (240..=360).contains(&sampled.len()),
        "{} sampled of 600 at 0.5",
        sampled.len()
    );
    let want = sampled.len() as f64;
    until(
        "every sampled answer scored",
        Duration::from_secs(30),
        async || {
            metric(
                &metrics(&p).await,
                "switchyard_eval_requests_total",
                &[("eval", "groundedness"), ("outcome", "scored")],
            ) >= want
        },
    )
    .await;
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            "switchyard_eval_requests_total",
            &[("eval", "groundedness")]
        ),
        want,
        "{m}"
    );
    assert_eq!(up.judge_calls.load(Ordering::SeqCst), sampled.len());
    // The judge's tokens are its own, never a variation's.
    assert_eq!(
        metric(
            &m,
            "switchyard_eval_tokens_total",
            &[("eval", "groundedness"), ("direction", "in")]
        ),
        40.0 * want
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_tokens_total",
            &[("flag", "f"), ("direction", "in")]
        ),
        40.0 * 450.0,
        "only the 450 plain answers report usage"
    );
    // Per variation: the exact mean of the sampled answers' scripted scores, and the scripted
    // rate within sampling error.
    let mut results = Value::Null;
    until(
        "results with every score",
        Duration::from_secs(10),
        async || {
            let r = client::request(
                http::Method::GET,
                &p.admin_url("/admin/flags/f/results?metric=hallucination"),
                Bytes::new(),
                &[("authorization", &format!("Bearer {ADMIN}"))],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            results = r.json();
            let users: u64 = results["srm"]["observed"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap_or(0))
                .sum();
            users == 600
        },
    )
    .await;
    // Read again: the last poll may have summed the feedback before the last exposures landed.
    let r = client::request(
        http::Method::GET,
        &p.admin_url("/admin/flags/f/results?metric=hallucination"),
        Bytes::new(),
        &[("authorization", &format!("Bearer {ADMIN}"))],
    )
    .await;
    results = r.json();
    // The control's value is shown beside the treatment's.
    let b = &results["variations"][0];
    assert_eq!(b["variation"], "b", "{results}");
    for (name, value) in [("a", &b["control_value"]), ("b", &b["value"])] {
        let model = format!("model-{name}");
        let mine: Vec<&&Sent> = sampled.iter().filter(|s| s.variation == name).collect();
        let fabricated = mine
            .iter()
            .filter(|s| fabricates(&model, &s.question))
            .count();
        let exact = fabricated as f64 / mine.len() as f64;
        let value = value.as_f64().unwrap();
        assert!(
            (value - exact).abs() < 1e-9,
            "{name}: results say {value}, the sampled answers' scores average {exact}: {results}"
        );
        let rate = scripted_rate(&model) as f64 / 1000.0;
        let se = (rate * (1.0 - rate) / mine.len() as f64).sqrt();
        assert!(
            (value - rate).abs() < 4.0 * se,
            "{name}: {value} vs the scripted {rate} (n = {}, se {se})",
            mine.len()
        );
    }
    assert_eq!(b["verdict"], "loser", "b hallucinates more: {results}");
    // Idempotent per request: the same request id again is a duplicate, not a second score.
    let again = sampled[0];
    let user = "user-repeat";
    let _ = ask(&p, user, &again.question, false, Some(&again.request_id)).await;
    until("the repeat judged", Duration::from_secs(10), async || {
        metric(
            &metrics(&p).await,
            "switchyard_eval_requests_total",
            &[("outcome", "duplicate")],
        ) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_without_touching_requests() {
    let up = Upstream::start(JudgeMode::Blocked).await;
    let (p, _) = start(&config(&up.base_url(), 1.0, "queue = 2\nconcurrency = 1")).await;
    for i in 0..40 {
        ask(&p, &format!("u{i}"), &format!("q{i}"), i % 2 == 0, None).await;
    }
    // Every request was answered while the judge has not answered once.
    let m = metrics(&p).await;
    assert!(up.judge_calls.load(Ordering::SeqCst) <= 1);
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_total",
            &[("flag", "f"), ("outcome", "success")]
        ),
        40.0
    );
    let dropped = metric(
        &m,
        "switchyard_eval_requests_total",
        &[("eval", "groundedness"), ("outcome", "dropped_queue")],
    );
    // Judged at most: one in the judge's hands, one the worker holds for the next free slot,
    // and the two the queue holds.
    assert!((36.0..=39.0).contains(&dropped), "dropped {dropped}: {m}");
    up.release.notify_waiters();
    up.release.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_failures_are_counted_once_and_never_retried() {
    for (mode, outcome) in [
        (JudgeMode::Failing, "judge_error"),
        (JudgeMode::Garbled, "unreadable"),
    ] {
        let up = Upstream::start(mode).await;
        let (p, _) = start(&config(&up.base_url(), 1.0, "")).await;
        for i in 0..10 {
            ask(&p, &format!("u{i}"), &format!("q{i}"), false, None).await;
        }
        until(outcome, Duration::from_secs(15), async || {
            metric(
                &metrics(&p).await,
                "switchyard_eval_requests_total",
                &[("outcome", outcome)],
            ) == 10.0
        })
        .await;
        let m = metrics(&p).await;
        assert_eq!(
            metric(&m, "switchyard_eval_requests_total", &[]),
            10.0,
            "{m}"
        );
        assert_eq!(
            up.judge_calls.load(Ordering::SeqCst),
            10,
            "one call per answer"
        );
        assert_eq!(metric(&m, "switchyard_feedback_events_total", &[]), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_minute_budget_drops_and_counts() {
    let up = Upstream::start(JudgeMode::Content).await;
    let (p, _) = start(&config(&up.base_url(), 1.0, "max_calls_per_minute = 3")).await;
    for i in 0..8 {
        ask(&p, &format!("u{i}"), &format!("q{i}"), false, None).await;
    }
    until(
        "every answer accounted for",
        Duration::from_secs(15),
        async || metric(&metrics(&p).await, "switchyard_eval_requests_total", &[]) == 8.0,
    )
    .await;
    let m = metrics(&p).await;
    let dropped = metric(
        &m,
        "switchyard_eval_requests_total",
        &[("outcome", "dropped_budget")],
    );
    // A minute may turn during the test: at most two minutes' worth are judged.
    assert!((2.0..=5.0).contains(&dropped), "{m}");
    assert_eq!(up.judge_calls.load(Ordering::SeqCst) as f64, 8.0 - dropped);
}

#[test]
fn bad_eval_sections_are_refused_with_their_key() {
    let base = config("http://127.0.0.1:9/v1", 0.5, "");
    for (from, to, needle) in [
        ("sample = 0.5", "sample = 1.5", "evals.groundedness.sample"),
        (
            "prompt = \"groundedness-judge\"",
            "prompt = \"nope\"",
            "unknown prompt",
        ),
        (
            "metric = \"hallucination\"",
            "metric = \"vibes\"",
            "unknown metric",
        ),
        (
            "score = \"json:score\"",
            "score = \"regex:x\"",
            "json:FIELD",
        ),
        ("flags = [\"f\"]", "flags = [\"g\"]", "unknown flag"),
        (
            "provider = \"up\"\nmodel = \"judge",
            "provider = \"nope\"\nmodel = \"judge",
            "unknown provider",
        ),
    ] {
        let toml = base.replacen(from, to, 1);
        assert_ne!(toml, base, "{from}");
        let err = switchyard::Config::parse(&toml, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

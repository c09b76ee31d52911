//! Tiered alerts through the real interfaces: chat traffic on the main listener against a
//! switchable upstream, `GET /admin/alerts`, `/admin/audit`, `/admin/flags`, `/metrics` on the
//! admin listener, and a local webhook receiver that records what it is sent (or answers 500
//! for a while, or never answers).
//!
//! Alerts are evaluated every 100 ms (`[server] gate_interval`); tests poll with deadlines and
//! never sleep for a fixed time to let something happen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use client::{Http, Resp};
use proxy::TestProxy;

/// How long a test waits for something the proxy should do within a few evaluations.
const PATIENCE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Harness: upstream, webhook receiver, proxy
// ---------------------------------------------------------------------------------------------

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Serves `handle` on 127.0.0.1:0 over HTTP/1.1.
async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    addr
}

fn json_response(status: u16, v: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

/// An OpenAI-compatible upstream whose answer status is switched at run time, one status for
/// requests to `model-b` and one for every other model.
struct Upstream {
    addr: SocketAddr,
    status_b: Arc<AtomicU16>,
    status_other: Arc<AtomicU16>,
}

impl Upstream {
    async fn start() -> Upstream {
        let status_b = Arc::new(AtomicU16::new(200));
        let status_other = Arc::new(AtomicU16::new(200));
        let (b, other) = (status_b.clone(), status_other.clone());
        let addr = serve(move |req: Request<Incoming>| {
            let (b, other) = (b.clone(), other.clone());
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let is_b = String::from_utf8_lossy(&body).contains("\"model-b\"");
                let status = if is_b { &b } else { &other }.load(Ordering::SeqCst);
                if status == 200 {
                    json_response(
                        200,
                        &json!({
                            "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                            "model": if is_b { "model-b" } else { "model-a" },
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
                        }),
                    )
                } else {
                    json_response(
                        status,
                        &json!({"error": {"message": "upstream is failing", "type": "server_error", "param": null, "code": null}}),
                    )
                }
            }
        })
        .await;
        Upstream {
            addr,
            status_b,
            status_other,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The status of every model's answers.
    fn set(&self, status: u16) {
        self.status_b.store(status, Ordering::SeqCst);
        self.status_other.store(status, Ordering::SeqCst);
    }
}

/// How the webhook receiver answers.
#[derive(Clone, Copy)]
enum HookMode {
    /// 500 for the first `n` posts, 200 after.
    FailFirst(usize),
    /// Never answers.
    Hang,
}

/// A webhook receiver recording every post.
struct Hook {
    addr: SocketAddr,
    /// Every post, answered or not.
    posts: Arc<Mutex<Vec<Value>>>,
    /// Posts answered 200.
    accepted: Arc<Mutex<Vec<Value>>>,
    hanging: Arc<AtomicUsize>,
}

impl Hook {
    async fn start(mode: HookMode) -> Hook {
        let posts = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let hanging = Arc::new(AtomicUsize::new(0));
        let (p, a, h) = (posts.clone(), accepted.clone(), hanging.clone());
        let addr = serve(move |req: Request<Incoming>| {
            let (p, a, h) = (p.clone(), a.clone(), h.clone());
            async move {
                assert_eq!(req.method(), Method::POST);
                assert_eq!(
                    req.headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok()),
                    Some("application/json")
                );
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let v: Value = serde_json::from_slice(&body).expect("webhook body is JSON");
                let n = {
                    let mut posts = p.lock().unwrap();
                    posts.push(v.clone());
                    posts.len()
                };
                match mode {
                    HookMode::Hang => {
                        h.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    HookMode::FailFirst(fails) if n <= fails => {
                        json_response(500, &json!({"ok": false}))
                    }
                    HookMode::FailFirst(_) => {
                        a.lock().unwrap().push(v);
                        json_response(200, &json!({"ok": true}))
                    }
                }
            }
        })
        .await;
        Hook {
            addr,
            posts,
            accepted,
            hanging,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/T000/B000/secret", self.addr)
    }

    fn accepted(&self) -> Vec<Value> {
        self.accepted.lock().unwrap().clone()
    }

    fn posts(&self) -> Vec<Value> {
        self.posts.lock().unwrap().clone()
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-alerts-{tag}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The flag `f`: `a` is off and stable; `rules` decide who gets `b`.
fn flag_f(rules: &str) -> String {
    format!(
        r#"
[flags.f]
off_variation = "a"
stable_variation = "a"
[flags.f.variations.a]
provider = "up"
model_id = "model-a"
[flags.f.variations.b]
provider = "up"
model_id = "model-b"
{rules}
"#
    )
}

/// Every user gets `b` while the flag is on.
const ALL_B: &str = r#"
[[flags.f.rules]]
id = "everyone"
allocation = [{ variation = "b", end = 10000 }]
"#;

/// A proxy with an `ops` admin token, an upstream and a state file of its own.
struct Harness {
    proxy: TestProxy,
    token: String,
    up: Upstream,
    http: Http,
    sent: usize,
    _dir: TempDir,
}

impl Harness {
    /// Serves flag `f` (with `rules`) on a switchable upstream, with `alerts` (TOML).
    async fn start(test: &str, rules: &str, alerts: &str) -> Harness {
        let up = Upstream::start().await;
        let var = format!("SWITCHYARD_ALERTS_{}_TOKEN", test.to_uppercase());
        let token = format!("tok-{test}-{:x}", nanos());
        std::env::set_var(&var, &token);
        let src = format!(
            r#"
[server]
gate_interval = "100ms"

[admin]
tokens = [{{ name = "ops", token_env = "{var}" }}]

[providers.up]
kind = "openai"
base_url = "{base}"
timeout = "5s"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}
{flag}
{alerts}
"#,
            base = up.base_url(),
            flag = flag_f(rules),
        );
        let mut config = switchyard::Config::parse(&src, "alerts-test.toml")
            .unwrap_or_else(|e| panic!("invalid test config:\n{e}\n---\n{src}"));
        let dir = TempDir::new(test);
        config.state_url = format!("sqlite:{}", dir.0.join("state.db").display());
        let proxy = TestProxy::start_config(config).await;
        Harness {
            proxy,
            token,
            up,
            http: Http::new(),
            sent: 0,
            _dir: dir,
        }
    }

    async fn admin(&self, method: Method, path: &str) -> Resp {
        let auth = format!("Bearer {}", self.token);
        self.http
            .request(
                method,
                &self.proxy.admin_url(path),
                Bytes::new(),
                &[("authorization", auth.as_str())],
            )
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.admin(Method::GET, path).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
        r.json()
    }

    /// One chat request from a user of its own; returns the variation that served it.
    async fn chat(&mut self) -> String {
        self.sent += 1;
        let body = json!({"model": "f", "user": format!("user-{}", self.sent), "messages": [{"role": "user", "content": "hello"}]});
        let r = self
            .http
            .post_json(
                &self.proxy.url("/v1/chat/completions"),
                &body.to_string(),
                &[],
            )
            .await;
        r.header("x-switchyard-variation").unwrap_or_default()
    }

    /// `n` chat requests, the upstream answering `status`.
    async fn send(&mut self, n: usize, status: u16) {
        self.up.set(status);
        for _ in 0..n {
            self.chat().await;
        }
    }

    /// The `/admin/alerts` entry of `alert` on `variation`.
    async fn alert(&self, alert: &str, variation: &str) -> Value {
        let v = self.get("/admin/alerts").await;
        v["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .find(|a| a["alert"] == alert && a["variation"] == variation)
            .cloned()
            .unwrap_or_else(|| panic!("no alert {alert} on {variation} in {v}"))
    }

    /// Polls `/admin/alerts` until `cond` holds for the entry, or fails the test.
    async fn wait_alert(
        &self,
        alert: &str,
        variation: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let a = self.alert(alert, variation).await;
            if cond(&a) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "alert {alert} on {variation}: {what} never happened; last: {a:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_level(&self, alert: &str, variation: &str, level: &str) -> Value {
        self.wait_alert(alert, variation, &format!("level {level}"), |a| {
            a["level"] == level
        })
        .await
    }

    /// Waits until `n` more evaluations have happened (`evaluated_at` changed `n` times).
    async fn evaluations(&self, alert: &str, variation: &str, n: usize) {
        let mut last = self.alert(alert, variation).await["evaluated_at"].clone();
        for _ in 0..n {
            let seen = last.clone();
            let a = self
                .wait_alert(alert, variation, "a new evaluation", |a| {
                    a["evaluated_at"] != seen
                })
                .await;
            last = a["evaluated_at"].clone();
        }
    }

    async fn audit(&self) -> Vec<Value> {
        self.get("/admin/audit?flag=f&limit=1000").await["entries"]
            .as_array()
            .expect("entries")
            .clone()
    }

    async fn metrics(&self) -> String {
        self.http
            .get(&self.proxy.admin_url("/metrics"))
            .await
            .text()
    }

    /// Polls `/metrics` until the sample of `name` with `labels` is `value`.
    async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.metrics().await;
            if metric(&text, name, labels) == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} never reached {value}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value of the sample of `name` carrying every label in `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_part, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let have: Vec<&str> = label_part.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
}

/// Waits until `f` holds, or fails with `what`.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_climbs_the_tiers_and_critical_kills_the_flag() {
    let hook = Hook::start(HookMode::FailFirst(0)).await;
    let alerts = format!(
        r#"
[[alerts]]
name = "b-errors"
flag = "f"
variation = "b"
metric = "error_rate"
above = {{ info = 0.01, warning = 0.05, critical = 0.10 }}
window = "1h"
min_samples = 50
actions = {{ warning = ["notify"], critical = ["kill"] }}
webhooks = ["{}"]
"#,
        hook.url()
    );
    let mut h = Harness::start("climb", ALL_B, &alerts).await;

    h.send(100, 200).await;
    let a = h
        .wait_alert("b-errors", "b", "100 clean requests seen", |a| {
            a["samples"] == 100
        })
        .await;
    assert_eq!(a["level"], "ok", "{a:#}");
    assert!(close(&a["value"], 0.0), "{a:#}");

    // 3 errors in 103: 2.9 % → info.
    h.send(3, 500).await;
    h.wait_alert("b-errors", "b", "info at 3/103", |a| {
        a["level"] == "info" && close(&a["value"], 3.0 / 103.0)
    })
    .await;
    eventually("the info notification", || hook.accepted().len() == 1).await;

    // 8 in 108: 7.4 % → warning.
    h.send(5, 500).await;
    h.wait_level("b-errors", "b", "warning").await;
    eventually("the warning notification", || hook.accepted().len() == 2).await;
    assert_eq!(h.get("/admin/flags/f").await["enabled"], true);

    // 14 in 114: 12.3 % → critical, and the kill switch flips.
    h.send(6, 500).await;
    h.wait_alert("b-errors", "b", "critical at 14/114", |a| {
        a["level"] == "critical" && close(&a["value"], 14.0 / 114.0)
    })
    .await;
    eventually("the critical notification", || hook.accepted().len() == 3).await;

    let flag = h.get("/admin/flags/f").await;
    assert_eq!(flag["enabled"], false, "{flag:#}");
    assert_eq!(flag["enabled_source"], "runtime");
    // Everyone now gets the off variation.
    assert_eq!(h.chat().await, "a");

    // One notification per change, in order, each with a one-line text.
    let bodies = hook.accepted();
    let levels: Vec<(&str, &str)> = bodies
        .iter()
        .map(|b| {
            (
                b["previous_level"].as_str().unwrap(),
                b["level"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        levels,
        vec![("ok", "info"), ("info", "warning"), ("warning", "critical")]
    );
    for b in &bodies {
        let text = b["text"].as_str().expect("text");
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
        assert!(
            text.contains("b-errors") && text.contains("f/b"),
            "{text:?}"
        );
        for k in [
            "alert",
            "flag",
            "variation",
            "metric",
            "value",
            "threshold",
            "samples",
            "at",
        ] {
            assert!(b.get(k).is_some(), "{k} missing from {b:#}");
        }
        assert_eq!(b["alert"], "b-errors");
        assert_eq!(b["flag"], "f");
        assert_eq!(b["variation"], "b");
        assert_eq!(b["metric"], "error_rate");
    }
    assert!(close(&bodies[2]["threshold"], 0.10), "{:#}", bodies[2]);
    assert_eq!(bodies[2]["samples"], 114);
    assert_eq!(bodies[2]["actions"], json!(["kill"]));
    assert!(bodies[2]["text"].as_str().unwrap().contains("CRITICAL"));

    // Audited: the kill with actor alert:<name>, and each change of level as a note.
    let audit = h.audit().await;
    let kill: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "set_enabled")
        .collect();
    assert_eq!(kill.len(), 1, "{audit:#?}");
    assert_eq!(kill[0]["actor"], "alert:b-errors");
    assert_eq!(kill[0]["after"]["enabled"], false);
    assert!(kill[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("b-errors")));
    let notes: Vec<&Value> = audit.iter().filter(|e| e["action"] == "alert").collect();
    assert_eq!(notes.len(), 3, "{audit:#?}");
    assert!(notes.iter().all(|e| e["actor"] == "alert:b-errors"));
    assert_eq!(notes[0]["after"]["level"], "critical"); // newest first

    // The level holds: more evaluations, no more notifications, no second kill.
    h.evaluations("b-errors", "b", 5).await;
    assert_eq!(hook.posts().len(), 3);
    let audit = h.audit().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "set_enabled")
            .count(),
        1
    );

    let labels = [("alert", "b-errors"), ("flag", "f"), ("variation", "b")];
    h.wait_metric("switchyard_alert_level", &labels, 3.0).await;
    h.wait_metric(
        "switchyard_alert_notifications_total",
        &[("alert", "b-errors"), ("result", "sent")],
        3.0,
    )
    .await;
    let text = h.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_alert_notifications_total",
            &[("alert", "b-errors"), ("result", "dropped")]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_rollout_holds_every_rollout_of_the_flag() {
    let rules = r#"
[[flags.f.rules]]
id = "ramp"
rollout = { variation = "b", stages = [50, 100] }
[[flags.f.rules]]
id = "everyone-else"
allocation = [{ variation = "a", end = 10000 }]
"#;
    let alerts = r#"
[[alerts]]
name = "ramp-errors"
flag = "f"
variation = "b"
metric = "error_rate"
above = { warning = 0.05 }
window = "10m"
min_samples = 10
actions = { warning = ["hold_rollout"] }
"#;
    let mut h = Harness::start("hold", rules, alerts).await;
    let ro = h.get("/admin/flags/f/rollout").await;
    assert_eq!(ro["rollouts"][0]["held"], false);

    h.up.set(500);
    let mut b = 0;
    while b < 20 {
        if h.chat().await == "b" {
            b += 1;
        }
    }
    h.wait_level("ramp-errors", "b", "warning").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ro = h.get("/admin/flags/f/rollout").await;
        if ro["rollouts"][0]["held"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout was never held: {ro:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit = h.audit().await;
    let held: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "set_rollout_held")
        .collect();
    assert_eq!(held.len(), 1, "{audit:#?}");
    assert_eq!(held[0]["actor"], "alert:ramp-errors");
    // Holding is all it does: the flag stays on.
    assert_eq!(h.get("/admin/flags/f").await["enabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_around_a_threshold_makes_no_storm() {
    let hook = Hook::start(HookMode::FailFirst(0)).await;
    let alerts = format!(
        r#"
[[alerts]]
name = "flappy"
flag = "f"
variation = "b"
metric = "error_rate"
above = {{ warning = 0.05 }}
window = "1h"
min_samples = 100
webhooks = ["{}"]
"#,
        hook.url()
    );
    let mut h = Harness::start("flap", ALL_B, &alerts).await;

    // 7 % over 100 requests: warning, announced once.
    let (mut requests, mut errors) = (0usize, 0usize);
    for i in 0..100 {
        let fail = i % 14 == 13 && errors < 7;
        h.send(1, if fail { 500 } else { 200 }).await;
        requests += 1;
        errors += usize::from(fail);
    }
    assert_eq!(errors, 7);
    h.wait_level("flappy", "b", "warning").await;
    eventually("the warning notification", || hook.accepted().len() == 1).await;

    // Now alternate: just under 5 %, then just over, ten times, each side seen by at least
    // one evaluation.
    let mut crossings = 0;
    for _ in 0..10 {
        while errors * 20 >= requests {
            h.send(1, 200).await;
            requests += 1;
        }
        let below = errors as f64 / requests as f64;
        let a = h
            .wait_alert("flappy", "b", "a value just under 5 %", |a| {
                close(&a["value"], below)
            })
            .await;
        assert_eq!(a["level"], "warning", "{a:#}");
        h.send(1, 500).await;
        requests += 1;
        errors += 1;
        let above = errors as f64 / requests as f64;
        assert!(above >= 0.05 && below < 0.05);
        let a = h
            .wait_alert("flappy", "b", "a value just over 5 %", |a| {
                close(&a["value"], above)
            })
            .await;
        assert_eq!(a["level"], "warning", "{a:#}");
        crossings += 2;
    }
    assert_eq!(crossings, 20);
    h.evaluations("flappy", "b", 3).await;
    // One notification for the one change of level; none for the 20 crossings.
    assert_eq!(hook.posts().len(), 1, "{:#?}", hook.posts());
    let notes = h
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "alert")
        .count();
    assert_eq!(notes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_until_it_succeeds() {
    let hook = Hook::start(HookMode::FailFirst(2)).await;
    let alerts = format!(
        r#"
[[alerts]]
name = "retry"
flag = "f"
metric = "error_rate"
above = {{ critical = 0.5 }}
window = "1h"
min_samples = 10
webhooks = ["{}"]
"#,
        hook.url()
    );
    let mut h = Harness::start("retry", ALL_B, &alerts).await;
    h.send(20, 500).await;
    h.wait_level("retry", "b", "critical").await;
    eventually("the notification delivered on the third try", || {
        hook.accepted().len() == 1
    })
    .await;
    let posts = hook.posts();
    assert_eq!(posts.len(), 3, "{posts:#?}");
    // The same notification each time.
    assert!(posts.iter().all(|p| *p == posts[0]));
    assert_eq!(posts[0]["level"], "critical");
    h.wait_metric(
        "switchyard_alert_notifications_total",
        &[("alert", "retry"), ("result", "sent")],
        1.0,
    )
    .await;
    let text = h.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_alert_notifications_total",
            &[("alert", "retry"), ("result", "failed")]
        ),
        Some(0.0)
    );
    // The control variation has no traffic: too few samples there.
    let a = h.alert("retry", "a").await;
    assert_eq!(a["level"], "insufficient_data", "{a:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_slows_neither_requests_nor_evaluation() {
    let hook = Hook::start(HookMode::Hang).await;
    let alerts = format!(
        r#"
[[alerts]]
name = "hang"
flag = "f"
variation = "b"
metric = "error_rate"
above = {{ info = 0.01, warning = 0.05, critical = 0.10 }}
window = "1h"
min_samples = 50
webhooks = ["{}"]
"#,
        hook.url()
    );
    let mut h = Harness::start("hang", ALL_B, &alerts).await;
    h.send(100, 200).await;
    h.send(3, 500).await;
    h.wait_level("hang", "b", "info").await;
    eventually("the webhook holding a notification", || {
        hook.hanging.load(Ordering::SeqCst) >= 1
    })
    .await;
    // While it hangs: requests complete, evaluation goes on and announces the next levels.
    h.send(50, 200).await;
    h.send(10, 500).await;
    h.wait_level("hang", "b", "warning").await;
    h.send(10, 500).await;
    h.wait_level("hang", "b", "critical").await;
    h.send(20, 200).await;
    h.evaluations("hang", "b", 3).await;
    assert!(hook.accepted().is_empty());
    // Each change of level was posted (and is still waiting).
    eventually("three notifications in flight", || {
        hook.hanging.load(Ordering::SeqCst) >= 3
    })
    .await;
    let text = h.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_alert_notifications_total",
            &[("alert", "hang"), ("result", "sent")]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_samples_is_insufficient_data_and_never_acts() {
    let hook = Hook::start(HookMode::FailFirst(0)).await;
    let alerts = format!(
        r#"
[[alerts]]
name = "sparse"
flag = "f"
variation = "b"
metric = "error_rate"
above = {{ info = 0.01, warning = 0.05, critical = 0.10 }}
window = "1h"
min_samples = 1000
actions = {{ warning = ["hold_rollout"], critical = ["kill"] }}
webhooks = ["{}"]
"#,
        hook.url()
    );
    let mut h = Harness::start("sparse", ALL_B, &alerts).await;
    h.send(30, 500).await;
    let a = h
        .wait_alert("sparse", "b", "30 failures seen", |a| a["samples"] == 30)
        .await;
    assert_eq!(a["level"], "insufficient_data", "{a:#}");
    assert_eq!(a["insufficient_reason"], "too few samples");
    assert!(close(&a["value"], 1.0), "{a:#}");
    h.evaluations("sparse", "b", 5).await;
    assert_eq!(h.alert("sparse", "b").await["level"], "insufficient_data");
    assert_eq!(h.get("/admin/flags/f").await["enabled"], true);
    assert!(hook.posts().is_empty());
    assert!(h.audit().await.iter().all(|e| e["actor"] != "alert:sparse"));
    let text = h.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_alert_level",
            &[("alert", "sparse"), ("variation", "b")]
        ),
        Some(-1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_to_control_divides_by_the_stable_variation() {
    let rules = r#"
[[flags.f.rules]]
id = "split"
allocation = [{ variation = "a", end = 5000 }, { variation = "b", end = 10000 }]
"#;
    let alerts = r#"
[[alerts]]
name = "ratio"
flag = "f"
metric = "error_rate"
relative_to_control = true
above = { warning = 2.0 }
window = "1h"
min_samples = 20
"#;
    let mut h = Harness::start("ratio", rules, alerts).await;
    // Only `b` is evaluated; `a` is the control.
    let listed = h.get("/admin/alerts").await;
    let vars: Vec<&str> = listed["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["variation"].as_str().unwrap())
        .collect();
    assert_eq!(vars, vec!["b"]);

    // Both clean: the control's error rate is 0, so there is no ratio.
    let (mut n, mut e) = ([0usize; 2], [0usize; 2]);
    fn count(v: &str, failed: bool, n: &mut [usize; 2], e: &mut [usize; 2]) {
        let i = usize::from(v == "b");
        n[i] += 1;
        e[i] += usize::from(failed);
    }
    h.up.set(200);
    while n[0] < 30 || n[1] < 30 {
        let v = h.chat().await;
        count(&v, false, &mut n, &mut e);
    }
    let a = h
        .wait_alert("ratio", "b", "both sides seen", |a| {
            a["samples"].as_u64() == Some(n[1] as u64)
        })
        .await;
    assert_eq!(a["level"], "insufficient_data", "{a:#}");
    assert_eq!(a["insufficient_reason"], "the control's value is 0");

    // Both fail a little, `b` three times as often: ratio ≈ 3 → warning.
    h.up.status_other.store(500, Ordering::SeqCst);
    h.up.status_b.store(500, Ordering::SeqCst);
    while e[0] < 2 || e[1] < 2 {
        let v = h.chat().await;
        count(&v, true, &mut n, &mut e);
    }
    h.up.status_other.store(200, Ordering::SeqCst);
    let ratio =
        |n: &[usize; 2], e: &[usize; 2]| (e[1] as f64 / n[1] as f64) / (e[0] as f64 / n[0] as f64);
    while ratio(&n, &e) < 3.0 {
        let v = h.chat().await;
        let failed = v == "b";
        count(&v, failed, &mut n, &mut e);
    }
    h.up.set(200);
    let expected = ratio(&n, &e);
    assert!(expected >= 2.0, "{expected}");
    let a = h
        .wait_alert("ratio", "b", &format!("warning at {expected}"), |a| {
            a["level"] == "warning" && close(&a["value"], expected)
        })
        .await;
    assert_eq!(a["control"]["samples"].as_u64(), Some(n[0] as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_alerts_lists_every_alert_per_variation() {
    let alerts = r#"
[[alerts]]
name = "all-variations"
flag = "f"
metric = "p95_latency_seconds"
above = { warning = 2.5, critical = 5.0 }
min_samples = 5

[[alerts]]
name = "conversion-drop"
flag = "f"
variation = "b"
metric = "conversion"
below = { info = 0.2, warning = 0.1 }
window = "30m"
"#;
    let mut h = Harness::start("shape", ALL_B, alerts).await;
    // Without a token: 401.
    let r = h.http.get(&h.proxy.admin_url("/admin/alerts")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    h.send(10, 200).await;
    let a = h
        .wait_alert("all-variations", "b", "latencies seen", |a| {
            a["samples"] == 10
        })
        .await;
    assert_eq!(a["level"], "ok", "{a:#}");
    assert!(
        a["value"].as_f64().is_some_and(|v| v > 0.0 && v < 2.5),
        "{a:#}"
    );

    let v = h.get("/admin/alerts").await;
    let list = v["alerts"].as_array().expect("alerts");
    let keys: Vec<(&str, &str)> = list
        .iter()
        .map(|a| {
            (
                a["alert"].as_str().unwrap(),
                a["variation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("all-variations", "a"),
            ("all-variations", "b"),
            ("conversion-drop", "b")
        ]
    );
    for a in list {
        for k in [
            "alert",
            "flag",
            "variation",
            "metric",
            "level",
            "value",
            "samples",
            "since",
            "thresholds",
            "direction",
        ] {
            assert!(a.get(k).is_some(), "{k} missing from {a:#}");
        }
        assert_eq!(a["flag"], "f");
        assert!(
            ["ok", "info", "warning", "critical", "insufficient_data"]
                .contains(&a["level"].as_str().unwrap()),
            "{a:#}"
        );
    }
    assert_eq!(list[1]["direction"], "above");
    assert_eq!(
        list[1]["thresholds"],
        json!({"info": null, "warning": 2.5, "critical": 5.0})
    );
    assert!(list[1]["since"].as_str().is_some_and(|s| s.ends_with('Z')));
    // No traffic on `a`, no feedback for conversion: insufficient data.
    assert_eq!(list[0]["level"], "insufficient_data");
    assert_eq!(list[2]["level"], "insufficient_data");
    assert_eq!(list[2]["direction"], "below");
    assert_eq!(list[2]["metric"], "conversion");
    assert_eq!(list[2]["window_seconds"], 1800.0);

    // Other methods are refused.
    let r = h.admin(Method::POST, "/admin/alerts").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

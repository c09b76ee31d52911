//! End to end: a flag with three variations on real upstreams; simulated users and feedback
//! make one variation clearly better on conversion while another starts failing. The results
//! name the winner with significance; the failing variation's alert climbs info → warning →
//! critical with one webhook notification per change; and the kill switch flips on its own,
//! audited as the alert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/faults.rs"]
mod faults;
#[path = "support/proxy.rs"]
mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faults::{Fault, FaultServer};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

/// A webhook receiver: records every JSON body posted to it.
struct Webhook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    async fn start() -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                seen.lock().unwrap().push(v);
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Webhook { addr, bodies }
    }

    fn levels(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["level"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

fn config(good: &str, bad: &str, webhook: SocketAddr, token_var: &str, state: &str) -> String {
    format!(
        r#"
[server]
gate_interval = "100ms"

[admin]
tokens = [{{ name = "ops", token_env = "{token_var}" }}]

[state]
url = "sqlite:{state}"

[providers.good]
kind = "openai"
base_url = "{good}"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}

[providers.bad]
kind = "openai"
base_url = "{bad}"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}

[flags.shop]
off_variation = "control"
stable_variation = "control"
[flags.shop.variations.control]
provider = "good"
model_id = "model-control"
[flags.shop.variations.better]
provider = "good"
model_id = "model-better"
[flags.shop.variations.failing]
provider = "bad"
model_id = "model-failing"
fallback_behavior = "error"
[[flags.shop.rules]]
id = "exp"
allocation = [{{ variation = "control", end = 3334 }}, {{ variation = "better", end = 6667 }}, {{ variation = "failing", end = 10000 }}]

[[alerts]]
name = "failing-errors"
flag = "shop"
variation = "failing"
metric = "error_rate"
above = {{ info = 0.05, warning = 0.2, critical = 0.4 }}
window = "10m"
min_samples = 20
actions = {{ critical = ["kill"] }}
webhooks = ["http://{webhook}/hook"]
"#
    )
}

/// A deterministic per-user coin with probability `p`.
fn coin(user: &str, salt: &str, p: f64) -> bool {
    let h = switchyard::flags::bucket::murmur3_x86_32(&[user.as_bytes(), salt.as_bytes()], 7);
    (f64::from(h) / f64::from(u32::MAX)) < p
}

async fn chat(p: &proxy::TestProxy, user: &str) -> (u16, String, String) {
    let body =
        json!({"model": "shop", "user": user, "messages": [{"role": "user", "content": "buy?"}]});
    let r = client::post_json(&p.url("/v1/chat/completions"), &body.to_string(), &[]).await;
    (
        r.status.as_u16(),
        r.header("x-switchyard-variation").unwrap_or_default(),
        r.header("x-request-id").unwrap_or_default(),
    )
}

async fn alert_level(p: &proxy::TestProxy, token: &str) -> String {
    let r = client::request(
        hyper::Method::GET,
        &p.admin_url("/admin/alerts"),
        "",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["alert"] == "failing-errors" && x["variation"] == "failing")
        })
        .map(|x| x["level"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_default()
}

async fn wait_level(p: &proxy::TestProxy, token: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let level = alert_level(p, token).await;
        if level == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "alert level stayed {level:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winner_is_found_and_a_failing_variation_is_killed_by_its_alert() {
    let good = FaultServer::start(Fault::Ok).await;
    let bad = FaultServer::start(Fault::Ok).await;
    let hook = Webhook::start().await;
    let token_var = "SWITCHYARD_E2E_TOKEN";
    let token = "e2e-token";
    std::env::set_var(token_var, token);
    let dir = std::env::temp_dir().join(format!("switchyard-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.db");
    let _ = std::fs::remove_file(&state);
    let text = config(
        &good.base_url(),
        &bad.base_url(),
        hook.addr,
        token_var,
        state.to_str().unwrap(),
    );
    let p =
        proxy::TestProxy::start_config(switchyard::Config::parse(&text, "e2e.toml").unwrap()).await;

    // 1. Traffic and feedback for the winner: 900 users, conversion 10 % on control,
    //    30 % on better (the failing variation's upstream still answers for now).
    let mut events = Vec::new();
    let mut by_variation = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..900 {
        let user = format!("user-{i}");
        let (status, variation, request_id) = chat(&p, &user).await;
        assert_eq!(status, 200);
        *by_variation.entry(variation.clone()).or_default() += 1;
        let rate = if variation == "better" { 0.30 } else { 0.10 };
        if coin(&user, "convert", rate) {
            events.push(json!({"event_id": format!("conv-{i}"), "metric": "conversion", "value": 1, "request_id": request_id}));
        }
    }
    for chunk in events.chunks(100) {
        let r = client::post_json(
            &p.url("/v1/feedback"),
            &json!({"events": chunk}).to_string(),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["accepted"].as_u64(),
            Some(chunk.len() as u64),
            "{}",
            r.text()
        );
    }
    // Posting the same batch again changes nothing: idempotent.
    let again = client::post_json(
        &p.url("/v1/feedback"),
        &json!({"events": &events[..10]}).to_string(),
        &[],
    )
    .await;
    assert_eq!(again.json()["duplicates"], 10);

    // Exposures are written off the request path: wait until all users are counted.
    let auth = [("authorization", format!("Bearer {token}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let results = loop {
        let r = client::request(
            hyper::Method::GET,
            &p.admin_url("/admin/flags/shop/results?metric=conversion"),
            "",
            &auth,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let users: u64 = v["srm"]["observed"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
        if users == 900 {
            break v;
        }
        assert!(Instant::now() < deadline, "exposures not all counted: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let better = results["variations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["variation"] == "better")
        .unwrap();
    assert_eq!(better["verdict"], "winner", "{results}");
    assert_eq!(better["significant"], true);
    assert!(better["ci_low"].as_f64().unwrap() > 0.0);
    assert_eq!(results["srm"]["detected"], false, "{results}");
    // The same as a readable table from the CLI.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["ctl", "results", "shop", "--metric", "conversion"])
        .env("SWITCHYARD_ADMIN_URL", p.admin_url(""))
        .env("SWITCHYARD_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with("better"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("conversion") && line.contains("winner"),
        "{table}"
    );
    assert!(table.contains("sample ratio mismatch: none"), "{table}");
    let failing = results["variations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["variation"] == "failing")
        .unwrap();
    assert_ne!(failing["verdict"], "winner");

    // 2. The failing variation starts failing: its alert climbs one tier at a time.
    let mut pool = Vec::new();
    for i in 0..2400 {
        let u = format!("late-{i}");
        let r = client::get(&p.url(&format!("/v1/decide?flag=shop&user={u}"))).await;
        if r.json()["variation"] == "failing" {
            pool.push(u);
        }
    }
    assert!(pool.len() > 150, "{}", pool.len());
    let mut pool = pool.into_iter();
    // The window already holds the failing variation's earlier successes; add failures so the
    // error rate crosses each tier in turn.
    let served = by_variation.get("failing").copied().unwrap_or(0) as usize;
    let mut total = served;
    let mut failures = 0usize;
    for (want, target_rate) in [("info", 0.10), ("warning", 0.30), ("critical", 0.45)] {
        // failures / (total + k) ≥ target with k new requests that all fail.
        let k = (((target_rate * total as f64) - failures as f64) / (1.0 - target_rate))
            .ceil()
            .max(1.0) as usize;
        bad.push_n(Fault::status(500), k);
        for _ in 0..k {
            let user = pool.next().expect("enough failing users");
            let (status, variation, _) = chat(&p, &user).await;
            if want != "critical" || variation == "failing" {
                assert_eq!(status, 500, "{variation}");
            }
        }
        total += k;
        failures += k;
        wait_level(&p, token, want).await;
    }

    // 3. The webhook got one notification per change, with a Slack-compatible text.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.levels().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hook.levels(),
        vec!["info", "warning", "critical"],
        "{:?}",
        hook.bodies.lock().unwrap()
    );
    for b in hook.bodies.lock().unwrap().iter() {
        assert!(
            b["text"]
                .as_str()
                .is_some_and(|t| t.contains("failing-errors")),
            "{b}"
        );
    }

    // 4. The kill switch flipped on its own: everyone is on the off variation, and the audit
    //    log says the alert did it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, variation, _) = chat(&p, "user-x").await;
        if variation == "control" {
            let flag = client::request(
                hyper::Method::GET,
                &p.admin_url("/admin/flags/shop"),
                "",
                &auth,
            )
            .await
            .json();
            if flag["enabled"] == false {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the kill switch did not flip");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = client::request(
        hyper::Method::GET,
        &p.admin_url("/admin/audit?flag=shop&limit=50"),
        "",
        &auth,
    )
    .await
    .json();
    let kill = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "set_enabled")
        .expect("a kill entry");
    assert_eq!(kill["actor"], "alert:failing-errors");
    assert_eq!(kill["after"]["enabled"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

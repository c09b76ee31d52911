//! The bandit's alert through the real interface: a proxy on port 0 whose bandit posts to a
//! webhook receiver on port 0. Users arrive in a skewed ratio (a sample-ratio mismatch), an
//! epoch run over HTTP rolls the flag back to the control, and the alert is seen everywhere
//! alerts are: one critical notification naming the flag, `GET /admin/alerts`, the
//! `switchyard_alert_level` gauge; a reset resolves it. Bad webhook URLs are refused at load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/bandit_flag.rs"]
mod bandit_flag;
#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "bandit-alerts-token";
const TOKEN_VAR: &str = "BANDIT_ALERTS_TEST_TOKEN";

fn config(webhooks: &str) -> String {
    format!(
        r#"
[server]
gate_interval = "100ms"

[admin]
tokens = [{{ name = "ops", token_env = "{TOKEN_VAR}" }}]

[providers.mock]
kind = "mock"
latency = "0ms"

{assist}
"#,
        assist = bandit_flag::assist(&format!(
            "metric = \"conversion\"\ncadence = \"1h\"\nmin_users_per_arm = 50\nwebhooks = {webhooks}"
        )),
    )
}

/// A webhook receiver: keeps each POSTed JSON body, answers 200.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (format!("http://{addr}/hooks/bandit"), got)
}

async fn admin(p: &proxy::TestProxy, method: Method, path: &str, body: Value) -> client::Resp {
    client::with_token(method, &p.admin_url(path), TOKEN, &body).await
}

/// The `bandit:assist` entry of `GET /admin/alerts`.
async fn listed(p: &proxy::TestProxy) -> Value {
    let r = admin(p, Method::GET, "/admin/alerts", Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alert"] == "bandit:assist")
        .cloned()
        .unwrap_or_else(|| panic!("no bandit:assist in {v}"))
}

/// The `switchyard_alert_level` sample of `bandit:assist` in `/metrics`.
async fn gauge(p: &proxy::TestProxy) -> Option<String> {
    let text = client::get(&p.admin_url("/metrics")).await.text();
    text.lines()
        .find(|l| {
            l.starts_with("switchyard_alert_level{")
                && l.contains("alert=\"bandit:assist\"")
                && l.contains("flag=\"assist\"")
                && l.contains("variation=\"control\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Users of the experiment rule whose bucket is in `range` (so the test picks the arm).
fn users(prefix: &str, n: usize, control: bool) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|u| (switchyard::flags::bucket::bucket(u, "exp") < 5000) == control)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_ratio_rollback_is_a_critical_alert_delivered_to_the_webhooks() {
    let (hook, got) = receiver().await;
    std::env::set_var(TOKEN_VAR, TOKEN);
    let p = proxy::TestProxy::start(&config(&format!("[\"{hook}\"]"))).await;

    // Before any epoch: the bandit's alert is listed at ok, its gauge at 0.
    assert_eq!(listed(&p).await["level"], "ok");
    eventually("the gauge at 0", || async {
        gauge(&p).await.as_deref() == Some("0")
    })
    .await;

    // 150 users on the control and 15 on the treatment under a 50/50 split.
    let mut all = users("c", 150, true);
    all.extend(users("t", 15, false));
    for u in &all {
        let body =
            json!({"model": "assist", "user": u, "messages": [{"role": "user", "content": "hi"}]});
        let r = client::post_json(&p.url("/v1/chat/completions"), &body.to_string(), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    eventually("165 users counted", || async {
        let v = admin(
            &p,
            Method::GET,
            "/admin/flags/assist/results?metric=conversion",
            Value::Null,
        )
        .await
        .json();
        let total: u64 = v["srm"]["observed"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        total >= 165
    })
    .await;

    let r = admin(
        &p,
        Method::POST,
        "/admin/flags/assist/bandit/epoch",
        json!({"reason": "check"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["why"], "srm", "{e}");
    assert_eq!(e["status_after"], "rolled_back", "{e}");
    assert_eq!(
        e["weights_after"],
        json!({"control": 10000, "treatment": 0}),
        "{e}"
    );

    // One critical notification, naming the flag, in the alerts' payload shape.
    eventually("the webhook notified", || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    eventually("the delivery counted", || async {
        client::get(&p.admin_url("/metrics"))
            .await
            .text()
            .lines()
            .any(|l| {
                l.starts_with("switchyard_alert_notifications_total{")
                    && l.contains("alert=\"bandit:assist\"")
                    && l.contains("result=\"sent\"")
                    && l.ends_with(" 1")
            })
    })
    .await;
    let notes = got.lock().unwrap().clone();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let n = &notes[0];
    assert_eq!(n["alert"], "bandit:assist", "{n}");
    assert_eq!(n["flag"], "assist", "{n}");
    assert_eq!(n["variation"], "control", "{n}");
    assert_eq!(n["level"], "critical", "{n}");
    assert_eq!(n["previous_level"], "ok", "{n}");
    assert_eq!(n["metric"], "srm", "{n}");
    assert_eq!(n["why"], "srm", "{n}");
    assert_eq!(n["epoch"], 1, "{n}");
    assert_eq!(n["samples"], 165, "{n}");
    assert_eq!(n["actions"], json!(["rollback"]), "{n}");
    assert!(n["value"].as_f64().unwrap() < 0.001, "{n}");
    let text = n["text"].as_str().unwrap();
    assert!(
        text.starts_with(":rotating_light: [CRITICAL] bandit:assist:"),
        "{text}"
    );
    assert!(text.contains("sample ratio mismatch"), "{text}");
    assert!(!text.contains('\n'), "{text}");

    // Listed and measured as critical, and audited.
    let a = listed(&p).await;
    assert_eq!(a["level"], "critical", "{a}");
    assert_eq!(a["status"], "rolled_back", "{a}");
    assert_eq!(a["variation"], "control", "{a}");
    eventually("the gauge at 3", || async {
        gauge(&p).await.as_deref() == Some("3")
    })
    .await;
    let audit = admin(&p, Method::GET, "/admin/audit?action=alert", Value::Null)
        .await
        .json();
    let entry = &audit["entries"][0];
    assert_eq!(entry["after"]["alert"], "bandit:assist", "{audit}");
    assert_eq!(entry["after"]["level"], "critical", "{audit}");

    // A reset starts the bandit again: the alert resolves (no second notification).
    let r = admin(
        &p,
        Method::PUT,
        "/admin/flags/assist/bandit",
        json!({"reset": true, "reason": "fixed the exposure pipeline"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(listed(&p).await["level"], "ok");
    eventually("the gauge back at 0", || async {
        gauge(&p).await.as_deref() == Some("0")
    })
    .await;
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[test]
fn bad_webhook_urls_are_refused() {
    let err = switchyard::Config::parse(&config("[\"not a url\", \"ftp://x/y\"]"), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("flags.assist.bandit.webhooks[0]"), "{err}");
    assert!(err.contains("flags.assist.bandit.webhooks[1]"), "{err}");
    assert!(err.contains("invalid URL"), "{err}");
    assert!(switchyard::Config::parse(
        &config("[\"https://hooks.example/services/T0\"]"),
        "t.toml"
    )
    .is_ok());
}

//! The guarded bandit through the real interface: a proxy on port 0, users served over HTTP,
//! feedback posted to `/v1/feedback`, epochs run by the admin API (and by the loop at a short
//! cadence), `GET /admin/flags/F/bandit` showing the epochs, exposed users keeping their
//! variation, settings changed and audited, the kill switch overriding the bandit, and
//! `switchyard ctl bandit replay` recomputing an epoch bit for bit. The epoch table is
//! exercised on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/bandit_flag.rs"]
mod bandit_flag;
#[path = "support/http.rs"]
mod client;
#[path = "support/db.rs"]
mod db;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const TOKEN: &str = "bandit-test-token";

fn config(token_var: &str, cadence: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
tokens = [{{ name = "ops", token_env = "{token_var}" }}]

[providers.mock]
kind = "mock"
latency = "0ms"

{assist}

[flags.plain]
off_variation = "a"
[flags.plain.variations.a]
provider = "mock"
model_id = "m"
[[flags.plain.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]
"#,
        assist = bandit_flag::assist(&format!(
            "metric = \"conversion\"\nguardrails = {{ error_rate = \"+0.02\", p95_latency_seconds = \"x1.5\" }}\ncadence = \"{cadence}\"\nmin_users_per_arm = 50\nfloor = 0.05\n{extra}"
        )),
    )
}

async fn start(token_var: &str, cadence: &str, extra: &str) -> proxy::TestProxy {
    std::env::set_var(token_var, TOKEN);
    proxy::TestProxy::start(&config(token_var, cadence, extra)).await
}

async fn chat(p: &proxy::TestProxy, user: &str) -> (String, String) {
    let body =
        json!({"model": "assist", "user": user, "messages": [{"role": "user", "content": "hi"}]});
    let r = client::post_json(&p.url("/v1/chat/completions"), &body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (
        r.header("x-switchyard-variation").unwrap(),
        r.header("x-request-id").unwrap(),
    )
}

async fn admin(p: &proxy::TestProxy, method: Method, path: &str, body: Value) -> client::Resp {
    client::with_token(method, &p.admin_url(path), TOKEN, &body).await
}

/// Runs one epoch of `assist`'s bandit now (`POST …/bandit/epoch`).
async fn epoch(p: &proxy::TestProxy) -> client::Resp {
    admin(
        p,
        Method::POST,
        "/admin/flags/assist/bandit/epoch",
        json!({}),
    )
    .await
}

/// A deterministic per-user coin with probability `p`.
fn coin(user: &str, p: f64) -> bool {
    let h = switchyard::flags::bucket::murmur3_x86_32(&[user.as_bytes(), b"convert"], 7);
    (f64::from(h) / f64::from(u32::MAX)) < p
}

/// Serves `users`, posts conversion feedback (treatment converts at 40 %, control at 5 %),
/// returns each user's variation.
async fn traffic(p: &proxy::TestProxy, users: &[String]) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let mut events = Vec::new();
    for u in users {
        let (variation, request_id) = chat(p, u).await;
        let rate = if variation == "treatment" { 0.40 } else { 0.05 };
        if coin(u, rate) {
            events.push(json!({"event_id": format!("conv-{u}"), "metric": "conversion", "value": 1, "request_id": request_id}));
        }
        seen.insert(u.clone(), variation);
    }
    for chunk in events.chunks(200) {
        let r = client::post_json(
            &p.url("/v1/feedback"),
            &json!({ "events": chunk }).to_string(),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    seen
}

/// Waits until the experiment counts `n` users (exposures are written off the request path).
async fn wait_users(p: &proxy::TestProxy, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = admin(
            p,
            Method::GET,
            "/admin/flags/assist/results?metric=conversion",
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let total: u64 = v["srm"]["observed"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        if total >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {total} of {n} users counted: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ctl(p: &proxy::TestProxy, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("ctl")
        .args(args)
        .env("SWITCHYARD_ADMIN_URL", format!("http://{}", p.admin_addr))
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("run switchyard ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shifts_to_the_winner_exposed_users_stay_and_epochs_replay() {
    let p = start("SWITCHYARD_BANDIT_TOKEN_1", "1h", "").await;
    let users: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let first = traffic(&p, &users).await;
    wait_users(&p, 400).await;

    // Before any epoch: the configured 50/50 split, no epochs.
    let r = admin(&p, Method::GET, "/admin/flags/assist/bandit", Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "running");
    assert_eq!(v["weights"], json!({"control": 5000, "treatment": 5000}));
    assert_eq!(v["epochs"], json!([]));
    assert_eq!(v["algorithm"], "thompson_beta_bernoulli");

    // Run an epoch now: traffic moves toward the treatment.
    let r = epoch(&p).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["epoch"], 1);
    assert_eq!(e["why"], "moved", "{e}");
    let after = &e["weights_after"];
    let (c, t) = (
        after["control"].as_u64().unwrap(),
        after["treatment"].as_u64().unwrap(),
    );
    assert_eq!(c + t, 10_000);
    assert!(c >= 500 && t > 9_000, "{e}");
    assert!(e["p_best"]["treatment"].as_f64().unwrap() > 0.99);
    assert_eq!(e["input"]["arms"][0]["variation"], "control");
    assert_eq!(
        e["input"]["arms"][0]["users"].as_u64().unwrap()
            + e["input"]["arms"][1]["users"].as_u64().unwrap(),
        400
    );

    // The state shows it; the weights gauge too.
    let v = admin(&p, Method::GET, "/admin/flags/assist/bandit", Value::Null)
        .await
        .json();
    assert_eq!(v["epoch"], 1);
    assert_eq!(v["weights"]["treatment"].as_u64(), Some(t));
    assert_eq!(v["epochs"][0]["epoch"], 1);
    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(&format!(
            "switchyard_bandit_weight{{flag=\"assist\",variation=\"treatment\"}} {}",
            t as f64 / 10_000.0
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("bandit"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Every exposed user keeps their variation; new users mostly get the treatment.
    let again = traffic(&p, &users).await;
    assert_eq!(first, again, "an exposed user's variation changed");
    let fresh: Vec<String> = (0..200).map(|i| format!("new-{i}")).collect();
    let got = traffic(&p, &fresh).await;
    let treated = got.values().filter(|v| *v == "treatment").count();
    assert!(
        treated >= 160,
        "{treated} of 200 new users on the treatment"
    );
    // `/v1/decide` agrees with what the users were served.
    for u in users.iter().take(20) {
        let d = client::get(&p.url(&format!("/v1/decide?flag=assist&user={u}")))
            .await
            .json();
        assert_eq!(d["variation"].as_str(), Some(first[u].as_str()), "{u}");
    }

    // Replay from the terminal: recomputed from the stored record, bit for bit.
    let (code, out, err) = ctl(&p, &["bandit", "replay", "assist", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("MATCHES the record bit for bit"), "{out}");
    let (code, out, _) = ctl(&p, &["--json", "bandit", "replay", "assist", "1"]);
    assert_eq!(code, 0);
    let rj: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rj["matches"], true);
    assert_eq!(
        rj["recorded"]["p_best_bits"],
        rj["recomputed"]["p_best_bits"]
    );
    let (code, out, _) = ctl(&p, &["bandit", "assist"]);
    assert_eq!(code, 0);
    assert!(out.contains("epoch    1") && out.contains("moved"), "{out}");
    let (code, _, err) = ctl(&p, &["bandit", "replay", "assist", "9"]);
    assert_eq!(code, 1);
    assert!(err.contains("no epoch 9"), "{err}");

    // A second epoch continues the sequence and replays too.
    traffic(
        &p,
        &(0..100).map(|i| format!("more-{i}")).collect::<Vec<_>>(),
    )
    .await;
    wait_users(&p, 700).await;
    let e2 = epoch(&p).await.json();
    assert_eq!(e2["epoch"], 2, "{e2}");
    assert_eq!(e2["input"]["weights_before"], json!([c, t]));
    let (code, out, err) = ctl(&p, &["bandit", "replay", "assist", "2"]);
    assert_eq!(code, 0, "{out}\n{err}");

    // Epochs are audited as the actor who ran them.
    let audit = admin(
        &p,
        Method::GET,
        "/admin/audit?flag=assist&limit=20",
        Value::Null,
    )
    .await
    .json();
    let entries = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|a| a["action"] == "bandit_epoch" && a["actor"] == "ops (bandit)"),
        "{audit}"
    );
    assert!(p.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_validated_audited_and_the_kill_switch_overrides_the_bandit() {
    let p = start(
        "SWITCHYARD_BANDIT_TOKEN_2",
        "1h",
        "stop = { p_best = 0.95, then = \"promote\" }",
    )
    .await;

    let r = admin(
        &p,
        Method::PUT,
        "/admin/flags/assist/bandit",
        json!({"floor": 0.2, "cadence": "10m", "reason": "wider floor"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["settings"]["floor"], 0.2);
    assert_eq!(v["settings"]["cadence"], "10m");
    assert_eq!(v["audit"]["action"], "set_bandit");
    assert_eq!(v["audit"]["actor"], "ops");
    assert_eq!(v["audit"]["reason"], "wider floor");

    for (body, needle) in [
        (json!({"floor": 0.9}), "floor"),
        (json!({"floor": -1}), "floor"),
        (json!({"cadence": "soon"}), "cadence"),
        (json!({"cadence": "1ms"}), "cadence"),
        (json!({"min_users_per_arm": 0}), "min_users_per_arm"),
        (json!({"bogus": 1}), "bogus"),
    ] {
        let r = admin(&p, Method::PUT, "/admin/flags/assist/bandit", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }
    let r = admin(&p, Method::PUT, "/admin/flags/assist/bandit", json!([1])).await;
    assert_eq!(r.status, 400);
    let r = admin(&p, Method::GET, "/admin/flags/nope/bandit", Value::Null).await;
    assert_eq!(r.status, 404);
    let r = admin(&p, Method::GET, "/admin/flags/plain/bandit", Value::Null).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no bandit"));
    let r = admin(
        &p,
        Method::DELETE,
        "/admin/flags/assist/bandit",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 405);
    let r = client::get(&p.admin_url("/admin/flags/assist/bandit")).await;
    assert_eq!(r.status, 401);

    // Paused: no epoch runs.
    let r = admin(
        &p,
        Method::PUT,
        "/admin/flags/assist/bandit",
        json!({"paused": true}),
    )
    .await;
    assert_eq!(r.json()["paused"], true);
    let r = epoch(&p).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("paused"));
    admin(
        &p,
        Method::PUT,
        "/admin/flags/assist/bandit",
        json!({"paused": false}),
    )
    .await;

    // The kill switch wins: everyone gets the off variation and no epoch runs.
    let r = admin(
        &p,
        Method::PUT,
        "/admin/flags/assist/enabled",
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(r.status, 200);
    let (variation, _) = chat(&p, "someone").await;
    assert_eq!(variation, "control");
    let r = epoch(&p).await;
    assert_eq!(r.status, 409);
    assert!(r.text().contains("kill switch"), "{}", r.text());
    let v = admin(&p, Method::GET, "/admin/flags/assist/bandit", Value::Null)
        .await
        .json();
    assert_eq!(v["overridden_by"], "kill switch");
    admin(
        &p,
        Method::PUT,
        "/admin/flags/assist/enabled",
        json!({"enabled": true}),
    )
    .await;

    // Too few users: the epoch holds the weights.
    let users: Vec<String> = (0..40).map(|i| format!("few-{i}")).collect();
    traffic(&p, &users).await;
    wait_users(&p, 40).await;
    let e = epoch(&p).await.json();
    assert_eq!(e["why"], "too_few_users", "{e}");
    assert_eq!(
        e["weights_after"],
        json!({"control": 5000, "treatment": 5000})
    );
    assert!(p.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_epochs_at_a_short_cadence() {
    let p = start("SWITCHYARD_BANDIT_TOKEN_3", "1s", "").await;
    let users: Vec<String> = (0..200).map(|i| format!("loop-{i}")).collect();
    traffic(&p, &users).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = admin(&p, Method::GET, "/admin/flags/assist/bandit", Value::Null)
            .await
            .json();
        let moved = v["epochs"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["why"] == "moved" && e["input"]["weights_before"] != e["outcome"]["weights_after"]
            })
        });
        if moved && v["epochs"].as_array().unwrap().len() >= 2 {
            assert_eq!(v["epochs"][0]["input"]["flag"], "assist");
            // Newest first, consecutive numbers.
            assert_eq!(
                v["epochs"][0]["epoch"].as_u64().unwrap(),
                v["epochs"][1]["epoch"].as_u64().unwrap() + 1
            );
            break;
        }
        assert!(Instant::now() < deadline, "no epochs from the loop: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = admin(
        &p,
        Method::GET,
        "/admin/audit?flag=assist&limit=50",
        Value::Null,
    )
    .await
    .text();
    assert!(audit.contains("\"actor\":\"bandit\""), "{audit}");
    assert!(p.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_records_are_immutable_on_sqlite_and_postgres() {
    for d in [db::Db::sqlite("bandit"), db::Db::postgres("bandit")] {
        let store = db::open(&d.url()).await;
        let text = r#"{"a":0.1234567890123456789,"b":[1,2,3]}"#;
        assert!(store.insert_bandit_epoch("f", 1, 10, text).await.unwrap());
        assert!(!store
            .insert_bandit_epoch("f", 1, 11, "other")
            .await
            .unwrap());
        assert!(store.insert_bandit_epoch("f", 2, 12, "two").await.unwrap());
        assert_eq!(
            store.bandit_epochs("f", Some(1), 1).await.unwrap(),
            vec![text.to_owned()]
        );
        assert_eq!(
            store.bandit_epochs("f", None, 10).await.unwrap(),
            vec!["two".to_owned(), text.to_owned()]
        );
        assert!(store.bandit_epochs("g", None, 10).await.unwrap().is_empty());
        assert!(store
            .bandit_epochs("f", Some(3), 1)
            .await
            .unwrap()
            .is_empty());
        // First exposures feed the sticky cache.
        let exp = |user: &str, variation: &str, at_ms: u64| switchyard::state::Exposure {
            flag: "f".into(),
            variation: variation.into(),
            rule: Some("exp".into()),
            user: user.into(),
            at_ms,
            repeat: false,
        };
        store
            .record_exposures(&[
                exp("u1", "a", 100),
                exp("u2", "b", 200),
                exp("u1", "b", 300),
            ])
            .await
            .unwrap();
        let rows = store.first_exposures("f", "exp", 0, 10).await.unwrap();
        // u1 switched (a then b) and is left out.
        assert_eq!(rows, vec![("u2".to_owned(), "b".to_owned(), 200)]);
        assert!(store
            .first_exposures("f", "exp", 201, 10)
            .await
            .unwrap()
            .is_empty());
        drop(store);
        d.cleanup().await;
    }
}

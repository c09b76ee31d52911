//! Client keys through the real interfaces: the admin API and `switchyard ctl keys` create
//! them, the proxy's client APIs refuse and admit with them (401 / 403 / 429 with
//! `Retry-After`, each in its API's error shape), spend crosses a budget and `ctl keys show`
//! reports the same spend as `switchyard_cost_usd_total`, rotation keeps the old secret for its
//! grace period, and the plaintext never reaches the store, the logs, `/metrics` or the audit
//! log. Two `switchyard serve` processes on one PostgreSQL show a revocation reaching the other
//! replica within a second and spend adding up across the fleet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use proxy::TestProxy;

const ADMIN: &str = "keys-http-admin-token";

fn config(extra: &str) -> String {
    format!(
        r#"
[admin]
tokens = [{{ name = "ops", token_env = "KEYS_HTTP_ADMIN_TOKEN" }}]

[keys]
required = true
{extra}

[prices]
"model-a" = {{ input_per_million = 1000.0, output_per_million = 2000.0 }}

[providers.mock]
kind = "mock"
latency = "0ms"

[audiences.ai-team]
conditions = ["and", {{ attribute = "team", match = "exact", value = "ai" }}]

[flags.support-assistant]
off_variation = "a"
[flags.support-assistant.variations.a]
provider = "mock"
model_id = "model-a"
[flags.support-assistant.variations.b]
provider = "mock"
model_id = "model-a"
[[flags.support-assistant.rules]]
id = "ai-team-first"
audience = "ai-team"
allocation = [{{ variation = "b", end = 10000 }}]
[[flags.support-assistant.rules]]
id = "everyone-else"
allocation = [{{ variation = "a", end = 10000 }}]

[flags.summarizer]
off_variation = "a"
[flags.summarizer.variations.a]
provider = "mock"
model_id = "model-a"
[[flags.summarizer.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]
"#
    )
}

async fn start(extra: &str) -> TestProxy {
    std::env::set_var("KEYS_HTTP_ADMIN_TOKEN", ADMIN);
    TestProxy::start(&config(extra)).await
}

async fn admin(p: &TestProxy, method: Method, path: &str, body: Option<Value>) -> client::Resp {
    let auth = format!("Bearer {ADMIN}");
    client::request(
        method,
        &p.admin_url(path),
        body.map(|b| b.to_string()).unwrap_or_default(),
        &[("authorization", &auth)],
    )
    .await
}

async fn create(p: &TestProxy, body: Value) -> String {
    let r = admin(p, Method::POST, "/admin/keys", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-sy-"), "{key}");
    key
}

async fn chat(p: &TestProxy, model: &str, key: Option<&str>) -> client::Resp {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    client::post_json(&p.url("/v1/chat/completions"), &body.to_string(), &headers).await
}

async fn messages(p: &TestProxy, model: &str, key: &str) -> client::Resp {
    let body = json!({"model": model, "max_tokens": 50,
        "messages": [{"role": "user", "content": "hello there"}]});
    client::post_json(
        &p.url("/v1/messages"),
        &body.to_string(),
        &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
    )
    .await
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn keys_gate_requests_by_flag_rate_and_shape() {
    let p = start("").await;
    let key = create(
        &p,
        json!({"name": "mobile-app", "flags": ["support-assistant"], "rpm": 3,
               "attributes": {"team": "ai"}, "reason": "test"}),
    )
    .await;

    // No key, a dummy key, an unknown Switchyard key: 401 in OpenAI's shape.
    let r = chat(&p, "support-assistant", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "missing_api_key");
    let r = chat(&p, "support-assistant", Some("sk-not-ours")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = chat(&p, "support-assistant", Some(&format!("{key}x"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A flag the key may not use: 403.
    let r = chat(&p, "summarizer", Some(&key)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_allowed");

    // Allowed: the key's attributes reach audiences, its name is the bucketing id.
    let r = chat(&p, "support-assistant", Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header("x-switchyard-rule").as_deref(),
        Some("ai-team-first")
    );
    assert_eq!(r.header("x-switchyard-variation").as_deref(), Some("b"));
    assert_eq!(r.header("x-switchyard-identity").as_deref(), Some("key"));
    // The Anthropic shape, with the key in x-api-key.
    let r = messages(&p, "support-assistant", &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = chat(&p, "support-assistant", Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Over 3 requests a minute: 429 with Retry-After, in both shapes.
    let r = chat(&p, "support-assistant", Some(&key)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    let r = messages(&p, "support-assistant", &key).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("retry-after").is_some());

    let m = client::get(&p.admin_url("/metrics")).await.text();
    let n = |outcome| {
        metric(
            &m,
            "switchyard_key_requests_total",
            &[("key", "mobile-app"), ("outcome", outcome)],
        )
    };
    assert_eq!(n("allowed"), 3.0, "{m}");
    assert_eq!(n("forbidden"), 1.0);
    assert_eq!(n("rate_limited"), 2.0);
    assert!(!m.contains(&key));

    // Bad admin input: clear 400s, a duplicate name 409.
    for bad in [
        json!({"name": "bad name"}),
        json!({"name": "x", "budget_usd": "5/week"}),
        json!({"name": "x", "expires": "soon"}),
        json!({"name": "x", "rpm": 0}),
        json!({"name": "x", "tpm": 1.5}),
        json!({"name": "x", "tpm": 1e13}),
        json!({"nom": "x"}),
    ] {
        let r = admin(&p, Method::POST, "/admin/keys", Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
    }
    let r = admin(
        &p,
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "mobile-app"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = admin(&p, Method::GET, "/admin/keys/nope", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = admin(&p, Method::DELETE, "/admin/keys/nope", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_keys_nothing_changes() {
    let toml = config("").replace("[keys]\nrequired = true\n", "");
    std::env::set_var("KEYS_HTTP_ADMIN_TOKEN", ADMIN);
    let p = TestProxy::start(&toml).await;
    let r = chat(&p, "support-assistant", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = chat(&p, "summarizer", Some("sk-sy-whatever")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_ne!(r.header("x-switchyard-identity").as_deref(), Some("key"));
}

/// `switchyard ctl …` against the in-process proxy's admin listener.
async fn ctl(p: &TestProxy, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let url = format!("http://{}", p.admin_addr);
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(fleet::BIN)
            .arg("ctl")
            .args(&args)
            .env("SWITCHYARD_ADMIN_URL", url)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn spend_crossing_the_budget_refuses_and_ctl_reports_it() {
    let p = start("flush_interval = \"100ms\"").await;
    let (code, out, err) = ctl(
        &p,
        &[
            "keys",
            "create",
            "--name",
            "batch-job",
            "--flags",
            "support-assistant,summarizer",
            "--rpm",
            "600",
            "--tpm",
            "200000",
            "--budget-usd",
            "0.05/day",
            "--expires",
            "90d",
            "--attr",
            "plan=pro",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("sk-sy-"));
    // Each answer costs a few cents at these prices: requests until the budget is crossed.
    let mut answered = 0;
    let refused = loop {
        let r = chat(&p, "summarizer", Some(&key)).await;
        if r.status != StatusCode::OK {
            break r;
        }
        answered += 1;
        assert!(answered < 100, "the budget never held");
    };
    assert!(answered >= 1);
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["error"]["code"], "budget_exceeded");
    assert_eq!(refused.json()["error"]["type"], "insufficient_quota");
    let after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&after));

    // The key's spend equals the cost the proxy measured, as `ctl keys show` reports it.
    let m = client::get(&p.admin_url("/metrics")).await.text();
    let cost = metric(&m, "switchyard_cost_usd_total", &[("flag", "summarizer")]);
    assert!(cost >= 0.05, "{cost}");
    let (code, out, err) = ctl(&p, &["keys", "show", "batch-job", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    let spend = shown["spend_usd"].as_f64().unwrap();
    assert!(
        (spend - cost).abs() < 1e-6,
        "shown {spend} vs measured {cost}"
    );
    let key_spend = metric(
        &m,
        "switchyard_key_spend_usd_total",
        &[("key", "batch-job")],
    );
    assert!((key_spend - cost).abs() < 1e-6);
    assert_eq!(shown["budget_period"], "day");
    assert_eq!(shown["attributes"]["plan"], "pro");
    // …and after the flush the stored total is the same (reloaded from the store).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, out, _) = ctl(&p, &["keys", "list", "--json"]).await;
        let v: Value = serde_json::from_str(&out).unwrap();
        let s = v["keys"][0]["spend_usd"].as_f64().unwrap();
        if (s - cost).abs() < 1e-6 {
            break;
        }
        assert!(Instant::now() < deadline, "listed spend {s} vs {cost}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, _) = ctl(&p, &["keys", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("batch-job") && !out.contains(&key), "{out}");
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_its_grace_period() {
    let p = start("").await;
    let k1 = create(&p, json!({"name": "rotating"})).await;
    assert_eq!(
        chat(&p, "summarizer", Some(&k1)).await.status,
        StatusCode::OK
    );
    let r = admin(
        &p,
        Method::POST,
        "/admin/keys/rotating/rotate",
        Some(json!({"grace": "1h"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let k2 = r.json()["key"].as_str().unwrap().to_owned();
    assert_ne!(k1, k2);
    assert!(r.json()["previous_valid_until"].is_string());
    assert_eq!(
        chat(&p, "summarizer", Some(&k1)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        chat(&p, "summarizer", Some(&k2)).await.status,
        StatusCode::OK
    );
    // A short grace: the old secret stops working when it ends.
    let r = admin(
        &p,
        Method::POST,
        "/admin/keys/rotating/rotate",
        Some(json!({"grace": "1s"})),
    )
    .await;
    let k3 = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(
        chat(&p, "summarizer", Some(&k1)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        chat(&p, "summarizer", Some(&k2)).await.status,
        StatusCode::OK
    );
    let started = Instant::now();
    loop {
        let s = chat(&p, "summarizer", Some(&k2)).await.status;
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "grace never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        chat(&p, "summarizer", Some(&k3)).await.status,
        StatusCode::OK
    );
    // Revoked: refused at once; the audit log names the key, never a secret.
    let r = admin(
        &p,
        Method::DELETE,
        "/admin/keys/rotating",
        Some(json!({"reason": "leaked"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");
    assert_eq!(
        chat(&p, "summarizer", Some(&k3)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let audit = admin(&p, Method::GET, "/admin/audit?limit=50", None)
        .await
        .text();
    for action in ["key_create", "key_rotate", "key_revoke"] {
        assert!(audit.contains(action), "{audit}");
    }
    assert!(audit.contains("\"actor\":\"ops\""), "{audit}");
    for k in [&k1, &k2, &k3] {
        assert!(!audit.contains(k.as_str()));
    }
}

fn replica_config(state_url: &str) -> String {
    format!(
        "{}\n[state]\nurl = \"{state_url}\"\n",
        config("").replace("KEYS_HTTP_ADMIN_TOKEN", "SWITCHYARD_ADMIN_TOKEN")
    )
}

async fn chat_at(base: &str, model: &str, key: &str) -> client::Resp {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    let auth = format!("Bearer {key}");
    client::post_json(
        &format!("{base}/v1/chat/completions"),
        &body.to_string(),
        &[("authorization", &auth)],
    )
    .await
}

#[tokio::test]
async fn a_revocation_reaches_the_other_replica_within_a_second() {
    let db = fleet::Database::create();
    let root = fleet::TempDir::new();
    let cfg = replica_config(&db.url);
    let a = fleet::Replica::start(&root.0, "a", &cfg);
    let b = fleet::Replica::start(&root.0, "b", &cfg);
    a.ready().await;
    b.ready().await;

    let r = a
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "fleet-app", "budget_usd": "1000/month"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_owned();
    // Created on A, usable on B within a second.
    let created = Instant::now();
    while chat_at(&b.url, "summarizer", &key).await.status != StatusCode::OK {
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "B never learned the key:\n{}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Spend on B adds up on A within a couple of flushes.
    for _ in 0..3 {
        assert_eq!(
            chat_at(&b.url, "summarizer", &key).await.status,
            StatusCode::OK
        );
    }
    let on_b = b.get("/admin/keys/fleet-app").await["spend_usd"]
        .as_f64()
        .unwrap();
    assert!(on_b > 0.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let on_a = a.get("/admin/keys/fleet-app").await["spend_usd"]
            .as_f64()
            .unwrap();
        if (on_a - on_b).abs() < 1e-9 {
            break;
        }
        assert!(Instant::now() < deadline, "A sees {on_a}, B spent {on_b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Revoked on A: refused on B within a second.
    let r = a.admin(Method::DELETE, "/admin/keys/fleet-app", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let revoked = Instant::now();
    loop {
        let r = chat_at(&b.url, "summarizer", &key).await;
        if r.status == StatusCode::UNAUTHORIZED {
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "B still admits a key revoked {:?} ago",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = b.get("/admin/keys").await;
    assert_eq!(listed["keys"][0]["status"], "revoked", "{listed}");
    let r = b.admin(Method::GET, "/admin/keys/fleet-app", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_plaintext_key_never_leaves_its_answer() {
    let root = fleet::TempDir::new();
    let a = fleet::Replica::start(&root.0, "solo", &replica_config("sqlite:state.db"));
    a.ready().await;
    let r = a
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "secretive", "flags": ["summarizer"], "rpm": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let k1 = r.json()["key"].as_str().unwrap().to_owned();
    // Every path a key takes: admitted, forbidden, limited, mistyped, rotated, revoked.
    assert_eq!(
        chat_at(&a.url, "summarizer", &k1).await.status,
        StatusCode::OK
    );
    assert_eq!(
        chat_at(&a.url, "support-assistant", &k1).await.status,
        StatusCode::FORBIDDEN
    );
    let _ = chat_at(&a.url, "summarizer", &k1).await;
    let limited = chat_at(&a.url, "summarizer", &k1).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let typo = chat_at(&a.url, "summarizer", &format!("{k1}0")).await;
    assert_eq!(typo.status, StatusCode::UNAUTHORIZED);
    let r = a
        .admin(
            Method::POST,
            "/admin/keys/secretive/rotate",
            Some(json!({"grace": "1m"})),
        )
        .await;
    let k2 = r.json()["key"].as_str().unwrap().to_owned();
    let r = a.admin(Method::DELETE, "/admin/keys/secretive", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let answers = [
        limited.text(),
        typo.text(),
        a.metrics().await,
        a.admin(Method::GET, "/admin/audit?limit=100", None)
            .await
            .text(),
        a.admin(Method::GET, "/admin/keys", None).await.text(),
        r.text(),
    ];
    let mut stored = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        stored.extend(std::fs::read(a.dir.join(f)).unwrap_or_default());
    }
    let stored = String::from_utf8_lossy(&stored).into_owned();
    assert!(
        stored.contains("secretive"),
        "the key table is not in state.db"
    );
    let logs = a.stderr();
    assert!(logs.contains("client key created"), "{logs}");
    for secret in [&k1, &k2] {
        // The secret without its prefix too: no part of the random digits anywhere.
        let digits = &secret["sk-sy-".len()..];
        for (what, text) in answers
            .iter()
            .map(|t| ("an answer", t))
            .chain([("the store", &stored), ("the logs", &logs)])
        {
            assert!(!text.contains(digits), "{what} holds a secret:\n{text}");
        }
    }
}

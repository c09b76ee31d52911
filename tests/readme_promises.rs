//! Promises of the README, each through HTTP on a real socket: a user whose bucket equals a
//! rollout stage's end is not in it; feedback errors are reported by index (unknown request
//! ids included) while the good events are stored; results say `loser` and `too_early`, adjust
//! p-values across comparisons (Benjamini–Hochberg) and call a skewed split untrustworthy
//! (SRM); rollout gates refuse on the fallback rate and the p95 ratio, and roll back on the
//! fallback rate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use proxy::TestProxy;

const TOKEN_VAR: &str = "SWITCHYARD_PROMISES_TOKEN";
const TOKEN: &str = "promises-token";

fn admin_section() -> String {
    std::env::set_var(TOKEN_VAR, TOKEN);
    format!("[admin]\ntokens = [{{ name = \"ops\", token_env = \"{TOKEN_VAR}\" }}]\n")
}

async fn admin(proxy: &TestProxy, method: Method, path: &str, body: Option<Value>) -> client::Resp {
    client::request(
        method,
        &proxy.admin_url(path),
        body.map(|b| b.to_string()).unwrap_or_default(),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await
}

async fn chat(proxy: &TestProxy, flag: &str, user: &str) -> client::Resp {
    let body =
        json!({"model": flag, "user": user, "messages": [{"role": "user", "content": "hi"}]});
    client::post_json(&proxy.url("/v1/chat/completions"), &body.to_string(), &[]).await
}

/// Polls `check` every 50 ms until it holds, up to `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_user_whose_bucket_equals_the_stage_end_is_not_in_the_rollout() {
    // Stage 0 is 1 %: buckets 0..100 get `next`. Find users with buckets 99 and exactly 100.
    let find = |want: u32| {
        (0..2_000_000)
            .map(|i| format!("user-{i}"))
            .find(|u| switchyard::flags::bucket::bucket(u, "ro") == want)
            .unwrap()
    };
    let (inside, at_end) = (find(99), find(100));
    let config = format!(
        "{}[providers.mock]\nkind = \"mock\"\n[flags.f]\noff_variation = \"cur\"\n[flags.f.variations.cur]\nprovider = \"mock\"\nmodel_id = \"m-cur\"\n[flags.f.variations.next]\nprovider = \"mock\"\nmodel_id = \"m-next\"\n[[flags.f.rules]]\nid = \"ro\"\nrollout = {{ variation = \"next\", stages = [1, 5, 100] }}\n[[flags.f.rules]]\nid = \"everyone-else\"\nallocation = [{{ variation = \"cur\", end = 10000 }}]\n",
        admin_section()
    );
    let proxy = TestProxy::start(&config).await;
    for (user, variation, rule) in [(&inside, "next", "ro"), (&at_end, "cur", "everyone-else")] {
        let d = client::get(&proxy.url(&format!("/v1/decide?flag=f&user={user}")))
            .await
            .json();
        assert_eq!(d["variation"], variation, "{user}: {d}");
        assert_eq!(d["rule"], rule, "{user}: {d}");
        let r = chat(&proxy, "f", user).await;
        assert_eq!(
            r.header("x-switchyard-variation").as_deref(),
            Some(variation)
        );
    }
    // At the next stage (5 %) both are in.
    let r = admin(
        &proxy,
        Method::PUT,
        "/admin/flags/f/rollout",
        Some(json!({"stage": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let d = client::get(&proxy.url(&format!("/v1/decide?flag=f&user={at_end}")))
        .await
        .json();
    assert_eq!(d["variation"], "next", "{d}");
}

fn ab_config(extra_flag: &str) -> String {
    format!(
        "{}[server]\ngate_interval = \"100ms\"\n[providers.mock]\nkind = \"mock\"\n[flags.ab]\noff_variation = \"control\"\n[flags.ab.variations.control]\nprovider = \"mock\"\nmodel_id = \"m-c\"\n[flags.ab.variations.treatment]\nprovider = \"mock\"\nmodel_id = \"m-t\"\n[[flags.ab.rules]]\nid = \"split\"\nallocation = [{{ variation = \"control\", end = 5000 }}, {{ variation = \"treatment\", end = 10000 }}]\n{extra_flag}",
        admin_section()
    )
}

#[tokio::test]
async fn feedback_errors_are_reported_by_index_and_the_good_events_kept() {
    let proxy = TestProxy::start(&ab_config("")).await;
    let r = chat(&proxy, "ab", "u-1").await;
    let request_id = r.header("x-request-id").unwrap();
    let body = json!({"events": [
        {"event_id": "e1", "metric": "conversion", "value": 1, "request_id": request_id},
        {"event_id": "e2", "metric": "no-such-metric", "value": 1, "flag": "ab", "user": "u-1"},
        {"event_id": "e3", "metric": "conversion", "value": 1, "request_id": "req_unknown0000000000000000"},
        {"event_id": "e4", "metric": "csat", "value": 9, "flag": "ab", "user": "u-1"},
        {"event_id": "e5", "metric": "csat", "value": 4, "flag": "ab", "user": "u-1"},
    ]});
    let r = client::post_json(&proxy.url("/v1/feedback"), &body.to_string(), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["accepted"], 2, "{v}");
    let errors = v["errors"].as_array().unwrap();
    let indexes: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3], "{v}");
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("unknown request id"),
        "{v}"
    );
    // The same batch again: the good events are duplicates now, the bad ones still errors.
    let v = client::post_json(&proxy.url("/v1/feedback"), &body.to_string(), &[])
        .await
        .json();
    assert_eq!(
        (v["accepted"].clone(), v["duplicates"].clone()),
        (json!(0), json!(2)),
        "{v}"
    );
}

/// The first `n` users `/v1/decide` puts in `variation` of `flag`, from `prefix`.
async fn users_in(
    proxy: &TestProxy,
    flag: &str,
    variation: &str,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let u = format!("{prefix}{i}");
        let d = client::get(&proxy.url(&format!("/v1/decide?flag={flag}&user={u}")))
            .await
            .json();
        if d["variation"] == variation {
            out.push(u);
        }
        i += 1;
    }
    out
}

async fn results(proxy: &TestProxy, flag: &str, users: u64) -> Value {
    until(
        Duration::from_secs(30),
        "results with every user",
        || async {
            let v = admin(
                proxy,
                Method::GET,
                &format!("/admin/flags/{flag}/results"),
                None,
            )
            .await
            .json();
            let seen: u64 = v["srm"]["observed"]
                .as_object()
                .map(|o| o.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            (seen >= users).then_some(v)
        },
    )
    .await
}

#[tokio::test]
async fn results_say_loser_and_too_early_adjust_p_values_and_flag_a_skewed_split() {
    let skewed = "[flags.sk]\noff_variation = \"control\"\n[flags.sk.variations.control]\nprovider = \"mock\"\nmodel_id = \"m-c\"\n[flags.sk.variations.treatment]\nprovider = \"mock\"\nmodel_id = \"m-t\"\n[[flags.sk.rules]]\nid = \"split\"\nallocation = [{ variation = \"control\", end = 5000 }, { variation = \"treatment\", end = 10000 }]\n";
    let proxy = TestProxy::start(&ab_config(skewed)).await;
    let control = users_in(&proxy, "ab", "control", "c-", 150).await;
    let treatment = users_in(&proxy, "ab", "treatment", "t-", 150).await;
    let mut events = Vec::new();
    for (i, u) in control.iter().enumerate() {
        chat(&proxy, "ab", u).await;
        // Control converts three users in five, treatment one in five: a clear loser, with
        // enough conversions on both sides for a verdict.
        events.push(json!({"event_id": format!("c{i}"), "metric": "conversion", "value": u8::from(i % 5 < 3), "flag": "ab", "user": u}));
    }
    for (i, u) in treatment.iter().enumerate() {
        chat(&proxy, "ab", u).await;
        events.push(json!({"event_id": format!("t{i}"), "metric": "conversion", "value": u8::from(i % 5 == 0), "flag": "ab", "user": u}));
    }
    // A handful of CSAT answers: too early for a verdict.
    for (i, u) in control.iter().chain(&treatment).take(10).enumerate() {
        events.push(json!({"event_id": format!("s{i}"), "metric": "csat", "value": 4, "flag": "ab", "user": u}));
    }
    let r = client::post_json(
        &proxy.url("/v1/feedback"),
        &json!({"events": events}).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.json()["errors"], json!([]), "{}", r.text());
    let v = results(&proxy, "ab", 300).await;
    let row = |metric: &str| {
        v["variations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == metric)
            .cloned()
            .unwrap_or_else(|| panic!("no {metric} row in {v}"))
    };
    assert_eq!(row("conversion")["verdict"], "loser", "{v}");
    assert_eq!(row("csat")["verdict"], "too_early", "{v}");
    // Benjamini–Hochberg: adjusted p-values are never below the raw ones.
    for r in v["variations"].as_array().unwrap() {
        assert!(
            r["adjusted_p_value"].as_f64().unwrap() >= r["p_value"].as_f64().unwrap() - 1e-12,
            "{r}"
        );
    }
    assert_eq!(v["trustworthy"], true, "{v}");

    // A split far from its 50/50 allocation: untrustworthy.
    let sk_control = users_in(&proxy, "sk", "control", "sc-", 200).await;
    let sk_treatment = users_in(&proxy, "sk", "treatment", "st-", 40).await;
    for u in sk_control.iter().chain(&sk_treatment) {
        chat(&proxy, "sk", u).await;
    }
    let v = results(&proxy, "sk", 240).await;
    assert_eq!(v["srm"]["detected"], true, "{v}");
    assert_eq!(v["trustworthy"], false, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("sample ratio mismatch"),
        "{v}"
    );
}

#[tokio::test]
async fn gates_refuse_on_fallback_rate_and_p95_and_roll_back_on_fallback_rate() {
    let config = format!(
        "{}[server]\ngate_interval = \"100ms\"\n[providers.fast]\nkind = \"mock\"\n[providers.slow]\nkind = \"mock\"\nlatency = \"60ms\"\n[flags.r]\noff_variation = \"cur\"\nstable_variation = \"cur\"\n[flags.r.variations.cur]\nprovider = \"fast\"\nmodel_id = \"m-cur\"\n[flags.r.variations.next]\nprovider = \"slow\"\nmodel_id = \"m-next\"\n[[flags.r.rules]]\nid = \"ro\"\nrollout = {{ variation = \"next\", stages = [10, 50, 100], initial_stage = 1, gate = {{ min_requests = 10, hold = \"0s\", max_p95_ratio = 1.5, max_fallback_rate = 0.1, rollback_fallback_rate = 0.5, rollback_min_requests = 10 }} }}\n[[flags.r.rules]]\nid = \"rest\"\nallocation = [{{ variation = \"cur\", end = 10000 }}]\n",
        admin_section()
    );
    let proxy = TestProxy::start(&config).await;
    let next = users_in(&proxy, "r", "next", "n-", 12).await;
    let cur = users_in(&proxy, "r", "cur", "c-", 12).await;
    for u in next.iter().chain(&cur) {
        assert_eq!(chat(&proxy, "r", u).await.status, StatusCode::OK);
    }
    // `next` answers in 60 ms, `cur` at once: the p95 ratio keeps the gate shut.
    let r = admin(&proxy, Method::POST, "/admin/flags/r/rollout/advance", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let reasons = r.json()["reasons"].to_string();
    assert!(reasons.contains("p95"), "{reasons}");

    // Rule-based answers forced on `next`: its fallback rate trips the rollback (from stage 1,
    // 50 %, back to the first stage).
    let r = admin(
        &proxy,
        Method::PUT,
        "/admin/flags/r/fallback",
        Some(json!({"forced": true, "variation": "next"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Three forced answers of fifteen: 20 %, above the gate's 10 %, below the 50 % rollback.
    for u in next.iter().take(3) {
        let r = chat(&proxy, "r", u).await;
        assert_eq!(r.header("x-switchyard-fallback").as_deref(), Some("forced"));
    }
    let r = admin(&proxy, Method::POST, "/admin/flags/r/rollout/advance", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let reasons = r.json()["reasons"].to_string();
    assert!(reasons.contains("fallback"), "{reasons}");
    // Many more: past 50 %, the gate rolls the rollout back by itself.
    for u in next.iter().chain(&next) {
        chat(&proxy, "r", u).await;
    }
    let audit = until(
        Duration::from_secs(20),
        "the automatic rollback",
        || async {
            let a = admin(&proxy, Method::GET, "/admin/audit?flag=r&limit=20", None)
                .await
                .json();
            let found = a["entries"].as_array().into_iter().flatten().any(|e| {
                e["actor"] == "gate" && e["reason"].as_str().unwrap_or("").contains("fallback")
            });
            found.then_some(a)
        },
    )
    .await;
    assert!(audit.to_string().contains("automatic rollback"), "{audit}");
}

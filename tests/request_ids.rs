//! Signed request ids over HTTP: feedback by the `x-request-id` of an answer is attributed
//! with no table of request ids — also when it reaches another replica sharing the
//! PostgreSQL store — while an altered, forged or foreign id is refused in the answer's
//! `errors`; a client's own id is echoed (and carries nothing); a returning user's request
//! writes nothing; results report lost exposures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/db.rs"]
mod db;
#[path = "support/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use proxy::TestProxy;

const TOKEN_VAR: &str = "SWITCHYARD_REQUEST_IDS_TOKEN";
const TOKEN: &str = "request-ids-token";

fn config(state: &str) -> String {
    std::env::set_var(TOKEN_VAR, TOKEN);
    format!(
        "[admin]\ntokens = [{{ name = \"ops\", token_env = \"{TOKEN_VAR}\" }}]\n\
         [state]\nurl = \"{state}\"\n\
         [providers.mock]\nkind = \"mock\"\n\
         [flags.ab]\noff_variation = \"control\"\n\
         [flags.ab.variations.control]\nprovider = \"mock\"\nmodel_id = \"m-c\"\n\
         [flags.ab.variations.treatment]\nprovider = \"mock\"\nmodel_id = \"m-t\"\n\
         [[flags.ab.rules]]\nid = \"split\"\n\
         allocation = [{{ variation = \"control\", end = 5000 }}, {{ variation = \"treatment\", end = 10000 }}]\n"
    )
}

async fn chat(proxy: &TestProxy, user: &str, headers: &[(&str, &str)]) -> client::Resp {
    let body =
        json!({"model": "ab", "user": user, "messages": [{"role": "user", "content": "hi"}]});
    let r = client::post_json(
        &proxy.url("/v1/chat/completions"),
        &body.to_string(),
        headers,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r
}

async fn feedback(proxy: &TestProxy, events: Value) -> Value {
    let r = client::post_json(
        &proxy.url("/v1/feedback"),
        &json!({ "events": events }).to_string(),
        &[],
    )
    .await;
    r.json()
}

async fn results(proxy: &TestProxy) -> Value {
    let r = client::request(
        Method::GET,
        &proxy.admin_url("/admin/flags/ab/results?metric=conversion"),
        String::new(),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// Polls `check` every 20 ms until it returns `Some`, up to 10 s.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `switchyard_exposures_total{result="written"}`.
async fn written(proxy: &TestProxy) -> u64 {
    let text = client::get(&proxy.admin_url("/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with("switchyard_exposures_total{result=\"written\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Replaces the character at `i` with another base64url one.
fn alter(id: &str, i: usize) -> String {
    let mut b = id.as_bytes().to_vec();
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn feedback_by_request_id_reaches_any_replica_and_forgeries_are_refused() {
    let db = db::Db::postgres("request_ids");
    let a = TestProxy::start(&config(&db.url())).await;
    let b = TestProxy::start(&config(&db.url())).await;
    let r = chat(&a, "u-1", &[]).await;
    let id = r.header("x-request-id").unwrap();
    let variation = r.header("x-switchyard-variation").unwrap();
    assert!(id.starts_with("req_1"), "{id}");
    assert!(!id.contains("u-1"), "the user's id is not readable in {id}");
    // Answered by A, posted to B: attributed to A's decision.
    let v = feedback(
        &b,
        json!([{"event_id": "e1", "metric": "conversion", "value": 1, "request_id": id}]),
    )
    .await;
    assert_eq!(v["accepted"], 1, "{v}");
    // Once A's writer has stored the exposure, B's results count the event under the
    // variation A answered with.
    let (field, variation) = if variation == "control" {
        ("control_value", variation)
    } else {
        ("value", variation)
    };
    let row = until("B's results show the conversion", || async {
        let r = results(&b).await;
        (r["variations"][0][field] == 1.0).then_some(r)
    })
    .await;
    assert_eq!(
        row["variations"][0]["variation"],
        if variation == "control" {
            "treatment"
        } else {
            variation.as_str()
        },
        "{row}"
    );
    assert_eq!(row["dropped_exposures"], 0, "{row}");

    // Altered anywhere, truncated, or minted by a proxy on another store: refused by index.
    let other = TestProxy::start(&config("sqlite::memory:")).await;
    let foreign = chat(&other, "u-1", &[])
        .await
        .header("x-request-id")
        .unwrap();
    let bad = [
        alter(&id, 5),
        alter(&id, id.len() / 2),
        alter(&id, id.len() - 1),
        id[..id.len() - 4].to_owned(),
        foreign,
    ];
    let events: Vec<Value> = bad
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"event_id": format!("bad-{i}"), "metric": "conversion", "value": 1, "request_id": id}))
        .collect();
    let v = feedback(&a, Value::Array(events)).await;
    assert_eq!(v["accepted"], 0, "{v}");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), bad.len(), "{v}");
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["index"], i, "{v}");
        assert!(
            e["message"].as_str().unwrap().contains("not authentic"),
            "{v}"
        );
    }
    assert_eq!(v["error"]["code"], "invalid_event", "{v}");
    drop((a, b, other));
    db.cleanup().await;
}

#[tokio::test]
async fn a_clients_own_request_id_is_echoed_and_carries_no_attribution() {
    let p = TestProxy::start(&config("sqlite::memory:")).await;
    let r = chat(&p, "u-2", &[("x-request-id", "client-req-7")]).await;
    assert_eq!(r.header("x-request-id").as_deref(), Some("client-req-7"));
    let v = feedback(
        &p,
        json!([
            {"event_id": "c1", "metric": "conversion", "value": 1, "request_id": "client-req-7"},
            {"event_id": "c2", "metric": "conversion", "value": 1, "flag": "ab", "user": "u-2"},
        ]),
    )
    .await;
    assert_eq!(v["accepted"], 1, "{v}");
    let message = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown request id") && message.contains("`flag` and `user`"),
        "{message}"
    );
}

#[tokio::test]
async fn a_returning_users_request_writes_nothing() {
    let p = TestProxy::start(&config("sqlite::memory:")).await;
    for user in ["r-1", "r-2", "r-3"] {
        chat(&p, user, &[]).await;
    }
    until("three first exposures written", || async {
        (written(&p).await == 3).then_some(())
    })
    .await;
    // Returning users, then one new user: the writer keeps the queue's order, so once the
    // new user is written, nothing else was.
    for _ in 0..10 {
        for user in ["r-1", "r-2", "r-3"] {
            chat(&p, user, &[]).await;
        }
    }
    chat(&p, "r-4", &[]).await;
    until("the new user written", || async {
        (written(&p).await >= 4).then_some(())
    })
    .await;
    assert_eq!(written(&p).await, 4);
    let r = results(&p).await;
    let users: u64 = r["srm"]["observed"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(users, 4, "{r}");
    assert_eq!(r["dropped_exposures"], 0, "{r}");
}

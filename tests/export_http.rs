//! Export through the real proxy: `GET /admin/export` pages of exposures, feedback, eval
//! scores and per-request records (from the rotating files of the continuous sink) equal what
//! the experiment results are computed from; paging with any page size and resuming from a
//! cursor loses and duplicates nothing; `switchyard ctl export` prints the same records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/db.rs"]
mod db;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

const TOKEN_VAR: &str = "SWITCHYARD_EXPORT_TEST_TOKEN";
const TOKEN: &str = "export-test-token";
const WAIT: Duration = Duration::from_secs(15);

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!(
        "switchyard-export-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn config(export_dir: &Path, include_content: bool) -> String {
    std::env::set_var(TOKEN_VAR, TOKEN);
    format!(
        r#"
[admin]
tokens = [{{ name = "ops", token_env = "{TOKEN_VAR}" }}]

[export]
dir = "{}"
rotate_bytes = 4096
include_content = {include_content}

[providers.mock]
kind = "mock"
latency = "0ms"

[prices.model-a]
input_per_million = 1.0
output_per_million = 2.0

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "model-a"
[flags.f.variations.b]
provider = "mock"
model_id = "model-b"
[[flags.f.rules]]
id = "split"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]
"#,
        export_dir.display()
    )
}

async fn admin(p: &proxy::TestProxy, path: &str) -> client::Resp {
    let auth = format!("Bearer {TOKEN}");
    client::request(
        Method::GET,
        &p.admin_url(path),
        "",
        &[("authorization", &auth)],
    )
    .await
}

/// Every record of `kind` (with `extra` query parameters), `limit` a page, following cursors
/// until a short page; returns the records and the last cursor.
async fn export_all(
    p: &proxy::TestProxy,
    kind: &str,
    extra: &str,
    limit: usize,
    mut cursor: Option<String>,
) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    loop {
        let mut path = format!("/admin/export?kind={kind}&limit={limit}{extra}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = admin(p, &path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-ndjson")
        );
        let next = r.header("x-switchyard-next-cursor").expect("next cursor");
        let lines: Vec<Value> = r
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let n = lines.len();
        out.extend(lines);
        cursor = Some(next);
        if n < limit {
            return (out, cursor.unwrap_or_default());
        }
    }
}

async fn chat(p: &proxy::TestProxy, user: &str) -> (String, String) {
    let body = json!({"model": "f", "user": user,
        "messages": [{"role": "user", "content": format!("question of {user}")}]});
    let r = client::post_json(&p.url("/v1/chat/completions"), &body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (
        r.header("x-switchyard-variation").unwrap(),
        r.header("x-request-id").unwrap(),
    )
}

#[tokio::test]
async fn exported_records_equal_what_results_are_computed_from_and_resume_exactly() {
    let dir = temp_dir("e2e");
    let p = proxy::TestProxy::start(&config(&dir, false)).await;
    let mut served = BTreeMap::<String, String>::new();
    let mut request_ids = Vec::new();
    let mut events = Vec::new();
    for i in 0..40 {
        let user = format!("user-{i}");
        let (variation, request_id) = chat(&p, &user).await;
        served.insert(user.clone(), variation);
        request_ids.push(request_id.clone());
        if i % 3 == 0 {
            events.push(
                json!({"event_id": format!("conv-{i}"), "metric": "conversion",
                "value": 1, "request_id": request_id}),
            );
        }
        if i % 4 == 0 {
            events.push(json!({"event_id": format!("eval:groundedness:{i}"),
                "metric": "hallucination", "value": 0.25, "request_id": request_id}));
        }
    }
    let r = client::post_json(
        &p.url("/v1/feedback"),
        &json!({"events": events}).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.json()["accepted"], events.len(), "{}", r.text());

    // Exposures are written off the request path: wait for the results to count every user.
    let deadline = Instant::now() + WAIT;
    let results = loop {
        let r = admin(&p, "/admin/flags/f/results?metric=conversion").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let users: u64 = v["srm"]["observed"]
            .as_object()
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
        if users == 40 {
            break v;
        }
        assert!(Instant::now() < deadline, "exposures not all counted: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Exposures: one per user, its variation the one served; per variation, the results' users.
    let (exposures, _) = export_all(&p, "exposures", "&flag=f", 1000, None).await;
    assert_eq!(exposures.len(), 40);
    let mut per_variation = BTreeMap::<String, u64>::new();
    for e in &exposures {
        assert_eq!(e["kind"], "exposure");
        let user = e["user"].as_str().unwrap();
        assert_eq!(
            Some(e["variation"].as_str().unwrap()),
            served.get(user).map(String::as_str)
        );
        assert_eq!(e["rule"], "split");
        *per_variation
            .entry(e["variation"].as_str().unwrap().into())
            .or_default() += 1;
    }
    let observed = results["srm"]["observed"].as_object().unwrap();
    assert_eq!(observed.len(), per_variation.len());
    for (key, users) in observed {
        assert_eq!(
            per_variation.get(key).copied(),
            users.as_u64(),
            "users of {key}: {results}"
        );
    }
    // The results' conversion rates are the exported conversions over the exposed users.
    let conversions = |key: &str| {
        feedback_of(&events, &request_ids, &served, key, "conversion") / per_variation[key] as f64
    };
    let b = &results["variations"][0];
    assert_eq!(b["variation"], "b");
    assert!(
        (b["value"].as_f64().unwrap() - conversions("b")).abs() < 1e-9,
        "{b}"
    );
    assert!(
        (b["control_value"].as_f64().unwrap() - conversions("a")).abs() < 1e-9,
        "{b}"
    );

    // Feedback: every event, attributed to the variation that served the request.
    let (feedback, _) = export_all(&p, "feedback", "&flag=f", 1000, None).await;
    assert_eq!(feedback.len(), events.len());
    for f in &feedback {
        assert_eq!(f["kind"], "feedback");
        let user = f["user"].as_str().unwrap();
        assert_eq!(
            f["variation"].as_str(),
            served.get(user).map(String::as_str)
        );
    }
    // Evals: only the eval: events.
    let (evals, _) = export_all(&p, "evals", "", 1000, None).await;
    assert_eq!(
        evals.len(),
        events
            .iter()
            .filter(|e| e["event_id"].as_str().unwrap().starts_with("eval:"))
            .count()
    );
    assert!(evals
        .iter()
        .all(|e| e["kind"] == "eval" && e["metric"] == "hallucination"));

    // Any page size gives the same records, in the same order, none twice.
    for kind in ["exposures", "feedback"] {
        let (all, _) = export_all(&p, kind, "", 1000, None).await;
        for size in [1, 3, 7] {
            let (paged, _) = export_all(&p, kind, "", size, None).await;
            assert_eq!(paged, all, "{kind} in pages of {size}");
        }
    }

    // Per-request records: one per request, from the rotating files.
    let deadline = Instant::now() + WAIT;
    let requests = loop {
        let (r, _) = export_all(&p, "requests", "", 1000, None).await;
        if r.len() >= 40 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "only {} request records",
            r.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: Vec<&str> = requests
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        request_ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for r in &requests {
        assert_eq!(r["kind"], "request");
        assert_eq!(r["flag"], "f");
        assert_eq!(r["outcome"], "success");
        assert_eq!(r["api"], "chat");
        assert_eq!(r["rule"], "split");
        assert!(r["latency_seconds"].as_f64().unwrap() >= 0.0);
        assert!(r["tokens_in"].as_u64().unwrap() > 0);
        assert!(
            r.get("prompt").is_none(),
            "no content unless include_content"
        );
        let model = if r["variation"] == "a" {
            "model-a"
        } else {
            "model-b"
        };
        assert_eq!(r["model"], model);
        assert_eq!(r["cost_usd"].is_number(), model == "model-a", "{r}");
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files >= 2, "rotated into several files ({files})");
    for size in [1, 6] {
        let (paged, _) = export_all(&p, "requests", "", size, None).await;
        assert_eq!(paged, requests, "requests in pages of {size}");
    }

    // Resume: stop half-way, new traffic arrives, continue from the cursor.
    let page = admin(&p, "/admin/export?kind=requests&limit=25").await;
    let first: Vec<Value> = page
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cursor = page.header("x-switchyard-next-cursor").unwrap();
    let (exp_first, exp_cursor) = export_all(&p, "exposures", "", 1000, None).await;
    let mut more_ids = Vec::new();
    for i in 40..50 {
        more_ids.push(chat(&p, &format!("user-{i}")).await.1);
    }
    let deadline = Instant::now() + WAIT;
    let rest = loop {
        let (rest, _) = export_all(&p, "requests", "", 4, Some(cursor.clone())).await;
        if rest.len() >= 25 {
            break rest;
        }
        assert!(Instant::now() < deadline, "the new records never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resumed: Vec<String> = first
        .iter()
        .chain(rest.iter())
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = request_ids.iter().chain(more_ids.iter()).cloned().collect();
    assert_eq!(resumed, expected, "nothing lost, nothing twice");
    let deadline = Instant::now() + WAIT;
    loop {
        let (exp_rest, _) = export_all(&p, "exposures", "", 3, Some(exp_cursor.clone())).await;
        if exp_rest.len() == 10 {
            let mut users: Vec<&str> = exp_first
                .iter()
                .chain(exp_rest.iter())
                .map(|e| e["user"].as_str().unwrap())
                .collect();
            users.sort();
            users.dedup();
            assert_eq!(users.len(), 50);
            break;
        }
        assert!(exp_rest.len() < 10, "duplicates after the cursor");
        assert!(Instant::now() < deadline, "new exposures never exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Filters: since (after every record: nothing), an unknown flag (nothing).
    let later = crate_now_ms() + 60_000;
    let (none, _) = export_all(&p, "requests", &format!("&since={later}"), 1000, None).await;
    assert!(none.is_empty());
    let (none, _) = export_all(&p, "exposures", "&flag=nope", 1000, None).await;
    assert!(none.is_empty());

    // `switchyard ctl export` prints the same exposures.
    let out = tokio::task::spawn_blocking({
        let url = format!("http://{}", p.admin_addr);
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args([
                    "ctl",
                    "export",
                    "--flag",
                    "f",
                    "--kind",
                    "exposures",
                    "--format",
                    "jsonl",
                    "--page-size",
                    "7",
                    "--since",
                    "1h",
                ])
                .env("SWITCHYARD_ADMIN_URL", url)
                .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (all, last) = export_all(&p, "exposures", "&flag=f", 1000, None).await;
    assert_eq!(printed, all);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&last),
        "the cursor to resume from"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sum of `metric` events of the users `served` with variation `key`.
fn feedback_of(
    events: &[Value],
    request_ids: &[String],
    served: &BTreeMap<String, String>,
    key: &str,
    metric: &str,
) -> f64 {
    events
        .iter()
        .filter(|e| e["metric"] == metric)
        .filter(|e| {
            let i = request_ids
                .iter()
                .position(|r| *r == e["request_id"].as_str().unwrap())
                .unwrap();
            served[&format!("user-{i}")] == key
        })
        .map(|e| e["value"].as_f64().unwrap())
        .sum()
}

fn crate_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn bad_parameters_are_400s_and_content_only_when_asked() {
    let dir = temp_dir("bad");
    let p = proxy::TestProxy::start(&config(&dir, true)).await;
    for (path, says) in [
        ("/admin/export", "kind"),
        ("/admin/export?kind=everything", "unknown kind"),
        ("/admin/export?kind=exposures&since=yesterday", "since"),
        ("/admin/export?kind=exposures&limit=0", "limit"),
        ("/admin/export?kind=exposures&cursor=garbage", "cursor"),
        ("/admin/export?kind=exposures&cursor=r.1.0", "another kind"),
    ] {
        let r = admin(&p, path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(says), "{path}: {msg}");
    }
    let r = client::get(&p.admin_url("/admin/export?kind=exposures")).await;
    assert_eq!(r.status, 401);

    chat(&p, "content-user").await;
    let deadline = Instant::now() + WAIT;
    let record = loop {
        let (r, _) = export_all(&p, "requests", "", 10, None).await;
        if let Some(r) = r.into_iter().next() {
            break r;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record["prompt"], "question of content-user");
    let answer: Value = serde_json::from_str(record["answer"].as_str().unwrap()).unwrap();
    assert_eq!(answer["object"], "chat.completion");

    // Without [export] dir, per-request records are not kept: a clear 409.
    let toml = config(&dir, false).replace(&format!("dir = \"{}\"\n", dir.display()), "");
    let p = proxy::TestProxy::start(&toml).await;
    let r = admin(&p, "/admin/export?kind=requests").await;
    assert_eq!(r.status, 409, "{}", r.text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgresql_state_exports_the_same_way() {
    let dir = temp_dir("pg");
    let store = db::Db::postgres("export");
    let toml = format!(
        "[state]\nurl = \"{}\"\n{}",
        store.url(),
        config(&dir, false)
    );
    let p = proxy::TestProxy::start(&toml).await;
    let mut events = Vec::new();
    for i in 0..12 {
        let (_, request_id) = chat(&p, &format!("pg-user-{i}")).await;
        events.push(
            json!({"event_id": format!("pg-{i}"), "metric": "thumbs", "value": 1,
            "request_id": request_id}),
        );
    }
    let r = client::post_json(
        &p.url("/v1/feedback"),
        &json!({"events": events}).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.json()["accepted"], 12, "{}", r.text());
    let deadline = Instant::now() + WAIT;
    let all = loop {
        let (all, _) = export_all(&p, "exposures", "&flag=f", 1000, None).await;
        if all.len() == 12 {
            break all;
        }
        assert!(Instant::now() < deadline, "{} exposures", all.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (paged, _) = export_all(&p, "exposures", "&flag=f", 5, None).await;
    assert_eq!(paged, all);
    let (feedback, _) = export_all(&p, "feedback", "", 1000, None).await;
    let (paged, _) = export_all(&p, "feedback", "", 5, None).await;
    assert_eq!(feedback.len(), 12);
    assert_eq!(paged, feedback);
    let (evals, _) = export_all(&p, "evals", "", 1000, None).await;
    assert!(evals.is_empty());
    drop(p);
    store.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

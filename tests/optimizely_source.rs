//! The Optimizely datafile source through the real interfaces: flags from a datafile file serve
//! chat requests beside `proxy.toml`'s, runtime overrides (kill switch, forced fallback) work
//! on them, a changed datafile is picked up at the next poll, a bad one keeps the last good
//! flags and says why on `/readyz` and in `/metrics`, a key in both places is a config error,
//! and `/readyz` waits for the first datafile. (Decisions against Optimizely's own SDK are in
//! `tests/python/test_optimizely_source.py`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/faults.rs"]
mod faults;
#[path = "support/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use client::Resp;
use proxy::TestProxy;

const TOKEN: &str = "optimizely-source-admin";

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!(
            "switchyard-opt-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes via a sibling and a rename, so a poll never reads half a file.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(dir: &Dir, source: &str, extra: &str) -> String {
    let token = dir.path("token");
    std::fs::write(&token, TOKEN).unwrap();
    format!(
        r#"
[server]
reload_check_interval = "0s"

[admin]
tokens = [{{ name = "ops", token_file = "{token}" }}]

[state]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"
latency = "0ms"

[prompts]
brief = "Be brief."

[sources.optimizely]
{source}
poll_interval = "100ms"

[flags.local]
off_variation = "a"
[flags.local.variations.a]
provider = "mock"
model_id = "local-1"
[[flags.local.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]
{extra}
"#,
        token = token.display()
    )
}

/// A datafile with one flag `helper`: an experiment 50/50 between `a` and `b`, then a
/// delivery rule serving `on` to everyone else.
fn datafile(revision: &str, model_b: &str, prompt: &str) -> String {
    let var = |id: &str, key: &str, ty: &str, default: &str| json!({"id": id, "key": key, "type": ty, "defaultValue": default});
    let variation = |id: &str, key: &str, model: &str| {
        json!({"id": id, "key": key, "featureEnabled": true,
               "variables": [{"id": "v1", "value": model}, {"id": "v3", "value": prompt}]})
    };
    json!({
        "version": "4", "revision": revision, "accountId": "1", "projectId": "2",
        "attributes": [], "events": [], "audiences": [], "typedAudiences": [], "groups": [],
        "experiments": [{
            "id": "500", "key": "helper_ab", "status": "Running", "layerId": "l",
            "audienceIds": [], "forcedVariations": {"vip": "b"},
            "variations": [variation("501", "a", "model-a"), variation("502", "b", model_b)],
            "trafficAllocation": [{"entityId": "501", "endOfRange": 5000}, {"entityId": "502", "endOfRange": 10000}]
        }],
        "featureFlags": [{
            "id": "f1", "key": "helper", "experimentIds": ["500"], "rolloutId": "r1",
            "variables": [var("v1", "model_id", "string", "model-default"),
                          var("v2", "provider", "string", "mock"),
                          var("v3", "system_prompt_variant", "string", ""),
                          var("v4", "show_tips", "boolean", "true")]
        }],
        "rollouts": [{"id": "r1", "experiments": [{
            "id": "600", "key": "everyone_else", "status": "Running", "layerId": "r1",
            "audienceIds": [], "forcedVariations": {},
            "variations": [variation("601", "on", "model-on")],
            "trafficAllocation": [{"entityId": "601", "endOfRange": 10000}]
        }]}]
    })
    .to_string()
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(p: &TestProxy) -> Resp {
    client::get(&p.admin_url("/readyz")).await
}

/// The datafile source's details (`GET /admin/status`).
async fn source_status(p: &TestProxy) -> Value {
    let r = admin(p, Method::GET, "/admin/status", Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["sources"]["optimizely"].clone()
}

async fn decide(p: &TestProxy, user: &str) -> Value {
    let r = client::get(&p.url(&format!("/v1/decide?flag=helper&user={user}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

async fn admin(p: &TestProxy, method: Method, path: &str, body: Value) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    client::request(
        method,
        &p.admin_url(path),
        body.to_string(),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
    )
    .await
}

async fn chat(p: &TestProxy, user: &str) -> Resp {
    let body =
        json!({"model": "helper", "user": user, "messages": [{"role": "user", "content": "hi"}]});
    client::post_json(&p.url("/v1/chat/completions"), &body.to_string(), &[]).await
}

#[tokio::test]
async fn datafile_flags_serve_beside_the_file_and_obey_runtime_overrides() {
    let dir = Dir::new("serve");
    let df = dir.path("datafile.json");
    write(&df, &datafile("1", "model-b", "brief"));
    let source = format!("datafile_path = \"{}\"", df.display());
    let p = TestProxy::start(&config(&dir, &source, "")).await;
    eventually("the datafile's flag", async || {
        let r = readyz(&p).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    let models = client::get(&p.url("/v1/models")).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["local", "helper"]);

    let vip = decide(&p, "vip").await;
    assert_eq!(vip["variation"], "b", "forced user: {vip}");
    assert_eq!(vip["rule"], "500");
    assert_eq!(vip["variables"]["model_id"], "model-b");
    assert_eq!(vip["variables"]["system_prompt_variant"], "brief");
    assert_eq!(vip["variables"]["show_tips"], true);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let user = format!("u{i}");
        let d = decide(&p, &user).await;
        let r = chat(&p, &user).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.header("x-switchyard-variation").as_deref(),
            d["variation"].as_str()
        );
        assert_eq!(r.header("x-switchyard-rule").as_deref(), Some("500"));
        seen.insert(d["variation"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    // The kill switch serves the flag's defaults (the `off` variation) to everyone.
    let r = admin(
        &p,
        Method::PUT,
        "/admin/flags/helper/enabled",
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let killed = decide(&p, "vip").await;
    assert_eq!(killed["reason"], "flag_disabled");
    assert_eq!(killed["variation"], "off");
    assert_eq!(killed["variables"]["model_id"], "model-default");
    assert_eq!(
        chat(&p, "vip")
            .await
            .header("x-switchyard-variation")
            .as_deref(),
        Some("off")
    );
    let r = admin(
        &p,
        Method::PUT,
        "/admin/flags/helper/enabled",
        json!({"enabled": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // Forced fallback: rule-based answers for the datafile flag.
    let r = admin(
        &p,
        Method::PUT,
        "/admin/flags/helper/fallback",
        json!({"forced": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = chat(&p, "u1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("x-switchyard-fallback").is_some(),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn a_new_revision_is_picked_up_and_a_bad_one_keeps_the_last_good() {
    let dir = Dir::new("revisions");
    let df = dir.path("datafile.json");
    write(&df, &datafile("1", "model-b", "brief"));
    let file = dir.path("proxy.toml");
    let source = format!("datafile_path = \"{}\"", df.display());
    write(&file, &config(&dir, &source, ""));
    let p = TestProxy::start_file(&file).await;
    eventually("revision 1", async || {
        (decide_ok(&p).await?["variables"]["model_id"] == "model-b").then_some(())
    })
    .await;

    write(&df, &datafile("2", "model-b2", "brief"));
    eventually("revision 2", async || {
        (decide_ok(&p).await?["variables"]["model_id"] == "model-b2").then_some(())
    })
    .await;

    // An unknown prompt: rejected, the last good flags keep serving.
    write(&df, &datafile("3", "model-b3", "no-such-prompt"));
    let status = eventually("the rejection", async || {
        let s = source_status(&p).await;
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown prompt \"no-such-prompt\""))
            .then_some(s)
    })
    .await;
    assert_eq!(status["healthy"], false);
    assert_eq!(status["revision"], "2");
    let r = readyz(&p).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("Optimizely datafile"),
        "{}",
        r.text()
    );
    assert_eq!(decide(&p, "vip").await["variables"]["model_id"], "model-b2");
    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(
            "switchyard_source_updates_total{outcome=\"rejected\",source=\"optimizely\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_source_healthy{source=\"optimizely\"} 0"));

    // A key in proxy.toml and in the datafile: the reload is refused, the old config serves.
    let clash = "[flags.helper]\noff_variation = \"a\"\n[flags.helper.variations.a]\nprovider = \"mock\"\nmodel_id = \"x\"\n[[flags.helper.rules]]\nid = \"all\"\nallocation = [{ variation = \"a\", end = 10000 }]\n";
    write(&file, &config(&dir, &source, clash));
    let r = admin(&p, Method::POST, "/admin/reload", json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert!(r.text().contains("defined both in"), "{}", r.text());
    assert_eq!(decide(&p, "vip").await["variables"]["model_id"], "model-b2");

    // Back to a good datafile: healthy again.
    write(&df, &datafile("4", "model-b4", "brief"));
    eventually("revision 4", async || {
        (decide_ok(&p).await?["variables"]["model_id"] == "model-b4").then_some(())
    })
    .await;
    assert_eq!(source_status(&p).await["healthy"], true);
    write(&file, &config(&dir, &source, ""));
    let r = admin(&p, Method::POST, "/admin/reload", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(decide(&p, "vip").await["variables"]["model_id"], "model-b4");
    // Ready without a reason (besides the status, /readyz only says who leads the fleet).
    let ready = readyz(&p).await.json();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(ready.get("reason").is_none(), "{ready}");
}

async fn decide_ok(p: &TestProxy) -> Option<Value> {
    let r = client::get(&p.url("/v1/decide?flag=helper&user=vip")).await;
    (r.status == StatusCode::OK).then(|| r.json())
}

#[tokio::test]
async fn readyz_waits_for_the_first_datafile_and_reports_fetch_errors() {
    let dir = Dir::new("unreachable");
    let url = faults::closed_port_url().replace("/v1", "/datafiles/{sdk_key}.json");
    // Any variable that is set stands in for the SDK key.
    let source = format!("datafile_url = \"{url}\"\nsdk_key_env = \"PATH\"");
    let p = TestProxy::start(&config(&dir, &source, "")).await;
    let status = eventually("a fetch error", async || {
        let s = source_status(&p).await;
        s["error"].is_string().then_some(s)
    })
    .await;
    let r = readyz(&p).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "waiting_for_sources");
    // The URL is reported as configured: the SDK key is never shown.
    assert!(status["datafile"]
        .as_str()
        .unwrap()
        .ends_with("/datafiles/{sdk_key}.json"));
    assert!(!status.to_string().contains(&std::env::var("PATH").unwrap()));
    let metrics = client::get(&p.admin_url("/metrics")).await.text();
    assert!(metrics.contains(
        "switchyard_source_updates_total{outcome=\"fetch_error\",source=\"optimizely\"}"
    ));
    // proxy.toml's own flags serve meanwhile.
    let r = client::get(&p.url("/v1/decide?flag=local&user=u")).await;
    assert_eq!(r.status, StatusCode::OK);
}

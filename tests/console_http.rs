//! The operators' console over HTTP on a real admin listener: the embedded page and its
//! security headers, and the JSON views it reads (`/admin/console/…`, the audit log's filters
//! and paging). The page itself is driven in a real browser by `tests/console/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use client::Http;
use proxy::TestProxy;

const OPS: &str = "console-ops-token";
const NIGHT: &str = "console-night-token";

/// `flags` flags of `variations` variations each, on the mock provider, with a 50/50.. split.
fn config(flags: usize, variations: usize) -> String {
    let mut c = String::from(
        r#"
[admin]
tokens = [{ name = "ops", token_env = "OPS" }, { name = "night-shift", token_env = "NIGHT" }]

[providers.mock]
kind = "mock"
latency = "0ms"

[prompts]
p = "Be brief. <b>not bold</b>"

[audiences.internal]
conditions = ["or", { attribute = "team", match = "exact", value = "ai" }]
"#,
    );
    for f in 0..flags {
        c.push_str(&format!(
            "\n[flags.flag-{f:02}]\noff_variation = \"v0\"\nstable_variation = \"v0\"\n"
        ));
        for v in 0..variations {
            c.push_str(&format!(
                "[flags.flag-{f:02}.variations.v{v}]\nprovider = \"mock\"\nmodel_id = \"m{v}\"\nsystem_prompt_variant = \"p\"\ntemperature = 0.{v}\ntoken_budget = {}\n",
                100 * (v + 1)
            ));
        }
        let step = 10000 / variations;
        let alloc: Vec<String> = (0..variations)
            .map(|v| {
                let end = if v + 1 == variations {
                    10000
                } else {
                    step * (v + 1)
                };
                format!("{{ variation = \"v{v}\", end = {end} }}")
            })
            .collect();
        c.push_str(&format!(
            "[[flags.flag-{f:02}.rules]]\nid = \"internal\"\naudience = \"internal\"\nallocation = [{{ variation = \"v1\", end = 10000 }}]\n\
             [[flags.flag-{f:02}.rules]]\nid = \"ab\"\nallocation = [{}]\n\
             [[flags.flag-{f:02}.rules]]\nid = \"everyone-else\"\nallocation = [{{ variation = \"v0\", end = 10000 }}]\n",
            alloc.join(", ")
        ));
    }
    c
}

async fn start(flags: usize, variations: usize) -> TestProxy {
    let src = config(flags, variations);
    let env = |k: &str| match k {
        "OPS" => Some(OPS.to_owned()),
        "NIGHT" => Some(NIGHT.to_owned()),
        _ => None,
    };
    let mut config = switchyard::Config::parse_with_env(&src, "test.toml", &env)
        .unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
    config.state_url = "sqlite::memory:".into();
    TestProxy::start_config(config).await
}

async fn admin(
    p: &TestProxy,
    method: Method,
    path: &str,
    body: Value,
    token: &str,
) -> (StatusCode, Value) {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let r = Http::new()
        .request(
            method,
            &p.admin_url(path),
            body,
            &[("authorization", auth.as_str())],
        )
        .await;
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

async fn get(p: &TestProxy, path: &str) -> Value {
    let (status, v) = admin(p, Method::GET, path, Value::Null, OPS).await;
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

#[tokio::test]
async fn the_page_and_its_assets_are_embedded_and_served_with_strict_headers() {
    let p = start(1, 2).await;
    let page = client::get(&p.admin_url("/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type").unwrap(),
        "text/html; charset=utf-8"
    );
    let html = page.text();
    // No inline script: every script element has a src on this origin.
    for tag in html.split("<script").skip(1) {
        let head = &tag[..tag.find('>').unwrap()];
        assert!(
            head.contains("src=\"/console/"),
            "inline or foreign script: <script{head}>"
        );
        assert!(tag[tag.find('>').unwrap() + 1..].starts_with("</script>"));
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no other host"
    );
    let mut total = 0;
    for asset in [
        "/console/app.js",
        "/console/api.js",
        "/console/dom.js",
        "/console/chart.js",
        "/console/actions.js",
        "/console/flags.js",
        "/console/pages.js",
        "/console/console.css",
        "/console/favicon.svg",
    ] {
        let r = client::get(&p.admin_url(asset)).await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
        // The SVG namespace is a name, not a request.
        let text = r.text().replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("https://") && !text.contains("http://"),
            "{asset} names another host"
        );
        total += r.body.len();
    }
    assert_eq!(total + page.body.len(), switchyard::console::assets_size());
    assert!(
        switchyard::console::assets_size() <= 300 * 1024,
        "assets are {} bytes",
        switchyard::console::assets_size()
    );
    for path in [
        "/",
        "/console/app.js",
        "/healthz",
        "/admin/console/overview",
        "/console/missing.js",
    ] {
        let r = client::get(&p.admin_url(path)).await;
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            r.header("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
        assert_eq!(
            r.header("x-frame-options").as_deref(),
            Some("DENY"),
            "{path}"
        );
    }
    assert_eq!(
        client::get(&p.admin_url("/console/missing.js"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // The page is public; its data is not.
    assert_eq!(
        client::get(&p.admin_url("/admin/console/overview"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_overview_holds_every_flag_in_one_answer() {
    let p = start(50, 4).await;
    let chat = |user: String| {
        let url = p.url("/v1/chat/completions");
        async move {
            let body = json!({"model": "flag-07", "user": user, "messages": [{"role": "user", "content": "hi"}]}).to_string();
            client::post_json(&url, &body, &[]).await.status
        }
    };
    for i in 0..20 {
        assert_eq!(chat(format!("u{i}")).await, StatusCode::OK);
    }
    let o = get(&p, "/admin/console/overview").await;
    let flags = o["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 50);
    assert!(flags
        .iter()
        .all(|f| f["variations"].as_array().unwrap().len() == 4));
    let f7 = flags.iter().find(|f| f["flag"] == "flag-07").unwrap();
    assert_eq!(f7["requests_5m"], 20);
    assert_eq!(f7["enabled"], true);
    assert_eq!(f7["warning"], false);
    let (status, v) = admin(
        &p,
        Method::GET,
        "/admin/console/overview?x=1",
        Value::Null,
        OPS,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = admin(
        &p,
        Method::POST,
        "/admin/console/overview",
        Value::Null,
        OPS,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = admin(&p, Method::GET, "/admin/console/nothing", Value::Null, OPS).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin(
        &p,
        Method::GET,
        "/admin/console/flags/nope",
        Value::Null,
        OPS,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_flag_view_shows_effective_configuration_overrides_and_history() {
    let p = start(2, 3).await;
    let (status, v) = admin(
        &p,
        Method::PUT,
        "/admin/flags/flag-01/fallback",
        json!({"forced": true, "variation": "v2", "reason": "test"}),
        NIGHT,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let v = get(&p, "/admin/console/flags/flag-01").await;
    assert_eq!(v["state"]["flag"], "flag-01");
    let cfg = v["config"].as_array().unwrap();
    assert_eq!(cfg.len(), 3);
    assert_eq!(cfg[2]["variation"], "v2");
    assert_eq!(
        cfg[2]["prompt"],
        json!({"name": "p", "text": "Be brief. <b>not bold</b>"})
    );
    assert_eq!(cfg[2]["token_budget"], 300);
    assert_eq!(cfg[2]["forced_fallback"], true);
    assert_eq!(cfg[1]["forced_fallback"], false);
    assert_eq!(
        v["overrides"],
        json!([{"what": "variations.v2.force_fallback", "config": false, "runtime": true}])
    );
    // The sampler takes a point of every variation at start, then every few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get(&p, "/admin/console/flags/flag-01").await;
        let series = v["series"]["variations"].as_array().unwrap().clone();
        if series.len() == 3
            && series
                .iter()
                .all(|s| !s["points"].as_array().unwrap().is_empty())
        {
            assert_eq!(series[0]["points"][0].as_array().unwrap().len(), 5);
            break;
        }
        assert!(Instant::now() < deadline, "no history point: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_explainer_gives_the_answer_of_v1_decide() {
    let p = start(3, 4).await;
    let decide = |q: String| {
        let url = p.url(&format!("/v1/decide?{q}"));
        async move { client::get(&url).await.json() }
    };
    for (i, attrs) in ["", "&attr.team=ai", "&attr.team=ml"].iter().enumerate() {
        for u in 0..15 {
            let q = format!("flag=flag-0{}&user=user-{u}{attrs}", i);
            let e = get(&p, &format!("/admin/console/explain?{q}")).await;
            assert_eq!(e["decision"], decide(q.clone()).await, "{q}");
            let steps = e["steps"].as_array().unwrap();
            assert_eq!(steps.last().unwrap()["outcome"], "decided");
            if attrs.is_empty() || attrs.ends_with("ml") {
                assert_eq!(
                    steps[0]["outcome"], "skipped",
                    "the audience rule is skipped: {e}"
                );
            }
        }
    }
    let (status, v) = admin(
        &p,
        Method::PUT,
        "/admin/flags/flag-00/enabled",
        json!({"enabled": false}),
        OPS,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let e = get(&p, "/admin/console/explain?flag=flag-00&user=x").await;
    assert_eq!(e["decision"], decide("flag=flag-00&user=x".into()).await);
    assert_eq!(e["decision"]["reason"], "flag_disabled");
    assert!(e["why"].as_str().unwrap().contains("kill switch"));
    for (q, want) in [
        ("flag=flag-00", StatusCode::BAD_REQUEST),
        ("flag=nope&user=x", StatusCode::NOT_FOUND),
        ("flag=flag-00&user=x&bogus=1", StatusCode::BAD_REQUEST),
    ] {
        let (status, v) = admin(
            &p,
            Method::GET,
            &format!("/admin/console/explain?{q}"),
            Value::Null,
            OPS,
        )
        .await;
        assert_eq!(status, want, "{q}: {v}");
        assert!(v["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn the_audit_log_filters_by_flag_actor_and_action_and_pages() {
    let p = start(3, 2).await;
    for i in 0..7 {
        let token = if i % 2 == 0 { OPS } else { NIGHT };
        let flag = format!("flag-0{}", i % 3);
        let (status, v) = admin(
            &p,
            Method::PUT,
            &format!("/admin/flags/{flag}/enabled"),
            json!({"enabled": i % 4 == 0, "reason": format!("change {i}")}),
            token,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let (status, v) = admin(
            &p,
            Method::PUT,
            &format!("/admin/flags/{flag}/fallback"),
            json!({"forced": true}),
            token,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let all = get(&p, "/admin/audit?limit=1000").await;
    let all = all["entries"].as_array().unwrap().clone();
    assert_eq!(all.len(), 14);
    let night = get(&p, "/admin/audit?actor=night-shift&action=set_enabled").await;
    let night = night["entries"].as_array().unwrap();
    assert_eq!(night.len(), 3);
    assert!(night
        .iter()
        .all(|e| e["actor"] == "night-shift" && e["action"] == "set_enabled"));
    let f1 = get(&p, "/admin/audit?flag=flag-01&actor=ops").await;
    assert!(f1["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["flag"] == "flag-01" && e["actor"] == "ops"));
    // Pages of 4, newest first, follow `next_before` to the end: every entry once, in order.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let q = before.map_or(String::new(), |b| format!("&before={b}"));
        let page = get(&p, &format!("/admin/audit?limit=4{q}")).await;
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(seen, ids);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 14);
    for bad in ["before=0", "before=x", "colour=red"] {
        let (status, v) = admin(
            &p,
            Method::GET,
            &format!("/admin/audit?{bad}"),
            Value::Null,
            OPS,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
}

#[tokio::test]
async fn the_config_view_tells_hash_and_load_time() {
    let p = start(1, 2).await;
    let c = get(&p, "/admin/console/config").await;
    let status = get(&p, "/admin/status").await;
    assert_eq!(c["hash"], status["config"]);
    assert!(c["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(c["file"], Value::Null);
    assert_eq!(c["flags"], 1);
    assert_eq!(c["last_reload_error"], Value::Null);
}

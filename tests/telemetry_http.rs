//! What `/metrics` carries per variation, through HTTP: the counters `increase()` reads
//! (requests by outcome, tokens) exist at zero from the config's load, so Prometheus sees a
//! flag's first requests; the histograms, the quantile window and the error classes appear
//! with their first observation (a config of many flags carries no histograms until used);
//! counts survive a reload, and `[telemetry]` drops the rolling quantile
//! window (`latency_quantiles = false`) and empties the `model` label (`model_label = false`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/served.rs"]
mod served;

use http::{Method, StatusCode};
use serde_json::Value;

use served::{Dir, Served};

const MOCK: &str = "[providers.mock]\nkind = \"mock\"\nlatency = \"0ms\"\n";

/// A flag with variations `a` and `b`, everyone on `a`.
fn flag(key: &str, extra_a: &str) -> String {
    format!(
        "[flags.{key}]\noff_variation = \"b\"\n[flags.{key}.variations.a]\nprovider = \"mock\"\nmodel_id = \"{key}-model-a\"\n{extra_a}\n[flags.{key}.variations.b]\nprovider = \"mock\"\nmodel_id = \"{key}-model-b\"\n[[flags.{key}.rules]]\nid = \"all\"\nallocation = [{{ variation = \"a\", end = 10000 }}]\n"
    )
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn metrics(p: &Served) -> String {
    let r = client::get(&format!("http://{}/metrics", p.admin_addr)).await;
    assert_eq!(r.status, StatusCode::OK);
    r.text()
}

/// Sample lines of `family` (exactly that name) whose labels contain every `label="value"`.
fn samples<'a>(text: &'a str, family: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .collect()
}

/// The sum of the values of those lines.
fn total(text: &str, family: &str, labels: &[&str]) -> f64 {
    samples(text, family, labels)
        .iter()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

/// Variation `a` of `flag` in the admin API.
async fn variation_a(p: &Served, flag: &str) -> Value {
    let r = p
        .admin(Method::GET, &format!("/admin/flags/{flag}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["variations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variation"] == "a")
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn counters_start_at_zero_histograms_on_first_use_and_telemetry_trims_them() {
    let dir = Dir::new("telemetry");
    let (var, tok) = served::token("telemetry");
    let head = format!(
        "[server]\nreload_check_interval = \"0s\"\n{}{MOCK}",
        served::header(&dir.0, &var)
    );
    let path = dir.0.join("proxy.toml");
    write(&path, &format!("{head}{}{}", flag("f", ""), flag("g", "")));
    let p = Served::start(&path, &tok).await;

    // Nothing served yet: every outcome and token counter of both flags at zero, and no
    // histogram, error class or quantile series.
    let text = metrics(&p).await;
    for flag in ["f", "g"] {
        for variation in ["a", "b"] {
            let labels = [
                format!(r#"flag="{flag}""#),
                format!(r#"variation="{variation}""#),
                r#"api="chat""#.to_owned(),
            ];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            assert_eq!(
                samples(&text, "switchyard_requests_total", &labels).len(),
                6,
                "six outcomes of {flag}/{variation} at zero:\n{text}"
            );
            assert_eq!(total(&text, "switchyard_requests_total", &labels), 0.0);
            assert_eq!(
                samples(&text, "switchyard_tokens_total", &labels).len(),
                2,
                "{text}"
            );
        }
    }
    for family in [
        "switchyard_request_duration_seconds_count",
        "switchyard_errors_total",
        "switchyard_latency_quantile_seconds",
    ] {
        assert!(
            samples(&text, family, &[r#"flag="f""#]).is_empty(),
            "{family} before any request:\n{text}"
        );
    }

    for i in 0..3 {
        let r = p.chat("f", &format!("u{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let text = metrics(&p).await;
    let a = [r#"flag="f""#, r#"variation="a""#];
    assert_eq!(
        total(
            &text,
            "switchyard_requests_total",
            &[a[0], a[1], r#"outcome="success""#, r#"model="f-model-a""#]
        ),
        3.0
    );
    assert_eq!(
        total(&text, "switchyard_request_duration_seconds_count", &a),
        3.0
    );
    assert_eq!(total(&text, "switchyard_overhead_seconds_count", &a), 3.0);
    assert_eq!(
        samples(&text, "switchyard_latency_quantile_seconds", &a).len(),
        3,
        "p50, p95, p99 of f/a:\n{text}"
    );
    // No error class that never happened, no histogram of an unused variation or flag, and
    // no set for an API nothing came through.
    assert!(samples(&text, "switchyard_errors_total", &[r#"flag="f""#]).is_empty());
    for unused in [r#"variation="b""#, r#"flag="g""#] {
        assert!(
            samples(
                &text,
                "switchyard_request_duration_seconds_count",
                &[unused]
            )
            .is_empty(),
            "{text}"
        );
        assert_eq!(total(&text, "switchyard_requests_total", &[unused]), 0.0);
    }
    assert!(
        samples(&text, "switchyard_requests_total", &[r#"api="responses""#]).is_empty(),
        "{text}"
    );
    // A flag without traffic reads zero in the admin API (and creates nothing by being read).
    let g = variation_a(&p, "g").await;
    assert_eq!(g["requests"], 0);
    assert!(g["latency_seconds"].is_null(), "{g}");
    assert!(samples(
        &metrics(&p).await,
        "switchyard_request_duration_seconds_count",
        &[r#"flag="g""#]
    )
    .is_empty());

    // A reload keeps the counts and the window.
    write(
        &path,
        &format!("{head}{}{}", flag("f", "temperature = 0.5"), flag("g", "")),
    );
    let r = p.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let f = variation_a(&p, "f").await;
    assert_eq!(f["requests"], 3, "{f}");
    assert!(f["latency_seconds"]["p50"].as_f64().unwrap() > 0.0, "{f}");

    // Bad [telemetry] values are refused with the key named, and so is dropping the quantiles
    // while an alert reads a local p95; the old config keeps serving.
    for bad in [
        "[telemetry]\nlatency_quantiles = \"no\"\n",
        "[telemetry]\nquantiles = false\n",
        "[telemetry]\nlatency_quantiles = false\n[[alerts]]\nname = \"slow\"\nflag = \"f\"\nmetric = \"p95_latency_seconds\"\nabove = { warning = 2.0 }\n",
    ] {
        write(&path, &format!("{head}{bad}{}", flag("f", "")));
        let r = p.admin(Method::POST, "/admin/reload", None).await;
        assert_eq!(r.status.as_u16(), 422, "{}", r.text());
        assert!(r.text().contains("telemetry"), "{}", r.text());
        assert_eq!(p.chat("f", "u9").await.status, StatusCode::OK);
    }

    // No quantile window, no model in the label.
    write(
        &path,
        &format!(
            "{head}[telemetry]\nlatency_quantiles = false\nmodel_label = false\n{}",
            flag("f", "")
        ),
    );
    let r = p.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for i in 0..2 {
        assert_eq!(p.chat("f", &format!("v{i}")).await.status, StatusCode::OK);
    }
    let text = metrics(&p).await;
    assert!(
        !text.contains("switchyard_latency_quantile_seconds{"),
        "quantiles still exposed:\n{text}"
    );
    assert_eq!(
        total(
            &text,
            "switchyard_requests_total",
            &[a[0], a[1], r#"outcome="success""#, r#"model="""#]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        total(
            &text,
            "switchyard_requests_total",
            &[a[0], a[1], r#"outcome="success""#]
        ),
        8.0,
        "3 before the reloads, 3 between, 2 after:\n{text}"
    );
    let f = variation_a(&p, "f").await;
    assert!(f["latency_seconds"].is_null(), "{f}");
}

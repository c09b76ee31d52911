//! The fleet test: three `switchyard serve` replicas (the real binary) sharing one PostgreSQL
//! database (fresh per run), scraped every second by a real Prometheus started here on a
//! free port, with traffic spread across the replicas by this test's own client.
//!
//! In order, on one fleet:
//! 1. exactly one replica leads (`/readyz`, `switchyard_leader`), and they agree which;
//! 2. a kill switch flipped through one replica is in force on all three within a second;
//! 3. a rollout gate reading Prometheus refuses to advance while one replica's provider
//!    fails (the fleet's error rate is above the threshold, though the other two replicas'
//!    own counters are clean), then advances once that provider recovers, with exactly one
//!    audit entry per stage;
//! 4. a `critical` alert computed from Prometheus (fleet-wide request count: no replica alone
//!    reaches it) kills its flag exactly once;
//! 5. every PromQL expression the project ships (dashboard panels, the gate and alert
//!    queries, the alerting rules' metrics) returns data from that Prometheus;
//! 6. the leader is killed with SIGKILL: another replica leads and acts within 10 s;
//! 7. Prometheus is stopped: gates hold and say why, alerts turn `unknown`, failed queries
//!    are counted.
//!
//! PostgreSQL comes from `SWITCHYARD_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`),
//! Prometheus from `prometheus` on the PATH (the test command installs both when missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/fleet.rs"]
mod fleet;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::{
    audit, free_port, metric_value, traffic, until, Background, Database, Prometheus, Replica,
    TempDir,
};
use http::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// The fleet's configuration
// ---------------------------------------------------------------------------------------------

/// Flags:
/// - `kill-me`: the kill-switch flag;
/// - `ramp`: `next` rolled out over `current` (50 → 75 → 100 %), gate read from Prometheus
///   over the last 3 s of the stage; `next` runs on provider `flaky`;
/// - `busy`, `after-failover`: a critical alert on the fleet's request count (above 30 over
///   a minute) kills the flag;
/// - `held`: a rollout whose gate reads Prometheus, advanced only by operators.
fn config(state_url: &str, prometheus: u16, flaky_fails: bool) -> String {
    let flaky = if flaky_fails {
        // Nothing listens on port 1: every call fails at once.
        "kind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nretry = { attempts = 1 }"
    } else {
        "kind = \"mock\"\nlatency = \"1ms\""
    };
    let alert_flag = |key: &str| {
        format!(
            r#"
[flags.{key}]
off_variation = "a"
stable_variation = "a"
[flags.{key}.variations.a]
provider = "mock"
model_id = "model-{key}"
[[flags.{key}.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]

[[alerts]]
name = "{key}-traffic"
flag = "{key}"
metric = "requests"
source = "prometheus"
above = {{ critical = 30 }}
window = "1m"
min_samples = 1
actions = {{ critical = ["kill"] }}
"#
        )
    };
    format!(
        r#"
[server]
gate_interval = "250ms"
reload_check_interval = "0s"
drain_timeout = "1s"

[admin]
tokens = [{{ name = "ops", token_env = "SWITCHYARD_ADMIN_TOKEN" }}]

[state]
url = "{state_url}"

[fleet]
prometheus_url = "http://127.0.0.1:{prometheus}"
query_timeout = "1s"

[prices]
"model-current" = {{ input_per_million = 1.0, output_per_million = 2.0 }}

[providers.mock]
kind = "mock"
latency = "1ms"

[providers.flaky]
{flaky}

[flags.kill-me]
off_variation = "a"
stable_variation = "a"
[flags.kill-me.variations.a]
provider = "mock"
model_id = "model-kill"
[[flags.kill-me.rules]]
id = "all"
allocation = [{{ variation = "a", end = 10000 }}]

[flags.ramp]
off_variation = "current"
stable_variation = "current"
[flags.ramp.variations.current]
provider = "mock"
model_id = "model-current"
fallback_behavior = "rule-based"
[flags.ramp.variations.next]
provider = "flaky"
model_id = "model-next"
fallback_behavior = "error"
[[flags.ramp.rules]]
id = "ramp"
rollout = {{ variation = "next", stages = [50, 75, 100], initial_stage = 0, auto_advance = true, gate = {{ source = "prometheus", window = "3s", min_requests = 15, hold = "4s", max_error_rate = 0.05 }} }}
[[flags.ramp.rules]]
id = "everyone-else"
allocation = [{{ variation = "current", end = 10000 }}]

[flags.held]
off_variation = "a"
stable_variation = "a"
[flags.held.variations.a]
provider = "mock"
model_id = "model-held-a"
[flags.held.variations.b]
provider = "mock"
model_id = "model-held-b"
[[flags.held.rules]]
id = "ramp"
rollout = {{ variation = "b", stages = [10, 100], initial_stage = 0, auto_advance = false, gate = {{ source = "prometheus", min_requests = 0, hold = "0s", max_error_rate = 0.5 }} }}
[[flags.held.rules]]
id = "everyone-else"
allocation = [{{ variation = "a", end = 10000 }}]
{busy}{after}"#,
        busy = alert_flag("busy"),
        after = alert_flag("after-failover"),
    )
}

async fn leader(replicas: &[&Replica]) -> Option<(usize, String)> {
    let mut leaders = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in replicas.iter().enumerate() {
        let f = r.readyz().await["fleet"].clone();
        if f["leader"] == true {
            leaders.push(i);
        }
        names.insert(f["leader_replica"].as_str().unwrap_or("").to_owned());
    }
    match (leaders.as_slice(), names.len()) {
        ([i], 1) if names.contains(&replicas[*i].name) => Some((*i, replicas[*i].name.clone())),
        _ => None,
    }
}

/// Every `expr` of the dashboard's panels, with its template variables filled in.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/switchyard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is JSON");
    // Each variable as "All" selects it.
    let all = |name: &str| -> String {
        dash["templating"]["list"]
            .as_array()
            .and_then(|l| l.iter().find(|v| v["name"] == name))
            .and_then(|v| v["allValue"].as_str())
            .unwrap_or(".+")
            .to_owned()
    };
    let (flag_all, variation_all) = (all("flag"), all("variation"));
    let mut out = Vec::new();
    let mut panels: Vec<Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(expr) = t["expr"].as_str() {
                let filled = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "5m")
                    .replace("$flag", &flag_all)
                    .replace("$variation", &variation_all);
                out.push((p["title"].as_str().unwrap_or("?").to_owned(), filled));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_acts_once_on_fleet_wide_figures_from_prometheus() {
    let db = Database::create();
    let dir = TempDir::new();
    let prom_port = free_port();
    let healthy = config(&db.url, prom_port, false);
    let a = Replica::start(&dir.0, "replica-a", &healthy);
    let b = Replica::start(&dir.0, "replica-b", &healthy);
    let c = Replica::start(&dir.0, "replica-c", &config(&db.url, prom_port, true));
    for r in [&a, &b, &c] {
        r.ready().await;
    }
    let mut prom = Prometheus::start(
        &dir.0,
        prom_port,
        &[a.admin_addr(), b.admin_addr(), c.admin_addr()],
    );
    let seq = Arc::new(AtomicU64::new(0));
    let urls: Vec<String> = [&a, &b, &c].iter().map(|r| r.url.clone()).collect();

    // 1. One leader, and every replica agrees which.
    let all = [&a, &b, &c];
    let (li, lname) = until("one leader all agree on", Duration::from_secs(10), || {
        leader(&all)
    })
    .await;
    eprintln!("leader: {lname}");
    for (i, r) in [&a, &b, &c].iter().enumerate() {
        let m = r.metrics().await;
        assert_eq!(
            metric_value(&m, "switchyard_leader", &[]),
            Some(if i == li { 1.0 } else { 0.0 }),
            "{}",
            r.name
        );
    }
    // The exposition passes Prometheus' own linter.
    let text = a.metrics().await;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package 'prometheus')");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    until("Prometheus listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(("127.0.0.1", prom_port))
            .ok()
            .map(|_| ())
    })
    .await;
    until(
        "Prometheus scraping all three",
        Duration::from_secs(20),
        || async {
            let up = prom.query("sum(up{job=\"switchyard\"})").await;
            (up.first().and_then(|s| s["value"][1].as_str()) == Some("3")).then_some(())
        },
    )
    .await;
    let leaders = prom.query("sum(switchyard_leader)").await;
    assert_eq!(leaders[0]["value"][1], "1", "{leaders:?}");

    // 2. Kill switch through B: in force on all three within a second.
    let r = b
        .admin(
            Method::PUT,
            "/admin/flags/kill-me/enabled",
            Some(json!({"enabled": false, "reason": "fleet test"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let flipped = Instant::now();
    for r in [&a, &b, &c] {
        // Within a second of the change, counted from the flip (not per replica).
        until(
            "the kill switch everywhere",
            Duration::from_secs(1).saturating_sub(flipped.elapsed()),
            || async { (r.get("/admin/flags/kill-me").await["enabled"] == false).then_some(()) },
        )
        .await;
    }
    eprintln!(
        "kill switch in force on all three after {:?}",
        flipped.elapsed()
    );
    let resp = client::post_json(
        &format!("{}/v1/chat/completions", c.url),
        &json!({"model": "kill-me", "user": "u", "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        &[],
    )
    .await;
    assert_eq!(
        resp.header("x-switchyard-fallback").as_deref(),
        Some("kill_switch")
    );

    // 3. The gate reads the fleet: C's provider fails, so it refuses to advance. The stage
    // starts now (its gate holds it 4 s, so every replica's failures are scraped by then).
    let r = a
        .admin(
            Method::PUT,
            "/admin/flags/ramp/rollout",
            Some(json!({"stage": 0, "reason": "start the ramp"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let load = Background::start(urls.clone(), "ramp", seq.clone());
    let refused = until(
        "the gate refusing on the fleet's error rate",
        Duration::from_secs(20),
        || async {
            let ro = a.get("/admin/flags/ramp/rollout").await;
            let ro = ro["rollouts"].get(0).cloned().unwrap_or(ro);
            let says = ro["reasons"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|r| r.as_str().is_some_and(|s| s.contains("error rate")))
            });
            let held = ro["figures"]["stage_age_seconds"].as_f64().unwrap_or(0.0) >= 5.0;
            (says && held && ro["figures"]["requests"].as_u64().unwrap_or(0) >= 15).then_some(ro)
        },
    )
    .await;
    eprintln!("gate refuses: {}", refused["reasons"]);
    assert_eq!(refused["stage"], 0, "{refused}");
    assert_eq!(refused["reasons"].as_array().unwrap().len(), 1, "{refused}");
    assert_eq!(refused["gate"]["source"], "prometheus");
    // A's and B's own counters are clean: only the fleet's figures show C's failures.
    let local_errors = metric_value(
        &a.metrics().await,
        "switchyard_requests_total",
        &[
            ("flag", "ramp"),
            ("variation", "next"),
            ("outcome", "upstream_error"),
        ],
    );
    assert_eq!(local_errors, Some(0.0));
    // C's provider recovers (its operator fixes the provider and reloads).
    std::fs::write(c.dir.join("proxy.toml"), &healthy).unwrap();
    let r = c
        .admin(Method::POST, "/admin/reload", Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    until(
        "the rollout at its last stage",
        Duration::from_secs(30),
        || async {
            let ro = b.get("/admin/flags/ramp/rollout").await;
            let ro = ro["rollouts"].get(0).cloned().unwrap_or(ro);
            (ro["stage"] == 2).then_some(())
        },
    )
    .await;
    load.finish().await;
    let stages: Vec<Value> = audit(&c, "ramp")
        .await
        .into_iter()
        .filter(|e| e["action"] == "set_rollout_stage" && e["actor"] == "gate")
        .collect();
    assert_eq!(stages.len(), 2, "one audit entry per stage: {stages:#?}");

    // 4. A critical alert on the fleet's request count kills `busy` exactly once.
    traffic(&urls, "busy", 45, &seq).await;
    until(
        "busy killed by its alert",
        Duration::from_secs(20),
        || async { (a.get("/admin/flags/busy").await["enabled"] == false).then_some(()) },
    )
    .await;
    // No replica alone saw more than 15 of them.
    let local = metric_value(
        &b.metrics().await,
        "switchyard_requests_total",
        &[("flag", "busy"), ("variation", "a"), ("outcome", "success")],
    )
    .expect("B counts busy's requests");
    assert!(local <= 15.0, "{local}");
    // Every replica sees the critical level; the leader alone acted. Watch for a few passes.
    for r in [&a, &b, &c] {
        until("critical everywhere", Duration::from_secs(10), || async {
            let al = r.get("/admin/alerts").await;
            let v = al["alerts"]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["alert"] == "busy-traffic").cloned())?;
            (v["last_level"] == "critical").then_some(())
        })
        .await;
    }
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let entries = audit(&a, "busy").await;
    let kills: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "set_enabled")
        .collect();
    let notes: Vec<&Value> = entries.iter().filter(|e| e["action"] == "alert").collect();
    assert_eq!(kills.len(), 1, "{entries:#?}");
    assert_eq!(kills[0]["actor"], "alert:busy-traffic");
    assert_eq!(notes.len(), 1, "{entries:#?}");

    // 5. Every PromQL expression the project ships returns data for the flags in use
    // (business metrics once feedback has come in; time to first token once a stream has
    // been answered: a histogram's series start with its first observation).
    for url in &urls {
        let body = json!({"model": "ramp", "user": "streamer", "stream": true, "messages": [{"role": "user", "content": "hello"}]});
        let s = client::post_stream(
            &format!("{url}/v1/chat/completions"),
            &body.to_string(),
            &[],
        )
        .await;
        assert_eq!(s.status, StatusCode::OK);
        let all = s.rest(Duration::from_secs(10)).await;
        assert!(String::from_utf8_lossy(&all).contains("[DONE]"), "{all:?}");
    }
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"event_id": format!("ev-{i}"), "flag": "ramp", "user": format!("user-{i}"), "metric": "conversion", "value": 1}))
        .collect();
    let r = client::post_json(
        &format!("{}/v1/feedback", urls[0]),
        &json!({ "events": events }).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    until(
        "business metrics in Prometheus",
        Duration::from_secs(20),
        || async {
            let got = prom
                .query(&switchyard::fleet::queries::business_metric(
                    "ramp",
                    "conversion",
                ))
                .await;
            (!got.is_empty()).then_some(())
        },
    )
    .await;
    for (title, expr) in dashboard_exprs() {
        let got = prom.query(&expr).await;
        assert!(
            !got.is_empty(),
            "dashboard panel {title:?}: {expr} returned nothing"
        );
    }
    for (what, expr) in
        switchyard::fleet::queries::all_for("ramp", "conversion", Duration::from_secs(60))
    {
        let got = prom.query(&expr).await;
        assert!(!got.is_empty(), "{what}: {expr} returned nothing");
    }
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/switchyard.rules.yml"),
    )
    .unwrap();
    // Plain names are families the replicas must export; `level:name:ops` names are the
    // recording rules' series, which Prometheus must have computed from them.
    let names: BTreeSet<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split('#').next())
        .collect::<Vec<_>>()
        .join("\n")
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.contains("switchyard_"))
        .map(|w| {
            if w.contains(':') {
                w.to_owned()
            } else {
                w.trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum")
                    .to_owned()
            }
        })
        .collect();
    assert!(names.len() > 5, "{names:?}");
    for name in names {
        let q = if name.contains(':') {
            name.clone()
        } else {
            format!("count({{__name__=~\"{name}(_bucket|_count|_sum)?\"}})")
        };
        let got = until(
            &format!("{name} in Prometheus"),
            Duration::from_secs(10),
            || async {
                let got = prom.query(&q).await;
                (!got.is_empty()).then_some(got)
            },
        )
        .await;
        assert!(
            !got.is_empty(),
            "the alerting rules name {name}, which has no data"
        );
    }
    let rule_health = client::get(&format!("{}/api/v1/rules", prom.url))
        .await
        .json();
    for g in rule_health["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            assert_ne!(
                r["health"], "err",
                "rule {} failed: {}",
                r["name"], r["lastError"]
            );
        }
    }

    // 6. SIGKILL the leader: another leads and acts within 10 s.
    let mut replicas = vec![a, b, c];
    let mut dead = replicas.remove(li);
    dead.child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let _ = dead.child.wait();
    let survivors: Vec<&Replica> = replicas.iter().collect();
    let (_, new_leader) = until("a new leader", Duration::from_secs(10), || {
        leader(&survivors)
    })
    .await;
    assert_ne!(new_leader, lname);
    let urls: Vec<String> = survivors.iter().map(|r| r.url.clone()).collect();
    traffic(&urls, "after-failover", 40, &seq).await;
    until(
        "the new leader acting",
        Duration::from_secs(10).saturating_sub(killed.elapsed()),
        || async {
            (survivors[0].get("/admin/flags/after-failover").await["enabled"] == false)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "{new_leader} took over and acted {:?} after the SIGKILL",
        killed.elapsed()
    );
    let acted = audit(survivors[0], "after-failover").await;
    let kills: Vec<&Value> = acted
        .iter()
        .filter(|e| e["action"] == "set_enabled")
        .collect();
    assert_eq!(kills.len(), 1, "{acted:#?}");

    // 7. Prometheus stops: gates hold and say why; alerts are unknown; failures are counted.
    prom.stop();
    let why = until(
        "the gate saying Prometheus is gone",
        Duration::from_secs(10),
        || async {
            // Both survivors: the advance below goes through the first, which must have
            // read the failure too (figures it read just before the stop are still fresh).
            let mut last = None;
            for s in &survivors {
                let ro = s.get("/admin/flags/held/rollout").await;
                let ro = ro["rollouts"].get(0).cloned().unwrap_or(ro);
                if !ro["reasons"].to_string().contains("unreachable") {
                    return None;
                }
                last = Some(ro);
            }
            last
        },
    )
    .await;
    assert_eq!(why["gate_met"], false, "{why}");
    assert_eq!(why["stage"], 0);
    let r = survivors[0]
        .admin(
            Method::POST,
            "/admin/flags/held/rollout/advance",
            Some(json!({"force": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("Prometheus"), "{}", r.text());
    until("alerts unknown", Duration::from_secs(10), || async {
        let al = survivors[1].get("/admin/alerts").await;
        let v = al["alerts"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["alert"] == "busy-traffic").cloned())?;
        (v["level"] == "unknown").then_some(())
    })
    .await;
    let m = survivors[1].metrics().await;
    let failed = metric_value(
        &m,
        "switchyard_prometheus_queries_total",
        &[("result", "failed")],
    )
    .unwrap_or(0.0);
    assert!(failed > 0.0, "failed queries not counted");
    let ro = survivors[0].get("/admin/flags/held/rollout").await;
    let ro = ro["rollouts"].get(0).cloned().unwrap_or(ro);
    assert_eq!(ro["stage"], 0, "{ro}");
    drop(dead);
}

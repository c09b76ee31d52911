//! `switchyard ctl …`: the admin API from a terminal. The admin URL and token come from
//! `SWITCHYARD_ADMIN_URL` (default `http://127.0.0.1:9090`) and `SWITCHYARD_ADMIN_TOKEN`.
//!
//! Exit codes: 0 done, 1 the API refused (the message and any reasons are printed), 2 usage,
//! 3 the admin listener could not be reached.

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// One `ctl` action (fields: the flag, the rollout rule when a flag has several, and the
/// value being set).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Action {
    /// Every flag, one line each.
    Flags,
    /// One flag in detail.
    Flag(String),
    /// The kill switch.
    SetEnabled(String, bool),
    /// Forced rule-based answers on/off, for the flag or one variation.
    Fallback {
        flag: String,
        forced: bool,
        variation: Option<String>,
    },
    /// Drop a flag's runtime overrides (all, or one field: `enabled`, `force_fallback`,
    /// `variation:V`, `stage:RULE`, `held:RULE`): back to `proxy.toml`.
    Clear { flag: String, field: Option<String> },
    /// Rollout status.
    Rollout(String),
    /// Advance a stage (optionally past the gate).
    Advance {
        flag: String,
        force: bool,
        rule: Option<String>,
    },
    /// Back one stage.
    Rollback { flag: String, rule: Option<String> },
    /// Set a stage.
    Stage {
        flag: String,
        stage: u32,
        rule: Option<String>,
    },
    /// Freeze / unfreeze.
    Hold {
        flag: String,
        held: bool,
        rule: Option<String>,
    },
    /// The audit log.
    Audit { flag: Option<String>, limit: u32 },
    /// Reload proxy.toml.
    Reload,
    /// Experiment results.
    Results {
        flag: String,
        metric: Option<String>,
    },
    /// Client keys.
    Keys(crate::keys::cli::KeysAction),
    /// The bandit of a flag.
    Bandit(crate::bandit::cli::BanditAction),
    /// Exposures, feedback, evals and per-request records as JSON Lines.
    Export(crate::export::cli::ExportArgs),
}

/// Where and as whom to talk to the admin API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`.
    pub url: String,
    /// The bearer token.
    pub token: Option<String>,
}

impl Target {
    /// From `SWITCHYARD_ADMIN_URL` and `SWITCHYARD_ADMIN_TOKEN`.
    pub fn from_env() -> Target {
        Target {
            url: std::env::var("SWITCHYARD_ADMIN_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:9090".into()),
            token: std::env::var("SWITCHYARD_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }
    }
}

fn with_reason(mut v: Value, reason: &Option<String>) -> Value {
    if let (Some(r), Some(obj)) = (reason, v.as_object_mut()) {
        obj.insert("reason".into(), json!(r));
    }
    v
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs one action, printing the result; returns the exit code.
pub async fn run(target: &Target, action: &Action, reason: Option<String>, json_out: bool) -> i32 {
    if let Action::Export(args) = action {
        return crate::export::cli::run(target, args).await;
    }
    let (method, path, body) = match action {
        Action::Flags => (Method::GET, "/admin/flags".to_owned(), None),
        Action::Flag(f) => (Method::GET, format!("/admin/flags/{}", enc(f)), None),
        Action::SetEnabled(f, on) => (
            Method::PUT,
            format!("/admin/flags/{}/enabled", enc(f)),
            Some(with_reason(json!({"enabled": on}), &reason)),
        ),
        Action::Fallback {
            flag,
            forced,
            variation,
        } => (
            Method::PUT,
            format!("/admin/flags/{}/fallback", enc(flag)),
            Some(with_reason(
                json!({"forced": forced, "variation": variation}),
                &reason,
            )),
        ),
        Action::Clear { flag, field } => {
            let mut p = format!("/admin/flags/{}/overrides", enc(flag));
            if let Some(field) = field {
                p.push_str(&format!("?field={}", enc(field)));
            }
            (Method::DELETE, p, Some(with_reason(json!({}), &reason)))
        }
        Action::Rollout(f) => (
            Method::GET,
            format!("/admin/flags/{}/rollout", enc(f)),
            None,
        ),
        Action::Advance { flag, force, rule } => (
            Method::POST,
            format!("/admin/flags/{}/rollout/advance", enc(flag)),
            Some(with_reason(json!({"force": force, "rule": rule}), &reason)),
        ),
        Action::Rollback { flag, rule } => (
            Method::POST,
            format!("/admin/flags/{}/rollout/rollback", enc(flag)),
            Some(with_reason(json!({"rule": rule}), &reason)),
        ),
        Action::Stage { flag, stage, rule } => (
            Method::PUT,
            format!("/admin/flags/{}/rollout", enc(flag)),
            Some(with_reason(json!({"stage": stage, "rule": rule}), &reason)),
        ),
        Action::Hold { flag, held, rule } => (
            Method::PUT,
            format!("/admin/flags/{}/rollout/hold", enc(flag)),
            Some(with_reason(json!({"held": held, "rule": rule}), &reason)),
        ),
        Action::Audit { flag, limit } => {
            let mut p = format!("/admin/audit?limit={limit}");
            if let Some(f) = flag {
                p.push_str(&format!("&flag={}", enc(f)));
            }
            (Method::GET, p, None)
        }
        Action::Reload => (Method::POST, "/admin/reload".to_owned(), None),
        Action::Keys(k) => k.request(&reason),
        Action::Bandit(b) => b.request(&reason),
        Action::Export(_) => return 2,
        Action::Results { flag, metric } => {
            let mut p = format!("/admin/flags/{}/results", enc(flag));
            if let Some(m) = metric {
                p.push_str(&format!("?metric={}", enc(m)));
            }
            (Method::GET, p, None)
        }
    };
    let url = format!("{}{}", target.url.trim_end_matches('/'), path);
    let mut req = Request::builder()
        .method(method)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = &target.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
        eprintln!("invalid admin URL {url}");
        return 2;
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp =
        match tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                eprintln!("cannot reach the admin API at {}: {e}", target.url);
                return 3;
            }
            Err(_) => {
                eprintln!("the admin API at {} did not answer within 30 s", target.url);
                return 3;
            }
        };
    let status = resp.status();
    let bytes = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            eprintln!("reading the answer failed: {e}");
            return 3;
        }
    };
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("request failed");
        eprintln!("error ({}): {msg}", status.as_u16());
        if let Some(reasons) = v["reasons"].as_array() {
            for r in reasons {
                eprintln!("  - {}", r.as_str().unwrap_or_default());
            }
        }
        if let Some(errors) = v["errors"].as_array() {
            for e in errors {
                eprintln!("  {}", e.as_str().unwrap_or_default());
            }
        }
        if status == http::StatusCode::UNAUTHORIZED {
            if target.token.is_none() {
                eprintln!("hint: set SWITCHYARD_ADMIN_TOKEN to an admin token of the proxy");
            } else {
                eprintln!("hint: SWITCHYARD_ADMIN_TOKEN is not one of the proxy's admin tokens");
            }
        }
        return 1;
    }
    let (v, matched) = match action {
        Action::Bandit(b) => b.finish(v),
        _ => (v, true),
    };
    if json_out {
        crate::out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        {
            use std::io::Write as _;
            let _ = write!(std::io::stdout(), "{}", render(action, &v));
        }
    }
    if matched {
        0
    } else {
        1
    }
}

fn pct(x: &Value) -> String {
    x.as_f64()
        .map_or("-".into(), |f| format!("{:.2}%", f * 100.0))
}

fn secs(x: &Value) -> String {
    x.as_f64()
        .map_or("-".into(), |f| format!("{:.0}ms", f * 1000.0))
}

fn flag_lines(f: &Value) -> String {
    let mut out = format!(
        "{}  {}  (enabled: {} from {}{})\n",
        f["flag"].as_str().unwrap_or("?"),
        if f["enabled"] == json!(true) {
            "ON"
        } else {
            "OFF (kill switch)"
        },
        f["enabled"],
        f["enabled_source"].as_str().unwrap_or("?"),
        if f["force_fallback"] == json!(true) {
            ", rule-based answers FORCED"
        } else {
            ""
        }
    );
    out.push_str(&format!(
        "  {:<14} {:<22} {:>9} {:>8} {:>9} {:>8} {:>8}\n",
        "variation", "model", "requests", "errors", "fallbacks", "p50", "p95"
    ));
    for v in f["variations"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<14} {:<22} {:>9} {:>8} {:>9} {:>8} {:>8}{}\n",
            v["variation"].as_str().unwrap_or("?"),
            v["model_id"].as_str().unwrap_or("?"),
            v["requests"].to_string(),
            pct(&v["error_rate"]),
            pct(&v["fallback_rate"]),
            secs(&v["latency_seconds"]["p50"]),
            secs(&v["latency_seconds"]["p95"]),
            if v["forced_fallback"] == json!(true) {
                "  [forced fallback]"
            } else {
                ""
            }
        ));
    }
    for r in f["rollouts"].as_array().into_iter().flatten() {
        out.push_str(&rollout_lines(r));
    }
    out
}

fn rollout_lines(r: &Value) -> String {
    let mut out = format!(
        "  rollout {} of {}: stage {}/{} = {}%{}{}; gate {}\n",
        r["rule"].as_str().unwrap_or("?"),
        r["variation"].as_str().unwrap_or("?"),
        r["stage"],
        r["last_stage"],
        r["percent"],
        if r["held"] == json!(true) {
            " [held]"
        } else {
            ""
        },
        if r["auto_advance"] == json!(true) {
            " [auto]"
        } else {
            ""
        },
        if r["gate_met"] == json!(true) {
            "met"
        } else {
            "not met"
        }
    );
    for reason in r["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(r["rollback_reasons"].as_array().into_iter().flatten())
    {
        out.push_str(&format!("    - {}\n", reason.as_str().unwrap_or_default()));
    }
    out
}

/// A readable rendering of an answer.
pub fn render(action: &Action, v: &Value) -> String {
    match action {
        Action::Flags => v["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(flag_lines)
            .collect::<Vec<_>>()
            .join("\n"),
        Action::Flag(_) => flag_lines(v),
        Action::Clear { flag, .. } if v["flag"].is_null() => format!(
            "{flag}: overrides cleared (the flag is not in the running config)\naudit #{}: {} by {}\n",
            v["audit"]["id"],
            v["audit"]["action"].as_str().unwrap_or("?"),
            v["audit"]["actor"].as_str().unwrap_or("?")
        ),
        Action::SetEnabled(..) | Action::Fallback { .. } | Action::Clear { .. } => {
            format!(
                "{}audit #{}: {} by {}\n",
                flag_lines(&v["flag"]),
                v["audit"]["id"],
                v["audit"]["action"].as_str().unwrap_or("?"),
                v["audit"]["actor"].as_str().unwrap_or("?")
            )
        }
        Action::Rollout(_) => v["rollouts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(rollout_lines)
            .collect(),
        Action::Advance { .. }
        | Action::Rollback { .. }
        | Action::Stage { .. }
        | Action::Hold { .. } => {
            format!(
                "{}audit #{}: {} by {}\n",
                rollout_lines(&v["rollout"]),
                v["audit"]["id"],
                v["audit"]["action"].as_str().unwrap_or("?"),
                v["audit"]["actor"].as_str().unwrap_or("?")
            )
        }
        Action::Audit { .. } => {
            let mut out = String::new();
            for e in v["entries"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "#{:<5} {}  {:<12} {:<22} {:<20} {}\n         before {}\n         after  {}\n",
                    e["id"].to_string(),
                    e["at"].as_str().unwrap_or("?"),
                    e["actor"].as_str().unwrap_or("?"),
                    e["action"].as_str().unwrap_or("?"),
                    e["flag"].as_str().unwrap_or("-"),
                    e["reason"].as_str().unwrap_or(""),
                    e["before"],
                    e["after"]
                ));
            }
            if out.is_empty() {
                out.push_str("(no entries)\n");
            }
            out
        }
        Action::Reload => format!(
            "reloaded: {} (config {})\n",
            if v["changed"] == json!(true) {
                "changed"
            } else {
                "unchanged"
            },
            v["hash"].as_str().unwrap_or("?")
        ),
        Action::Results { .. } => results_table(v),
        Action::Export(_) => String::new(),
        Action::Keys(k) => k.render(v),
        Action::Bandit(b) => b.render(v),
    }
}

fn num(x: &Value, digits: usize) -> String {
    x.as_f64().map_or("-".into(), |f| format!("{f:.digits$}"))
}

/// Experiment results as a table: one line per variation and metric against the control.
fn results_table(v: &Value) -> String {
    let mut out = format!(
        "{} (control: {}, rule: {}, alpha {})\n",
        v["flag"].as_str().unwrap_or("?"),
        v["control"].as_str().unwrap_or("?"),
        v["rule"].as_str().unwrap_or("all users"),
        v["alpha"]
    );
    out.push_str(&format!(
        "  {:<14} {:<16} {:>7} {:>10} {:>10} {:>9} {:>22} {:>9}  {}\n",
        "variation",
        "metric",
        "users",
        "value",
        "control",
        "lift",
        "CI (always valid)",
        "p",
        "verdict"
    ));
    for r in v["variations"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<14} {:<16} {:>7} {:>10} {:>10} {:>9} {:>22} {:>9}  {}\n",
            r["variation"].as_str().unwrap_or("?"),
            r["metric"].as_str().unwrap_or("?"),
            r["users"].to_string(),
            num(&r["value"], 4),
            num(&r["control_value"], 4),
            r["relative_lift"]
                .as_f64()
                .map_or("-".into(), |f| format!("{:+.1}%", f * 100.0)),
            format!("[{}, {}]", num(&r["ci_low"], 4), num(&r["ci_high"], 4)),
            num(&r["p_value"], 4),
            r["verdict"].as_str().unwrap_or("?"),
        ));
    }
    out.push_str(&format!(
        "  sample ratio mismatch: {} (p = {})\n",
        if v["srm"]["detected"] == json!(true) {
            "DETECTED - results not trustworthy"
        } else {
            "none"
        },
        num(&v["srm"]["p_value"], 4)
    ));
    for w in v["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("  warning: {}\n", w.as_str().unwrap_or_default()));
    }
    out
}

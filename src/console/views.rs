//! The JSON views the console needs beyond the admin API, under `/admin/console/` (bearer
//! token like the rest of `/admin/`, read-only):
//!
//! | path | what |
//! |---|---|
//! | `GET /admin/console/overview` | every flag in one answer: state, stage, alert tier, traffic of the last 5 minutes, SRM and critical marks |
//! | `GET /admin/console/flags/{flag}` | one flag's page: effective state and figures, each variation's effective configuration and where it differs from the file, rollouts and gates, alerts, the last hour's chart series |
//! | `GET /admin/console/explain?flag=F&user=U[&attr.k=v]` | the decision of `/v1/decide` and why |
//! | `GET /admin/console/config` | the running config's hash and load time, the last reload error |

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::history::{self, series_json};
use crate::admin::api::{flag, flag_json, rollout_json, AdminError};
use crate::app::{App, Live};
use crate::body::json_response;
use crate::body::Body;
use crate::clock::format_rfc3339_ms;
use crate::clock::now_ms;
use crate::flags::{Flag, ToolPolicy};

/// The window of the overview's traffic figures.
const TRAFFIC_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Routes an authenticated request below `/admin/console/` (`path` is what follows).
pub fn handle(app: &Arc<App>, method: &Method, path: &str, query: Option<&str>) -> Response<Body> {
    let segs: Vec<String> = match path
        .trim_matches('/')
        .split('/')
        .map(crate::query::decode_segment)
        .collect()
    {
        Ok(s) => s,
        Err(e) => return AdminError::from(e).into_response(),
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let known = matches!(
        segs.as_slice(),
        ["overview"] | ["flags", _] | ["explain"] | ["config"]
    );
    if !known {
        return AdminError::not_found(format!(
            "unknown admin path /admin/console/{}",
            path.trim_matches('/')
        ))
        .into_response();
    }
    if method != Method::GET {
        let mut resp = AdminError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "method {method} is not allowed on /admin/console/{} (allowed: GET)",
                path.trim_matches('/')
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return resp;
    }
    let live = app.live.load_full();
    let result = match segs.as_slice() {
        ["overview"] => {
            if query.is_some_and(|q| !q.is_empty()) {
                Err(AdminError::bad("this view takes no query parameters"))
            } else {
                Ok(overview(app, &live))
            }
        }
        ["flags", key] => flag(&live, key).map(|(i, f)| flag_view(app, &live, i, f)),
        ["explain"] => super::explain::explain(&live, query).map_err(AdminError::from),
        _ => Ok(config_view(app, &live)),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

fn ms_json(ms: u64) -> Value {
    Value::String(format_rfc3339_ms(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// Level names in rising order of severity.
const LEVELS: [&str; 5] = ["insufficient_data", "ok", "info", "warning", "critical"];

fn severity(level: &str) -> usize {
    LEVELS.iter().position(|l| *l == level).unwrap_or(0)
}

/// Each alert of the live config by flag key.
fn alerts_by_flag(app: &App) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    if let Value::Object(mut all) = crate::alerts::alerts_json(app) {
        if let Some(Value::Array(alerts)) = all.remove("alerts") {
            for a in alerts {
                let key = a["flag"].as_str().unwrap_or_default().to_owned();
                out.entry(key).or_default().push(a);
            }
        }
    }
    out
}

/// `GET /admin/console/overview`.
pub fn overview(app: &App, live: &Live) -> Value {
    let now = now_ms();
    let alerts = alerts_by_flag(app);
    let flags: Vec<Value> = live
        .config
        .flags
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let rt = &live.runtime[i];
            let (mut requests, mut errors) = (0u64, 0u64);
            for (vi, v) in f.variations.iter().enumerate() {
                let Some(h) = live.routes.flags.get(i).and_then(|x| x.get(vi)) else {
                    continue;
                };
                let t = h.totals();
                let base = app
                    .history
                    .first_since(&f.key, &v.key, now.saturating_sub(TRAFFIC_WINDOW_MS));
                requests += t.requests.saturating_sub(base.map_or(0, |p| p.requests));
                errors += t.errors.saturating_sub(base.map_or(0, |p| p.errors));
            }
            let flag_alerts = alerts.get(&f.key).map(Vec::as_slice).unwrap_or_default();
            let level = flag_alerts
                .iter()
                .filter_map(|a| a["level"].as_str())
                .max_by_key(|l| severity(l));
            let critical = level == Some("critical");
            let srm = app.history.srm(&f.key);
            let rollout = f
                .rules
                .iter()
                .position(|r| r.rollout.is_some())
                .map(|r| {
                    let ro = rollout_json(app, live, i, f, r);
                    json!({"rule": ro["rule"], "variation": ro["variation"], "stage": ro["stage"], "last_stage": ro["last_stage"],
                           "percent": ro["percent"], "held": ro["held"], "gate_met": ro["gate_met"]})
                });
            json!({
                "flag": f.key,
                "description": f.description,
                "enabled": rt.enabled,
                "enabled_source": if rt.enabled_overridden { "runtime" } else { "config" },
                "force_fallback": rt.force_fallback,
                "forced_variations": f.variations.iter().enumerate().filter(|(vi, _)| rt.forced(*vi)).map(|(_, v)| v.key.as_str()).collect::<Vec<_>>(),
                "variations": f.variations.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(),
                "requests_5m": requests,
                "error_rate_5m": if requests == 0 { None } else { Some(errors as f64 / requests as f64) },
                "rollout": rollout,
                "alert_level": level,
                "alerts": flag_alerts.len(),
                "srm_detected": srm,
                "warning": critical || srm == Some(true),
            })
        })
        .collect();
    json!({"config": live.config.hash, "at": ms_json(now), "window_seconds": TRAFFIC_WINDOW_MS / 1000, "flags": flags})
}

/// `GET /admin/console/flags/{flag}`.
pub fn flag_view(app: &App, live: &Live, i: usize, f: &Flag) -> Value {
    let rt = &live.runtime[i];
    let config: Vec<Value> = f
        .variations
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let ttft = live
                .routes
                .flags
                .get(i)
                .and_then(|x| x.get(vi))
                .and_then(|h| h.ttft_mean_seconds());
            let tools = match &v.tool_policy {
                ToolPolicy::Allow { tools, .. } => Some(tools.clone()),
                _ => None,
            };
            json!({
                "variation": v.key,
                "provider": v.provider.name,
                "model_id": v.model_id,
                "prompt": v.system_prompt.as_ref().map(|(name, text)| json!({"name": name, "text": &**text})),
                "temperature": v.temperature,
                "token_budget": v.token_budget,
                "tool_policy": v.tool_policy.name(),
                "tools": tools,
                "fallback_behavior": v.fallback_behavior.label(f),
                "retrieval_profile": v.retrieval_profile,
                "variables": v.variables,
                "forced_fallback": rt.forced(vi),
                "forced_fallback_config": v.force_fallback || f.force_fallback,
                "ttft_mean_seconds": ttft,
            })
        })
        .collect();
    // Where the running state differs from the file.
    let mut overrides = Vec::new();
    if rt.enabled != f.enabled {
        overrides.push(json!({"what": "enabled", "config": f.enabled, "runtime": rt.enabled}));
    }
    if rt.force_fallback != f.force_fallback {
        overrides.push(json!({"what": "force_fallback", "config": f.force_fallback, "runtime": rt.force_fallback}));
    }
    for (vi, v) in f.variations.iter().enumerate() {
        let runtime = rt.forced_variations.get(vi).copied().unwrap_or(false);
        if runtime != v.force_fallback {
            overrides.push(json!({"what": format!("variations.{}.force_fallback", v.key), "config": v.force_fallback, "runtime": runtime}));
        }
    }
    for (r, rule) in f.rules.iter().enumerate() {
        if let Some(ro) = &rule.rollout {
            if rt.stages.get(r).copied() != Some(ro.initial_stage) {
                overrides.push(json!({"what": format!("rules.{}.stage", rule.id), "config": ro.initial_stage, "runtime": rt.stages.get(r)}));
            }
            if rt.held.get(r).copied().unwrap_or(false) {
                overrides.push(json!({"what": format!("rules.{}.held", rule.id), "config": false, "runtime": true}));
            }
        }
    }
    let series: Vec<Value> = f
        .variations
        .iter()
        .map(|v| json!({"variation": v.key, "points": series_json(&app.history.points(&f.key, &v.key))}))
        .collect();
    let alerts = alerts_by_flag(app).remove(&f.key).unwrap_or_default();
    json!({
        "state": flag_json(app, live, i, f),
        "config": config,
        "overrides": overrides,
        "alerts": alerts,
        "series": {
            "interval_seconds": history::SAMPLE_EVERY.as_secs(),
            "columns": ["at_ms", "p50_seconds", "p95_seconds", "error_rate", "requests"],
            "variations": series,
        },
    })
}

/// `GET /admin/console/config`.
pub fn config_view(app: &App, live: &Live) -> Value {
    let last_reload_error = app.last_reload_error.lock().ok().and_then(|e| e.clone());
    json!({
        "hash": live.config.hash,
        "loaded_at": ms_json(app.config_loaded_ms()),
        "file": app.config_path.as_ref().map(|p| p.display().to_string()),
        "flags": live.config.flags.len(),
        "alerts": live.config.alerts.len(),
        "state_store": app.store.kind(),
        "state_version": live.state.version,
        "last_reload_error": last_reload_error,
        "version": env!("CARGO_PKG_VERSION"),
    })
}

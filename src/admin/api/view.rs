//! A flag as the admin API shows it: effective state, where each value comes from, each
//! variation's figures and the flag's rollouts.

use serde_json::{json, Value};

use super::rollout::{rollout_json, rollout_rules};
use crate::app::{App, Live};
use crate::flags::Flag;
use crate::runtime::FlagRuntime;

/// Where each effective value of flag `i` comes from: the file, or an override and who set it.
fn sources_json(live: &Live, i: usize, f: &Flag) -> Value {
    let rt: &FlagRuntime = &live.runtime[i];
    let empty = crate::state::FlagOverrides::default();
    let o = live.state.flags.get(&f.key).unwrap_or(&empty);
    let source = |field: &str, overridden: bool, value: Value| -> Value {
        if overridden {
            json!({"value": value, "from": "override", "by": o.set_by.get(field)})
        } else {
            json!({"value": value, "from": "file"})
        }
    };
    let variations: serde_json::Map<String, Value> = f
        .variations
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let overridden =
                o.forced_variations.contains(&v.key) || o.lifted_variations.contains(&v.key);
            let value = json!(rt.forced_variations.get(vi).copied().unwrap_or(false));
            (
                v.key.clone(),
                source(&format!("variation:{}", v.key), overridden, value),
            )
        })
        .collect();
    let stages: serde_json::Map<String, Value> = f
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.rollout.is_some())
        .map(|(ri, r)| {
            let overridden = o.rollout_stage.contains_key(&r.id);
            (
                r.id.clone(),
                source(&format!("stage:{}", r.id), overridden, json!(rt.stages[ri])),
            )
        })
        .collect();
    json!({
        "enabled": source("enabled", o.enabled.is_some(), json!(rt.enabled)),
        "force_fallback": source("force_fallback", o.force_fallback.is_some(), json!(rt.force_fallback)),
        "forced_variations": variations,
        "rollout_stages": stages,
    })
}

pub(crate) fn flag_json(app: &App, live: &Live, i: usize, f: &Flag) -> Value {
    let rt: &FlagRuntime = &live.runtime[i];
    let variations: Vec<Value> = f
        .variations
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let h = &live.routes.flags[i][vi];
            let t = h.totals();
            let q = h.quantiles().filter(|(n, _)| *n > 0).map(|(_, q)| q);
            json!({
                "variation": v.key,
                "provider": v.provider.name,
                "model_id": v.model_id,
                "forced_fallback": rt.forced(vi),
                "requests": t.requests,
                "errors": t.errors,
                "fallbacks": t.fallbacks,
                "error_rate": if t.requests == 0 { 0.0 } else { t.errors as f64 / t.requests as f64 },
                "fallback_rate": if t.requests == 0 { 0.0 } else { t.fallbacks as f64 / t.requests as f64 },
                "tokens_in": t.tokens_in,
                "tokens_out": t.tokens_out,
                "cost_usd": h.cost_usd(),
                "cost_per_request_usd": if t.requests == 0 { 0.0 } else { h.cost_usd() / t.requests as f64 },
                "latency_seconds": q.map(|q| json!({"p50": q[0], "p95": q[1], "p99": q[2]})),
            })
        })
        .collect();
    let rollouts: Vec<Value> = rollout_rules(f)
        .map(|r| rollout_json(app, live, i, f, r))
        .collect();
    json!({
        "flag": f.key,
        "description": f.description,
        "enabled": rt.enabled,
        "enabled_source": if rt.enabled_overridden { "runtime" } else { "config" },
        "sources": sources_json(live, i, f),
        "config_enabled": f.enabled,
        "force_fallback": rt.force_fallback,
        "off_variation": f.variations[f.off_variation].key,
        "stable_variation": f.variations[f.stable_variation].key,
        "variations": variations,
        "rules": f.rules.iter().map(|r| json!({"rule": r.id, "audience": r.audience.as_ref().map(|(n, _)| n), "rollout": r.rollout.is_some()})).collect::<Vec<_>>(),
        "rollouts": rollouts,
    })
}

//! The decision explainer: for a user id and attributes, the decision `GET /v1/decide` gives
//! (computed by the same function) and why: each rule tried, whether its audience matched,
//! the user's bucket in it and where that bucket fell.

use http::HeaderMap;
use serde_json::{json, Value};

use crate::app::Live;
use crate::flags::audience::{AttrValue, Attributes};
use crate::flags::Flag;
use crate::openai::ApiError;
use crate::query::percent_decode;

/// `GET /admin/console/explain?flag=F&user=U[&attr.k=v]…`: `{"decision": <as /v1/decide>,
/// "steps": [...], "why": "…"}`.
pub fn explain(live: &Live, query: Option<&str>) -> Result<Value, ApiError> {
    // The decision itself: the very function behind `/v1/decide` (no attribute headers here).
    let (_, decision) = crate::proxy::decide::decide(live, query, &HeaderMap::new())?;
    let mut flag_key = String::new();
    let mut user = String::new();
    let mut attrs = Attributes::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        match k.as_str() {
            "flag" => flag_key = v,
            "user" => user = v,
            _ => {
                if let Some(name) = k.strip_prefix("attr.") {
                    attrs.insert(name, AttrValue::String(v));
                }
            }
        }
    }
    let (i, flag) = live
        .config
        .flag(&flag_key)
        .ok_or(ApiError::UnknownFlag(flag_key.clone()))?;
    let rt = &live.runtime[i];
    let steps = if rt.enabled {
        trace(flag, &rt.stages, &user, &attrs)
    } else {
        vec![
            json!({"rule": null, "outcome": "flag_disabled", "detail": format!(
                "the kill switch is off: everyone gets the off variation `{}`",
                flag.variations[flag.off_variation].key
            )}),
        ]
    };
    let why = steps
        .iter()
        .filter_map(|s| s["detail"].as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Ok(json!({"decision": decision, "steps": steps, "why": why}))
}

/// The rules as the decision walks them (see [`Flag::decide_at`]).
fn trace(flag: &Flag, stages: &[u32], user: &str, attrs: &Attributes) -> Vec<Value> {
    let mut steps = Vec::new();
    let last = flag.rules.len().saturating_sub(1);
    let mut index = 0;
    while index < flag.rules.len() {
        let rule = &flag.rules[index];
        let audience = rule.audience.as_ref().map(|(n, _)| n.as_str());
        let matched = rule.audience.as_ref().is_none_or(|(_, c)| c.matches(attrs));
        if !matched {
            steps.push(json!({"rule": rule.id, "audience": audience, "audience_matched": false, "bucket": null, "outcome": "skipped",
                "detail": format!("rule `{}`: audience `{}` does not match: skipped", rule.id, audience.unwrap_or(""))}));
            index += 1;
            continue;
        }
        let b = crate::flags::bucket::bucket(user, &rule.id);
        let stage = stages.get(index).copied();
        let share = rule
            .rollout
            .as_ref()
            .map(|r| f64::from(r.end_at(stage.unwrap_or(r.initial_stage))) / 100.0);
        match rule.variation_at(b, stage) {
            Some(v) => {
                let key = &flag.variations[v].key;
                let range = match share {
                    Some(pct) => format!("the rollout's first {pct} % of buckets"),
                    None => format!("variation `{key}`'s range"),
                };
                steps.push(json!({"rule": rule.id, "audience": audience, "audience_matched": true, "bucket": b, "outcome": "decided", "variation": key,
                    "detail": format!("rule `{}`: bucket {b} of 10000 falls in {range}: variation `{key}`", rule.id)}));
                return steps;
            }
            None => {
                let next = if index == last {
                    format!(
                        "no rule holds the user: the off variation `{}`",
                        flag.variations[flag.off_variation].key
                    )
                } else {
                    "straight to the last rule (everyone else)".to_owned()
                };
                steps.push(json!({"rule": rule.id, "audience": audience, "audience_matched": true, "bucket": b, "outcome": "outside_allocation",
                    "detail": format!("rule `{}`: bucket {b} of 10000 is outside the allocation{}: {next}", rule.id,
                        share.map(|p| format!(" (rollout at {p} %)")).unwrap_or_default())}));
                if index == last {
                    break;
                }
                index = last;
            }
        }
    }
    steps
}

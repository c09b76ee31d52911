//! `GET /v1/decide` and `GET /v1/models`: the decision and the variation's variables for apps
//! that need them (retrieval profile and friends), and the flags as OpenAI models.

use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::app::Live;
use crate::config::Config;
use crate::flags::audience::{AttrValue, Attributes};
use crate::flags::{Decision, Flag};
use crate::openai::ApiError;

/// The decision as DESIGN's JSON object: `{"flag", "variation", "rule", "bucket", "reason",
/// "variables"}`.
pub fn decision_json(flag: &Flag, decision: &Decision) -> Value {
    let variation = flag.variations.get(decision.variation);
    json!({
        "flag": flag.key,
        "variation": variation.map(|v| v.key.as_str()),
        "rule": decision.rule.and_then(|r| flag.rules.get(r)).map(|r| r.id.as_str()),
        "bucket": decision.bucket,
        "reason": decision.reason.as_str(),
        "variables": variation.map_or(Value::Null, |v| v.variables.clone()),
    })
}

/// `GET /v1/decide?flag=F&user=U[&attr.k=v]…`.
pub fn decide(
    live: &Live,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(StatusCode, Value), ApiError> {
    let config = &live.config;
    let mut flag_key = None;
    let mut user = None;
    let mut attrs = crate::proxy::identify::attributes(&config.identity, headers, None)?;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = crate::query::percent_decode(k)?;
        let v = crate::query::percent_decode(v)?;
        match k.as_str() {
            "flag" => flag_key = Some(v),
            "user" => user = Some(v),
            _ => match k.strip_prefix("attr.") {
                Some(name) if !name.is_empty() => attrs.insert(name, AttrValue::String(v.clone())),
                _ => {
                    return Err(ApiError::field(
                        "query",
                        format!("unknown query parameter `{k}` (flag, user, attr.NAME)"),
                    ))
                }
            },
        }
    }
    let flag_key = flag_key
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::field("flag", "the query parameter `flag` is required"))?;
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::field("user", "the query parameter `user` is required"))?;
    crate::proxy::identify::check_id(&config.identity, &user, "the query parameter user")?;
    crate::proxy::identify::check_attributes(&config.identity, &attrs)?;
    let (i, flag) = config
        .flag(&flag_key)
        .ok_or(ApiError::UnknownFlag(flag_key))?;
    let decision = live
        .decide(i, &user, &attrs)
        .ok_or_else(|| ApiError::UnknownFlag(flag.key.clone()))?;
    Ok((StatusCode::OK, decision_json(flag, &decision)))
}

/// Decides for the CLI.
pub fn decide_for(flag: &Flag, user: &str, attrs: &Attributes) -> Value {
    let decision = flag.decide(flag.enabled, user, attrs);
    decision_json(flag, &decision)
}

/// `GET /v1/models`: one model per flag (plus nothing else: passthrough models are the
/// provider's to list).
pub fn models(config: &Config) -> Value {
    let data: Vec<Value> = config
        .flags
        .iter()
        .map(|f| json!({"id": f.key, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    json!({"object": "list", "data": data})
}

//! The admin API under `/admin/`: effective flag state, kill switch, forced fallback,
//! rollouts, audit log, reload. Every change goes through the state store (durable, audited
//! with the token's name as actor) before it is acknowledged.
//!
//! This file holds the boundary: routing and the one error type with its rendering. Request
//! bodies live in `body`, rollouts and their gates in `rollout`, a flag's JSON view in `view`.

mod body;
mod rollout;
mod view;

pub(crate) use rollout::rollout_json;
pub use rollout::{gate_figures, gate_verdict, stage_figures};
pub(crate) use view::flag_json;

use body::{
    optional, parse, AdvanceBody, ClearBody, EnabledBody, FallbackBody, HoldBody, RuleBody,
    StageBody,
};
use rollout::{advance, rollout_rule, rollout_rules, set_stage};

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::app::{App, Live};
use crate::body::json_response;
use crate::body::Body;
use crate::flags::Flag;
use crate::openai::ApiError;
use crate::state::{AuditQuery, Change, StateError};

/// An admin error: OpenAI's error shape, plus extra top-level members (e.g. `reasons`).
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<(&'static str, Value)>,
    allow: Option<&'static str>,
}

impl AdminError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> AdminError {
        AdminError {
            status,
            code,
            message: message.into(),
            extra: None,
            allow: None,
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::BAD_REQUEST, "invalid_value", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The error's JSON body.
    fn body(&self) -> Value {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let mut v = json!({"error": {"message": self.message, "type": kind, "param": null, "code": self.code}});
        if let (Some((k, extra)), Some(obj)) = (&self.extra, v.as_object_mut()) {
            obj.insert((*k).to_owned(), extra.clone());
        }
        v
    }

    /// The response.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = json_response(self.status, &self.body());
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        resp
    }
}

impl From<StateError> for AdminError {
    fn from(e: StateError) -> AdminError {
        AdminError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_unavailable",
            format!("{e}; serving continues on the last known state"),
        )
    }
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> AdminError {
        AdminError::new(e.status(), e.code(), e.to_string())
    }
}

type Result<T> = std::result::Result<T, AdminError>;

/// Routes an authenticated admin request (`path` below `/admin`).
pub async fn handle(
    app: &Arc<App>,
    actor: &str,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Response<Body> {
    if method == Method::GET && path.trim_matches('/') == "export" {
        return crate::export::admin::handle(app, query).await;
    }
    match dispatch(app, actor, method, path, query, &body).await {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => e.into_response(),
    }
}

/// Runs an admin operation for another interface (the MCP tools): its answer, or its error's
/// JSON body (`{"error": {…}}`, with `reasons` when a gate is not met).
pub(crate) async fn run(
    app: &Arc<App>,
    actor: &str,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> std::result::Result<Value, Value> {
    dispatch(app, actor, method, path, query, &body)
        .await
        .map(|(_, v)| v)
        .map_err(|e| e.body())
}

async fn dispatch(
    app: &Arc<App>,
    actor: &str,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<(StatusCode, Value)> {
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(crate::query::decode_segment)
        .collect::<std::result::Result<_, _>>()?;
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let ok = |v: Value| Ok((StatusCode::OK, v));
    if segs.first() == Some(&"keys") {
        if let Some(answer) = crate::keys::admin::dispatch(app, actor, method, &segs, body).await {
            return answer;
        }
    }
    match (method, segs.as_slice()) {
        (&Method::GET, ["status"]) => {
            let live = app.live.load();
            let last_reload_error = app.last_reload_error.lock().ok().and_then(|e| e.clone());
            ok(json!({
                "status": if app.is_draining() { "draining" } else { "ready" },
                "config": live.config.hash,
                "config_file": live.config.origin,
                "flags": live.config.flags.len(),
                "state_store": app.store.kind(),
                "last_reload_error": last_reload_error,
                "fleet": app.fleet.readyz_json(),
                "sources": app.sources.status_json(&live.config),
            }))
        }
        (&Method::GET, ["flags"]) => {
            let live = app.live.load();
            let flags: Vec<Value> = live
                .config
                .flags
                .iter()
                .enumerate()
                .map(|(i, f)| flag_json(app, &live, i, f))
                .collect();
            ok(json!({"flags": flags}))
        }
        (&Method::GET, ["flags", key]) => {
            let live = app.live.load();
            let (i, f) = flag(&live, key)?;
            ok(flag_json(app, &live, i, f))
        }
        (&Method::PUT, ["flags", key, "enabled"]) => {
            let b: EnabledBody = parse(body)?;
            let live = app.live.load_full();
            flag(&live, key)?;
            let entry = app
                .change(
                    &Change::SetEnabled {
                        flag: (*key).to_owned(),
                        enabled: b.enabled,
                    },
                    actor,
                    b.reason.as_deref(),
                )
                .await?;
            let live = app.live.load();
            let (i, f) = flag(&live, key)?;
            ok(json!({"flag": flag_json(app, &live, i, f), "audit": entry}))
        }
        (&Method::PUT, ["flags", key, "fallback"]) => {
            let b: FallbackBody = parse(body)?;
            let live = app.live.load_full();
            let (_, f) = flag(&live, key)?;
            if let Some(v) = &b.variation {
                if f.variation_index(v).is_none() {
                    return Err(AdminError::not_found(format!(
                        "flag `{key}` has no variation `{v}`"
                    )));
                }
            }
            let change = Change::SetForcedFallback {
                flag: (*key).to_owned(),
                variation: b.variation.clone(),
                forced: b.forced,
            };
            let entry = app.change(&change, actor, b.reason.as_deref()).await?;
            let live = app.live.load();
            let (i, f) = flag(&live, key)?;
            ok(json!({"flag": flag_json(app, &live, i, f), "audit": entry}))
        }
        (&Method::DELETE, ["flags", key, "overrides"]) => {
            let b: ClearBody = optional(body)?;
            if !body.iter().all(|c| c.is_ascii_whitespace())
                && !serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object())
            {
                return Err(AdminError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    "the body must be a JSON object: {\"reason\": \"…\"}",
                ));
            }
            let field = query_param(query, "field");
            let live = app.live.load_full();
            if flag(&live, key).is_err() && !live.state.flags.contains_key(*key) {
                return Err(AdminError::not_found(format!(
                    "flag `{key}` is not in the config and has no overrides"
                )));
            }
            let change = match field {
                None => Change::ClearFlag {
                    flag: (*key).to_owned(),
                },
                Some(field) => {
                    let known = matches!(field.as_str(), "enabled" | "force_fallback" | "bandit")
                        || ["variation:", "stage:", "held:"]
                            .iter()
                            .any(|p| field.strip_prefix(p).is_some_and(|r| !r.is_empty()));
                    if !known {
                        return Err(AdminError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_value",
                            format!("unknown override field `{field}` (enabled, force_fallback, bandit, variation:V, stage:RULE, held:RULE)"),
                        ));
                    }
                    Change::ClearField {
                        flag: (*key).to_owned(),
                        field,
                    }
                }
            };
            let entry = app.change(&change, actor, b.reason.as_deref()).await?;
            let live = app.live.load();
            let state = match flag(&live, key) {
                Ok((i, f)) => flag_json(app, &live, i, f),
                Err(_) => Value::Null,
            };
            ok(json!({"flag": state, "audit": entry}))
        }
        (&Method::GET, ["flags", key, "rollout"]) => {
            let live = app.live.load();
            let (i, f) = flag(&live, key)?;
            let rules: Vec<Value> = rollout_rules(f)
                .map(|r| rollout_json(app, &live, i, f, r))
                .collect();
            if rules.is_empty() {
                return Err(AdminError::not_found(format!(
                    "flag `{key}` has no rollout rule"
                )));
            }
            ok(json!({"flag": f.key, "rollouts": rules}))
        }
        (&Method::POST, ["flags", key, "rollout", "advance"]) => {
            let b: AdvanceBody = optional(body)?;
            advance(app, actor, key, b).await
        }
        (&Method::POST, ["flags", key, "rollout", "rollback"]) => {
            let b: RuleBody = optional(body)?;
            let live = app.live.load_full();
            let (i, f) = flag(&live, key)?;
            let r = rollout_rule(f, b.rule.as_deref())?;
            let stage = live.runtime[i].stages[r];
            if stage == 0 {
                return Err(AdminError::new(
                    StatusCode::CONFLICT,
                    "at_first_stage",
                    "the rollout is at its first stage already",
                ));
            }
            let result = set_stage(
                app,
                actor,
                key,
                &f.rules[r].id,
                stage - 1,
                b.reason.as_deref(),
            )
            .await;
            if result.is_ok() {
                app.metrics
                    .rollbacks
                    .with_label_values(&[*key, f.rules[r].id.as_str(), "operator"])
                    .inc();
            }
            result
        }
        (&Method::PUT, ["flags", key, "rollout"]) => {
            let b: StageBody = parse(body)?;
            let live = app.live.load_full();
            let (_, f) = flag(&live, key)?;
            let r = rollout_rule(f, b.rule.as_deref())?;
            let stages = f.rules[r].rollout.as_ref().map_or(0, |ro| ro.stages.len());
            if b.stage as usize >= stages {
                return Err(AdminError::bad(format!(
                    "unknown stage {}: the rollout has stages 0 ..= {}",
                    b.stage,
                    stages.saturating_sub(1)
                )));
            }
            set_stage(
                app,
                actor,
                key,
                &f.rules[r].id,
                b.stage,
                b.reason.as_deref(),
            )
            .await
        }
        (&Method::PUT, ["flags", key, "rollout", "hold"]) => {
            let b: HoldBody = parse(body)?;
            let live = app.live.load_full();
            let (_, f) = flag(&live, key)?;
            let r = rollout_rule(f, b.rule.as_deref())?;
            let change = Change::SetRolloutHeld {
                flag: (*key).to_owned(),
                rule: f.rules[r].id.clone(),
                held: b.held,
            };
            let entry = app.change(&change, actor, b.reason.as_deref()).await?;
            let live = app.live.load();
            let (i, f) = flag(&live, key)?;
            ok(json!({"rollout": rollout_json(app, &live, i, f, r), "audit": entry}))
        }
        (&Method::GET, ["flags", key, "results"]) => {
            let mut metric = None;
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match k {
                    "metric" => metric = Some(crate::query::percent_decode(v)?),
                    other => {
                        return Err(AdminError::bad(format!(
                            "unknown query parameter `{other}` (metric)"
                        )))
                    }
                }
            }
            let v = crate::experiments::runtime::results(app, key, metric.as_deref()).await?;
            ok(v)
        }
        (&Method::GET, ["audit"]) => {
            let mut q = AuditQuery {
                limit: 50,
                ..AuditQuery::default()
            };
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = crate::query::percent_decode(v)?;
                match k {
                    "flag" => q.flag = Some(v),
                    "actor" => q.actor = Some(v),
                    "action" => q.action = Some(v),
                    "before" => {
                        q.before_id = Some(v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            AdminError::bad("before must be a positive integer (an entry id)")
                        })?)
                    }
                    "limit" => {
                        q.limit = v
                            .parse()
                            .ok()
                            .filter(|n| (1..=1000).contains(n))
                            .ok_or_else(|| {
                                AdminError::bad("limit must be an integer in 1 ..= 1000")
                            })?
                    }
                    other => {
                        return Err(AdminError::bad(format!(
                            "unknown query parameter `{other}` (flag, actor, action, before, limit)"
                        )))
                    }
                }
            }
            let entries = app.store.audit_page(&q).await?;
            // A full page may have more behind it: the cursor of the next one.
            let next = (entries.len() == q.limit as usize)
                .then(|| entries.last().map(|e| e.id))
                .flatten();
            ok(json!({"entries": entries, "next_before": next}))
        }
        (&Method::GET, ["alerts"]) => ok(crate::alerts::alerts_json(app)),
        (&Method::POST, ["reload"]) => {
            match app.reload(actor).await {
                Ok(outcome) => ok(outcome),
                Err(errors) => {
                    let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
                    Err(AdminError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "invalid_config",
                    message: format!("the new configuration is invalid; the old one keeps serving:\n{errors}"),
                    extra: Some(("errors", json!(list))),
                    allow: None,
                })
                }
            }
        }
        (&Method::GET | &Method::PUT, ["flags", _, "bandit"])
        | (&Method::POST, ["flags", _, "bandit", "epoch"])
        | (&Method::GET, ["flags", _, "bandit", "epochs", _]) => {
            crate::bandit::admin::handle(app, actor, method, &segs, query, body).await
        }
        (_, segs) if allowed_methods(segs).is_some() => {
            let allow = allowed_methods(segs).unwrap_or("GET");
            let mut e = AdminError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "method {method} is not allowed on /admin/{} (allowed: {allow})",
                    path.trim_matches('/')
                ),
            );
            e.allow = Some(allow);
            Err(e)
        }
        _ => Err(AdminError::not_found(format!(
            "unknown admin path /admin/{}",
            path.trim_matches('/')
        ))),
    }
}

/// The methods an admin path takes, if it is one.
fn allowed_methods(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["flags"]
        | ["flags", _]
        | ["flags", _, "results"]
        | ["audit"]
        | ["alerts"]
        | ["export"]
        | ["status"] => "GET",
        ["keys", ..] => return crate::keys::admin::allowed_methods(segs),
        ["flags", _, "overrides"] => "DELETE",
        ["flags", _, "enabled" | "fallback"] | ["flags", _, "rollout", "hold"] => "PUT",
        ["flags", _, "rollout"] | ["flags", _, "bandit"] => "GET, PUT",
        ["flags", _, "bandit", "epochs", _] => "GET",
        ["flags", _, "bandit", "epoch"] => "POST",
        ["flags", _, "rollout", "advance" | "rollback"] | ["reload"] => "POST",
        _ => return None,
    })
}

pub(crate) fn flag<'l>(live: &'l Live, key: &str) -> Result<(usize, &'l Arc<Flag>)> {
    live.config
        .flag(key)
        .ok_or_else(|| AdminError::not_found(format!("unknown flag `{key}`")))
}

/// The (percent-decoded) value of query parameter `name`.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| crate::query::decode_segment(v).ok())
}

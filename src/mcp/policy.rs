//! `tools/call` under an agent token's policy: the reason, the tool list, the stage-change
//! limit; then the admin operation itself. Every call is in the audit log as `agent:<name>`:
//! a change as the change it made, a read as `agent_read`, a refusal as `agent_refused`, an
//! operation that failed (a gate not met, an unknown flag) as `agent_call_failed`.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::tools::{self, Tool};
use super::{code, Caller};
use crate::app::App;
use crate::state::{AuditQuery, Change};

/// One hour, in milliseconds.
const HOUR_MS: u64 = 3_600_000;

/// A tool's result: the JSON as text, and as structured content.
fn result(v: &Value, is_error: bool) -> Value {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = json!({"content": [{"type": "text", "text": text}], "isError": is_error});
    if v.is_object() {
        out["structuredContent"] = v.clone();
    }
    out
}

/// Writes an audit note (a failure to write it is logged: the call's answer stands).
async fn note(
    app: &App,
    caller: &Caller,
    action: &str,
    flag: Option<&str>,
    reason: Option<&str>,
    detail: Value,
) {
    let change = Change::Note {
        flag: flag.map(str::to_owned),
        action: action.to_owned(),
        detail,
    };
    if let Err(e) = app.change(&change, &caller.actor(), reason).await {
        tracing::warn!(error = %e, action, "agent call not audited: state store unavailable");
    }
}

/// Runs `tools/call`. `Err`: a protocol error (code, message); a refusal or a failed
/// operation is a tool result with `isError: true`.
pub async fn call(app: &Arc<App>, caller: &Caller, params: &Value) -> Result<Value, (i64, String)> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err((code::INVALID_PARAMS, "tools/call needs params.name".into()));
    };
    let empty = Map::new();
    let args = match params.get("arguments") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err((
                code::INVALID_PARAMS,
                "params.arguments must be an object".into(),
            ))
        }
    };
    let flag = args.get("flag").and_then(Value::as_str);
    let reason = args
        .get("reason")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let mut shown = args.clone();
    shown.remove("reason");
    let Some(tool) = tools::find(name) else {
        let why = format!("unknown tool `{name}` ({})", tools::names().join(", "));
        note(
            app,
            caller,
            "agent_refused",
            flag,
            reason,
            json!({"tool": name, "arguments": shown, "why": why}),
        )
        .await;
        return Err((code::INVALID_PARAMS, why));
    };
    let refuse = |why: String| async move {
        note(
            app,
            caller,
            "agent_refused",
            flag,
            reason,
            json!({"tool": tool.name, "arguments": shown, "why": why}),
        )
        .await;
        Ok(result(
            &json!({"refused": true, "tool": tool.name, "reason": why}),
            true,
        ))
    };
    let Some(reason) = reason else {
        return refuse("every call needs a `reason` (it goes to the audit log)".into()).await;
    };
    if let Err(why) = tools::check_args(tool, args) {
        return refuse(why).await;
    }
    if let Some(p) = &caller.policy {
        if !p.allows(tool.name) {
            let why = if tool.name == "kill_switch" {
                format!(
                    "the policy of agent `{}` forbids the kill switch",
                    caller.name
                )
            } else {
                format!(
                    "the policy of agent `{}` does not allow `{}` (allowed: {})",
                    caller.name,
                    tool.name,
                    p.tools.join(", ")
                )
            };
            return refuse(why).await;
        }
    }
    let limit = caller
        .policy
        .as_ref()
        .and_then(|p| p.max_stage_changes_per_hour)
        .filter(|_| tools::changes_stage(tool));
    // Checking the limit and acting happen under one lock, so two calls at once cannot both
    // take the last change of the hour.
    let _guard = match limit {
        Some(_) => Some(app.mcp.stage_changes.lock().await),
        None => None,
    };
    if let Some(max) = limit {
        match stage_changes_within_hour(app, caller, max).await {
            Ok(n) if n >= u64::from(max) => {
                return refuse(format!(
                    "the policy of agent `{}` allows {max} rollout stage change(s) per hour; {n} made within the last hour",
                    caller.name
                ))
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                return refuse(format!("the stage-change limit cannot be checked: {e}")).await;
            }
        }
    }
    run(app, caller, tool, args, flag, reason).await
}

/// The admin operation, audited.
async fn run(
    app: &Arc<App>,
    caller: &Caller,
    tool: &Tool,
    args: &Map<String, Value>,
    flag: Option<&str>,
    reason: &str,
) -> Result<Value, (i64, String)> {
    let op = tools::operation(tool, args, reason);
    let actor = caller.actor();
    let outcome = crate::admin::api::run(
        app,
        &actor,
        &op.method,
        &op.path,
        op.query.as_deref(),
        Bytes::from(op.body),
    )
    .await;
    let mut shown = args.clone();
    shown.remove("reason");
    match outcome {
        Ok(v) => {
            if tool.read_only {
                note(
                    app,
                    caller,
                    "agent_read",
                    flag,
                    Some(reason),
                    json!({"tool": tool.name, "arguments": shown}),
                )
                .await;
            }
            Ok(result(&v, false))
        }
        Err(error) => {
            note(
                app,
                caller,
                "agent_call_failed",
                flag,
                Some(reason),
                json!({"tool": tool.name, "arguments": shown, "error": error["error"]["message"]}),
            )
            .await;
            Ok(result(&error, true))
        }
    }
}

/// Rollout stage changes this agent made within the last hour (up to `max`).
async fn stage_changes_within_hour(
    app: &App,
    caller: &Caller,
    max: u32,
) -> Result<u64, crate::state::StateError> {
    let q = AuditQuery {
        actor: Some(caller.actor()),
        action: Some("set_rollout_stage".into()),
        limit: max.saturating_add(1).max(1),
        ..AuditQuery::default()
    };
    let entries = app.store.audit_page(&q).await?;
    let since = crate::clock::now_ms().saturating_sub(HOUR_MS);
    Ok(entries
        .iter()
        .filter(|e| {
            humantime::parse_rfc3339(&e.at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_none_or(|t| t.as_millis() as u64 >= since)
        })
        .count() as u64)
}

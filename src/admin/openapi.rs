//! The admin API's OpenAPI 3 document, served at `/admin/openapi.json`. The test suite runs
//! schemathesis against it, so every documented response is what the server really sends.

use serde_json::{json, Value};

fn error_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "405": {"$ref": "#/components/responses/Error"},
        "413": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"},
        "default": {"$ref": "#/components/responses/Error"}
    })
}

fn op(summary: &str, ok: Value, body: Option<&str>, extra: &[(&str, Value)]) -> Value {
    let mut responses = error_responses();
    if let Some(obj) = responses.as_object_mut() {
        obj.insert(
            "200".into(),
            json!({"description": "OK", "content": {"application/json": {"schema": ok}}}),
        );
        for (code, v) in extra {
            obj.insert((*code).into(), v.clone());
        }
    }
    let mut o = json!({"summary": summary, "security": [{"bearer": []}], "responses": responses});
    if let (Some(schema), Some(obj)) = (body, o.as_object_mut()) {
        obj.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
        );
    }
    o
}

fn optional_body(mut o: Value) -> Value {
    if let Some(rb) = o.get_mut("requestBody").and_then(|b| b.as_object_mut()) {
        rb.insert("required".into(), json!(false));
    }
    o
}

fn flag_param() -> Value {
    json!({"name": "flag", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn reason() -> Value {
    json!({"type": ["string", "null"], "description": "Free text, kept in the audit log."})
}

/// The document; `metrics` are the business metrics the running config knows (the results'
/// `metric` parameter takes one of them).
pub fn document(metrics: &[&str]) -> Value {
    let mut doc = core_document(metrics);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        if let Value::Object(more) = console_paths() {
            paths.extend(more);
        }
        if let Value::Object(more) = crate::bandit::openapi::paths() {
            paths.extend(more);
        }
        if let Value::Object(more) = crate::keys::openapi::paths() {
            paths.extend(more);
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        if let Value::Object(more) = crate::keys::openapi::schemas() {
            schemas.extend(more);
        }
    }
    doc
}

fn get_only(summary: &str, parameters: Value, ok: Value) -> Value {
    json!({"get": {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": ok}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "405": {"$ref": "#/components/responses/Error"},
            "default": {"$ref": "#/components/responses/Error"}
        }
    }})
}

/// The views the operators' console reads (`/admin/console/…`).
fn console_paths() -> Value {
    let string = json!({"type": "string"});
    let nullable_number = json!({"type": ["number", "null"]});
    let overview_flag = json!({"type": "object", "required": ["flag", "enabled", "enabled_source", "force_fallback", "forced_variations", "variations", "requests_5m", "error_rate_5m", "rollout", "alert_level", "alerts", "srm_detected", "warning"], "properties": {
        "flag": string, "description": {"type": ["string", "null"]}, "enabled": {"type": "boolean"},
        "enabled_source": {"type": "string", "enum": ["config", "runtime"]}, "force_fallback": {"type": "boolean"},
        "forced_variations": {"type": "array", "items": string}, "variations": {"type": "array", "items": string},
        "requests_5m": {"type": "integer", "minimum": 0}, "error_rate_5m": nullable_number,
        "rollout": {"type": ["object", "null"]},
        "alert_level": {"type": ["string", "null"], "enum": ["ok", "info", "warning", "critical", "insufficient_data", null]},
        "alerts": {"type": "integer", "minimum": 0}, "srm_detected": {"type": ["boolean", "null"]}, "warning": {"type": "boolean"}}});
    let overview = json!({"type": "object", "required": ["config", "at", "window_seconds", "flags"], "properties": {
        "config": string, "at": string, "window_seconds": {"type": "integer"}, "flags": {"type": "array", "items": overview_flag}}});
    let flag_view = json!({"type": "object", "required": ["state", "config", "overrides", "alerts", "series"], "properties": {
        "state": {"$ref": "#/components/schemas/FlagState"},
        "config": {"type": "array", "items": {"type": "object", "required": ["variation", "provider", "model_id", "prompt", "temperature", "token_budget", "tool_policy", "fallback_behavior", "forced_fallback"], "properties": {
            "variation": string, "provider": string, "model_id": string,
            "prompt": {"type": ["object", "null"], "required": ["name", "text"], "properties": {"name": string, "text": string}},
            "temperature": nullable_number, "token_budget": {"type": ["integer", "null"]}, "tool_policy": string,
            "fallback_behavior": string, "forced_fallback": {"type": "boolean"}, "ttft_mean_seconds": nullable_number}}},
        "overrides": {"type": "array", "items": {"type": "object", "required": ["what", "config", "runtime"]}},
        "alerts": {"type": "array"},
        "series": {"type": "object", "required": ["interval_seconds", "columns", "variations"], "properties": {
            "interval_seconds": {"type": "integer"}, "columns": {"type": "array", "items": string},
            "variations": {"type": "array", "items": {"type": "object", "required": ["variation", "points"], "properties": {
                "variation": string, "points": {"type": "array", "items": {"type": "array", "minItems": 5, "maxItems": 5}}}}}}}}});
    let decision = json!({"type": "object", "required": ["flag", "variation", "rule", "bucket", "reason", "variables"], "properties": {
        "flag": string, "variation": {"type": ["string", "null"]}, "rule": {"type": ["string", "null"]},
        "bucket": {"type": ["integer", "null"], "minimum": 0, "maximum": 9999}, "reason": string, "variables": {}}});
    let explain = json!({"type": "object", "required": ["decision", "steps", "why"], "properties": {
        "decision": decision, "why": string,
        "steps": {"type": "array", "items": {"type": "object", "required": ["rule", "outcome", "detail"], "properties": {"outcome": string, "detail": string}}}}});
    let config = json!({"type": "object", "required": ["hash", "loaded_at", "file", "flags", "state_store", "last_reload_error"], "properties": {
        "hash": string, "loaded_at": string, "file": {"type": ["string", "null"]}, "flags": {"type": "integer"},
        "state_store": string, "last_reload_error": {"type": ["string", "null"]}}});
    let query = |name: &str, required: bool| json!({"name": name, "in": "query", "required": required, "schema": {"type": "string", "minLength": 1}});
    json!({
        "/admin/console/overview": get_only("Every flag in one answer, for the console's flag list: state, rollout stage, alert tier, traffic of the last 5 minutes, SRM and critical marks", json!([]), overview),
        "/admin/console/flags/{flag}": get_only("One flag's console page: effective state and figures, each variation's effective configuration and runtime overrides, alerts, the last hour's series (p50, p95, error rate)", json!([flag_param()]), flag_view),
        "/admin/console/explain": get_only("The decision of GET /v1/decide for a user (attributes as attr.NAME=value) and why: each rule tried", json!([query("flag", true), query("user", true)]), explain),
        "/admin/console/config": get_only("The running configuration's hash and load time, and the last reload error", json!([]), config)
    })
}

fn core_document(metrics: &[&str]) -> Value {
    let conflict = json!({"$ref": "#/components/responses/Conflict"});
    let invalid_config = json!({"$ref": "#/components/responses/InvalidConfig"});
    let with_flag = |mut o: Value| {
        if let Some(obj) = o.as_object_mut() {
            obj.insert("parameters".into(), json!([flag_param()]));
        }
        o
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Switchyard admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Operators' control of flags: kill switch, forced fallback, rollouts, audit log, reload. Every change is durable and audited with the token's name as actor."
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/admin/flags": {"get": op("Every flag's effective state and live figures", json!({"type": "object", "required": ["flags"], "properties": {"flags": {"type": "array", "items": {"$ref": "#/components/schemas/FlagState"}}}}), None, &[])},
            "/admin/flags/{flag}": {"get": with_flag(op("One flag's effective state and live figures", json!({"$ref": "#/components/schemas/FlagState"}), None, &[]))},
            "/admin/flags/{flag}/enabled": {"put": with_flag(op("Flip the kill switch", json!({"$ref": "#/components/schemas/FlagChange"}), Some("EnabledRequest"), &[]))},
            "/admin/flags/{flag}/fallback": {"put": with_flag(op("Force rule-based answers for the flag or one variation, or lift it", json!({"$ref": "#/components/schemas/FlagChange"}), Some("FallbackRequest"), &[]))},
            "/admin/flags/{flag}/overrides": {"delete": {
                "summary": "Drop the flag's runtime overrides (all, or one `field`: enabled, force_fallback, variation:V, stage:RULE, held:RULE): back to proxy.toml",
                "security": [{"bearer": []}],
                "parameters": [flag_param(), {"name": "field", "in": "query", "required": false, "schema": {"type": "string", "pattern": "^(enabled|force_fallback|(variation|stage|held):.+)$"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {"reason": reason()}}}}},
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object", "required": ["flag", "audit"], "properties": {"flag": {"oneOf": [{"$ref": "#/components/schemas/FlagState"}, {"type": "null"}]}, "audit": {"type": "object"}}}}}},
                    "400": {"$ref": "#/components/responses/Error"},
                    "401": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                    "413": {"$ref": "#/components/responses/Error"},
                    "503": {"$ref": "#/components/responses/Error"},
                    "default": {"$ref": "#/components/responses/Error"}
                }
            }},
            "/admin/status": {"get": op("Readiness with details: config hash and file, flags, state store, the last refused reload's errors", json!({"type": "object", "required": ["status", "config", "flags", "state_store", "last_reload_error"], "properties": {"status": {"type": "string"}, "config": {"type": "string"}, "config_file": {"type": "string"}, "flags": {"type": "integer"}, "state_store": {"type": "string"}, "last_reload_error": {"type": ["string", "null"]}}}), None, &[])},
            "/admin/flags/{flag}/rollout": {
                "get": with_flag(op("The flag's rollouts: stage, gate, figures", json!({"type": "object", "required": ["flag", "rollouts"], "properties": {"flag": {"type": "string"}, "rollouts": {"type": "array", "items": {"$ref": "#/components/schemas/Rollout"}}}}), None, &[])),
                "put": with_flag(op("Set a rollout's stage", json!({"$ref": "#/components/schemas/RolloutChange"}), Some("StageRequest"), &[]))
            },
            "/admin/flags/{flag}/rollout/advance": {"post": with_flag(optional_body(op("Advance to the next stage if the gate holds (409 with reasons if not; `force` overrides, audited)", json!({"$ref": "#/components/schemas/RolloutChange"}), Some("AdvanceRequest"), &[("409", conflict.clone())])))},
            "/admin/flags/{flag}/rollout/rollback": {"post": with_flag(optional_body(op("Go back one stage", json!({"$ref": "#/components/schemas/RolloutChange"}), Some("RuleRequest"), &[("409", conflict)])))},
            "/admin/flags/{flag}/rollout/hold": {"put": with_flag(op("Freeze or unfreeze a rollout (no automatic advance while held)", json!({"$ref": "#/components/schemas/RolloutChange"}), Some("HoldRequest"), &[]))},
            "/admin/flags/{flag}/results": {"get": {
                "summary": "Experiment results against the control: always-valid p-values and intervals, verdicts, SRM",
                "security": [{"bearer": []}],
                "parameters": [flag_param(), {"name": "metric", "in": "query", "required": false, "schema": {"type": "string", "enum": metrics}}],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Results"}}}},
                    "400": {"$ref": "#/components/responses/Error"},
                    "401": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                    "503": {"$ref": "#/components/responses/Error"},
                    "default": {"$ref": "#/components/responses/Error"}
                }
            }},
            "/admin/alerts": {"get": op("Each alert's current level per flag and variation", json!({"type": "object", "required": ["alerts"], "properties": {"alerts": {"type": "array", "items": {"type": "object", "required": ["alert", "flag", "variation", "metric", "level"], "properties": {
                "alert": {"type": "string"}, "flag": {"type": "string"}, "variation": {"type": "string"}, "metric": {"type": "string"},
                "level": {"type": "string", "enum": ["ok", "info", "warning", "critical", "insufficient_data", "unknown"]}}}}}}), None, &[])},
            "/admin/audit": {"get": {
                "summary": "The audit log, newest first, filtered by flag, actor and action; paged with `before`",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "flag", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "actor", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "action", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "before", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807i64}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
                ],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object", "required": ["entries", "next_before"], "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}, "next_before": {"type": ["integer", "null"], "description": "`before` of the next (older) page when this one is full"}}}}}},
                    "400": {"$ref": "#/components/responses/Error"},
                    "401": {"$ref": "#/components/responses/Error"},
                    "503": {"$ref": "#/components/responses/Error"},
                    "default": {"$ref": "#/components/responses/Error"}
                }
            }},
            "/admin/export": {"get": {
                "summary": "Exposures, feedback events, eval scores or per-request records as JSON Lines, one page at a time; pass the x-switchyard-next-cursor value back as `cursor` to continue (nothing lost, nothing twice). A page shorter than `limit` is the end for now. Each line's shape is a JSON Schema under docs/schemas/.",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "kind", "in": "query", "required": true, "schema": {"type": "string", "enum": ["exposures", "feedback", "evals", "requests"]}},
                    {"name": "flag", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "required": false, "description": "RFC 3339, unix milliseconds, or a duration back from now (24h)", "schema": {"type": "string"}},
                    {"name": "cursor", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}
                ],
                "responses": {
                    "200": {"description": "One record per line", "headers": {"x-switchyard-next-cursor": {"description": "The cursor of the next page", "schema": {"type": "string"}}}, "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                    "400": {"$ref": "#/components/responses/Error"},
                    "401": {"$ref": "#/components/responses/Error"},
                    "409": {"$ref": "#/components/responses/Error"},
                    "503": {"$ref": "#/components/responses/Error"},
                    "default": {"$ref": "#/components/responses/Error"}
                }
            }},
            "/admin/reload": {"post": op("Reload proxy.toml (422 with the errors if invalid; the old config keeps serving)", json!({"type": "object", "required": ["reloaded", "changed", "hash"], "properties": {"reloaded": {"type": "boolean"}, "changed": {"type": "boolean"}, "hash": {"type": "string"}}}), None, &[("422", invalid_config)])}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {"description": "An error in OpenAI's shape", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Conflict": {"description": "The gate is not met, or the rollout cannot move that way", "content": {"application/json": {"schema": {"allOf": [{"$ref": "#/components/schemas/Error"}, {"type": "object", "properties": {"reasons": {"type": "array", "items": {"type": "string"}}}}]}}}},
                "InvalidConfig": {"description": "The new configuration is invalid", "content": {"application/json": {"schema": {"allOf": [{"$ref": "#/components/schemas/Error"}, {"type": "object", "required": ["errors"], "properties": {"errors": {"type": "array", "items": {"type": "string"}}}}]}}}}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}}},
                "EnabledRequest": {"type": "object", "required": ["enabled"], "additionalProperties": false, "properties": {"enabled": {"type": "boolean"}, "reason": reason()}},
                "FallbackRequest": {"type": "object", "required": ["forced"], "additionalProperties": false, "properties": {"forced": {"type": "boolean"}, "variation": {"type": ["string", "null"]}, "reason": reason()}},
                "AdvanceRequest": {"type": "object", "additionalProperties": false, "properties": {"force": {"type": "boolean"}, "rule": {"type": ["string", "null"]}, "reason": reason()}},
                "RuleRequest": {"type": "object", "additionalProperties": false, "properties": {"rule": {"type": ["string", "null"]}, "reason": reason()}},
                "StageRequest": {"type": "object", "required": ["stage"], "additionalProperties": false, "properties": {"stage": {"type": "integer", "minimum": 0, "maximum": 4294967295u64}, "rule": {"type": ["string", "null"]}, "reason": reason()}},
                "HoldRequest": {"type": "object", "required": ["held"], "additionalProperties": false, "properties": {"held": {"type": "boolean"}, "rule": {"type": ["string", "null"]}, "reason": reason()}},
                "AuditEntry": {"type": "object", "required": ["id", "at", "actor", "action", "flag", "before", "after", "reason"], "properties": {
                    "id": {"type": "integer"}, "at": {"type": "string"}, "actor": {"type": "string"}, "action": {"type": "string"},
                    "flag": {"type": ["string", "null"]}, "before": {}, "after": {}, "reason": {"type": ["string", "null"]}}},
                "FlagState": {"type": "object", "required": ["flag", "enabled", "enabled_source", "force_fallback", "off_variation", "stable_variation", "variations", "rules", "rollouts"], "properties": {
                    "flag": {"type": "string"}, "enabled": {"type": "boolean"}, "enabled_source": {"type": "string", "enum": ["config", "runtime"]},
                    "force_fallback": {"type": "boolean"}, "off_variation": {"type": "string"}, "stable_variation": {"type": "string"},
                    "variations": {"type": "array", "items": {"type": "object", "required": ["variation", "provider", "model_id", "requests", "errors", "fallbacks"], "properties": {
                        "variation": {"type": "string"}, "provider": {"type": "string"}, "model_id": {"type": "string"},
                        "requests": {"type": "integer"}, "errors": {"type": "integer"}, "fallbacks": {"type": "integer"}}}},
                    "rules": {"type": "array"}, "rollouts": {"type": "array", "items": {"$ref": "#/components/schemas/Rollout"}}}},
                "FlagChange": {"type": "object", "required": ["flag", "audit"], "properties": {"flag": {"$ref": "#/components/schemas/FlagState"}, "audit": {"$ref": "#/components/schemas/AuditEntry"}}},
                "Rollout": {"type": "object", "required": ["flag", "rule", "variation", "stage", "percent", "stages", "held", "gate_met", "reasons"], "properties": {
                    "flag": {"type": "string"}, "rule": {"type": "string"}, "variation": {"type": "string"}, "stage": {"type": "integer"},
                    "percent": {"type": "number"}, "stages": {"type": "array", "items": {"type": "number"}}, "held": {"type": "boolean"},
                    "gate_met": {"type": "boolean"}, "reasons": {"type": "array", "items": {"type": "string"}}}},
                "Results": {"type": "object", "required": ["flag", "control", "alpha", "srm", "variations"], "properties": {
                    "flag": {"type": "string"}, "control": {"type": "string"}, "alpha": {"type": "number"},
                    "srm": {"type": "object", "required": ["p_value", "detected"], "properties": {"p_value": {"type": ["number", "null"]}, "detected": {"type": "boolean"}}},
                    "variations": {"type": "array", "items": {"type": "object", "required": ["variation", "metric", "users", "value", "ci_low", "ci_high", "lift", "p_value", "significant", "verdict"], "properties": {
                        "variation": {"type": "string"}, "metric": {"type": "string"}, "users": {"type": "integer"},
                        "value": {"type": ["number", "null"]}, "ci_low": {"type": ["number", "null"]}, "ci_high": {"type": ["number", "null"]},
                        "lift": {"type": ["number", "null"]}, "p_value": {"type": ["number", "null"]}, "significant": {"type": "boolean"},
                        "verdict": {"type": "string", "enum": ["winner", "loser", "inconclusive", "too_early"]}}}}}},
                "RolloutChange": {"type": "object", "required": ["rollout", "audit"], "properties": {"rollout": {"$ref": "#/components/schemas/Rollout"}, "audit": {"$ref": "#/components/schemas/AuditEntry"}}}
            }
        }
    })
}

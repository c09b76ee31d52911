//! The bandit's operations in the admin API's OpenAPI document.

use serde_json::{json, Value};

fn errors(extra: &[&str]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for code in ["400", "401", "404", "405", "413", "503", "default"]
        .iter()
        .chain(extra)
    {
        m.insert(
            (*code).to_owned(),
            json!({"$ref": "#/components/responses/Error"}),
        );
    }
    m
}

fn ok(schema: Value, extra: &[&str]) -> Value {
    let mut r = errors(extra);
    r.insert(
        "200".into(),
        json!({"description": "OK", "content": {"application/json": {"schema": schema}}}),
    );
    Value::Object(r)
}

/// `/admin/flags/{flag}/bandit…` path items.
pub fn paths() -> Value {
    let flag =
        json!({"name": "flag", "in": "path", "required": true, "schema": {"type": "string"}});
    let by_variation =
        |t: &str| json!({"type": "object", "additionalProperties": {"type": [t, "null"]}});
    let record = json!({"type": "object",
    "required": ["flag", "epoch", "at", "at_ms", "algorithm", "status_before", "status_after", "input", "outcome", "why", "p_best", "weights_before", "weights_after"],
    "properties": {
        "flag": {"type": "string"}, "epoch": {"type": "integer", "minimum": 1},
        "at": {"type": "string"}, "at_ms": {"type": "integer"},
        "algorithm": {"type": "string", "enum": ["thompson_beta_bernoulli", "thompson_gaussian"]},
        "status_before": {"type": "string"}, "status_after": {"type": "string"},
        "input": {"type": "object", "required": ["seed", "arms", "params", "weights_before", "expected_users", "control"]},
        "outcome": {"type": "object", "required": ["wins", "p_best", "weights_after", "why", "broken", "reasons"]},
        "why": {"type": "string", "enum": ["moved", "guardrail", "too_few_users", "srm", "stopped", "promoted"]},
        "p_best": by_variation("number"),
        "weights_before": by_variation("integer"),
        "weights_after": by_variation("integer")
    }});
    let state = json!({"type": "object",
    "required": ["flag", "rule", "control", "metric", "algorithm", "status", "epoch", "paused", "weights", "settings", "epochs"],
    "properties": {
        "flag": {"type": "string"}, "rule": {"type": ["string", "null"]}, "control": {"type": "string"},
        "metric": {"type": "string"}, "algorithm": {"type": "string"},
        "status": {"type": "string", "enum": ["running", "stopped", "promoted", "rolled_back"]},
        "epoch": {"type": "integer", "minimum": 0}, "paused": {"type": "boolean"},
        "overridden_by": {"type": ["string", "null"]},
        "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 10000}},
        "weights_since": {"type": ["string", "null"]},
        "settings": {"type": "object", "required": ["floor", "cadence", "min_users_per_arm", "paused"]},
        "sticky_users": {"type": "integer", "minimum": 0},
        "audit": {"type": "object"},
        "epochs": {"type": "array", "items": record.clone()}
    }});
    let settings = json!({"type": "object", "additionalProperties": false, "properties": {
        "floor": {"type": ["number", "null"], "minimum": 0, "maximum": 0.5, "description": "Least share of traffic each live arm keeps (0 ..= 1 / arms)."},
        "cadence": {"type": ["string", "null"], "pattern": "^[1-9][0-9]{0,3}(s|m|h)$", "description": "Time between epochs, e.g. \"15m\" (1s ..= 366d)."},
        "min_users_per_arm": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000000000},
        "paused": {"type": ["boolean", "null"]},
        "reset": {"type": "boolean", "description": "Back to the configured allocation and a running bandit."},
        "reason": {"type": ["string", "null"], "description": "Free text, kept in the audit log."}
    }});
    let reason_only = json!({"type": "object", "additionalProperties": false, "properties": {
        "reason": {"type": ["string", "null"], "description": "Free text, kept in the audit log."}}});
    json!({
        "/admin/flags/{flag}/bandit": {
            "get": {
                "summary": "The flag's bandit: status, weights in force, settings, newest epochs",
                "security": [{"bearer": []}],
                "parameters": [flag, {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                "responses": ok(state.clone(), &[])
            },
            "put": {
                "summary": "Change the bandit's settings (audited runtime overrides): floor, cadence, min users per arm, pause, reset",
                "security": [{"bearer": []}],
                "parameters": [flag],
                "requestBody": {"required": false, "content": {"application/json": {"schema": settings}}},
                "responses": ok(state, &[])
            }
        },
        "/admin/flags/{flag}/bandit/epoch": {
            "post": {
                "summary": "Run one epoch now (409 when the bandit is paused, stopped or overridden)",
                "security": [{"bearer": []}],
                "parameters": [flag],
                "requestBody": {"required": false, "content": {"application/json": {"schema": reason_only}}},
                "responses": ok(record.clone(), &["409"])
            }
        },
        "/admin/flags/{flag}/bandit/epochs/{epoch}": {
            "get": {
                "summary": "One epoch's immutable record (replay it with `switchyard ctl bandit replay FLAG EPOCH`)",
                "security": [{"bearer": []}],
                "parameters": [flag, {"name": "epoch", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}}],
                "responses": ok(record, &[])
            }
        }
    })
}

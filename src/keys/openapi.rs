//! The `/admin/keys…` part of the admin API's OpenAPI document.

use serde_json::{json, Value};

use super::record::{BUDGET_PATTERN, EXPIRES_PATTERN, GRACE_PATTERN, NAME_PATTERN};

fn error(code: &str) -> (String, Value) {
    (
        code.to_owned(),
        json!({"$ref": "#/components/responses/Error"}),
    )
}

fn responses(ok_code: &str, ok: Value, errors: &[&str]) -> Value {
    let mut r = serde_json::Map::new();
    r.insert(
        ok_code.to_owned(),
        json!({"description": "OK", "content": {"application/json": {"schema": ok}}}),
    );
    for code in errors
        .iter()
        .chain(&["400", "401", "405", "413", "503", "default"])
    {
        let (k, v) = error(code);
        r.insert(k, v);
    }
    Value::Object(r)
}

fn name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn body(schema: &str, required: bool) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// The paths.
pub fn paths() -> Value {
    let key = json!({"$ref": "#/components/schemas/Key"});
    let with_secret = json!({"allOf": [key, {"type": "object", "required": ["key", "audit"], "properties": {
        "key": {"type": "string", "pattern": "^sk-sy-[0-9a-f]{48}$", "description": "The secret: in this answer only"},
        "audit": {"oneOf": [{"$ref": "#/components/schemas/AuditEntry"}, {"type": "null"}]}}}]});
    let with_audit = json!({"allOf": [key, {"type": "object", "required": ["audit"], "properties": {
        "audit": {"oneOf": [{"$ref": "#/components/schemas/AuditEntry"}, {"type": "null"}]}}}]});
    let sec = json!([{"bearer": []}]);
    json!({
        "/admin/keys": {
            "get": {"summary": "Every client key (never a secret) with its spend this period", "security": sec,
                "responses": responses("200", json!({"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array", "items": key}}}), &[])},
            "post": {"summary": "Create a client key; the answer holds its secret, shown once", "security": sec,
                "requestBody": body("CreateKeyRequest", true),
                "responses": responses("201", with_secret.clone(), &["409"])}
        },
        "/admin/keys/{name}": {
            "get": {"summary": "One client key and its spend (the counter enforcement reads)", "security": sec,
                "parameters": [name_param()], "responses": responses("200", key, &["404"])},
            "delete": {"summary": "Revoke a client key: every replica refuses it within a second", "security": sec,
                "parameters": [name_param()], "requestBody": body("ReasonRequest", false),
                "responses": responses("200", with_audit, &["404"])}
        },
        "/admin/keys/{name}/rotate": {
            "post": {"summary": "A new secret for a key; the old one stays valid for `grace`", "security": sec,
                "parameters": [name_param()], "requestBody": body("RotateKeyRequest", false),
                "responses": responses("200", with_secret, &["404"])}
        }
    })
}

/// The schemas.
pub fn schemas() -> Value {
    let reason =
        json!({"type": ["string", "null"], "description": "Free text, kept in the audit log."});
    let nullable_string = json!({"type": ["string", "null"]});
    json!({
        "Key": {"type": "object", "required": ["name", "status", "flags", "rpm", "tpm", "budget_usd", "budget_period", "expires_at", "attributes", "created_at", "revoked_at", "previous_valid_until", "spend_usd", "spend_period"], "properties": {
            "name": {"type": "string"}, "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
            "flags": {"type": "array", "items": {"type": "string"}},
            "rpm": {"type": ["integer", "null"]}, "tpm": {"type": ["integer", "null"]},
            "budget_usd": {"type": ["number", "null"]}, "budget_period": {"type": ["string", "null"], "enum": ["day", "month", null]},
            "expires_at": nullable_string, "attributes": {"type": "object"}, "created_at": {"type": "string"},
            "revoked_at": nullable_string, "previous_valid_until": nullable_string,
            "spend_usd": {"type": "number", "minimum": 0}, "spend_period": {"type": "string"}}},
        "CreateKeyRequest": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN},
            "flags": {"type": "array", "items": {"type": "string"}, "description": "Flags it may call (empty: every flag)"},
            "rpm": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000_000_000u64},
            "tpm": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000_000_000u64},
            "budget_usd": {"oneOf": [
                {"type": "string", "pattern": BUDGET_PATTERN, "description": "`50/month`, `5/day`"},
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000_000u64, "description": "USD per month"},
                {"type": "null"}]},
            "expires": {"type": ["string", "null"], "pattern": EXPIRES_PATTERN, "description": "Lifetime, e.g. `90d`"},
            "attributes": {"type": "object", "propertyNames": {"minLength": 1}, "additionalProperties": {"type": ["string", "number", "boolean"]}},
            "reason": reason}},
        "RotateKeyRequest": {"type": "object", "additionalProperties": false, "properties": {
            "grace": {"type": ["string", "null"], "pattern": GRACE_PATTERN, "description": "How long the old secret stays valid, e.g. `1h`"},
            "reason": reason}},
        "ReasonRequest": {"type": "object", "additionalProperties": false, "properties": {"reason": reason}}
    })
}

//! Anthropic error bodies → OpenAI error JSON.

use super::*;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
pub(super) struct OpenAiError<'a> {
    pub(super) error: OpenAiErrorBody<'a>,
}

#[derive(Serialize)]
pub(super) struct OpenAiErrorBody<'a> {
    pub(super) message: &'a str,
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) param: Option<()>,
    pub(super) code: Option<&'a str>,
}

/// Anthropic error type → OpenAI error (`type`, `code`).
pub(super) fn openai_error_kind(anthropic_type: &str) -> (&str, Option<&str>) {
    match anthropic_type {
        "invalid_request_error" => ("invalid_request_error", Some("invalid_request")),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "permission_error" => ("invalid_request_error", Some("permission_denied")),
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "rate_limit_error" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "billing_error" => ("insufficient_quota", Some("insufficient_quota")),
        "api_error" => ("server_error", Some("internal_error")),
        "overloaded_error" => ("server_error", Some("overloaded")),
        "timeout_error" => ("server_error", Some("timeout")),
        other => ("upstream_error", Some(other)),
    }
}

pub(super) fn openai_error_json(message: &str, kind: &str, code: Option<&str>) -> Vec<u8> {
    let err = OpenAiError {
        error: OpenAiErrorBody {
            message,
            kind,
            param: None,
            code,
        },
    };
    // Serializing strings into a Vec cannot fail; the fallback keeps this panic-free anyway.
    serde_json::to_vec(&err).unwrap_or_else(|_| {
        br#"{"error":{"message":"upstream error","type":"upstream_error","param":null,"code":null}}"#
            .to_vec()
    })
}

/// `{"type":"error","error":{"type","message"}}` (already parsed) → OpenAI error JSON.
pub(super) fn error_value_to_openai(v: &Value) -> Option<Vec<u8>> {
    if v.get("type").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let err = v.get("error")?;
    let anthropic_type = err.get("type").and_then(Value::as_str)?;
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or(anthropic_type);
    let (kind, code) = openai_error_kind(anthropic_type);
    Some(openai_error_json(message, kind, code))
}

/// An Anthropic error body (`{"type":"error","error":{"type","message"}}`) → OpenAI error JSON
/// bytes (`{"error":{"message","type","param","code"}}`), or `None` if it is not one.
///
/// `overloaded_error`, `api_error` and `timeout_error` become `server_error`,
/// `rate_limit_error` keeps its type with code `rate_limit_exceeded`, client-side errors become
/// `invalid_request_error` with a specific code (`invalid_api_key`, `not_found`, …).
pub fn error_to_openai(body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    error_value_to_openai(&v)
}

//! Fallbacks: why one happened ([`FallbackReason`]) and the rule-based responder that answers
//! when no model should or can ([`Responder`]). The chain itself (stable variation, another
//! variation, rule-based, error) is walked by the proxy's handler.

use bytes::Bytes;
use regex::Regex;
use serde_json::json;

/// Why a request was answered by a fallback (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The provider could not be connected to.
    ConnectError,
    /// The provider did not answer in time.
    Timeout,
    /// The provider answered 5xx.
    Upstream5xx,
    /// The provider answered 429.
    RateLimited,
    /// The provider's circuit is open.
    CircuitOpen,
    /// The provider's answer was not valid.
    InvalidResponse,
    /// A stream broke after the client had received part of it (no failover possible).
    StreamInterrupted,
    /// The flag's kill switch is off: the off variation served everyone.
    KillSwitch,
    /// An operator forced rule-based answers.
    Forced,
}

impl FallbackReason {
    /// Every reason, for metric pre-registration and docs.
    pub const ALL: [FallbackReason; 9] = [
        FallbackReason::ConnectError,
        FallbackReason::Timeout,
        FallbackReason::Upstream5xx,
        FallbackReason::RateLimited,
        FallbackReason::CircuitOpen,
        FallbackReason::InvalidResponse,
        FallbackReason::StreamInterrupted,
        FallbackReason::KillSwitch,
        FallbackReason::Forced,
    ];

    /// The label value and `x-switchyard-fallback` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::ConnectError => "connect_error",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Upstream5xx => "upstream_5xx",
            FallbackReason::RateLimited => "rate_limited",
            FallbackReason::CircuitOpen => "circuit_open",
            FallbackReason::InvalidResponse => "invalid_response",
            FallbackReason::StreamInterrupted => "stream_interrupted",
            FallbackReason::KillSwitch => "kill_switch",
            FallbackReason::Forced => "forced",
        }
    }
}

/// The rule-based responder: the first rule whose pattern matches the last user message
/// answers; otherwise the default reply.
#[derive(Debug)]
pub struct Responder {
    rules: Vec<(Regex, String)>,
    default_reply: String,
}

/// The model name rule-based answers carry.
pub const RULE_BASED_MODEL: &str = "rule-based";

/// The default reply when none is configured.
pub const DEFAULT_REPLY: &str =
    "Sorry, the assistant is unavailable right now. Please try again in a moment.";

impl Responder {
    /// A responder from compiled rules.
    pub fn new(rules: Vec<(Regex, String)>, default_reply: String) -> Responder {
        Responder {
            rules,
            default_reply,
        }
    }

    /// The reply to `last_user_message`.
    pub fn reply(&self, last_user_message: &str) -> &str {
        self.rules
            .iter()
            .find(|(re, _)| re.is_match(last_user_message))
            .map_or(self.default_reply.as_str(), |(_, reply)| reply.as_str())
    }

    /// A complete `chat.completion` answer.
    pub fn completion(&self, last_user_message: &str, created: u64) -> Bytes {
        let reply = self.reply(last_user_message);
        let v = json!({
            "id": format!("chatcmpl-rb{:016x}", fastrand::u64(..)),
            "object": "chat.completion",
            "created": created,
            "model": RULE_BASED_MODEL,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        });
        Bytes::from(v.to_string())
    }

    /// The same answer as an SSE stream (role, content, finish, optional usage, `[DONE]`).
    pub fn stream(&self, last_user_message: &str, created: u64, include_usage: bool) -> Bytes {
        let reply = self.reply(last_user_message);
        let id = format!("chatcmpl-rb{:016x}", fastrand::u64(..));
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": RULE_BASED_MODEL,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            })
        };
        let mut out = String::new();
        for event in [
            chunk(json!({"role": "assistant", "content": ""}), json!(null)),
            chunk(json!({"content": reply}), json!(null)),
            chunk(json!({}), json!("stop")),
        ] {
            out.push_str(&format!("data: {event}\n\n"));
        }
        if include_usage {
            let usage = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": RULE_BASED_MODEL,
                "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            });
            out.push_str(&format!("data: {usage}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        Bytes::from(out)
    }
}

/// The text of the last user message of a raw `messages` list (string content, or the text
/// parts of multi-part content).
pub fn last_user_text(messages: &[&serde_json::value::RawValue]) -> String {
    #[derive(serde::Deserialize)]
    struct M {
        role: String,
        #[serde(default)]
        content: serde_json::Value,
    }
    for raw in messages.iter().rev() {
        let Ok(m) = serde_json::from_str::<M>(raw.get()) else {
            continue;
        };
        if m.role != "user" {
            continue;
        }
        return match m.content {
            serde_json::Value::String(s) => s,
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responder() -> Responder {
        Responder::new(
            vec![
                (
                    Regex::new("(?i)refund").unwrap(),
                    "Refunds take 5 days.".into(),
                ),
                (
                    Regex::new("(?i)password").unwrap(),
                    "Use the reset link.".into(),
                ),
            ],
            "Default.".into(),
        )
    }

    #[test]
    fn the_first_matching_rule_answers_else_the_default() {
        let r = responder();
        assert_eq!(
            r.reply("I want a REFUND for my password"),
            "Refunds take 5 days."
        );
        assert_eq!(r.reply("forgot my password"), "Use the reset link.");
        assert_eq!(r.reply("hello"), "Default.");
    }

    #[test]
    fn answers_are_openai_shaped() {
        let r = responder();
        let v: serde_json::Value = serde_json::from_slice(&r.completion("refund?", 1)).unwrap();
        assert_eq!(v["model"], "rule-based");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Refunds take 5 days."
        );
        let s = String::from_utf8(r.stream("x", 1, true).to_vec()).unwrap();
        assert!(s.ends_with("data: [DONE]\n\n"));
        assert!(s.contains("\"usage\""));
        assert!(!String::from_utf8(r.stream("x", 1, false).to_vec())
            .unwrap()
            .contains("usage"));
    }

    #[test]
    fn last_user_text_reads_strings_and_parts() {
        let a =
            serde_json::value::RawValue::from_string(r#"{"role":"user","content":"one"}"#.into())
                .unwrap();
        let b = serde_json::value::RawValue::from_string(
            r#"{"role":"assistant","content":"x"}"#.into(),
        )
        .unwrap();
        let c = serde_json::value::RawValue::from_string(r#"{"role":"user","content":[{"type":"text","text":"two"},{"type":"image_url","image_url":{"url":"u"}}]}"#.into()).unwrap();
        assert_eq!(last_user_text(&[&a, &b]), "one");
        assert_eq!(last_user_text(&[&a, &c, &b]), "two");
    }
}

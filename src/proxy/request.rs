//! Phase 1, parse: the body becomes a [`ChatRequest`] that keeps every top-level field as raw
//! JSON, in order. Only the fields the proxy reads are decoded; the rest are forwarded byte for
//! byte.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::openai::ApiError;

/// A JSON object as an ordered list of raw members.
#[derive(Debug, Default)]
pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                read_members(&mut map, None).map(RawObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// `messages` taken apart by [`read_members`]: its elements (the last `messages` wins), and its
/// place among the other members.
type MessagesSlot<'de> = (Option<RawMessages<'de>>, usize);

/// An object's members in order, as raw JSON. A repeated key: the last value wins, in the first
/// one's place, as in most JSON parsers. With `messages`, that member is split into its
/// elements instead of being kept raw.
fn read_members<'de, A: MapAccess<'de>>(
    map: &mut A,
    mut messages: Option<&mut MessagesSlot<'de>>,
) -> Result<Vec<(Cow<'de, str>, &'de RawValue)>, A::Error> {
    let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> =
        Vec::with_capacity(map.size_hint().unwrap_or(8));
    while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
        if let Some(slot) = messages.as_deref_mut().filter(|_| k == "messages") {
            if slot.0.is_none() {
                slot.1 = fields.len();
            }
            slot.0 = Some(map.next_value_seed(MessagesSeed)?);
            continue;
        }
        let v: &'de RawValue = map.next_value()?;
        if let Some(slot) = fields.iter_mut().find(|(name, _)| *name == k) {
            slot.1 = v;
        } else {
            fields.push((k, v));
        }
    }
    Ok(fields)
}

impl<'a> RawObject<'a> {
    /// Parses an object, or says why not.
    pub fn parse(bytes: &'a [u8]) -> Result<RawObject<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A member by name.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// One message's role, decoded from its raw form.
#[derive(Debug)]
pub struct Message<'a> {
    /// `system`, `developer`, `user`, `assistant`, `tool`…
    pub role: Cow<'a, str>,
    /// The message, untouched.
    pub raw: &'a RawValue,
}

/// One tool's function name, decoded from its raw form.
#[derive(Debug)]
pub struct Tool<'a> {
    /// The function name (`None` for tools that are not functions).
    pub name: Option<Cow<'a, str>>,
    /// The tool, untouched.
    pub raw: &'a RawValue,
}

/// `messages` as the top-level pass found it: its elements, or not an array.
type RawMessages<'a> = Result<Vec<&'a RawValue>, ()>;

/// The body's top level in one pass: every member but `messages` as raw JSON, and the
/// elements of `messages` (so the array is not scanned a second time to split it).
struct TopLevel<'a> {
    fields: RawObject<'a>,
    messages: Option<RawMessages<'a>>,
    messages_at: usize,
}

struct MessagesSeed;

impl<'de> serde::de::DeserializeSeed<'de> for MessagesSeed {
    type Value = RawMessages<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMessages<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(m) = seq.next_element::<&'de RawValue>()? {
                    list.push(m);
                }
                Ok(Ok(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Err(()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Err(()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
                let mut slot = (None, 0);
                let fields = read_members(&mut map, Some(&mut slot))?;
                Ok(TopLevel {
                    fields: RawObject(fields),
                    messages: slot.0,
                    messages_at: slot.1,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// A parsed chat completion request.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    /// Every top-level member but `messages`, in order.
    pub fields: RawObject<'a>,
    /// Where `messages` stood among the top-level members (an index into `fields`).
    pub messages_at: usize,
    /// The requested model (a flag key or a passthrough model).
    pub model: Cow<'a, str>,
    /// The messages.
    pub messages: Vec<Message<'a>>,
    /// `tools`, when present.
    pub tools: Option<Vec<Tool<'a>>>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for usage in the stream.
    pub include_usage: bool,
    /// `max_tokens`, when present.
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens`, when present.
    pub max_completion_tokens: Option<u64>,
    /// The function named by an object `tool_choice`, when present.
    pub tool_choice_function: Option<Cow<'a, str>>,
    /// Top-level string members that may carry the bucketing id (`user`, `safety_identifier`).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The end of the JSON string whose contents start at `i` (the index of its closing quote).
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let j = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[j] == b'\\' {
            i = j + 2;
        } else {
            return Some(j);
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Skips the JSON value starting at `i`: the index of the `,`, `}` or `]` after it.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *b.get(i)? {
            b'"' => i = string_end(b, i + 1)? + 1,
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' if depth == 0 => return Some(i),
            b'}' | b']' => {
                depth -= 1;
                i += 1;
            }
            b',' if depth == 0 => return Some(i),
            _ => i += 1,
        }
    }
}

/// A message's `role`: its top-level members are scanned up to `role` and no further (the
/// content usually comes after it). The text is valid JSON, since the whole body was parsed
/// once already; `None` when it is not an object with a string `role` (of repeated `role`
/// members the first counts).
fn role_of(raw: &str) -> Option<Cow<'_, str>> {
    let b = raw.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(b, i + 1)?;
        let key = raw.get(i..=key_end)?;
        i = skip_ws(b, key_end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let is_role = key == "\"role\""
            || (key.contains('\\')
                && serde_json::from_str::<String>(key).is_ok_and(|k| k == "role"));
        if is_role {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let end = string_end(b, i + 1)?;
            return serde_json::from_str::<Cow<'_, str>>(raw.get(i..=end)?).ok();
        }
        i = skip_value(b, i)?;
    }
}

#[derive(Deserialize)]
struct ToolShape<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionName<'a>>,
}

#[derive(Deserialize)]
struct FunctionName<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ToolChoiceObject<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionName<'a>>,
}

/// The JSON type a known field must have.
#[derive(Clone, Copy)]
enum Kind {
    Number,
    Integer,
    Bool,
    String,
    Object,
    StringOrArray,
    StringOrObject,
}

/// Fields with a known type that the proxy checks, so a wrong type is a clear 400 naming the
/// field rather than an opaque provider error.
const TYPED_FIELDS: &[(&str, Kind)] = &[
    ("temperature", Kind::Number),
    ("top_p", Kind::Number),
    ("presence_penalty", Kind::Number),
    ("frequency_penalty", Kind::Number),
    ("n", Kind::Integer),
    ("seed", Kind::Integer),
    ("top_logprobs", Kind::Integer),
    ("logprobs", Kind::Bool),
    ("parallel_tool_calls", Kind::Bool),
    ("store", Kind::Bool),
    ("user", Kind::String),
    ("safety_identifier", Kind::String),
    ("reasoning_effort", Kind::String),
    ("service_tier", Kind::String),
    ("metadata", Kind::Object),
    ("logit_bias", Kind::Object),
    ("response_format", Kind::Object),
    ("stream_options", Kind::Object),
    ("stop", Kind::StringOrArray),
    ("tool_choice", Kind::StringOrObject),
];

fn kind_of(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

fn check_kind(name: &'static str, raw: &RawValue, kind: Kind) -> Result<(), ApiError> {
    let text = raw.get();
    if text == "null" {
        return Ok(());
    }
    let first = kind_of(raw);
    let ok = match kind {
        Kind::Number => first == b'-' || first.is_ascii_digit(),
        Kind::Integer => {
            (first == b'-' || first.is_ascii_digit()) && !text.contains(['.', 'e', 'E'])
        }
        Kind::Bool => text == "true" || text == "false",
        Kind::String => first == b'"',
        Kind::Object => first == b'{',
        Kind::StringOrArray => first == b'"' || first == b'[',
        Kind::StringOrObject => first == b'"' || first == b'{',
    };
    if ok {
        Ok(())
    } else {
        let expected = match kind {
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::Bool => "a boolean",
            Kind::String => "a string",
            Kind::Object => "an object",
            Kind::StringOrArray => "a string or an array",
            Kind::StringOrObject => "a string or an object",
        };
        Err(ApiError::field(
            name,
            format!("`{name}` must be {expected}"),
        ))
    }
}

fn positive_int(name: &'static str, raw: &RawValue) -> Result<Option<u64>, ApiError> {
    if raw.get() == "null" {
        return Ok(None);
    }
    match serde_json::from_str::<u64>(raw.get()) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(ApiError::field(
            name,
            format!("`{name}` must be a positive integer"),
        )),
    }
}

impl<'a> ChatRequest<'a> {
    /// Parses and checks a body.
    pub fn parse(body: &'a [u8]) -> Result<ChatRequest<'a>, ApiError> {
        let TopLevel {
            fields,
            messages,
            messages_at,
        } = match serde_json::from_slice::<TopLevel<'a>>(body) {
            Ok(f) => f,
            Err(e) if e.is_data() => {
                return Err(ApiError::InvalidJson(
                    "the request body must be a JSON object".into(),
                ))
            }
            Err(e) => {
                return Err(ApiError::InvalidJson(format!(
                    "the request body is not valid JSON: {e}"
                )))
            }
        };
        for (name, raw) in &fields.0 {
            if let Some((name, kind)) = TYPED_FIELDS.iter().find(|(n, _)| n == name) {
                check_kind(name, raw, *kind)?;
            }
        }
        let model = match fields.get("model") {
            None => return Err(ApiError::field("model", "`model` is required")),
            Some(raw) => match serde_json::from_str::<Cow<'a, str>>(raw.get()) {
                Ok(m) if !m.trim().is_empty() => m,
                Ok(_) => return Err(ApiError::field("model", "`model` must not be empty")),
                Err(_) => return Err(ApiError::field("model", "`model` must be a string")),
            },
        };
        let messages = match messages {
            None => return Err(ApiError::field("messages", "`messages` is required")),
            Some(list) => {
                let list = list.map_err(|()| {
                    ApiError::field("messages", "`messages` must be an array of message objects")
                })?;
                if list.is_empty() {
                    return Err(ApiError::field("messages", "`messages` must not be empty"));
                }
                let mut messages = Vec::with_capacity(list.len());
                for (i, m) in list.into_iter().enumerate() {
                    let role = role_of(m.get()).ok_or_else(|| {
                        ApiError::field(
                            "messages",
                            format!("`messages[{i}]` must be an object with a string `role`"),
                        )
                    })?;
                    messages.push(Message { role, raw: m });
                }
                messages
            }
        };
        let tools = match fields.get("tools") {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => {
                let list: Vec<&'a RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
                    ApiError::field("tools", "`tools` must be an array of tool objects")
                })?;
                let mut tools = Vec::with_capacity(list.len());
                for (i, t) in list.into_iter().enumerate() {
                    let shape: ToolShape<'a> = serde_json::from_str(t.get()).map_err(|_| {
                        ApiError::field("tools", format!("`tools[{i}]` must be a tool object"))
                    })?;
                    tools.push(Tool {
                        name: shape.function.map(|f| f.name),
                        raw: t,
                    });
                }
                Some(tools)
            }
        };
        let stream = match fields.get("stream") {
            None => false,
            Some(raw) => match raw.get() {
                "true" => true,
                "false" | "null" => false,
                _ => return Err(ApiError::field("stream", "`stream` must be a boolean")),
            },
        };
        let include_usage = match fields.get("stream_options") {
            Some(raw) if raw.get() != "null" => serde_json::from_str::<StreamOptions>(raw.get())
                .map_err(|_| {
                    ApiError::field(
                        "stream_options",
                        "`stream_options.include_usage` must be a boolean",
                    )
                })?
                .include_usage
                .unwrap_or(false),
            _ => false,
        };
        let max_tokens = fields
            .get("max_tokens")
            .map(|r| positive_int("max_tokens", r))
            .transpose()?
            .flatten();
        let max_completion_tokens = fields
            .get("max_completion_tokens")
            .map(|r| positive_int("max_completion_tokens", r))
            .transpose()?
            .flatten();
        let tool_choice_function = match fields.get("tool_choice") {
            Some(raw) if kind_of(raw) == b'{' => {
                serde_json::from_str::<ToolChoiceObject<'a>>(raw.get())
                    .ok()
                    .and_then(|t| t.function)
                    .map(|f| f.name)
            }
            _ => None,
        };
        let metadata = match fields.get("metadata") {
            Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get()).ok(),
            _ => None,
        };
        Ok(ChatRequest {
            model,
            messages,
            messages_at,
            tools,
            stream,
            include_usage,
            max_tokens,
            max_completion_tokens,
            tool_choice_function,
            metadata,
            fields,
        })
    }

    /// A top-level string member (`user`, `safety_identifier`, …).
    pub fn string_field(&self, name: &str) -> Option<Cow<'a, str>> {
        let raw = self.fields.get(name)?;
        serde_json::from_str::<Cow<'a, str>>(raw.get()).ok()
    }
}

impl crate::api::Inbound for ChatRequest<'_> {
    fn api(&self) -> crate::api::ClientApi {
        crate::api::ClientApi::Chat
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self) -> bool {
        self.stream
    }

    fn include_usage(&self) -> bool {
        self.include_usage
    }

    fn body_string(&self, field: &str) -> Option<Cow<'_, str>> {
        self.string_field(field)
    }

    fn metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.metadata.as_ref()
    }

    fn last_user_text(&self) -> String {
        let messages: Vec<&RawValue> = self.messages.iter().map(|m| m.raw).collect();
        crate::fallback::last_user_text(&messages)
    }

    fn rewrite_native(
        &self,
        variation: Option<&crate::flags::Variation>,
        mode: crate::flags::PromptMode,
    ) -> Result<Vec<u8>, ApiError> {
        let opts = crate::proxy::rewrite::RewriteOptions {
            prompt_mode: mode,
            force_stream_usage: true,
        };
        Ok(match variation {
            Some(v) => crate::proxy::rewrite::rewrite(self, v, opts),
            None => crate::proxy::rewrite::rewrite_passthrough(self, opts),
        })
    }

    fn to_chat(&self) -> Result<Vec<u8>, ApiError> {
        self.rewrite_native(None, crate::flags::PromptMode::Insert)
    }

    fn answer_from_chat(&self, chat: &[u8]) -> Result<Vec<u8>, ApiError> {
        Ok(chat.to_vec())
    }

    fn stream_from_chat(&self, chat: crate::body::Body) -> crate::body::Body {
        chat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_of_reads_the_top_level_role_only() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"role":"user","content":"hi"}"#, Some("user")),
            (
                r#" { "content" : "a \"role\": x" , "role" : "assistant" } "#,
                Some("assistant"),
            ),
            (
                r#"{"content":[{"type":"text","role":"nested"}],"role":"tool"}"#,
                Some("tool"),
            ),
            (
                r#"{"content":{"role":"nested","a":[1,{"b":"]"}]},"role":"developer"}"#,
                Some("developer"),
            ),
            (r#"{"name":"x\\","role":"system"}"#, Some("system")),
            (r#"{"r\u006fle":"user"}"#, Some("user")),
            (r#"{"role":"us\u0065r"}"#, Some("user")),
            (
                r#"{"n":-1.5e3,"t":true,"z":null,"role":"user"}"#,
                Some("user"),
            ),
            (r#"{"role":null}"#, None),
            (r#"{"role":7}"#, None),
            (r#"{"content":"hi"}"#, None),
            (r#"{}"#, None),
            (r#""user""#, None),
            (r#"["role","user"]"#, None),
        ];
        for (raw, want) in cases {
            assert_eq!(role_of(raw).as_deref(), *want, "{raw}");
        }
    }

    #[test]
    fn messages_keep_their_place_and_a_passthrough_is_byte_identical() {
        use crate::proxy::rewrite::{rewrite_passthrough, RewriteOptions};
        let opts = RewriteOptions {
            prompt_mode: crate::flags::PromptMode::Insert,
            force_stream_usage: false,
        };
        for body in [
            r#"{"messages":[{"role":"user","content":"a"}],"model":"m","n":1}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"a"}],"n":1}"#,
            r#"{"model":"m","n":1,"messages":[{"content":"x","role":"user"}]}"#,
        ] {
            let req = ChatRequest::parse(body.as_bytes()).map_err(|e| e.to_string());
            let req = req.unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&rewrite_passthrough(&req, opts)),
                body
            );
        }
        // A repeated `messages`: the last value, in the first one's place.
        let req = ChatRequest::parse(
            br#"{"messages":[],"model":"m","messages":[{"role":"user","content":"b"}]}"#,
        );
        let req = req.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            String::from_utf8_lossy(&rewrite_passthrough(&req, opts)),
            r#"{"messages":[{"role":"user","content":"b"}],"model":"m"}"#
        );
    }

    #[test]
    fn messages_of_the_wrong_type_are_a_field_error() {
        for body in [
            r#"{"model":"m","messages":{"role":"user"}}"#,
            r#"{"model":"m","messages":"hi"}"#,
            r#"{"model":"m","messages":null}"#,
            r#"{"model":"m","messages":3}"#,
            r#"{"model":"m","messages":[1,2]}"#,
        ] {
            let err = ChatRequest::parse(body.as_bytes())
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert!(
                err.as_ref().is_err_and(|e| e.contains("messages")),
                "{body}: {err:?}"
            );
        }
        let err = ChatRequest::parse(br#"{"model":"m","messages":[}"#).map(|_| ());
        assert!(err.is_err_and(|e| e.to_string().contains("not valid JSON")));
    }

    #[test]
    fn parse_rejects_a_message_without_a_string_role() {
        let err =
            ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user"},{"content":"x"}]}"#)
                .map(|_| ())
                .map_err(|e| e.to_string());
        assert!(err.is_err_and(|e| e.contains("messages[1]")));
    }
}

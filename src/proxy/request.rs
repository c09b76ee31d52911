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
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    // A repeated key: the last one wins, as in most JSON parsers.
                    if let Some(slot) = fields.iter_mut().find(|(name, _)| *name == k) {
                        slot.1 = v;
                    } else {
                        fields.push((k, v));
                    }
                }
                Ok(RawObject(fields))
            }
        }
        d.deserialize_map(V)
    }
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

/// A parsed chat completion request.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    /// Every top-level member, in order.
    pub fields: RawObject<'a>,
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

#[derive(Deserialize)]
struct RoleOnly<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
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
        let fields = match RawObject::parse(body) {
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
        for (name, kind) in TYPED_FIELDS {
            if let Some(raw) = fields.get(name) {
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
        let messages = match fields.get("messages") {
            None => return Err(ApiError::field("messages", "`messages` is required")),
            Some(raw) => {
                let list: Vec<&'a RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
                    ApiError::field("messages", "`messages` must be an array of message objects")
                })?;
                if list.is_empty() {
                    return Err(ApiError::field("messages", "`messages` must not be empty"));
                }
                let mut messages = Vec::with_capacity(list.len());
                for (i, m) in list.into_iter().enumerate() {
                    let role: RoleOnly<'a> = serde_json::from_str(m.get()).map_err(|_| {
                        ApiError::field(
                            "messages",
                            format!("`messages[{i}]` must be an object with a string `role`"),
                        )
                    })?;
                    messages.push(Message {
                        role: role.role,
                        raw: m,
                    });
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

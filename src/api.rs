//! The client APIs the main listener speaks. Each is one module that parses its body into the
//! view the request path needs ([`Inbound`]: model, stream, identity fields), rewrites it for
//! a variation when the provider accepts that format as it is, translates it to chat (the
//! pivot) when it does not, and renders answers, streams and errors in its own shape.
//!
//! | module | endpoint |
//! |---|---|
//! | [`crate::proxy::request`] | `POST /v1/chat/completions` (the pivot itself) |
//! | [`responses`] | `POST /v1/responses` |
//! | [`messages`] | `POST /v1/messages`, `POST /v1/messages/count_tokens` |
//! | [`embeddings`] | `POST /v1/embeddings` |
//! | [`passthrough`] | any other `/v1/*` path, streamed to the `[passthrough]` provider |
//! | [`ofrep`] | OpenFeature's remote evaluation (`/ofrep/v1/…`): flags read by apps |
//!
//! Adding a client API means one module here implementing [`Inbound`], and one route.

pub mod embeddings;
pub mod messages;
pub mod ofrep;
pub mod passthrough;
pub mod responses;
pub mod sse;

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::body::Body;
use crate::flags::{PromptMode, ToolPolicy, Variation};
use crate::openai::ApiError;
use crate::providers::WireFormat;
use crate::proxy::request::RawObject;

/// A client API: the `api` metric label, and the shape answers and errors take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientApi {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (and `count_tokens`).
    Messages,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// Any other `/v1/*` path.
    Passthrough,
}

impl ClientApi {
    /// Every API, in label order.
    pub const ALL: [ClientApi; 5] = [
        ClientApi::Chat,
        ClientApi::Responses,
        ClientApi::Messages,
        ClientApi::Embeddings,
        ClientApi::Passthrough,
    ];

    /// The `api` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientApi::Chat => "chat",
            ClientApi::Responses => "responses",
            ClientApi::Messages => "messages",
            ClientApi::Embeddings => "embeddings",
            ClientApi::Passthrough => "passthrough",
        }
    }

    /// Position in [`ClientApi::ALL`].
    pub fn index(self) -> usize {
        match self {
            ClientApi::Chat => 0,
            ClientApi::Responses => 1,
            ClientApi::Messages => 2,
            ClientApi::Embeddings => 3,
            ClientApi::Passthrough => 4,
        }
    }

    /// The wire format the client speaks (passthrough has none: it is not read).
    pub fn format(self) -> WireFormat {
        match self {
            ClientApi::Chat | ClientApi::Passthrough => WireFormat::Chat,
            ClientApi::Responses => WireFormat::Responses,
            ClientApi::Messages => WireFormat::Messages,
            ClientApi::Embeddings => WireFormat::Embeddings,
        }
    }

    /// Whether errors take Anthropic's envelope rather than OpenAI's.
    pub fn anthropic_errors(self) -> bool {
        self == ClientApi::Messages
    }
}

/// What the request path needs from a parsed request, whatever API it came in.
pub trait Inbound: Send + Sync {
    /// The API it came in.
    fn api(&self) -> ClientApi;
    /// The decoded top level, for APIs parsed with [`parse_object`] (the view's defaults read it).
    fn parsed(&self) -> Option<&Parsed<'_>> {
        None
    }
    /// `model`: a flag key, or a model for the passthrough provider.
    fn model(&self) -> &str {
        self.parsed().map_or("", Parsed::model)
    }
    /// Whether the client asked for a stream.
    fn stream(&self) -> bool {
        self.parsed().is_some_and(Parsed::stream)
    }
    /// Whether a chat client asked for usage in its stream (other APIs always carry it).
    fn include_usage(&self) -> bool {
        true
    }
    /// A top-level string member named by a `body:FIELD` identity source.
    fn body_string(&self, field: &str) -> Option<Cow<'_, str>> {
        self.parsed().and_then(|p| p.string(field))
    }
    /// `metadata`, for `metadata:KEY` identity sources and attributes.
    fn metadata(&self) -> Option<&Map<String, Value>> {
        self.parsed().and_then(Parsed::metadata)
    }
    /// The text of the last user turn (what a rule-based answer responds to).
    fn last_user_text(&self) -> String;
    /// `previous_response_id` (Responses only): the stored response this request continues.
    fn previous_response_id(&self) -> Option<&str> {
        None
    }
    /// Whether a rule-based answer can stand in for the provider's (not for embeddings).
    fn rule_based(&self) -> bool {
        true
    }
    /// The body in the client's own format for `variation` (`None`: only `model` kept, for the
    /// passthrough provider): the members the variation governs rewritten, every other member
    /// byte for byte.
    fn rewrite_native(
        &self,
        variation: Option<&Variation>,
        mode: PromptMode,
    ) -> Result<Vec<u8>, ApiError>;
    /// The request as a chat completion request (the pivot), or a 400 naming the field that
    /// chat cannot express.
    fn to_chat(&self) -> Result<Vec<u8>, ApiError>;
    /// A complete chat answer in this API's shape.
    fn answer_from_chat(&self, chat: &[u8]) -> Result<Vec<u8>, ApiError>;
    /// A chat SSE stream in this API's stream shape.
    fn stream_from_chat(&self, chat: Body) -> Body;
}

/// A JSON body's top level: its raw members in order (for native rewrites) and the same
/// object decoded (for the view and translations).
pub struct Parsed<'a> {
    /// The members, untouched.
    pub raw: RawObject<'a>,
    /// The members, decoded.
    pub value: Map<String, Value>,
}

/// Parses a request body that must be a JSON object, with `model` a non-empty string.
pub fn parse_object(body: &[u8]) -> Result<Parsed<'_>, ApiError> {
    let raw = match RawObject::parse(body) {
        Ok(r) => r,
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
    let mut value = Map::with_capacity(raw.0.len());
    for (k, v) in &raw.0 {
        let decoded: Value = serde_json::from_str(v.get()).map_err(|e| {
            ApiError::InvalidJson(format!("the request body is not valid JSON: {e}"))
        })?;
        value.insert(k.to_string(), decoded);
    }
    match value.get("model") {
        None => return Err(ApiError::field("model", "`model` is required")),
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(Value::String(_)) => {
            return Err(ApiError::field("model", "`model` must not be empty"))
        }
        Some(_) => return Err(ApiError::field("model", "`model` must be a string")),
    }
    if let Some(s) = value.get("stream") {
        if !matches!(s, Value::Bool(_) | Value::Null) {
            return Err(ApiError::field("stream", "`stream` must be a boolean"));
        }
    }
    if let Some(m) = value.get("metadata") {
        if !matches!(m, Value::Object(_) | Value::Null) {
            return Err(ApiError::field("metadata", "`metadata` must be an object"));
        }
    }
    Ok(Parsed { raw, value })
}

impl Parsed<'_> {
    /// `model`.
    pub fn model(&self) -> &str {
        self.value
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `stream`.
    pub fn stream(&self) -> bool {
        self.value
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// A string member.
    pub fn string(&self, key: &str) -> Option<Cow<'_, str>> {
        self.value
            .get(key)
            .and_then(Value::as_str)
            .map(Cow::Borrowed)
    }

    /// `metadata`, when an object.
    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.value.get("metadata").and_then(Value::as_object)
    }

    /// A positive integer member, or a 400 naming it.
    pub fn positive_int(&self, key: &'static str) -> Result<Option<u64>, ApiError> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n)),
                _ => Err(ApiError::field(
                    key,
                    format!("`{key}` must be a positive integer"),
                )),
            },
        }
    }

    /// A number member, or a 400 naming it.
    pub fn number(&self, key: &'static str) -> Result<Option<f64>, ApiError> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ApiError::field(key, format!("`{key}` must be a number"))),
        }
    }
}

/// A member edit for [`rewrite_object`]: `Some(json)` replaces (or adds) it, `None` removes it.
pub type Edit = (&'static str, Option<String>);

/// The object with `edits` applied: edited members keep their place, added ones go last,
/// every other member is copied byte for byte.
pub fn rewrite_object(raw: &RawObject<'_>, edits: &[Edit]) -> Vec<u8> {
    let len: usize = raw.0.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
    let extra: usize = edits
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len) + 4)
        .sum();
    let mut out = Vec::with_capacity(len + extra + 2);
    out.push(b'{');
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, key: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    };
    for (k, v) in &raw.0 {
        match edits.iter().find(|(name, _)| *name == k.as_ref()) {
            Some((_, Some(value))) => put(&mut out, k, value),
            Some((_, None)) => {}
            None => put(&mut out, k, v.get()),
        }
    }
    for (name, value) in edits {
        if let Some(value) = value {
            if raw.get(name).is_none() {
                put(&mut out, name, value);
            }
        }
    }
    out.push(b'}');
    out
}

/// The tools a policy keeps, by each tool's name (`name_of`): `None` when all pass unchanged.
pub fn kept_tools<'t>(
    tools: &'t [Value],
    policy: &ToolPolicy,
    name_of: impl Fn(&Value) -> Option<&str>,
) -> Option<Vec<&'t Value>> {
    match policy {
        ToolPolicy::All => None,
        ToolPolicy::None => Some(Vec::new()),
        ToolPolicy::Allow { tools: allowed, .. } => Some(
            tools
                .iter()
                .filter(|t| name_of(t).is_some_and(|n| allowed.iter().any(|a| a == n)))
                .collect(),
        ),
    }
}

/// A JSON number written the way the rewrite writes temperatures.
pub fn number_json(x: f64) -> String {
    serde_json::Number::from_f64(x).map_or_else(|| "null".to_owned(), |n| n.to_string())
}

/// A value as JSON text.
pub fn to_json(v: &Value) -> String {
    v.to_string()
}

/// A 400 naming `field`: `what` cannot be sent to a chat-only provider; `instead` says where
/// the variation should go.
pub fn untranslatable(
    field: &'static str,
    what: impl std::fmt::Display,
    instead: &str,
) -> ApiError {
    ApiError::field(
        field,
        format!("{what} cannot be expressed for a provider that speaks only chat completions; route this variation to {instead}"),
    )
}

/// `stream` on a translated chat request: usage asked for too, so the answer's can be counted
/// and reported in the client's shape.
pub fn chat_stream(chat: &mut Map<String, Value>, stream: &Value) {
    chat.insert("stream".into(), stream.clone());
    if stream == &Value::Bool(true) {
        chat.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
}

/// A new unique id with a prefix (`resp_`, `msg_`, `fc_`…).
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

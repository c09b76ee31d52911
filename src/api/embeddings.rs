//! `POST /v1/embeddings`: decided, rewritten (`model` only: embeddings have no prompt and no
//! temperature) and measured like a chat request. The variation's provider must accept
//! embeddings (`apis`); there is no chat form of an embedding request to translate to.

use serde_json::Value;

use super::{parse_object, ClientApi, Edit, Inbound, Parsed};
use crate::body::Body;
use crate::flags::{PromptMode, Variation};
use crate::openai::{ApiError, Usage};

/// A parsed embeddings request.
pub struct EmbeddingsRequest<'a> {
    body: &'a [u8],
    parsed: Parsed<'a>,
}

impl<'a> EmbeddingsRequest<'a> {
    /// Parses and checks a body.
    pub fn parse(body: &'a [u8]) -> Result<EmbeddingsRequest<'a>, ApiError> {
        let parsed = parse_object(body)?;
        match parsed.value.get("input") {
            Some(Value::String(_)) => {}
            Some(Value::Array(a)) if !a.is_empty() => {}
            Some(Value::Array(_)) => {
                return Err(ApiError::field("input", "`input` must not be empty"))
            }
            None => return Err(ApiError::field("input", "`input` is required")),
            Some(_) => {
                return Err(ApiError::field(
                    "input",
                    "`input` must be a string, an array of strings or an array of token arrays",
                ))
            }
        }
        if parsed.stream() {
            return Err(ApiError::field("stream", "embeddings cannot be streamed"));
        }
        parsed.positive_int("dimensions")?;
        Ok(EmbeddingsRequest { body, parsed })
    }
}

impl Inbound for EmbeddingsRequest<'_> {
    fn api(&self) -> ClientApi {
        ClientApi::Embeddings
    }

    fn parsed(&self) -> Option<&Parsed<'_>> {
        Some(&self.parsed)
    }

    fn stream(&self) -> bool {
        false
    }

    fn last_user_text(&self) -> String {
        String::new()
    }

    fn rule_based(&self) -> bool {
        false
    }

    fn rewrite_native(
        &self,
        variation: Option<&Variation>,
        _mode: PromptMode,
    ) -> Result<Vec<u8>, ApiError> {
        let Some(v) = variation else {
            return Ok(self.body.to_vec());
        };
        let edits: [Edit; 1] = [("model", Some(Value::from(v.model_id.as_str()).to_string()))];
        Ok(super::rewrite_object(&self.parsed.raw, &edits))
    }

    fn to_chat(&self) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::field(
            "model",
            "the variation's provider does not accept embeddings: list \"embeddings\" in its `apis`",
        ))
    }

    fn answer_from_chat(&self, _chat: &[u8]) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::Internal("embeddings have no chat form".into()))
    }

    fn stream_from_chat(&self, chat: Body) -> Body {
        chat
    }
}

/// Usage of an embeddings answer: `None` when `body` is not a list of embeddings.
pub fn read_answer(body: &[u8]) -> Option<Option<Usage>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("data")?.as_array()?;
    Some(v.get("usage").map(|u| Usage {
        prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: 0,
    }))
}

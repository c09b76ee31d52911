//! A per-request record: what the request path knows as it goes ([`Draft`], carried by the
//! request's recorder) and the line written when it ends ([`RequestRecord`]).

use std::time::Duration;

use serde::Serialize;

use super::Sink;
use crate::api::ClientApi;
use crate::app::Live;
use crate::metrics::{Outcome, NONE, PASSTHROUGH};
use crate::openai::Usage;
use crate::proxy::context::Route;

/// One request's record, as written (`docs/schemas/request.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Always `"request"`.
    pub kind: &'static str,
    /// Unix milliseconds at which the request ended.
    pub at_ms: u64,
    /// `x-request-id`.
    pub request_id: String,
    /// The client API.
    pub api: &'static str,
    /// The flag (`_passthrough` for a model that is no flag, `_none` before one was known).
    pub flag: String,
    /// The variation decided.
    pub variation: String,
    /// The rule that decided, if any.
    pub rule: Option<String>,
    /// The provider of the decided variation.
    pub provider: String,
    /// Its model.
    pub model: String,
    /// `success`, `fallback`, `cached`, `client_error`, `upstream_error`, `client_cancelled`.
    pub outcome: &'static str,
    /// Why a fallback answered, if one did.
    pub fallback_reason: Option<&'static str>,
    /// From arrival to the last byte.
    pub latency_seconds: f64,
    /// From arrival to the first chunk of a stream.
    pub ttft_seconds: Option<f64>,
    /// Prompt tokens reported by the provider.
    pub tokens_in: Option<u64>,
    /// Completion tokens reported by the provider.
    pub tokens_out: Option<u64>,
    /// Estimated cost from `[prices]`.
    pub cost_usd: Option<f64>,
    /// The last user turn (only with `include_content`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The complete answer's body (only with `include_content`; not for streams).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// What the request path learns before the request ends.
#[derive(Debug)]
pub struct Draft {
    sink: Sink,
    request_id: String,
    /// The deciding rule's id.
    pub rule: Option<String>,
    /// Why a fallback answered.
    pub fallback: Option<&'static str>,
    /// Time to the first chunk.
    pub ttft: Option<Duration>,
    /// The last user turn, when content is exported.
    pub prompt: Option<String>,
    /// The complete answer, when content is exported.
    pub answer: Option<String>,
}

/// How the request ended, as the recorder saw it.
pub struct Ending<'a> {
    /// The config in force.
    pub live: &'a Live,
    /// Where it went.
    pub route: Route,
    /// The client API.
    pub api: ClientApi,
    /// The outcome.
    pub outcome: Outcome,
    /// From arrival to the end.
    pub elapsed: Duration,
    /// Usage reported.
    pub usage: Option<Usage>,
    /// USD per million (input, output) tokens.
    pub price: Option<(f64, f64)>,
}

impl Draft {
    /// A record for request `request_id`, to go to `sink`.
    pub fn new(sink: Sink, request_id: String) -> Draft {
        Draft {
            sink,
            request_id,
            rule: None,
            fallback: None,
            ttft: None,
            prompt: None,
            answer: None,
        }
    }

    /// Whether prompts and answers go into the record.
    pub fn wants_content(&self) -> bool {
        self.sink.include_content()
    }

    /// The request ended: its record goes to the sink (never waiting).
    pub fn finish(self, end: Ending<'_>) {
        let (flag, variation, provider, model) = match end.route {
            Route::Variation { flag, variation } => {
                let f = end.live.config.flags.get(flag);
                let v = f.and_then(|f| f.variations.get(variation));
                (
                    f.map(|f| f.key.clone()).unwrap_or_default(),
                    v.map(|v| v.key.clone()).unwrap_or_default(),
                    v.map(|v| v.provider.name.clone()).unwrap_or_default(),
                    v.map(|v| v.model_id.clone()).unwrap_or_default(),
                )
            }
            Route::Passthrough => {
                let provider = end
                    .live
                    .config
                    .passthrough
                    .as_ref()
                    .map_or(NONE.to_owned(), |p| p.name.clone());
                (
                    PASSTHROUGH.into(),
                    PASSTHROUGH.into(),
                    provider,
                    PASSTHROUGH.into(),
                )
            }
            Route::Unrouted => (NONE.into(), NONE.into(), NONE.into(), NONE.into()),
        };
        let cost = match (end.usage, end.price) {
            (Some(u), Some((i, o))) => {
                Some((u.prompt_tokens as f64 * i + u.completion_tokens as f64 * o) / 1e6)
            }
            _ => None,
        };
        let record = RequestRecord {
            kind: "request",
            at_ms: crate::clock::now_ms(),
            request_id: self.request_id,
            api: end.api.as_str(),
            flag,
            variation,
            rule: self.rule,
            provider,
            model,
            outcome: end.outcome.as_str(),
            fallback_reason: self.fallback,
            latency_seconds: end.elapsed.as_secs_f64(),
            ttft_seconds: self.ttft.map(|d| d.as_secs_f64()),
            tokens_in: end.usage.map(|u| u.prompt_tokens),
            tokens_out: end.usage.map(|u| u.completion_tokens),
            cost_usd: cost,
            prompt: self.prompt,
            answer: self.answer,
        };
        self.sink.send(record);
    }
}

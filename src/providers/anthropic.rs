//! Translation between OpenAI chat completions and Anthropic's Messages API.
//!
//! Clients always speak OpenAI; a variation routed to Anthropic has its request translated
//! into a Messages request ([`to_anthropic_request`]), and the answer translated back: a whole
//! message with [`from_anthropic_response`], an SSE stream incrementally with
//! [`StreamTranslator`], an error body with [`error_to_openai`].
//!
//! Everything here is pure (bytes in, bytes out, no I/O) so it can be tested exhaustively. One
//! module per direction: `request` (chat → Messages), `response` (message → completion),
//! `errors`, `stream` (SSE → chunks); the relaying body is in `anthropic_stream`.
//!
//! What does not translate:
//! - `n` > 1 is refused (Anthropic answers with one message);
//! - legacy `functions` / `function_call` and `role: "function"` are refused (use tools);
//! - audio parts and files other than base64 PDFs are refused;
//! - OpenAI-only knobs (`logit_bias`, `frequency_penalty`, `presence_penalty`, `seed`,
//!   `logprobs`, `top_logprobs`, `response_format`, `stream_options`, `store`, `metadata`,
//!   `service_tier`, `reasoning_effort`, …) are dropped;
//! - Anthropic-only output (thinking blocks, server tool blocks, citations) is dropped.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod errors;
mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

pub use errors::error_to_openai;
pub use request::{to_anthropic_request, TranslateError};
pub use response::from_anthropic_response;
pub use stream::{StreamError, StreamTranslator};

use errors::*;
use request::*;
use response::*;

//! The OpenAI-compatible API. The chat handler reads like the life of a request:
//! parse → identify → decide → rewrite → forward → respond → record, each phase a function in
//! a module of its own.

pub mod context;
pub mod decide;
pub mod forward;
pub mod identify;
pub mod request;
pub mod rewrite;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::app::{App, Live};
use crate::body::{full, Body};
use crate::flags::Decision;
use crate::metrics::Outcome;
use crate::openai::{read_usage, ApiError};
use context::{Recorder, Route};
use forward::Upstream;
use request::ChatRequest;
use rewrite::RewriteOptions;

/// Response header naming the flag that decided.
pub const FLAG_HEADER: &str = "x-switchyard-flag";
/// Response header naming the variation served.
pub const VARIATION_HEADER: &str = "x-switchyard-variation";
/// Response header naming the rule that decided.
pub const RULE_HEADER: &str = "x-switchyard-rule";
/// Request/response correlation id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where a request goes, once decided.
struct Target {
    route: Route,
    decision: Option<Decision>,
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let live = app.live.load_full();
    let request_id = request_id(req.headers());
    let mut recorder = Some(Recorder::new(live.clone(), started));
    let mut resp = match handle(&app, &live, &mut recorder, &request_id, req).await {
        Ok(resp) => resp,
        Err((route, e)) => {
            let class = e.class();
            let outcome = if class.is_client_side() {
                Outcome::ClientError
            } else {
                Outcome::UpstreamError
            };
            tracing::debug!(error = %e, "request failed");
            let mut resp = e.into_response();
            if let Some((route, decision)) = route {
                set_decision_headers(resp.headers_mut(), &live, route, decision);
            }
            if let Some(r) = recorder.as_mut() {
                r.finish(outcome, Some(class));
            }
            resp
        }
    };
    resp.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    resp
}

type Failure = (Option<(Route, Option<Decision>)>, ApiError);

async fn handle(
    app: &App,
    live: &Arc<Live>,
    slot: &mut Option<Recorder>,
    request_id: &HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let config = &live.config;
    let Some(recorder) = slot.as_mut() else {
        return Err((None, ApiError::Internal("request recorder missing".into())));
    };
    let (parts, body) = req.into_parts();
    // 1. parse
    let bytes = read_body(body, &parts.headers, config.server.max_body_bytes)
        .await
        .map_err(|e| (None, e))?;
    let chat = ChatRequest::parse(&bytes).map_err(|e| (None, e))?;
    // 2. identify + 3. decide
    let target = decide_target(live, &parts.headers, &chat).map_err(|e| (None, e))?;
    recorder.route(target.route);
    let here = Some((target.route, target.decision));
    // 4. rewrite
    let opts = RewriteOptions {
        prompt_mode: crate::flags::PromptMode::Replace,
        force_stream_usage: true,
    };
    let (provider, upstream_body) = match target.route {
        Route::Variation { flag, variation } => {
            let flag = &config.flags[flag];
            let v = &flag.variations[variation];
            let opts = RewriteOptions {
                prompt_mode: flag.system_prompt_mode,
                ..opts
            };
            (v.provider.clone(), rewrite::rewrite(&chat, v, opts))
        }
        _ => match &config.passthrough {
            Some(p) => (p.clone(), rewrite::rewrite_passthrough(&chat, opts)),
            None => return Err((None, ApiError::ModelNotFound(chat.model.to_string()))),
        },
    };
    let stream = chat.stream;
    let strip_usage = stream && !chat.include_usage;
    drop(chat);
    // 5. forward
    recorder.pause();
    let upstream =
        forward::forward(&app.clients, &provider, upstream_body, stream, request_id).await;
    recorder.resume();
    let upstream = upstream.map_err(|e| (here, e))?;
    // 7. respond (8. record happens as the answer completes)
    let mut resp = match upstream {
        Upstream::Complete(body) => {
            if let Some(usage) = read_usage(&body) {
                recorder.usage(usage);
            }
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            recorder.finish(Outcome::Success, None);
            resp
        }
        Upstream::Stream(body) => {
            recorder.pause();
            let Some(rec) = slot.take() else {
                return Err((here, ApiError::Internal("request recorder missing".into())));
            };
            let relay = stream::SseRelay::new(body, strip_usage, rec);
            let mut resp = Response::new(BodyExt::boxed(relay));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
    };
    set_decision_headers(resp.headers_mut(), live, target.route, target.decision);
    Ok(resp)
}

/// Phases 2 and 3: who is asking, and which variation they get.
fn decide_target(
    live: &Live,
    headers: &HeaderMap,
    chat: &ChatRequest<'_>,
) -> Result<Target, ApiError> {
    let config = &live.config;
    let Some((flag_index, flag)) = config.flag(&chat.model) else {
        return match config.passthrough {
            Some(_) => Ok(Target {
                route: Route::Passthrough,
                decision: None,
            }),
            None => Err(ApiError::ModelNotFound(chat.model.to_string())),
        };
    };
    let identity = identify::identify(&config.identity, headers, chat)?;
    let decision = flag.decide(flag.enabled, &identity.bucketing_id, &identity.attributes);
    Ok(Target {
        route: Route::Variation {
            flag: flag_index,
            variation: decision.variation,
        },
        decision: Some(decision),
    })
}

fn set_decision_headers(h: &mut HeaderMap, live: &Live, route: Route, decision: Option<Decision>) {
    if let Route::Variation { flag, variation } = route {
        if let Some(fh) = live.headers.get(flag) {
            h.insert(FLAG_HEADER, fh.flag.clone());
            if let Some(v) = fh.variations.get(variation) {
                h.insert(VARIATION_HEADER, v.clone());
            }
            if let Some(rule) = decision.and_then(|d| d.rule).and_then(|r| fh.rules.get(r)) {
                h.insert(RULE_HEADER, rule.clone());
            }
        }
    }
}

/// The client's `x-request-id` when it is a sane token, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID_HEADER) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let id = format!("req_{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..));
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

/// Reads the body up to `limit` bytes (413 beyond).
async fn read_body(body: Incoming, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::InvalidJson(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// A JSON response with a status.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(crate::body::json(value));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

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
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::app::{App, Live};
use crate::body::{full, Body};
use crate::fallback::FallbackReason;
use crate::flags::{Decision, DecisionReason, FallbackBehavior, Flag};
use crate::metrics::Outcome;
use crate::openai::ApiError;
use crate::providers::Timeouts;
use context::{Recorder, Route};
use forward::{ForwardCtx, Upstream};
use request::ChatRequest;
use rewrite::RewriteOptions;

/// Response header naming the flag that decided.
pub const FLAG_HEADER: &str = "x-switchyard-flag";
/// Response header naming the variation served.
pub const VARIATION_HEADER: &str = "x-switchyard-variation";
/// Response header naming the rule that decided.
pub const RULE_HEADER: &str = "x-switchyard-rule";
/// Response header on a fallback answer: the reason.
pub const FALLBACK_HEADER: &str = "x-switchyard-fallback";
/// Response header naming the variation that really answered, when a fallback moved the
/// request to another one.
pub const SERVED_BY_HEADER: &str = "x-switchyard-served-by";
/// Request/response correlation id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where a request goes, once decided.
struct Target {
    route: Route,
    decision: Option<Decision>,
    /// The bucketing id, when it identifies a user (not made up for this request).
    user: Option<String>,
    /// Where the bucketing id came from (the `x-switchyard-identity` header).
    identity: Option<String>,
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
    let (parts, body) = req.into_parts();
    // 1. parse
    let bytes = read_body(body, &parts.headers, &config.server)
        .await
        .map_err(|e| (None, e))?;
    let chat = ChatRequest::parse(&bytes).map_err(|e| (None, e))?;
    // 2. identify + 3. decide
    let target = decide_target(live, &parts.headers, &chat).map_err(|e| (None, e))?;
    if let Some(r) = slot.as_mut() {
        r.route(target.route);
    }
    let here = Some((target.route, target.decision));
    let fwd = ForwardCtx {
        clients: &app.clients,
        resilience: &app.resilience,
        metrics: &app.metrics,
        request_id,
    };
    let stream = chat.stream;
    let include_usage = chat.include_usage;
    let base_opts = RewriteOptions {
        prompt_mode: crate::flags::PromptMode::Replace,
        force_stream_usage: true,
    };

    let Route::Variation {
        flag: flag_index,
        variation: decided,
    } = target.route
    else {
        // A model that is no flag: passthrough, no fallback.
        let Some(provider) = config.passthrough.clone() else {
            return Err((None, ApiError::ModelNotFound(chat.model.to_string())));
        };
        let body = Bytes::from(rewrite::rewrite_passthrough(&chat, base_opts));
        drop(chat);
        pause(slot);
        let upstream = forward::forward(
            &fwd,
            &provider,
            provider.timeouts,
            body,
            stream,
            include_usage,
        )
        .await;
        resume(slot);
        let upstream = upstream.map_err(|f| (here, f.into_api_error(&provider)))?;
        return Ok(respond(
            slot,
            upstream,
            stream && !include_usage,
            None,
            provider.timeouts,
        ));
    };
    let flag = &config.flags[flag_index];
    let mut fallback: Option<FallbackReason> = None;
    if target
        .decision
        .is_some_and(|d| d.reason == DecisionReason::FlagDisabled)
    {
        fallback = Some(FallbackReason::KillSwitch);
        app.metrics.fallback(
            &flag.key,
            &flag.variations[decided].key,
            FallbackReason::KillSwitch.as_str(),
            "off_variation",
        );
    }
    // Operator-forced rule-based answers.
    if live.runtime[flag_index].forced(decided) {
        app.metrics.fallback(
            &flag.key,
            &flag.variations[decided].key,
            FallbackReason::Forced.as_str(),
            "rule-based",
        );
        let resp = rule_based(slot, flag, &chat, FallbackReason::Forced);
        return Ok(answered(app, resp, live, &target, None, request_id));
    }
    // 4. rewrite, 5. forward, 6. fall back — along the variation's fallback chain.
    let opts = RewriteOptions {
        prompt_mode: flag.system_prompt_mode,
        ..base_opts
    };
    let mut current = decided;
    for _hop in 0..=flag.variations.len() {
        let v = &flag.variations[current];
        let body = Bytes::from(rewrite::rewrite(&chat, v, opts));
        pause(slot);
        let upstream =
            forward::forward(&fwd, &v.provider, v.timeouts, body, stream, include_usage).await;
        resume(slot);
        let failure = match upstream {
            Ok(upstream) => {
                let served = (current != decided).then_some(current);
                let resp = respond(
                    slot,
                    upstream,
                    stream && !include_usage,
                    fallback,
                    v.timeouts,
                );
                return Ok(answered(app, resp, live, &target, served, request_id));
            }
            Err(f) => f,
        };
        let Some(reason) = failure.fallback_reason() else {
            return Err((here, failure.into_api_error(&v.provider)));
        };
        let behavior = &v.fallback_behavior;
        app.metrics.fallback(
            &flag.key,
            &flag.variations[decided].key,
            reason.as_str(),
            &behavior.label(flag),
        );
        tracing::debug!(flag = %flag.key, variation = %v.key, reason = reason.as_str(), "fallback");
        fallback = Some(reason);
        current = match behavior {
            FallbackBehavior::RuleBased => {
                let resp = rule_based(slot, flag, &chat, reason);
                return Ok(answered(app, resp, live, &target, None, request_id));
            }
            FallbackBehavior::Stable => flag.stable_variation,
            FallbackBehavior::Variation(i) => *i,
            FallbackBehavior::Error => return Err((here, failure.into_api_error(&v.provider))),
        };
    }
    Err((
        here,
        ApiError::Internal("the fallback chain did not end".into()),
    ))
}

fn pause(slot: &mut Option<Recorder>) {
    if let Some(r) = slot.as_mut() {
        r.pause();
    }
}

fn resume(slot: &mut Option<Recorder>) {
    if let Some(r) = slot.as_mut() {
        r.resume();
    }
}

/// 7. respond: a complete answer, or a relayed stream (8. record happens as it completes).
fn respond(
    slot: &mut Option<Recorder>,
    upstream: Upstream,
    strip_usage: bool,
    fallback: Option<FallbackReason>,
    timeouts: Timeouts,
) -> Response<Body> {
    let outcome = if fallback.is_some() {
        Outcome::Fallback
    } else {
        Outcome::Success
    };
    let mut resp = match upstream {
        Upstream::Complete(body, usage) => {
            if let Some(r) = slot.as_mut() {
                if let Some(usage) = usage {
                    r.usage(usage);
                }
                r.finish(outcome, None);
            }
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Upstream::Stream {
            first,
            rest,
            deadline,
        } => {
            let relay = match slot.take() {
                Some(mut rec) => {
                    rec.pause();
                    stream::SseRelay::new(
                        first,
                        rest,
                        strip_usage,
                        rec,
                        outcome,
                        timeouts,
                        deadline,
                    )
                }
                None => {
                    return ApiError::Internal("request recorder missing".into()).into_response()
                }
            };
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
    if let Some(reason) = fallback {
        resp.headers_mut()
            .insert(FALLBACK_HEADER, HeaderValue::from_static(reason.as_str()));
    }
    resp
}

/// A rule-based answer, in the shape the client asked for.
fn rule_based(
    slot: &mut Option<Recorder>,
    flag: &Flag,
    chat: &ChatRequest<'_>,
    reason: FallbackReason,
) -> Response<Body> {
    let messages: Vec<&serde_json::value::RawValue> = chat.messages.iter().map(|m| m.raw).collect();
    let text = crate::fallback::last_user_text(&messages);
    let created = now_secs();
    let mut resp = if chat.stream {
        let mut r = Response::new(full(flag.responder.stream(
            &text,
            created,
            chat.include_usage,
        )));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let mut r = Response::new(full(flag.responder.completion(&text, created)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    if let Some(r) = slot.as_mut() {
        r.finish(Outcome::Fallback, None);
    }
    resp.headers_mut()
        .insert(FALLBACK_HEADER, HeaderValue::from_static(reason.as_str()));
    resp
}

/// An answered flag request: its decision headers, and its exposure recorded (off the request
/// path) for experiment results.
fn answered(
    app: &App,
    mut resp: Response<Body>,
    live: &Live,
    target: &Target,
    served_by: Option<usize>,
    request_id: &HeaderValue,
) -> Response<Body> {
    set_decision_headers(resp.headers_mut(), live, target.route, target.decision);
    if let Some(v) = target
        .identity
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        resp.headers_mut().insert(identify::IDENTITY_HEADER, v);
    }
    if let (Route::Variation { flag, variation }, Some(user)) = (target.route, &target.user) {
        if let Some(f) = live.config.flags.get(flag) {
            let rule = target
                .decision
                .and_then(|d| d.rule)
                .and_then(|r| f.rules.get(r))
                .map(|r| r.id.clone());
            let exposure = crate::state::Exposure {
                flag: f.key.clone(),
                variation: f
                    .variations
                    .get(variation)
                    .map(|v| v.key.clone())
                    .unwrap_or_default(),
                rule,
                user: user.clone(),
                request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                at_ms: crate::admin::api::now_ms(),
                repeat: false,
            };
            app.experiments.expose(app, exposure);
        }
    }
    if let (Some(i), Route::Variation { flag, .. }) = (served_by, target.route) {
        if let Some(v) = live.headers.get(flag).and_then(|h| h.variations.get(i)) {
            resp.headers_mut().insert(SERVED_BY_HEADER, v.clone());
        }
    }
    resp
}

/// Seconds since the epoch, for `created`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
                user: None,
                identity: None,
            }),
            None => Err(ApiError::ModelNotFound(chat.model.to_string())),
        };
    };
    let identity = identify::identify(&config.identity, headers, chat)?;
    if identity.random {
        if let Some(c) = live.without_id.get(flag_index) {
            c.inc();
        }
    }
    let rt = &live.runtime[flag_index];
    let decision = flag.decide_at(
        rt.enabled,
        Some(&rt.stages),
        &identity.bucketing_id,
        &identity.attributes,
    );
    Ok(Target {
        route: Route::Variation {
            flag: flag_index,
            variation: decision.variation,
        },
        decision: Some(decision),
        user: (!identity.random).then(|| identity.bucketing_id.into_owned()),
        identity: Some(identity.source),
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
    new_request_id()
}

/// A new request id: `req_`, the time in milliseconds (12 hex digits) and 48 random bits (12
/// hex digits). Ids that grow with time are appended at the end of the state store's index of
/// request ids rather than scattered through it.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let ms = crate::admin::api::now_ms() & 0xffff_ffff_ffff;
    let random = fastrand::u64(..) & 0xffff_ffff_ffff;
    let mut id = *b"req_000000000000000000000000";
    for (i, slot) in id[4..].iter_mut().enumerate() {
        let word = if i < 12 { ms } else { random };
        let shift = 4 * (11 - (i % 12));
        *slot = HEX[((word >> shift) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

/// Reads the body within `[server]`'s limits (413 beyond `max_body_bytes`, 408 when it stalls).
async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    server: &crate::config::ServerSettings,
) -> Result<Bytes, ApiError> {
    let limits = crate::server::linger::BodyLimits::new(server, server.max_body_bytes);
    crate::server::linger::read_body(body, headers, limits).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_ids_are_unique_and_grow_with_time() {
        let a = new_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_request_id();
        let (a, b) = (a.to_str().unwrap_or(""), b.to_str().unwrap_or(""));
        assert_eq!(a.len(), 28);
        assert!(a.starts_with("req_") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a[4..16] < b[4..16], "{a} then {b}");
        let now = crate::admin::api::now_ms();
        let ms = u64::from_str_radix(&b[4..16], 16).unwrap_or(0);
        assert!(now >= ms && now - ms < 10_000);
        let many: std::collections::HashSet<String> = (0..10_000)
            .map(|_| new_request_id().to_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(many.len(), 10_000);
    }
}

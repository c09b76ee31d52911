//! The request path for every client API. The handler reads like the life of a request:
//! parse → identify → decide → rewrite → forward → fall back → respond → record, each phase a
//! function in a module of its own, all over one [`RequestCtx`]. Client APIs differ only in
//! their [`Inbound`] module (parse, native rewrite, translation to and from chat).

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
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::api::embeddings::EmbeddingsRequest;
use crate::api::messages::MessagesRequest;
use crate::api::responses::ResponsesRequest;
use crate::api::{ClientApi, Inbound};
use crate::app::{App, Live};
use crate::body::{full, Body};
use crate::cache;
use crate::fallback::FallbackReason;
use crate::flags::{Decision, DecisionReason, FallbackBehavior, Flag, PromptMode, Variation};
use crate::metrics::Outcome;
use crate::openai::ApiError;
use crate::providers::{Provider, Timeouts, WireFormat};
use context::{RequestCtx, Route};
use forward::{ForwardCtx, Upstream};
use request::ChatRequest;
use rewrite::RewriteOptions;
use stream::RelayOptions;

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
#[derive(Debug, Clone)]
pub struct Target {
    /// The flag and variation (or passthrough).
    pub route: Route,
    /// The decision, for a flag.
    pub decision: Option<Decision>,
    /// The bucketing id, when it identifies a user (not made up for this request).
    pub user: Option<String>,
    /// Where the bucketing id came from (the `x-switchyard-identity` header).
    pub identity: Option<HeaderValue>,
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    serve(app, req, ClientApi::Chat).await
}

/// `POST /v1/responses`.
pub async fn responses(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    serve(app, req, ClientApi::Responses).await
}

/// `POST /v1/messages`.
pub async fn messages(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    serve(app, req, ClientApi::Messages).await
}

/// `POST /v1/embeddings`.
pub async fn embeddings(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    serve(app, req, ClientApi::Embeddings).await
}

/// `POST /v1/messages/count_tokens`: counted by the variation's provider when it offers
/// counting (Anthropic), else estimated (4 characters a token) and marked so, in the answer
/// (`"estimated": true`) and the `x-switchyard-token-count: estimate` header.
pub async fn count_tokens(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match count(&app, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response_for(ClientApi::Messages),
    }
}

async fn count(app: &App, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let live = app.live.load_full();
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, &live.config.server).await?;
    let msg = MessagesRequest::parse_count(&bytes)?;
    let key = crate::keys::check_request(app, &live, &parts.headers, msg.model())?;
    let target = decide_target(app, &live, &parts.headers, &msg, key.as_deref())?;
    let (provider, counted) = match target.route {
        Route::Variation { flag, variation } => {
            let f = &live.config.flags[flag];
            let v = &f.variations[variation];
            (Some(v.provider.clone()), Some((v, f.system_prompt_mode)))
        }
        _ => (live.config.passthrough.clone(), None),
    };
    let anthropic = provider.as_ref().and_then(|p| match &p.kind {
        crate::providers::ProviderKind::Anthropic(s) => Some((p, s)),
        _ => None,
    });
    let mut resp = match anthropic {
        Some((provider, settings)) => {
            let body = match counted {
                Some((v, mode)) => msg.rewrite(v, mode, true)?,
                None => bytes.to_vec(),
            };
            let request_id = request_id(&parts.headers);
            let mut out = crate::providers::post(
                &settings.count_tokens_url,
                Bytes::from(body),
                false,
                &request_id,
            )
            .map_err(ApiError::Internal)?;
            settings.sign(out.headers_mut());
            let client = app
                .clients
                .get(provider.timeouts.connect, provider.http2_prior_knowledge);
            let answer = tokio::time::timeout(provider.timeouts.total, client.request(out))
                .await
                .map_err(|_| ApiError::UpstreamTimeout {
                    provider: provider.name.clone(),
                    after_ms: provider.timeouts.total.as_millis() as u64,
                })?
                .map_err(|_| ApiError::UpstreamUnreachable {
                    provider: provider.name.clone(),
                    detail: "the request failed".into(),
                })?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| ApiError::UpstreamInvalid {
                    provider: provider.name.clone(),
                    detail: format!("reading the body: {e}"),
                })?
                .to_bytes();
            let mut resp = json_body(body);
            *resp.status_mut() = status;
            resp
        }
        None => {
            let v = serde_json::json!({"input_tokens": msg.estimate_tokens(), "estimated": true});
            let mut resp = json_body(v.to_string());
            resp.headers_mut().insert(
                "x-switchyard-token-count",
                HeaderValue::from_static("estimate"),
            );
            resp
        }
    };
    set_decision_headers(resp.headers_mut(), &live, target.route, target.decision);
    Ok(resp)
}

/// One request of any client API, start to end.
async fn serve(app: Arc<App>, req: Request<Incoming>, api: ClientApi) -> Response<Body> {
    let mut ctx = RequestCtx::new(&app, api, request_id(req.headers()), Instant::now());
    let mut resp = match handle(&mut ctx, req).await {
        Ok(resp) => resp,
        Err(e) => ctx.fail(e),
    };
    resp.headers_mut()
        .insert(REQUEST_ID_HEADER, ctx.request_id.clone());
    resp
}

/// 1. parse: the body, as the client API's request view.
fn parse(api: ClientApi, bytes: &[u8]) -> Result<Box<dyn Inbound + '_>, ApiError> {
    Ok(match api {
        ClientApi::Chat | ClientApi::Passthrough => Box::new(ChatRequest::parse(bytes)?),
        ClientApi::Responses => Box::new(ResponsesRequest::parse(bytes)?),
        ClientApi::Messages => Box::new(MessagesRequest::parse(bytes)?),
        ClientApi::Embeddings => Box::new(EmbeddingsRequest::parse(bytes)?),
    })
}

async fn handle(
    ctx: &mut RequestCtx<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let live = ctx.live.clone();
    let config = &live.config;
    let (parts, body) = req.into_parts();
    // 1. parse
    let bytes = read_body(body, &parts.headers, &config.server).await?;
    let req = parse(ctx.api, &bytes)?;
    let req = req.as_ref();
    // The client key, when keys are configured: who may ask for this, within which limits.
    let key = crate::keys::check_request(ctx.app, &live, &parts.headers, req.model())?;
    ctx.set_key(key.clone());
    // 2. identify + 3. decide
    let target = decide_target(ctx.app, &live, &parts.headers, req, key.as_deref())?;
    let (route, decision) = (target.route, target.decision);
    ctx.set_target(target);
    let Route::Variation {
        flag: flag_index,
        variation: decided,
    } = route
    else {
        // A model that is no flag: the passthrough provider, no fallback.
        let Some(provider) = config.passthrough.clone() else {
            return Err(ApiError::ModelNotFound(req.model().to_owned()));
        };
        let hop = Hop {
            provider: &provider,
            variation: None,
            timeouts: provider.timeouts,
            mode: PromptMode::Replace,
        };
        let upstream = send(ctx, req, &hop).await;
        return match upstream {
            Ok((upstream, format)) => Ok(respond(
                ctx,
                req,
                upstream,
                format,
                None,
                hop.timeouts,
                None,
            )),
            Err(f) => Err(f.into_api_error(&provider)),
        };
    };
    let flag = &config.flags[flag_index];
    let mut fallback: Option<FallbackReason> = None;
    if decision.is_some_and(|d| d.reason == DecisionReason::FlagDisabled) {
        fallback = Some(FallbackReason::KillSwitch);
        ctx.app.metrics.fallback(
            &flag.key,
            &flag.variations[decided].key,
            FallbackReason::KillSwitch.as_str(),
            "off_variation",
        );
    }
    // Operator-forced rule-based answers.
    if live.runtime[flag_index].forced(decided) && req.rule_based() {
        ctx.app.metrics.fallback(
            &flag.key,
            &flag.variations[decided].key,
            FallbackReason::Forced.as_str(),
            "rule-based",
        );
        let resp = rule_based(ctx, flag, req, FallbackReason::Forced)?;
        return Ok(ctx.answered(resp, None));
    }
    // 4. rewrite, 5. forward, 6. fall back — along the variation's fallback chain.
    let mut current = decided;
    for _hop in 0..=flag.variations.len() {
        let v = &flag.variations[current];
        let hop = Hop {
            provider: &v.provider,
            variation: Some(v),
            timeouts: v.timeouts,
            mode: flag.system_prompt_mode,
        };
        // 4. rewrite, then (decided variation only) the response cache, then 5. forward.
        let sent = match rewrite_hop(req, &hop) {
            Err(f) => Err(f),
            Ok(rewritten) => {
                let mut cache = match current == decided && fallback.is_none() {
                    true => look_up(ctx, flag, v, &rewritten, &parts.headers).await,
                    false => cache::Lookup::default(),
                };
                if let Some(entry) = cache.hit.take() {
                    ctx.export_note(None, || req.last_user_text(), Some(&entry.body));
                    ctx.finish(Outcome::Cached);
                    let mut resp = ctx.answered(cache::replay(entry), None);
                    cache.mark(&mut resp);
                    return Ok(resp);
                }
                let sent = forward_hop(ctx, req, &hop, rewritten).await;
                sent.map(|(upstream, format)| (upstream, format, cache))
            }
        };
        let failure = match sent {
            Ok((upstream, format, mut cache)) => {
                let served = (current != decided).then_some(current);
                let resp = respond(
                    ctx,
                    req,
                    upstream,
                    format,
                    fallback,
                    hop.timeouts,
                    cache.fill.take(),
                );
                let mut resp = ctx.answered(resp, served);
                cache.mark(&mut resp);
                return Ok(resp);
            }
            Err(f) => f,
        };
        let Some(reason) = failure.fallback_reason() else {
            return Err(failure.into_api_error(&v.provider));
        };
        let behavior = &v.fallback_behavior;
        ctx.app.metrics.fallback(
            &flag.key,
            &flag.variations[decided].key,
            reason.as_str(),
            &behavior.label(flag),
        );
        tracing::debug!(flag = %flag.key, variation = %v.key, reason = reason.as_str(), "fallback");
        fallback = Some(reason);
        current = match behavior {
            FallbackBehavior::RuleBased if req.rule_based() => {
                let resp = rule_based(ctx, flag, req, reason)?;
                return Ok(ctx.answered(resp, None));
            }
            FallbackBehavior::Stable => flag.stable_variation,
            FallbackBehavior::Variation(i) => *i,
            FallbackBehavior::RuleBased | FallbackBehavior::Error => {
                return Err(failure.into_api_error(&v.provider))
            }
        };
    }
    Err(ApiError::Internal("the fallback chain did not end".into()))
}

/// One step of the chain: a provider, and the variation whose configuration is applied.
struct Hop<'a> {
    provider: &'a Provider,
    variation: Option<&'a Variation>,
    timeouts: Timeouts,
    mode: PromptMode,
}

/// Phases 4 (rewrite) and 5 (forward) in one step (the passthrough path, which never caches).
async fn send(
    ctx: &mut RequestCtx<'_>,
    req: &dyn Inbound,
    hop: &Hop<'_>,
) -> Result<(Upstream, WireFormat), forward::Failure> {
    let rewritten = rewrite_hop(req, hop)?;
    forward_hop(ctx, req, hop, rewritten).await
}

/// A request rewritten for one hop: the body the provider receives, in `format`.
struct Rewritten {
    body: Vec<u8>,
    format: WireFormat,
    include_usage: bool,
}

/// Phase 4, rewrite: the request in the client's format when the provider accepts it, else
/// through chat.
fn rewrite_hop(req: &dyn Inbound, hop: &Hop<'_>) -> Result<Rewritten, forward::Failure> {
    let native = req.api().format();
    let untranslatable = |e: ApiError| forward::Failure::Rejected(e);
    let (body, format, include_usage) = if hop.provider.accepts(native) {
        let body = req
            .rewrite_native(hop.variation, hop.mode)
            .map_err(untranslatable)?;
        (body, native, req.include_usage())
    } else {
        let pivot = req.to_chat().map_err(untranslatable)?;
        let chat = ChatRequest::parse(&pivot).map_err(untranslatable)?;
        let opts = RewriteOptions {
            prompt_mode: hop.mode,
            force_stream_usage: true,
        };
        let body = match hop.variation {
            Some(v) => rewrite::rewrite(&chat, v, opts),
            None => rewrite::rewrite_passthrough(&chat, opts),
        };
        (body, WireFormat::Chat, true)
    };
    Ok(Rewritten {
        body,
        format,
        include_usage,
    })
}

/// The response cache phase, for the decided variation's rewritten request.
async fn look_up(
    ctx: &RequestCtx<'_>,
    flag: &Flag,
    variation: &Variation,
    rewritten: &Rewritten,
    headers: &HeaderMap,
) -> cache::Lookup {
    let config = &ctx.live.config;
    let revision = config.sources_revision.as_deref().unwrap_or(&config.hash);
    ctx.app
        .cache
        .look_up(cache::Request {
            flag: &flag.key,
            variation,
            revision,
            api: ctx.api,
            body: &rewritten.body,
            format: rewritten.format,
            headers,
        })
        .await
}

/// Phase 5, forward: returns the answer and the format it is in.
async fn forward_hop(
    ctx: &mut RequestCtx<'_>,
    req: &dyn Inbound,
    hop: &Hop<'_>,
    rewritten: Rewritten,
) -> Result<(Upstream, WireFormat), forward::Failure> {
    let Rewritten {
        body,
        format,
        include_usage,
    } = rewritten;
    let app = ctx.app;
    let request_id = ctx.request_id.clone();
    let fwd = ForwardCtx {
        clients: &app.clients,
        resilience: &app.resilience,
        metrics: &app.metrics,
        request_id: &request_id,
    };
    ctx.pause();
    let upstream = forward::forward(
        &fwd,
        hop.provider,
        hop.timeouts,
        Bytes::from(body),
        format,
        req.stream(),
        include_usage,
    )
    .await;
    ctx.resume();
    upstream.map(|u| (u, format))
}

/// Phase 7, respond: a complete answer, or a relayed stream (phase 8, record, happens as it
/// completes), in the client's shape (translated from chat when the provider answered chat).
fn respond(
    ctx: &mut RequestCtx<'_>,
    req: &dyn Inbound,
    upstream: Upstream,
    format: WireFormat,
    fallback: Option<FallbackReason>,
    timeouts: Timeouts,
    fill: Option<cache::Fill>,
) -> Response<Body> {
    let outcome = if fallback.is_some() {
        Outcome::Fallback
    } else {
        Outcome::Success
    };
    ctx.export_note(
        fallback.map(FallbackReason::as_str),
        || req.last_user_text(),
        None,
    );
    let client_format = req.api().format();
    let translated = format != client_format;
    let mut resp = match upstream {
        Upstream::Complete(body, usage) => {
            let body = if translated {
                match req.answer_from_chat(&body) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => return ctx.fail(e),
                }
            } else {
                body
            };
            if let Some(usage) = usage {
                ctx.usage(usage);
            }
            crate::evals::offer(ctx, req, &body);
            if client_format == WireFormat::Responses {
                ctx.remember_response(crate::api::responses::answer_id(&body));
            }
            if let Some(fill) = fill {
                fill.complete(&body);
            }
            ctx.export_note(None, || req.last_user_text(), Some(&body));
            ctx.finish(outcome);
            json_body(body)
        }
        Upstream::Stream {
            first,
            rest,
            deadline,
        } => {
            let (first, rest) = if translated {
                let chat = crate::api::sse::prefixed(first, rest);
                (Bytes::new(), req.stream_from_chat(chat))
            } else {
                (first, rest)
            };
            let opts = RelayOptions {
                strip_usage: !translated && req.stream() && !req.include_usage(),
                outcome,
                timeouts,
                deadline,
                format: client_format,
            };
            let tap = crate::evals::tap(ctx, req);
            let Some(relay) = ctx.relay(first, rest, opts) else {
                return ApiError::Internal("request recorder missing".into()).into_response();
            };
            let relay = relay.with_tap(tap);
            let body = BodyExt::boxed(relay);
            event_stream(match fill {
                Some(fill) => fill.stream(body, client_format),
                None => body,
            })
        }
    };
    if let Some(reason) = fallback {
        resp.headers_mut()
            .insert(FALLBACK_HEADER, HeaderValue::from_static(reason.as_str()));
    }
    resp
}

/// A JSON response.
fn json_body(body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An SSE response.
fn event_stream(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A rule-based answer, in the shape (and streaming mode) the client asked for.
fn rule_based(
    ctx: &mut RequestCtx<'_>,
    flag: &Flag,
    req: &dyn Inbound,
    reason: FallbackReason,
) -> Result<Response<Body>, ApiError> {
    let text = req.last_user_text();
    let created = crate::clock::now_secs();
    let chat_api = req.api() == ClientApi::Chat;
    let mut resp = if req.stream() {
        let chat = flag
            .responder
            .stream(&text, created, !chat_api || req.include_usage());
        let body = if chat_api {
            full(chat)
        } else {
            req.stream_from_chat(full(chat))
        };
        event_stream(body)
    } else {
        let chat = flag.responder.completion(&text, created);
        if chat_api {
            json_body(chat)
        } else {
            json_body(req.answer_from_chat(&chat)?)
        }
    };
    ctx.export_note(Some(reason.as_str()), || req.last_user_text(), None);
    ctx.finish(Outcome::Fallback);
    resp.headers_mut()
        .insert(FALLBACK_HEADER, HeaderValue::from_static(reason.as_str()));
    Ok(resp)
}

/// Phases 2 and 3: who is asking, and which variation they get. A Responses request that
/// continues a response this proxy answered stays on that response's variation.
fn decide_target(
    app: &App,
    live: &Live,
    headers: &HeaderMap,
    req: &dyn Inbound,
    key: Option<&crate::keys::Loaded>,
) -> Result<Target, ApiError> {
    let config = &live.config;
    let Some((flag_index, flag)) = config.flag(req.model()) else {
        return match config.passthrough {
            Some(_) => Ok(Target {
                route: Route::Passthrough,
                decision: None,
                user: None,
                identity: None,
            }),
            None => Err(ApiError::ModelNotFound(req.model().to_owned())),
        };
    };
    let key_name = key.map(|k| k.record.name.as_str());
    let mut identity = identify::identify(&config.identity, headers, req, key_name)?;
    if let Some(k) = key {
        // The key's attributes are the operator's: they win over what the request says.
        for (name, value) in k.attributes.iter() {
            identity.attributes.insert(name, value.clone());
        }
    }
    if identity.random {
        if let Some(c) = live.without_id.get(flag_index) {
            c.inc();
        }
    }
    let mut decision = live
        .decide(flag_index, &identity.bucketing_id, &identity.attributes)
        .ok_or_else(|| ApiError::ModelNotFound(req.model().to_owned()))?;
    if let Some(pinned) = app.responses.pinned(req, flag) {
        if decision.reason != DecisionReason::FlagDisabled {
            decision.variation = pinned;
        }
    }
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

/// Sets `x-switchyard-flag`, `-variation` and `-rule`.
pub fn set_decision_headers(
    h: &mut HeaderMap,
    live: &Live,
    route: Route,
    decision: Option<Decision>,
) {
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
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
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
    let ms = crate::clock::now_ms() & 0xffff_ffff_ffff;
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
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    server: &crate::config::ServerSettings,
) -> Result<Bytes, ApiError> {
    let limits = crate::server::linger::BodyLimits::new(server, server.max_body_bytes);
    crate::server::linger::read_body(body, headers, limits).await
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
        let now = crate::clock::now_ms();
        let ms = u64::from_str_radix(&b[4..16], 16).unwrap_or(0);
        assert!(now >= ms && now - ms < 10_000);
        let many: std::collections::HashSet<String> = (0..10_000)
            .map(|_| new_request_id().to_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(many.len(), 10_000);
    }
}

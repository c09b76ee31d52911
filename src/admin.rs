//! The admin listener: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and the
//! admin API under `/admin/` (bearer tokens, compared in constant time), and the operators'
//! console at `/` ([`crate::console`]).

pub mod api;
pub mod openapi;

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::body::json_response;
use crate::body::{full, Body};
use crate::openai::ApiError;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// The token behind a bearer token, if it is one of the configured tokens: its name (the
/// audit actor) and, for an agent token, its policy.
fn authenticate(app: &App, headers: &http::HeaderMap) -> Option<crate::mcp::Caller> {
    let presented = headers.get(header::AUTHORIZATION)?.as_bytes();
    // The scheme is case-insensitive (RFC 9110 section 11.1); the token is not.
    let (scheme, presented) = presented.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let presented = presented.trim_ascii_start();
    let live = app.live.load();
    let mut actor = None;
    // Every token is compared (in constant time), so timing tells nothing about which matched.
    for t in &live.config.admin_tokens {
        if let Some(secret) = &t.token {
            let expected = secret.header_value().as_bytes();
            if bool::from(expected.ct_eq(presented)) {
                actor = Some(crate::mcp::Caller {
                    name: t.name.clone(),
                    policy: t.policy.clone(),
                });
            }
        }
    }
    actor
}

fn unauthorized() -> Response<Body> {
    let v = json!({"error": {"message": "a valid admin token is required: send Authorization: Bearer <token>", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
    let mut resp = json_response(StatusCode::UNAUTHORIZED, &v);
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Routes a request on the admin listener; every response carries the console's security
/// headers ([`crate::console::secure`]).
pub async fn route_admin(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let mut resp = route(app, req).await;
    crate::console::secure(&mut resp);
    resp
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (path.as_str(), req.method()) {
        (p, &Method::GET | &Method::HEAD) if crate::console::is_console_path(p) => {
            crate::console::asset(p, req.method() == Method::HEAD)
        }
        ("/metrics", &Method::GET) => {
            let mut resp = Response::new(full(app.render_metrics()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        ("/healthz", &Method::GET) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        ("/readyz", &Method::GET) => {
            if app.is_draining() {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "draining"}),
                )
            } else {
                // Ready or not and a short reason only: the file, its errors and the figures
                // are behind the admin token (`GET /admin/status`). Which replica leads the fleet is
                // shown (names, no paths or secrets).
                let live = app.live.load();
                if !app.sources.ready(&live.config) {
                    // Flags from a datafile must have loaded once before traffic comes here.
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "waiting_for_sources", "reason": "the Optimizely datafile has not loaded yet"}),
                    );
                }
                let reload_failed = app
                    .last_reload_error
                    .lock()
                    .ok()
                    .is_some_and(|e| e.is_some());
                let v = if reload_failed {
                    json!({"status": "ready", "reason": "the last reload was refused; the previous config is serving", "fleet": app.fleet.readyz_json()})
                } else if !app.sources.healthy(&live.config) {
                    json!({"status": "ready", "reason": "the Optimizely datafile cannot be used; its last good flags are serving", "fleet": app.fleet.readyz_json()})
                } else {
                    json!({"status": "ready", "fleet": app.fleet.readyz_json()})
                };
                json_response(StatusCode::OK, &v)
            }
        }
        ("/admin/openapi.json", &Method::GET) => {
            let live = app.live.load();
            let metrics: Vec<&str> = live.config.catalog.0.keys().map(String::as_str).collect();
            json_response(StatusCode::OK, &openapi::document(&metrics))
        }
        ("/metrics" | "/healthz" | "/readyz" | "/admin/openapi.json", m) => {
            ApiError::MethodNotAllowed {
                method: m.to_string(),
                path: path.clone(),
                allow: "GET",
            }
            .into_response()
        }
        ("/mcp", _) => match authenticate(&app, req.headers()) {
            Some(caller) => crate::mcp::handle(&app, caller, req).await,
            None => unauthorized(),
        },
        (p, _) if p == "/admin" || p.starts_with("/admin/") => {
            let Some(caller) = authenticate(&app, req.headers()) else {
                return unauthorized();
            };
            if caller.policy.is_some() {
                // Agent tokens act only through /mcp, where their policy is enforced.
                return json_response(
                    StatusCode::FORBIDDEN,
                    &json!({"error": {"message": "an agent token (one with a policy) works only on /mcp", "type": "invalid_request_error", "param": null, "code": "agent_token"}}),
                );
            }
            let actor = caller.name;
            let method = req.method().clone();
            let query = req.uri().query().map(str::to_owned);
            let limits = {
                let live = app.live.load();
                crate::server::linger::BodyLimits::new(&live.config.server, MAX_ADMIN_BODY)
            };
            let (parts, body) = req.into_parts();
            let body = match crate::server::linger::read_body(body, &parts.headers, limits).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            let sub = p.trim_start_matches("/admin");
            if let Some(rest) = sub.strip_prefix("/console/") {
                return crate::console::views::handle(&app, &method, rest, query.as_deref());
            }
            api::handle(&app, &actor, &method, sub, query.as_deref(), body).await
        }
        _ => ApiError::NotFound(path.clone()).into_response(),
    }
}

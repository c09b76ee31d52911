//! The admin listener: `/metrics` (Prometheus text format), `/healthz`, `/readyz`.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::App;
use crate::body::{full, Body};
use crate::openai::ApiError;
use crate::proxy::json_response;

/// Routes a request on the admin listener.
pub async fn route_admin(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (path, req.method()) {
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
                let live = app.live.load();
                json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "config": live.config.hash, "flags": live.config.flags.len()}),
                )
            }
        }
        ("/metrics", m) | ("/healthz", m) | ("/readyz", m) => ApiError::MethodNotAllowed {
            method: m.to_string(),
            path: path.to_owned(),
        }
        .into_response(),
        _ => ApiError::NotFound(path.to_owned()).into_response(),
    }
}

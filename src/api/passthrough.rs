//! Any other `/v1/*` path (files, audio, images, moderations, batches…) goes unchanged to the
//! `[passthrough]` provider: bodies streamed both ways without buffering (so uploads larger
//! than `max_body_bytes` pass), the client's own credentials replaced by the provider's,
//! measured per endpoint. Without `[passthrough]` such a path is a 404.

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderName, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{Body, BodyError};
use crate::openai::ApiError;
use crate::providers::ProviderKind;

/// Endpoints counted under their own name; any other is `other` (labels stay bounded).
const ENDPOINTS: &[&str] = &[
    "files",
    "uploads",
    "audio",
    "images",
    "moderations",
    "batches",
    "fine_tuning",
    "vector_stores",
    "models",
    "completions",
    "assistants",
    "threads",
    "realtime",
    "containers",
    "conversations",
    "evals",
];

/// The `endpoint` label of a `/v1/…` path.
pub fn endpoint(path: &str) -> &'static str {
    let first = path
        .strip_prefix("/v1/")
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    ENDPOINTS
        .iter()
        .find(|e| **e == first)
        .copied()
        .unwrap_or("other")
}

/// Headers never relayed: hop-by-hop ones, and the client's credentials.
fn relayed(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "x-api-key"
            | "api-key"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// Relays `req` to the passthrough provider.
pub async fn forward(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let endpoint = endpoint(req.uri().path());
    let request_id = crate::proxy::request_id(req.headers());
    let result = relay(&app, req, &request_id).await;
    let (status, mut resp) = match result {
        Ok(resp) => (resp.status().as_u16(), resp),
        Err(e) => {
            let status = e.status().as_u16();
            (status, e.into_response())
        }
    };
    app.metrics
        .passthrough(endpoint, status, started.elapsed().as_secs_f64());
    resp.headers_mut()
        .insert(crate::proxy::REQUEST_ID_HEADER, request_id);
    resp
}

/// Whether `path` can be relayed: a 404 naming why not (no `[passthrough]`, or one that is
/// not an OpenAI-compatible endpoint).
pub fn check(config: &crate::config::Config, path: &str) -> Result<(), ApiError> {
    match &config.passthrough {
        None => Err(ApiError::NotFound(format!(
            "{path}: this proxy serves chat completions, responses, messages and embeddings; other /v1 paths need a [passthrough] provider"
        ))),
        Some(p) if !matches!(p.kind, ProviderKind::OpenAi(_)) => Err(ApiError::NotFound(format!(
            "{path}: the passthrough provider `{}` ({}) takes only model requests",
            p.name,
            p.kind.as_str()
        ))),
        Some(_) => Ok(()),
    }
}

async fn relay(
    app: &App,
    req: Request<Incoming>,
    request_id: &http::HeaderValue,
) -> Result<Response<Body>, ApiError> {
    let live = app.live.load();
    let path = req.uri().path().to_owned();
    check(&live.config, &path)?;
    let Some(provider) = live.config.passthrough.clone() else {
        return Err(ApiError::Internal("no passthrough provider".into()));
    };
    let ProviderKind::OpenAi(settings) = &provider.kind else {
        return Err(ApiError::Internal("no passthrough provider".into()));
    };
    let rest = path.strip_prefix("/v1").unwrap_or(&path);
    let mut url = format!("{}{rest}", settings.base_url);
    let query: Vec<&str> = [req.uri().query().unwrap_or(""), settings.query.as_str()]
        .into_iter()
        .filter(|q| !q.is_empty())
        .collect();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| ApiError::field("path", format!("cannot relay the path {path}")))?;
    let (parts, body) = req.into_parts();
    let mut out = Request::builder().method(parts.method).uri(uri);
    if let Some(h) = out.headers_mut() {
        for (k, v) in parts.headers.iter().filter(|(k, _)| relayed(k)) {
            h.append(k.clone(), v.clone());
        }
        if let Some((name, secret)) = &settings.auth {
            h.insert(name.clone(), secret.header_value().clone());
        }
        for (k, v) in &settings.headers {
            h.insert(k.clone(), v.clone());
        }
        h.insert(crate::proxy::REQUEST_ID_HEADER, request_id.clone());
    }
    let body: Body = body.map_err(|e| Box::new(e) as BodyError).boxed();
    let out = out
        .body(body)
        .map_err(|e| ApiError::Internal(format!("building the passthrough request: {e}")))?;
    let client = app
        .clients
        .streaming(provider.timeouts.connect, provider.http2_prior_knowledge);
    let first_byte = provider.timeouts.first_byte.min(provider.timeouts.total);
    let resp = match tokio::time::timeout(first_byte, client.request(out)).await {
        Err(_) => {
            return Err(ApiError::UpstreamTimeout {
                provider: provider.name.clone(),
                after_ms: first_byte.as_millis() as u64,
            })
        }
        Ok(Err(e)) => {
            return Err(ApiError::UpstreamUnreachable {
                provider: provider.name.clone(),
                detail: if e.is_connect() {
                    "connection failed".into()
                } else {
                    "the request failed".into()
                },
            })
        }
        Ok(Ok(r)) => r,
    };
    let (mut parts, body) = resp.into_parts();
    for name in [header::CONNECTION, header::TRANSFER_ENCODING] {
        parts.headers.remove(name);
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(|e| Box::new(e) as BodyError).boxed(),
    ))
}

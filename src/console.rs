//! The operators' console: a web page on the admin listener (`/`, assets under `/console/`)
//! that shows every flag and variation live and acts through the admin API.
//!
//! Every asset is embedded in the binary (plain ES modules, no build step, no request to any
//! other host). The page keeps the admin token in `sessionStorage` and sends it as a bearer
//! header; every action goes through the admin API, so it is audited with the token's name.
//! The few JSON views it needs beyond the admin API live in [`views`] (under
//! `/admin/console/`), fed by a small in-process [`history`] sampled off the request path.
//!
//! Every response of the admin listener carries the headers of [`secure`]: a strict
//! `Content-Security-Policy` (scripts and styles from this origin only, no inline script),
//! `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and no framing.

pub mod explain;
pub mod history;
pub mod views;

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};
use tokio::sync::watch;

use crate::app::App;
use crate::body::{full, Body};

/// The policy: this origin only, no inline script or style, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page and its assets, embedded at build time.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("console/web/index.html"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console/web/console.css"),
    },
    Asset {
        path: "/console/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("console/web/favicon.svg"),
    },
    Asset {
        path: "/console/app.js",
        content_type: JS,
        body: include_str!("console/web/app.js"),
    },
    Asset {
        path: "/console/api.js",
        content_type: JS,
        body: include_str!("console/web/api.js"),
    },
    Asset {
        path: "/console/dom.js",
        content_type: JS,
        body: include_str!("console/web/dom.js"),
    },
    Asset {
        path: "/console/chart.js",
        content_type: JS,
        body: include_str!("console/web/chart.js"),
    },
    Asset {
        path: "/console/actions.js",
        content_type: JS,
        body: include_str!("console/web/actions.js"),
    },
    Asset {
        path: "/console/flags.js",
        content_type: JS,
        body: include_str!("console/web/flags.js"),
    },
    Asset {
        path: "/console/pages.js",
        content_type: JS,
        body: include_str!("console/web/pages.js"),
    },
];

/// Whether `path` is the console's (the page or one of its assets).
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with("/console/")
}

/// The embedded asset at `path` (`GET` or `HEAD`), or a 404.
pub fn asset(path: &str, head: bool) -> Response<Body> {
    let path = if path == "/index.html" { "/" } else { path };
    let Some(a) = ASSETS.iter().find(|a| a.path == path) else {
        return crate::openai::ApiError::NotFound(path.to_owned()).into_response();
    };
    let mut resp = Response::new(full(if head { "" } else { a.body }));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.body.len()));
    // Assets change with the binary: revalidate rather than serve a stale page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// Total size of the embedded assets, in bytes (uncompressed).
pub fn assets_size() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// Adds the security headers every admin listener response carries.
pub fn secure(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// Starts the history sampler: one sample at once, then one every
/// [`history::SAMPLE_EVERY`] until `stop` turns true. It reads counters and quantiles the
/// request path already keeps, so requests never wait for it.
pub fn spawn(app: &Arc<App>, mut stop: watch::Receiver<bool>) {
    let app = app.clone();
    tokio::spawn(async move {
        let mut ticks: u64 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let live = app.live.load_full();
            app.history.sample(&live, crate::clock::now_ms());
            if ticks.is_multiple_of(history::SRM_EVERY_TICKS) {
                history::refresh_srm(&app).await;
            }
            ticks += 1;
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(history::SAMPLE_EVERY) => {}
            }
        }
    });
}

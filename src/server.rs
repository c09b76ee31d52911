//! Listeners and connections: HTTP/1.1 and h2 on both listeners, routing by path, limits on
//! connections (how many, how slow, how idle), and an honest shutdown: `/readyz` turns 503 at
//! once, the listeners keep accepting for `drain_delay`, requests and streams in flight finish
//! up to `drain_timeout`, and streams still open then end with a `server_shutting_down` event.

pub mod conn;
pub mod linger;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin;
use crate::app::App;
use crate::body::Body;
use crate::openai::ApiError;
use crate::proxy;

/// The two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// The OpenAI-compatible API.
    pub main: TcpListener,
    /// Metrics, health, admin.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses.
    pub async fn bind(
        main: std::net::SocketAddr,
        admin: std::net::SocketAddr,
    ) -> std::io::Result<Listeners> {
        Ok(Listeners {
            main: listen(main)?,
            admin: listen(admin)?,
        })
    }
}

/// Binds with a deep accept backlog: thousands of clients connecting at once (a burst of new
/// streams) must queue, not time out.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

/// Routes a request on the main listener.
pub async fn route_main(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let path = path.as_str();
    let method = &method;
    match (path, method) {
        ("/v1/chat/completions", &Method::POST) => proxy::chat_completions(app, req).await,
        ("/v1/responses", &Method::POST) => proxy::responses(app, req).await,
        ("/v1/messages", &Method::POST) => proxy::messages(app, req).await,
        ("/v1/messages/count_tokens", &Method::POST) => proxy::count_tokens(app, req).await,
        ("/v1/embeddings", &Method::POST) => proxy::embeddings(app, req).await,
        ("/v1/models", &Method::GET) => {
            let live = app.live.load();
            crate::body::json_response(StatusCode::OK, &proxy::decide::models(&live.config))
        }
        ("/v1/feedback", &Method::POST) => {
            let limits = {
                let live = app.live.load();
                linger::BodyLimits::new(&live.config.server, live.config.server.max_body_bytes)
            };
            let (parts, body) = req.into_parts();
            let body = match linger::read_body(body, &parts.headers, limits).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            match crate::experiments::runtime::post_feedback(&app, &body).await {
                Ok((status, v)) => crate::body::json_response(status, &v),
                Err(e) => e.into_response(),
            }
        }
        ("/v1/decide", &Method::GET) => {
            let live = app.live.load();
            match proxy::decide::decide(&live, req.uri().query(), req.headers()) {
                Ok((status, v)) => crate::body::json_response(status, &v),
                Err(e) => e.into_response(),
            }
        }
        ("/v1/messages" | "/v1/messages/count_tokens", _) => early_answer(
            &app,
            req,
            ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_owned(),
                allow: "POST",
            },
        ),
        ("/v1/chat/completions" | "/v1/feedback" | "/v1/responses" | "/v1/embeddings", _) => {
            early_answer(
                &app,
                req,
                ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    path: path.to_owned(),
                    allow: "POST",
                },
            )
        }
        ("/v1/models" | "/v1/decide", _) => early_answer(
            &app,
            req,
            ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_owned(),
                allow: "GET",
            },
        ),
        (p, _) if p.starts_with("/ofrep/") => crate::api::ofrep::route(app, req).await,
        _ if path.starts_with("/v1/") => {
            let checked = crate::api::passthrough::check(&app.live.load().config, path);
            match checked {
                Ok(()) => crate::api::passthrough::forward(app, req).await,
                Err(e) => early_answer(&app, req, e),
            }
        }
        _ => {
            let e = ApiError::NotFound(path.to_owned());
            early_answer(&app, req, e)
        }
    }
}

/// An error answered before the request's body was read: when a body is on its way, the
/// connection closes after the answer and the rest is discarded meanwhile (lingering close).
pub fn early_answer(app: &App, req: Request<Incoming>, e: ApiError) -> Response<Body> {
    let api = if req.uri().path().starts_with("/v1/messages") {
        crate::api::ClientApi::Messages
    } else {
        crate::api::ClientApi::Chat
    };
    let mut resp = e.into_response_for(api);
    if linger::has_body(req.headers()) {
        let limits = {
            let live = app.live.load();
            linger::BodyLimits::new(&live.config.server, 0)
        };
        let (parts, body) = req.into_parts();
        linger::linger(body, &parts.headers, limits);
        linger::close_after(&mut resp);
    }
    resp
}

/// What one listener needs besides its handler.
struct ListenerCtx {
    name: &'static str,
    app: Arc<App>,
    stop: watch::Receiver<bool>,
    cut: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
}

/// Accepts connections on `listener` until `stop` fires, serving each with `handler`.
async fn serve<H, F>(listener: TcpListener, ctx: ListenerCtx, handler: H)
where
    H: Fn(Arc<App>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let ListenerCtx {
        name,
        app,
        mut stop,
        cut,
        graceful,
    } = ctx;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Many concurrent streams on one HTTP/2 connection (hyper's default is 200).
    builder.http2().max_concurrent_streams(16_384);
    let open = Arc::new(AtomicUsize::new(0));
    let gauge = app.metrics.open_connections.with_label_values(&[name]);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let server = app.live.load().config.server.clone();
                if open.load(Ordering::Acquire) >= server.max_connections {
                    app.metrics.connections_refused.with_label_values(&[name]).inc();
                    tokio::spawn(refuse(stream, server.max_connections));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let slot = OpenSlot::new(&open, gauge.clone());
                let activity = conn::Activity::new();
                let metrics = app.metrics.clone();
                let app = app.clone();
                let handler = handler.clone();
                let service_activity = activity.clone();
                let cut = cut.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let app = app.clone();
                    let handler = handler.clone();
                    let guard = service_activity.begin();
                    let cut = cut.clone();
                    async move {
                        let resp = handler(app, req).await;
                        let sse = resp
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                        Ok::<_, Infallible>(resp.map(|b| {
                            BodyExt::boxed(conn::TrackedBody::new(b, guard, sse, &cut))
                        }))
                    }
                });
                let io = TokioIo::new(conn::WatchedStream::new(stream, activity.clone()));
                let conn = builder.serve_connection(io, service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _slot = slot;
                    tokio::select! {
                        r = conn => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        reason = activity.watchdog(server.header_timeout, server.idle_timeout) => {
                            tracing::debug!(listener = name, reason, "closing a connection");
                            metrics.connections_closed.with_label_values(&[name, reason]).inc();
                        }
                    }
                });
            }
        }
    }
}

/// One open connection of a listener, counted until dropped.
struct OpenSlot {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl OpenSlot {
    fn new(open: &Arc<AtomicUsize>, gauge: prometheus::IntGauge) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        OpenSlot {
            open: open.clone(),
            gauge,
        }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Refuses a connection over `max_connections`: a 503 in the OpenAI error shape, then close.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = serde_json::json!({"error": {
        "message": format!("too many open connections: this listener holds server.max_connections = {max}; retry shortly"),
        "type": "server_error", "param": null, "code": "max_connections"}})
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent meanwhile, briefly, so it reads the answer, not a reset.
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while total < 1 << 20 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// Serves `app` on both listeners until `shutdown` resolves, then drains: `/readyz` answers
/// 503 `draining` at once, the listeners keep accepting for `server.drain_delay`, then stop;
/// requests in flight get up to `server.drain_timeout`, and event streams still open then end
/// with a `server_shutting_down` error event.
pub async fn run_app(
    listeners: Listeners,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);
    let graceful_main = Arc::new(GracefulShutdown::new());
    let graceful_admin = Arc::new(GracefulShutdown::new());
    // The control loops (and the SIGHUP handler) before the first request is served.
    crate::control::spawn(&app, stop_rx.clone());
    let main = tokio::spawn(serve(
        listeners.main,
        ListenerCtx {
            name: "main",
            app: app.clone(),
            stop: stop_rx.clone(),
            cut: cut_rx.clone(),
            graceful: graceful_main.clone(),
        },
        route_main,
    ));
    let admin_task = tokio::spawn(serve(
        listeners.admin,
        ListenerCtx {
            name: "admin",
            app: app.clone(),
            stop: stop_rx.clone(),
            cut: cut_rx,
            graceful: graceful_admin.clone(),
        },
        admin::route_admin,
    ));
    shutdown.await;
    app.start_draining();
    let (delay, drain) = {
        let live = app.live.load();
        (
            live.config.server.drain_delay,
            live.config.server.drain_timeout,
        )
    };
    tracing::info!(drain_delay = ?delay, "shutting down: /readyz reports draining; still accepting for the drain delay");
    tokio::time::sleep(delay).await;
    tracing::info!("shutting down: no new connections, draining requests in flight");
    let _ = stop_tx.send(true);
    let _ = main.await;
    let _ = admin_task.await;
    let (Ok(gm), Ok(ga)) = (
        Arc::try_unwrap(graceful_main),
        Arc::try_unwrap(graceful_admin),
    ) else {
        return Ok(());
    };
    let both = async {
        tokio::join!(gm.shutdown(), ga.shutdown());
    };
    tokio::pin!(both);
    if tokio::time::timeout(drain, &mut both).await.is_err() {
        tracing::warn!(timeout = ?drain, "drain timeout reached: ending the remaining streams with an error event");
        let _ = cut_tx.send(true);
        // The cut streams end at once; give their last event a moment to reach the clients.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut both).await;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (every connection is a descriptor);
/// returns (soft before, soft now, hard).
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    let now = rlimit::increase_nofile_limit(hard)?;
    Ok((soft, now, hard))
}

//! Listeners and connections: HTTP/1.1 and h2 on both listeners, routing by path, and a
//! graceful shutdown that lets requests and streams in flight finish up to the drain timeout.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
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
    let path = req.uri().path();
    let method = req.method();
    match (path, method) {
        ("/v1/chat/completions", &Method::POST) => proxy::chat_completions(app, req).await,
        ("/v1/models", &Method::GET) => {
            let live = app.live.load();
            proxy::json_response(StatusCode::OK, &proxy::decide::models(&live.config))
        }
        ("/v1/feedback", &Method::POST) => {
            let limit = app.live.load().config.server.max_body_bytes;
            let body = match http_body_util::Limited::new(req.into_body(), limit)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return ApiError::BodyTooLarge { limit }.into_response(),
            };
            match crate::experiments::runtime::post_feedback(&app, &body).await {
                Ok((status, v)) => proxy::json_response(status, &v),
                Err(e) => e.into_response(),
            }
        }
        ("/v1/decide", &Method::GET) => {
            let live = app.live.load();
            match proxy::decide::decide(&live, req.uri().query(), req.headers()) {
                Ok((status, v)) => proxy::json_response(status, &v),
                Err(e) => e.into_response(),
            }
        }
        ("/v1/chat/completions" | "/v1/feedback", _) => ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_owned(),
            allow: "POST",
        }
        .into_response(),
        ("/v1/models" | "/v1/decide", _) => ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_owned(),
            allow: "GET",
        }
        .into_response(),
        (p, _) if p.starts_with("/ofrep/") => crate::api::ofrep::route(app, req).await,
        _ => ApiError::NotFound(path.to_owned()).into_response(),
    }
}

/// Accepts connections on `listener` until `stop` fires, serving each with `handler`; then
/// waits for the connections in flight to finish.
async fn serve<H, F>(
    listener: TcpListener,
    app: Arc<App>,
    handler: H,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) where
    H: Fn(Arc<App>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Many concurrent streams on one HTTP/2 connection (hyper's default is 200).
    builder.http2().max_concurrent_streams(16_384);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(app, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
}

/// Serves `app` on both listeners until `shutdown` resolves, then drains.
pub async fn run_app(
    listeners: Listeners,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful_main = Arc::new(GracefulShutdown::new());
    let graceful_admin = Arc::new(GracefulShutdown::new());
    let main = tokio::spawn(serve(
        listeners.main,
        app.clone(),
        route_main,
        stop_rx.clone(),
        graceful_main.clone(),
    ));
    let admin_task = tokio::spawn(serve(
        listeners.admin,
        app.clone(),
        admin::route_admin,
        stop_rx.clone(),
        graceful_admin.clone(),
    ));
    crate::control::spawn(&app, stop_rx);
    shutdown.await;
    app.start_draining();
    tracing::info!("shutting down: no new connections, draining requests in flight");
    let _ = stop_tx.send(true);
    let _ = main.await;
    let _ = admin_task.await;
    let drain = app.live.load().config.server.drain_timeout;
    let (Ok(gm), Ok(ga)) = (
        Arc::try_unwrap(graceful_main),
        Arc::try_unwrap(graceful_admin),
    ) else {
        return Ok(());
    };
    let both = async {
        tokio::join!(gm.shutdown(), ga.shutdown());
    };
    if tokio::time::timeout(drain, both).await.is_err() {
        tracing::warn!(timeout = ?drain, "drain timeout reached: closing the remaining connections");
    }
    Ok(())
}

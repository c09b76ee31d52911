//! A bare hyper reverse proxy: every request forwarded as it is to one upstream over pooled
//! keep-alive connections, the answer streamed back. No parsing, no decision, no metrics.
//!
//! It is the floor of what a proxy built on the same stack (hyper server, hyper-util client,
//! tokio) costs on this machine, so the load benchmark can split Switchyard's gap to nginx
//! into the part the stack costs and the part Switchyard's own work costs.

use std::convert::Infallible;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves until the process is killed.
pub async fn serve(listen: &str, upstream: &str) -> Result<(), String> {
    let target: std::net::SocketAddr = upstream
        .parse()
        .map_err(|_| format!("--upstream {upstream:?}: write IP:PORT"))?;
    if !target.ip().is_loopback() {
        return Err(format!("{target} is not a loopback address"));
    }
    let listener = crate::upstream::listen_loopback(listen)?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("relay listening on http://{addr}");

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);
    let authority = Authority::try_from(target.to_string()).map_err(|e| e.to_string())?;
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let client = client.clone();
            let authority = authority.clone();
            async move { Ok::<_, Infallible>(forward(&client, authority, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    authority: Authority,
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let mut uri = Uri::builder().scheme(Scheme::HTTP).authority(authority);
    if let Some(pq) = parts.uri.path_and_query() {
        uri = uri.path_and_query(pq.clone());
    }
    parts.uri = match uri.build() {
        Ok(u) => u,
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    parts.version = http::Version::HTTP_11;
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp
}

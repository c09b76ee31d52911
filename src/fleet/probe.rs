//! `switchyard health`: one GET of the admin listener's `/healthz` (or any URL), for container
//! health checks in images that carry no HTTP client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The default probe: the admin listener's liveness endpoint on loopback.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9090/healthz";

/// GETs `url` within `timeout`: `Ok(status)` for a 2xx answer, else why not.
pub async fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// URLs are probed"));
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(format!(
            "{url}: no answer within {} s",
            timeout.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(Ok(resp)) => Err(format!("{url}: HTTP {}", resp.status())),
    }
}

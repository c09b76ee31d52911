//! The pooled upstream client: hyper's legacy client over rustls (webpki roots, HTTP/1.1 and
//! h2 by ALPN, or h2c by prior knowledge where a provider asks for it), one pool per connect
//! timeout and protocol, keep-alive connections reused across requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The client type the forward phase uses.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client passthrough uses: request bodies streamed as they arrive.
pub type StreamingClient = Client<HttpsConnector<HttpConnector>, crate::body::Body>;

/// Upstream clients, shared by all requests (and across config reloads, so pools survive).
#[derive(Clone, Default)]
pub struct Clients {
    by_connect_timeout: Arc<DashMap<(Duration, bool), HttpClient>>,
    streaming: Arc<DashMap<(Duration, bool), StreamingClient>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("pools", &self.by_connect_timeout.len())
            .finish()
    }
}

fn build<B>(
    connect_timeout: Duration,
    http2_prior_knowledge: bool,
) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        // h2c: every request and stream to the provider shares one connection instead of
        // holding one each (with thousands of streams open, that connection per stream was
        // most of the proxy's memory and receive calls).
        .http2_only(http2_prior_knowledge)
        // HTTP/2 receive window of a whole provider connection (hyper's default is 5 MB). The
        // h2 library tears a connection down when the small DATA frames it holds unread cost
        // more than half this window in framing overhead; token streams are small frames, so
        // with thousands of streams on one connection a short lag of the proxy (a burst of new
        // requests) would otherwise cut every stream on it. Each stream keeps its own 2 MB
        // window, so one slow stream still cannot hold more than that.
        .http2_initial_connection_window_size(32 << 20)
        .build(https)
}

impl Clients {
    /// The client for a connect timeout and protocol (created on first use).
    pub fn get(&self, connect_timeout: Duration, http2_prior_knowledge: bool) -> HttpClient {
        let key = (connect_timeout, http2_prior_knowledge);
        if let Some(c) = self.by_connect_timeout.get(&key) {
            return c.clone();
        }
        self.by_connect_timeout
            .entry(key)
            .or_insert_with(|| build(connect_timeout, http2_prior_knowledge))
            .clone()
    }

    /// The streaming-body client for a connect timeout and protocol (created on first use).
    pub fn streaming(
        &self,
        connect_timeout: Duration,
        http2_prior_knowledge: bool,
    ) -> StreamingClient {
        let key = (connect_timeout, http2_prior_knowledge);
        if let Some(c) = self.streaming.get(&key) {
            return c.clone();
        }
        self.streaming
            .entry(key)
            .or_insert_with(|| build(connect_timeout, http2_prior_knowledge))
            .clone()
    }
}

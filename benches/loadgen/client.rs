//! Keep-alive connections (HTTP/1.1, one request at a time, or HTTP/2 with prior knowledge,
//! many streams at once), the request bodies, and targets restricted to loopback addresses.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Target {
    /// The resolved loopback address.
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: HeaderValue,
    /// Path and query (HTTP/1.1 request target).
    pub path: String,
    /// The whole URL (HTTP/2 needs scheme and authority).
    pub absolute: Uri,
}

impl Target {
    /// Parses `http://127.0.0.1:PORT/path`; anything but a loopback address is refused.
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url:?}: only http:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?}: no host"))?
            .as_str()
            .to_owned();
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| format!("{url:?}: write the address as IP:PORT"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{addr}: only loopback targets are allowed"));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let host = HeaderValue::from_str(&authority).map_err(|e| e.to_string())?;
        Ok(Target {
            addr,
            host,
            path,
            absolute: uri,
        })
    }
}

/// The wire protocol of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1: one request at a time per connection.
    H1,
    /// HTTP/2 over cleartext with prior knowledge: concurrent streams on one connection.
    H2,
}

impl Proto {
    /// `h1` or `h2`.
    pub fn parse(s: &str) -> Result<Proto, String> {
        match s {
            "h1" => Ok(Proto::H1),
            "h2" => Ok(Proto::H2),
            _ => Err(format!("protocol {s:?}: write h1 or h2")),
        }
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One keep-alive connection.
pub struct Conn {
    sender: Sender,
}

impl Conn {
    /// Connects over HTTP/1.1 (within 5 s).
    pub async fn open(target: &Target) -> Result<Conn, String> {
        Conn::open_with(target, Proto::H1).await
    }

    /// Connects (within 5 s).
    pub async fn open_with(target: &Target, proto: Proto) -> Result<Conn, String> {
        let connect = TcpStream::connect(target.addr);
        let stream = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let sender = match proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(sender)
            }
        };
        Ok(Conn { sender })
    }

    /// Another handle on the same connection, for HTTP/2 only (HTTP/1.1 carries one request
    /// at a time).
    pub fn share(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
            }),
            Sender::H1(_) => None,
        }
    }

    /// Sends one request; the response body is still to be read.
    pub async fn send(
        &mut self,
        target: &Target,
        method: Method,
        body: Bytes,
    ) -> Result<Response<Incoming>, String> {
        let uri = match self.sender {
            Sender::H1(_) => Uri::try_from(target.path.as_str()).map_err(|e| e.to_string())?,
            Sender::H2(_) => target.absolute.clone(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        if let Sender::H1(_) = self.sender {
            h.insert(header::HOST, target.host.clone());
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let sent = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
        };
        sent.map_err(|e| format!("request: {e}"))
    }
}

/// A typical chat request (about 0.7 KB) for `model`, from end user `user`.
pub fn chat_body(model: &str, user: u64, stream: bool) -> Bytes {
    let stream = if stream { "true" } else { "false" };
    Bytes::from(format!(
        concat!(
            r#"{{"model":"{model}","messages":["#,
            r#"{{"role":"system","content":"You are the helpful support assistant of Acme Cloud. Be precise and cite the documentation when you can."}},"#,
            r#"{{"role":"user","content":"Hi, my deployment to eu-west-2 has been stuck in 'pending' for twenty minutes. What can I check?"}},"#,
            r#"{{"role":"assistant","content":"Sorry to hear that. Could you tell me the deployment id and whether the build step finished?"}},"#,
            r#"{{"role":"user","content":"The id is dep_8f3a2c91, and yes, the build finished at 10:42 UTC. The logs show 'waiting for capacity' repeatedly. Should I retry in another region?"}}],"#,
            r#""temperature":1.0,"max_tokens":2000,"stream":{stream},"user":"user-{user}","#,
            r#""metadata":{{"plan":"pro","country":"FR"}}}}"#
        ),
        model = model,
        stream = stream,
        user = user,
    ))
}

//! Webhook delivery: one spawned task per (notification, URL), a bounded number in flight,
//! each try under a timeout, retried with exponential backoff. Evaluation never waits for it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use prometheus::IntCounterVec;
use tokio::sync::Semaphore;

use crate::providers::client::HttpClient;

/// Deliveries in flight at most; beyond, a notification is dropped (and counted).
pub const MAX_IN_FLIGHT: usize = 64;
/// The time one try may take, answer included.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// The waits before the retries: a failed first try is retried after 0.5 s, then 1 s, then
/// 2 s (four tries at most).
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];
/// The largest webhook answer read (and thrown away).
const MAX_ANSWER: usize = 64 * 1024;

/// Sends alert notifications to webhooks.
#[derive(Clone)]
pub struct Notifier {
    client: HttpClient,
    permits: Arc<Semaphore>,
    results: IntCounterVec,
    try_timeout: Duration,
    delays: Vec<Duration>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// How one try ended.
enum Try {
    Sent,
    /// Worth another try (timeout, connection failure, 5xx, 408, 429).
    Retry(String),
    /// Not worth another (any other 4xx, a request that cannot be built).
    GiveUp(String),
}

impl Notifier {
    /// A notifier over `client`, counting into `results` (`{alert, result}`).
    pub fn new(client: HttpClient, results: IntCounterVec, max_in_flight: usize) -> Notifier {
        Notifier {
            client,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            results,
            try_timeout: TRY_TIMEOUT,
            delays: RETRY_DELAYS.to_vec(),
        }
    }

    /// Posts `body` (JSON) to each of `urls` in the background. Returns at once.
    pub fn send(&self, alert: &str, urls: &[Uri], body: Bytes) {
        for url in urls {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.results.with_label_values(&[alert, "dropped"]).inc();
                tracing::error!(
                    alert,
                    webhook = %redacted(url),
                    in_flight = MAX_IN_FLIGHT,
                    "alert notification dropped: too many deliveries in flight"
                );
                continue;
            };
            let this = self.clone();
            let url = url.clone();
            let body = body.clone();
            let alert = alert.to_owned();
            tokio::spawn(async move {
                let sent = this.deliver(&alert, &url, body).await;
                let result = if sent { "sent" } else { "failed" };
                this.results.with_label_values(&[&alert, result]).inc();
                drop(permit);
            });
        }
    }

    /// Tries, then retries after each delay; true once a try is answered with a 2xx.
    async fn deliver(&self, alert: &str, url: &Uri, body: Bytes) -> bool {
        let tries = self.delays.len() + 1;
        for attempt in 0..tries {
            let why = match tokio::time::timeout(self.try_timeout, self.post(url, body.clone()))
                .await
            {
                Ok(Try::Sent) => return true,
                Ok(Try::GiveUp(why)) => {
                    tracing::warn!(alert, webhook = %redacted(url), %why, "alert notification rejected; not retried");
                    return false;
                }
                Ok(Try::Retry(why)) => why,
                Err(_) => format!("no answer within {:?}", self.try_timeout),
            };
            match self.delays.get(attempt) {
                Some(delay) => {
                    tracing::warn!(alert, webhook = %redacted(url), %why, attempt = attempt + 1, retry_in = ?delay, "alert notification failed; retrying");
                    tokio::time::sleep(*delay).await;
                }
                None => {
                    tracing::error!(alert, webhook = %redacted(url), %why, tries, "alert notification failed; giving up");
                }
            }
        }
        false
    }

    async fn post(&self, url: &Uri, body: Bytes) -> Try {
        let req = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("switchyard-alerts/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Try::GiveUp(format!("invalid request: {e}")),
        };
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => return Try::Retry(format!("request failed: {e}")),
        };
        let status = resp.status();
        // Read the answer so the connection can be reused; its content does not matter.
        let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
        if status.is_success() {
            Try::Sent
        } else if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Try::Retry(format!("answered {status}"))
        } else {
            Try::GiveUp(format!("answered {status}"))
        }
    }

    #[cfg(test)]
    fn with_timing(mut self, try_timeout: Duration, delays: Vec<Duration>) -> Notifier {
        self.try_timeout = try_timeout;
        self.delays = delays;
        self
    }
}

/// A webhook URL fit for logs: scheme and authority only (paths of chat webhooks are secrets).
pub fn redacted(url: &Uri) -> String {
    format!(
        "{}://{}/…",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str())
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use prometheus::Opts;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(
            Opts::new("t_notifications_total", "t"),
            &["alert", "result"],
        )
        .unwrap()
    }

    fn client() -> HttpClient {
        crate::providers::client::Clients::default().get(Duration::from_secs(1), false)
    }

    /// A server answering each connection's request with the next status of `script` (the
    /// last one repeats); `None` never answers.
    async fn server(script: Vec<Option<u16>>) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let status = script[n.min(script.len() - 1)];
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = sock.read(&mut buf).await;
                    match status {
                        Some(s) => {
                            let resp = format!(
                                "HTTP/1.1 {s} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            );
                            let _ = sock.write_all(resp.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        (format!("http://{addr}/hook/secret").parse().unwrap(), seen)
    }

    async fn wait_for(c: &IntCounterVec, alert: &str, result: &str, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.with_label_values(&[alert, result]).get() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{result} never reached {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn retries_server_errors_then_succeeds() {
        let (url, seen) = server(vec![Some(500), Some(503), Some(200)]).await;
        let c = counter();
        let n = Notifier::new(client(), c.clone(), 4)
            .with_timing(Duration::from_secs(2), vec![Duration::from_millis(10); 3]);
        n.send("a", &[url], Bytes::from_static(b"{}"));
        wait_for(&c, "a", "sent", 1).await;
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert_eq!(c.with_label_values(&["a", "failed"]).get(), 0);
    }

    #[tokio::test]
    async fn gives_up_after_the_last_retry_and_on_client_errors() {
        let (url, seen) = server(vec![Some(502)]).await;
        let c = counter();
        let n = Notifier::new(client(), c.clone(), 4)
            .with_timing(Duration::from_secs(2), vec![Duration::from_millis(5); 3]);
        n.send("a", &[url], Bytes::from_static(b"{}"));
        wait_for(&c, "a", "failed", 1).await;
        assert_eq!(seen.load(Ordering::SeqCst), 4);
        let (url, seen) = server(vec![Some(404)]).await;
        n.send("b", &[url], Bytes::from_static(b"{}"));
        wait_for(&c, "b", "failed", 1).await;
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_hanging_webhook_times_out_and_the_excess_is_dropped() {
        let (url, _) = server(vec![None]).await;
        let c = counter();
        let n = Notifier::new(client(), c.clone(), 2)
            .with_timing(Duration::from_millis(50), vec![Duration::from_millis(5)]);
        n.send(
            "a",
            &[url.clone(), url.clone(), url],
            Bytes::from_static(b"{}"),
        );
        // Two in flight, the third dropped at once.
        assert_eq!(c.with_label_values(&["a", "dropped"]).get(), 1);
        wait_for(&c, "a", "failed", 2).await;
    }

    #[test]
    fn urls_are_redacted_in_logs() {
        let u: Uri = "https://hooks.example/services/T0/B0/SECRET"
            .parse()
            .unwrap();
        assert_eq!(redacted(&u), "https://hooks.example/…");
    }
}

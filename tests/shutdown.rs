//! An honest shutdown through real sockets: `/readyz` turns 503 `draining` at once, both
//! listeners keep accepting for `drain_delay`, then stop; streams still open at
//! `drain_timeout` end with a `server_shutting_down` error event, never silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/upstream.rs"]
mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tokio::sync::Notify;

use proxy::{basic_config, TestProxy};
use upstream::{MockUpstream, SseStep};

const WAIT: Duration = Duration::from_secs(20);

fn chunk(content: &str) -> String {
    json!({
        "id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1, "model": "model-x",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    })
    .to_string()
}

#[tokio::test]
async fn sigterm_drains_honestly_and_cut_streams_end_with_an_error_event() {
    // The upstream sends one chunk, then never goes on.
    let never = Arc::new(Notify::new());
    let up = MockUpstream::builder()
        .sse(vec![
            SseStep::Data(chunk("BEFORE")),
            SseStep::Gate(never.clone()),
            SseStep::Done,
        ])
        .start()
        .await;
    let config = format!(
        "[server]\ndrain_delay = \"2s\"\ndrain_timeout = \"1s\"\n{}",
        basic_config(&up.base_url())
    );
    let proxy = TestProxy::start(&config).await;
    let (addr, admin) = (proxy.addr, proxy.admin_addr);
    let body = json!({"model": "f", "user": "u-1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let url = proxy.url("/v1/chat/completions");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = client::post_stream(&url, &body, &[]).await;
        assert_eq!(s.status, StatusCode::OK);
        let first = s.next_data(WAIT).await;
        assert!(String::from_utf8_lossy(&first).contains("BEFORE"));
        streams.push(s);
    }

    let stopped = tokio::spawn(proxy.shutdown(Duration::from_secs(60)));
    let signalled = Instant::now();
    // /readyz turns 503 draining at once …
    let mut draining = false;
    while signalled.elapsed() < WAIT {
        let r = client::get(&format!("http://{admin}/readyz")).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.json()["status"], "draining");
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(draining, "/readyz never reported draining");
    // … while both listeners still accept new connections (the load balancer's grace).
    if signalled.elapsed() < Duration::from_millis(1500) {
        let r = client::get(&format!("http://{addr}/v1/models")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the API accepts during drain_delay"
        );
        let r = client::get(&format!("http://{admin}/healthz")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the admin listener accepts during drain_delay"
        );
    }

    // Every stream still open at the drain timeout ends with the error event.
    for s in streams {
        let rest = String::from_utf8_lossy(&s.rest(WAIT).await).into_owned();
        assert!(rest.contains("\"code\":\"server_shutting_down\""), "{rest}");
        assert!(!rest.contains("[DONE]"), "{rest}");
    }
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "streams were cut before drain_delay + drain_timeout"
    );
    assert!(stopped.await.unwrap(), "the proxy stops cleanly");
    // And the listeners are closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    never.notify_one();
}

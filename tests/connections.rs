//! Slow, idle and too many connections through real sockets: half-sent heads and silent
//! connections are closed after `header_timeout`, kept-alive ones after `idle_timeout`, a
//! listener holding `max_connections` refuses more with a readable 503, and thousands of slow
//! connections do not keep a new client or `/healthz` waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use proxy::TestProxy;

const FLAG: &str = r#"
[providers.mock]
kind = "mock"
latency = "0ms"

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "model-a"
[[flags.f.rules]]
id = "all"
allocation = [{ variation = "a", end = 10000 }]
"#;

fn chat() -> String {
    json!({"model": "f", "user": "u1", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// Reads until the server closes the connection (true) or `within` runs out (false).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slow_heads_silent_and_idle_connections_are_closed_while_others_are_served() {
    let config = format!("[server]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\n{FLAG}");
    let proxy = TestProxy::start(&config).await;
    for addr in [proxy.addr, proxy.admin_addr] {
        // Half a head, then one byte at a time: closed after the header timeout.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        // Nothing at all.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A kept-alive connection after one request.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 512];
        let n = kept.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 "), "{:?}", &first[..n]);

        let started = Instant::now();
        let trickle = async {
            for _ in 0..100 {
                if slow.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        // Meanwhile a new client is served.
        let served = async {
            if addr == proxy.addr {
                let r = client::post_json(&proxy.url("/v1/chat/completions"), &chat(), &[]).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            } else {
                let r = client::get(&proxy.admin_url("/healthz")).await;
                assert_eq!(r.status, StatusCode::OK);
            }
        };
        tokio::join!(trickle, served);
        assert!(
            closed_within(&mut slow, Duration::from_secs(20)).await,
            "slow head kept open"
        );
        assert!(
            closed_within(&mut silent, Duration::from_secs(20)).await,
            "silent connection kept open"
        );
        assert!(
            closed_within(&mut kept, Duration::from_secs(20)).await,
            "idle connection kept open"
        );
        // Not before its timeout (1 s for heads): the trickle alone lasted longer.
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
    let metrics = client::get(&proxy.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(
            "switchyard_connections_closed_total{listener=\"main\",reason=\"header_timeout\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchyard_connections_closed_total{listener=\"admin\",reason=\"idle_timeout\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_listener_at_max_connections_refuses_more_with_a_readable_503() {
    let config = format!("[server]\nmax_connections = 3\n{FLAG}");
    let proxy = TestProxy::start(&config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        // A complete request each, so the connection is surely accepted and counted.
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let raw = client::raw_exchange(
        proxy.addr,
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
        false,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(raw.status(), Some(503), "{}", raw.text());
    assert!(raw.closed);
    assert!(
        raw.body().contains("\"code\":\"max_connections\""),
        "{}",
        raw.text()
    );
    // The admin listener has its own count.
    let r = client::get(&proxy.admin_url("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK);
    drop(held);
    // Once they close, new clients are served again.
    let mut served = false;
    for _ in 0..100 {
        let raw = client::raw_exchange(
            proxy.addr,
            b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            false,
            Duration::from_secs(10),
        )
        .await;
        if raw.status() == Some(200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "connections freed are counted down");
}

/// Opens `n` connections to `addr`, each sending half a request head.
async fn slowloris(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    held
}

#[tokio::test]
async fn with_3000_slow_connections_open_a_new_client_and_healthz_are_answered() {
    // Both ends of 3,200 connections live in this process.
    let (before, now, hard) = switchyard::server::raise_open_files_limit().unwrap();
    if now < 8000 {
        panic!("the open files limit ({before} soft, {hard} hard) cannot hold this test");
    }
    let proxy = TestProxy::start(FLAG).await;
    let main = slowloris(proxy.addr, 3000).await;
    let admin = slowloris(proxy.admin_addr, 200).await;
    // Every one of them is accepted and held (the gauge counts them).
    let mut open = 0.0;
    for _ in 0..200 {
        let metrics = client::get(&proxy.admin_url("/metrics")).await.text();
        open = metrics
            .lines()
            .find(|l| l.starts_with("switchyard_open_connections{listener=\"main\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if open >= 3000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(open >= 3000.0, "open connections: {open}");
    let t = Instant::now();
    let r = client::post_json(&proxy.url("/v1/chat/completions"), &chat(), &[]).await;
    let chat_took = t.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let t = Instant::now();
    let h = client::get(&proxy.admin_url("/healthz")).await;
    let health_took = t.elapsed();
    assert_eq!(h.status, StatusCode::OK);
    eprintln!(
        "3000 slow connections held: chat answered in {chat_took:?}, /healthz in {health_took:?}"
    );
    // A generous bound for a loaded 2-core machine; the point is no hang.
    assert!(chat_took < Duration::from_secs(5) && health_took < Duration::from_secs(5));
    drop(main);
    drop(admin);
}

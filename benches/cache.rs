//! A response-cache hit against the upstream's own answer, over HTTP on real sockets: a fake
//! OpenAI-compatible upstream that answers after `UPSTREAM_MS` (default 20 ms — a fast model;
//! real ones take hundreds), the proxy in front of it with `cache = { ttl = "10m" }`.
//! Measured: the upstream asked directly, a miss through the proxy (`cache-control:
//! no-cache`, so the provider answers), and a hit through the proxy. Target: a hit answered
//! at least 10 × faster than the upstream's own answer.
//!
//! `cargo bench --bench cache` (`ROUNDS=500 UPSTREAM_MS=20`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"model":"model-a","choices":[{"index":0,"message":{"role":"assistant","content":"Your order ships tomorrow; the tracking link is in your confirmation e-mail."},"finish_reason":"stop"}],"usage":{"prompt_tokens":182,"completion_tokens":24,"total_tokens":206}}"#;

const BODY: &str = r#"{"model":"support","user":"u-1","messages":[{"role":"system","content":"You are a support assistant for an online shop."},{"role":"user","content":"Where is my order 4711? It was due yesterday."}]}"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rounds = env_or("ROUNDS", 200) as usize;
    let upstream_ms = env_or("UPSTREAM_MS", 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // The fake upstream.
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = upstream.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        tokio::time::sleep(Duration::from_millis(upstream_ms)).await;
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                            ANSWER.as_bytes(),
                        )));
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let config = format!(
            "[providers.up]\nkind = \"openai\"\nbase_url = \"http://{up_addr}/v1\"\n\
             [flags.support]\noff_variation = \"a\"\n\
             [flags.support.variations.a]\nprovider = \"up\"\nmodel_id = \"model-a\"\n\
             temperature = 0\ncache = {{ ttl = \"10m\" }}\n\
             [[flags.support.rules]]\nid = \"all\"\nallocation = [{{ variation = \"a\", end = 10000 }}]\n\
             [state]\nurl = \"sqlite::memory:\"\n"
        );
        let config = switchyard::Config::parse(&config, "bench.toml").unwrap();
        let listeners = switchyard::Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let main = listeners.main.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(switchyard::run(listeners, config, async move {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let post = |url: String, no_cache: bool| {
            let client = client.clone();
            async move {
                let mut req = http::Request::post(url).header("content-type", "application/json");
                if no_cache {
                    req = req.header("cache-control", "no-cache");
                }
                let req = req.body(Full::new(Bytes::from_static(BODY.as_bytes()))).unwrap();
                let resp = client.request(req).await.unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
                let verdict = resp
                    .headers()
                    .get("x-switchyard-cache")
                    .map(|v| v.to_str().unwrap_or("").to_owned());
                resp.into_body().collect().await.unwrap();
                verdict
            }
        };
        let direct = format!("http://{up_addr}/v1/chat/completions");
        let proxied = format!("http://{main}/v1/chat/completions");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::time::timeout(Duration::from_secs(1), post(proxied.clone(), false))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the proxy did not answer");
        }
        println!(
            "{:<46} {:>10} {:>10} {:>10}",
            "request", "median", "p95", "max"
        );
        let mut medians = Vec::new();
        for (name, url, no_cache, want) in [
            ("the upstream's own answer (direct)", &direct, false, None),
            ("miss through the proxy (no-cache)", &proxied, true, Some("bypass")),
            ("hit through the proxy", &proxied, false, Some("hit")),
        ] {
            for _ in 0..5 {
                post(url.clone(), no_cache).await;
            }
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = Instant::now();
                let verdict = post(url.clone(), no_cache).await;
                times.push(t.elapsed());
                assert_eq!(verdict.as_deref(), want, "{name}");
            }
            times.sort();
            let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
            println!(
                "{name:<46} {:>10} {:>10} {:>10}",
                ms(times[times.len() / 2]),
                ms(times[times.len() * 95 / 100]),
                ms(times[times.len() - 1])
            );
            medians.push(times[times.len() / 2]);
        }
        let ratio = medians[0].as_secs_f64() / medians[2].as_secs_f64();
        println!(
            "a hit is {ratio:.0} × faster than the upstream's own answer (target ≥ 10 ×): {}",
            if ratio >= 10.0 { "met" } else { "NOT met" }
        );
        let _ = stop.send(());
        let _ = server.await;
    });
}

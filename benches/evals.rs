//! The request path with online evals off and on, end to end over HTTP on a real listener (the
//! mock provider answering at once): a chat request's round trip with
//! - `off`: no `[evals]`;
//! - `sampled-5pct`: an eval sampling 5 % of the flag's answers, judged by the mock judge;
//! - `queue-full`: an eval sampling every answer whose judge never answers in time and whose
//!   queue holds one answer, so nearly every answer is dropped (and counted).
//!
//! Target: the three within noise of each other (the eval's work is off the request path).
//! `cargo bench --bench evals`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_main, Criterion};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn config(evals: &str) -> String {
    format!(
        r#"
[state]
url = "sqlite::memory:"
[providers.mock]
kind = "mock"
latency = "0ms"
[providers.slow-judge]
kind = "mock"
latency = "30s"
timeout = "60s"
[prompts]
judge = "Question: {{question}} Answer: {{answer}} Reply with JSON."
[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m-a"
[flags.f.variations.b]
provider = "mock"
model_id = "m-b"
[[flags.f.rules]]
id = "ab"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]
{evals}
"#
    )
}

const SAMPLED: &str = r#"
[evals.g]
flags = ["f"]
sample = 0.05
provider = "mock"
model = "judge-1"
prompt = "judge"
score = "json:score"
"#;

const QUEUE_FULL: &str = r#"
[evals.g]
flags = ["f"]
sample = 1.0
provider = "slow-judge"
model = "judge-1"
prompt = "judge"
score = "json:score"
queue = 1
concurrency = 1
"#;

fn bench_request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("request_path_evals");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(50);
    for (name, evals) in [
        ("off", ""),
        ("sampled-5pct", SAMPLED),
        ("queue-full", QUEUE_FULL),
    ] {
        let config = switchyard::Config::parse(&config(evals), "bench.toml").unwrap();
        let (url, stop) = rt.block_on(async {
            let listeners = switchyard::Listeners::bind(
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
            )
            .await
            .unwrap();
            let url = format!(
                "http://{}/v1/chat/completions",
                listeners.main.local_addr().unwrap()
            );
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(switchyard::run(listeners, config, async move {
                let _ = rx.await;
            }));
            (url, tx)
        });
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let body = format!(
                    r#"{{"model":"f","user":"u{i}","messages":[{{"role":"user","content":"question {i}"}}]}}"#
                );
                rt.block_on(async {
                    let req = http::Request::post(&url)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    let resp = client.request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                })
            })
        });
        let _ = stop.send(());
    }
    g.finish();
}

/// The group (a private module: the generated function needs no docs).
mod suite {
    use super::bench_request_path;

    criterion::criterion_group!(benches, bench_request_path);
}

criterion_main!(suite::benches);

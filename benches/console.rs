//! The console's data requests at scale, over HTTP on a real admin listener: a config of 50
//! flags × 4 variations, 1,000 audit entries and 100,000 exposures (with 10,000 feedback
//! events) in the SQLite state store. Target: each request ≤ 20 ms median. Also prints the
//! size of the embedded assets (target ≤ 300 KB uncompressed).
//!
//! `cargo bench --bench console` (`ROUNDS=500` for more samples).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard::state::{Change, Exposure, FeedbackRow, Store};

const FLAGS: usize = 50;
const VARIATIONS: usize = 4;
const AUDIT: usize = 1000;
const EXPOSURES: usize = 100_000;
const FEEDBACK: usize = 10_000;
const TOKEN: &str = "bench-token";

fn config(state_url: &str) -> String {
    let mut c = format!(
        "[admin]\ntokens = [{{ name = \"ops\", token_env = \"OPS\" }}]\n[state]\nurl = \"{state_url}\"\n\
         [providers.mock]\nkind = \"mock\"\nlatency = \"0ms\"\n[prompts]\np = \"Be brief.\"\n"
    );
    for f in 0..FLAGS {
        c.push_str(&format!(
            "\n[flags.flag-{f:02}]\noff_variation = \"v0\"\nstable_variation = \"v0\"\n"
        ));
        for v in 0..VARIATIONS {
            c.push_str(&format!(
                "[flags.flag-{f:02}.variations.v{v}]\nprovider = \"mock\"\nmodel_id = \"m{v}\"\nsystem_prompt_variant = \"p\"\n"
            ));
        }
        c.push_str(&format!(
            "[[flags.flag-{f:02}.rules]]\nid = \"ab\"\nallocation = [{{ variation = \"v0\", end = 2500 }}, {{ variation = \"v1\", end = 5000 }}, {{ variation = \"v2\", end = 7500 }}, {{ variation = \"v3\", end = 10000 }}]\n\
             [[flags.flag-{f:02}.rules]]\nid = \"rollout\"\nrollout = {{ variation = \"v1\", stages = [1, 5, 10, 100], initial_stage = 1, gate = {{ min_requests = 100, hold = \"10m\" }} }}\n\
             [[flags.flag-{f:02}.rules]]\nid = \"everyone-else\"\nallocation = [{{ variation = \"v0\", end = 10000 }}]\n\
             [[alerts]]\nname = \"errors-{f:02}\"\nflag = \"flag-{f:02}\"\nmetric = \"error_rate\"\nabove = {{ warning = 0.05, critical = 0.1 }}\nwindow = \"5m\"\nmin_samples = 10\n"
        ));
    }
    c
}

async fn fill(store: &Store) {
    let mut batch = Vec::with_capacity(5000);
    for i in 0..EXPOSURES {
        batch.push(Exposure {
            flag: format!("flag-{:02}", i % FLAGS),
            variation: format!("v{}", i % VARIATIONS),
            rule: Some("ab".into()),
            user: format!("u-{i}"),
            at_ms: 1,
            repeat: false,
        });
        if batch.len() == 5000 {
            store.record_exposures(&batch).await.unwrap();
            batch.clear();
        }
    }
    let rows: Vec<FeedbackRow> = (0..FEEDBACK)
        .map(|i| FeedbackRow {
            event_id: format!("ev-{i}"),
            flag: format!("flag-{:02}", i % FLAGS),
            variation: format!("v{}", i % VARIATIONS),
            user: format!("u-{i}"),
            metric: "conversion".into(),
            value: (i % 3 == 0) as u8 as f64,
            at_ms: 1,
        })
        .collect();
    for chunk in rows.chunks(1000) {
        store.insert_feedback(chunk).await.unwrap();
    }
    for i in 0..AUDIT {
        let change = Change::SetEnabled {
            flag: format!("flag-{:02}", i % FLAGS),
            enabled: i % 2 == 1,
        };
        store.apply(&change, "ops", Some("bench")).await.unwrap();
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("console bench: run with `cargo bench --bench console`");
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!(
        "embedded console assets: {} bytes uncompressed (target ≤ 307200)",
        switchyard::console::assets_size()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("switchyard-console-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("state.db").display());
        let t = Instant::now();
        fill(&Store::open(&url).await.unwrap()).await;
        println!(
            "store: {EXPOSURES} exposures, {FEEDBACK} feedback events, {AUDIT} audit entries written in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let env = |k: &str| (k == "OPS").then(|| TOKEN.to_owned());
        let config =
            switchyard::Config::parse_with_env(&config(&url), "bench.toml", &env).unwrap();
        let listeners = switchyard::Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(switchyard::run(listeners, config, async move {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let get = |path: String| {
            let client = client.clone();
            async move {
                let req = http::Request::get(format!("http://{admin}{path}"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(status.is_success(), "{path}: {status} {body:?}");
                body.len()
            }
        };
        // The server is up once the overview answers; the first SRM pass runs at start.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::time::timeout(Duration::from_secs(1), get("/admin/console/overview".into()))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the server did not answer");
        }
        println!("{:<44} {:>9} {:>9} {:>9} {:>9}", "request", "bytes", "median", "p95", "max");
        for (name, path) in [
            ("flag list: GET /admin/console/overview", "/admin/console/overview"),
            ("flag page: GET /admin/console/flags/F", "/admin/console/flags/flag-07"),
            ("flag page: GET /admin/flags/F/results", "/admin/flags/flag-07/results"),
            ("audit page: GET /admin/audit?limit=25", "/admin/audit?limit=25"),
            ("alerts page: GET /admin/alerts", "/admin/alerts"),
            ("alerts page: GET /admin/audit?action=alert", "/admin/audit?action=alert&limit=100"),
        ] {
            for _ in 0..10 {
                get(path.to_owned()).await;
            }
            let mut times = Vec::with_capacity(rounds);
            let mut bytes = 0;
            for _ in 0..rounds {
                let t = Instant::now();
                bytes = get(path.to_owned()).await;
                times.push(t.elapsed());
            }
            times.sort();
            let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
            println!(
                "{name:<44} {bytes:>9} {:>9} {:>9} {:>9}",
                ms(times[times.len() / 2]),
                ms(times[times.len() * 95 / 100]),
                ms(times[times.len() - 1])
            );
        }
        let _ = stop.send(());
        let _ = server.await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

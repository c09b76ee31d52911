//! Experiment data at scale, against the real state store: feedback ingestion (events per
//! second in batches of 100) and the results computation with 1,000,000 exposures stored, on
//! SQLite and (when reachable) PostgreSQL.
//!
//! `cargo bench --bench experiments` (or `EXPOSURES=200000 cargo bench --bench experiments`).
//! PostgreSQL: `SWITCHYARD_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use switchyard::experiments::catalog::{Catalog, PerUser};
use switchyard::experiments::results::{self, MetricSums, Policy, VariationData};
use switchyard::state::{Exposure, FeedbackRow, Store};

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("experiments bench: run with `cargo bench --bench experiments`");
        return;
    }
    let exposures: usize = std::env::var("EXPOSURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sqlite = format!("sqlite:{}", dir.join("bench.db").display());
        run("sqlite", &sqlite, exposures).await;
        let pg = std::env::var("SWITCHYARD_BENCH_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("bench_{}", std::process::id());
        match Store::open(&format!("{pg}?schema={schema}")).await {
            Ok(_) => run("postgres", &format!("{pg}?schema={schema}"), exposures).await,
            Err(e) => println!("postgres: skipped ({e})"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

async fn run(kind: &str, url: &str, exposures: usize) {
    let store = Store::open(url).await.unwrap();
    let flag = "bench-flag";
    let variations = ["control", "treatment"];
    // Exposures, in batches as the proxy's writer sends them.
    let t = Instant::now();
    let mut batch = Vec::with_capacity(5000);
    for i in 0..exposures {
        batch.push(Exposure {
            flag: flag.into(),
            variation: variations[i % 2].into(),
            rule: Some("ab".into()),
            user: format!("u-{i}"),
            request_id: format!("req-{i}"),
            at_ms: 1,
            repeat: false,
        });
        if batch.len() == 5000 {
            store.record_exposures(&batch).await.unwrap();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.record_exposures(&batch).await.unwrap();
    }
    let exp_secs = t.elapsed().as_secs_f64();
    // Feedback: 200 batches of 100 events.
    let t = Instant::now();
    let batches = 200;
    for b in 0..batches {
        let rows: Vec<FeedbackRow> = (0..100)
            .map(|j| {
                let i = (b * 100 + j) * 7 % exposures;
                FeedbackRow {
                    event_id: format!("ev-{b}-{j}"),
                    flag: flag.into(),
                    variation: variations[i % 2].into(),
                    user: format!("u-{i}"),
                    metric: "conversion".into(),
                    value: 1.0,
                    at_ms: 2,
                }
            })
            .collect();
        store.insert_feedback(&rows).await.unwrap();
    }
    let fb_secs = t.elapsed().as_secs_f64();
    // Results: what GET /admin/flags/{flag}/results computes (store queries + statistics).
    let catalog = Catalog::default();
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (counts, switched) = store.exposure_counts(flag, Some("ab")).await.unwrap();
        let aggs = store.feedback_aggs(flag, Some("ab"), None).await.unwrap();
        let mut data: BTreeMap<String, VariationData> = BTreeMap::new();
        for (v, users) in counts {
            data.insert(
                v,
                VariationData {
                    users,
                    expected_share: 0.5,
                    metrics: BTreeMap::new(),
                },
            );
        }
        for a in aggs {
            let def = catalog.get(&a.metric).unwrap();
            let (sum, sum_sq) = match def.per_user {
                PerUser::Max => (a.sum_of_max, a.sum_sq_of_max),
                PerUser::Sum => (a.sum_of_sums, a.sum_sq_of_sums),
                PerUser::Mean => (a.sum_of_means, a.sum_sq_of_means),
            };
            if let Some(d) = data.get_mut(&a.variation) {
                d.metrics.insert(
                    a.metric.clone(),
                    MetricSums {
                        reporters: a.reporters,
                        sum,
                        sum_sq,
                        events: a.events,
                    },
                );
            }
        }
        let v = results::compute(
            flag,
            "control",
            &data,
            &catalog,
            None,
            switched,
            &Policy::default(),
        );
        assert!(v["variations"].as_array().is_some());
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "{kind:<9} exposures: {exposures} in {exp_secs:.1}s ({:.0}/s) | feedback: {:.0} events/s in batches of 100 | results with {exposures} exposures: median {:.0} ms (min {:.0}, max {:.0}, 5 runs)",
        exposures as f64 / exp_secs,
        (batches * 100) as f64 / fb_secs,
        samples[2],
        samples[0],
        samples[4]
    );
}

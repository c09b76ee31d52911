//! Experiment data at scale, against the real state store, on SQLite and (when reachable)
//! PostgreSQL:
//!
//! - **results** with 1,000,000 exposures (and 10,000,000 with `SWITCHYARD_BENCH_10M=1`):
//!   what `GET /admin/flags/{flag}/results` does (store queries + statistics), median of 21
//!   runs, read from the running aggregates; the full scan they replace is timed once beside
//!   it (at 1,000,000 only; it grows with every user);
//! - **feedback ingestion**: events per second through `Store::insert_feedback` in batches of
//!   1,000 into the loaded store (each event folded into the aggregates);
//! - **first exposures**: new users per second through `Store::record_exposures` in the
//!   writer's batches of 4,096;
//! - **storage** per exposed user (the exposure row and its key), and the time to build the
//!   aggregates from existing rows (what the migration does).
//!
//! The data are generated with bulk SQL (not through HTTP): users `u-0…`, two variations,
//! every 50th user switched, 30 % reporting a conversion and 20 % two CSAT scores.
//!
//! `cargo bench --bench experiments`; `EXPOSURES=200000` for a quick run.
//! PostgreSQL: `SWITCHYARD_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use switchyard::experiments::catalog::{Catalog, PerUser};
use switchyard::experiments::results::{self, MetricSums, Policy, VariationData};
use switchyard::state::{Exposure, FeedbackRow, Store};

const FLAG: &str = "bench-flag";
const VARIATIONS: [&str; 2] = ["control", "treatment"];

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("experiments bench: run with `cargo bench --bench experiments`");
        return;
    }
    let mut scales: Vec<usize> = vec![std::env::var("EXPOSURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)];
    if std::env::var("SWITCHYARD_BENCH_10M").is_ok_and(|v| v == "1") {
        scales.push(10_000_000);
    }
    request_ids();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pg = std::env::var("SWITCHYARD_BENCH_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        for &n in &scales {
            let dir =
                std::env::temp_dir().join(format!("switchyard-bench-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("bench.db");
            run(Backend::Sqlite(path.display().to_string()), n).await;
            let _ = std::fs::remove_dir_all(&dir);
            let schema = format!("bench_{}_{n}", std::process::id());
            match Store::open(&format!("{pg}?schema={schema}")).await {
                Ok(_) => run(Backend::Postgres(pg.clone(), schema.clone()), n).await,
                Err(e) => println!("postgres: skipped ({e})"),
            }
            if let Ok((client, conn)) = tokio_postgres::connect(&pg, tokio_postgres::NoTls).await {
                let driver = tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await;
                drop(client);
                let _ = driver.await;
            }
        }
    });
}

/// The request path's cost of a signed request id (minted once per flagged answer), and of
/// reading one back (once per feedback event).
fn request_ids() {
    use switchyard::experiments::request_id::RequestIds;
    let ids = RequestIds::new(&[7u8; 32]);
    let n = 1_000_000u32;
    let t = Instant::now();
    let mut last = None;
    for i in 0..n {
        last = ids.mint(
            "support-assistant",
            "treatment",
            Some("ab-2026-11"),
            "user-4242",
            u64::from(i),
        );
    }
    let mint_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    let id = last.unwrap();
    let id = id.to_str().unwrap();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(ids.read(std::hint::black_box(id)).unwrap());
    }
    let read_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "request ids: mint {mint_ns:.0} ns, read {read_ns:.0} ns ({} characters for a 17-character flag, 9-character variation, 10-character rule, 9-character user)",
        id.len()
    );
}

enum Backend {
    Sqlite(String),
    Postgres(String, String),
}

impl Backend {
    fn kind(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(..) => "postgres",
        }
    }

    fn url(&self) -> String {
        match self {
            Backend::Sqlite(path) => format!("sqlite:{path}"),
            Backend::Postgres(url, schema) => format!("{url}?schema={schema}"),
        }
    }

    /// Loads `n` exposed users and their events with bulk SQL; returns the bytes the
    /// exposures take.
    async fn load(&self, n: usize) -> u64 {
        let n = n as i64;
        match self {
            Backend::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let size = |conn: &rusqlite::Connection| -> i64 {
                    conn.query_row(
                        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap()
                };
                conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;")
                    .unwrap();
                let before = size(&conn);
                conn.execute(
                    "INSERT INTO switchyard_exposures \
                     (flag, user_id, variation, rule, first_at_ms, switched) \
                     WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?1) \
                     SELECT 'bench-flag', 'u-' || i, CASE i % 2 WHEN 0 THEN 'control' ELSE 'treatment' END, \
                            'ab', 1, i % 50 = 0 FROM c",
                    [n],
                )
                .unwrap();
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                    .unwrap();
                let after = size(&conn);
                conn.execute(
                    "INSERT INTO switchyard_feedback (event_id, flag, variation, user_id, metric, value, at_ms) \
                     WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?1) \
                     SELECT 'c-' || i, 'bench-flag', CASE i % 2 WHEN 0 THEN 'control' ELSE 'treatment' END, \
                            'u-' || i, 'conversion', 1.0, 2 FROM c WHERE i % 10 < 3",
                    [n],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO switchyard_feedback (event_id, flag, variation, user_id, metric, value, at_ms) \
                     WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?1) \
                     SELECT 's-' || i || '-' || k, 'bench-flag', \
                            CASE i % 2 WHEN 0 THEN 'control' ELSE 'treatment' END, 'u-' || i, 'csat', \
                            1 + (i + k) % 5, 3 FROM c, (SELECT 0 AS k UNION ALL SELECT 1) WHERE i % 10 >= 8",
                    [n],
                )
                .unwrap();
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                    .unwrap();
                (after - before).max(0) as u64
            }
            Backend::Postgres(url, schema) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let driver = tokio::spawn(conn);
                let s = format!("\"{schema}\"");
                client
                    .execute(
                        &format!(
                            "INSERT INTO {s}.switchyard_exposures \
                             (flag, user_id, variation, rule, first_at_ms, switched) \
                             SELECT 'bench-flag', 'u-' || i, \
                                    CASE i % 2 WHEN 0 THEN 'control' ELSE 'treatment' END, 'ab', 1, \
                                    i % 50 = 0 FROM generate_series(0, $1::bigint - 1) i"
                        ),
                        &[&n],
                    )
                    .await
                    .unwrap();
                client
                    .batch_execute(&format!("VACUUM ANALYZE {s}.switchyard_exposures"))
                    .await
                    .unwrap();
                let bytes: i64 = client
                    .query_one(
                        &format!("SELECT pg_total_relation_size('{s}.switchyard_exposures')"),
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                client
                    .execute(
                        &format!(
                            "INSERT INTO {s}.switchyard_feedback \
                             (event_id, flag, variation, user_id, metric, value, at_ms) \
                             SELECT 'c-' || i, 'bench-flag', \
                                    CASE i % 2 WHEN 0 THEN 'control' ELSE 'treatment' END, \
                                    'u-' || i, 'conversion', 1.0, 2 \
                             FROM generate_series(0, $1::bigint - 1) i WHERE i % 10 < 3"
                        ),
                        &[&n],
                    )
                    .await
                    .unwrap();
                client
                    .execute(
                        &format!(
                            "INSERT INTO {s}.switchyard_feedback \
                             (event_id, flag, variation, user_id, metric, value, at_ms) \
                             SELECT 's-' || i || '-' || k, 'bench-flag', \
                                    CASE i % 2 WHEN 0 THEN 'control' ELSE 'treatment' END, \
                                    'u-' || i, 'csat', 1 + (i + k) % 5, 3 \
                             FROM generate_series(0, $1::bigint - 1) i, generate_series(0, 1) k \
                             WHERE i % 10 >= 8"
                        ),
                        &[&n],
                    )
                    .await
                    .unwrap();
                client
                    .batch_execute(&format!("ANALYZE {s}.switchyard_feedback"))
                    .await
                    .unwrap();
                drop(client);
                let _ = driver.await;
                bytes.max(0) as u64
            }
        }
    }
}

/// What the admin API's results handler does; returns (milliseconds, JSON variations).
async fn results_once(store: &Store, scan: bool) -> (f64, usize) {
    let catalog = Catalog::default();
    let t = Instant::now();
    let (counts, switched) = if scan {
        store.exposure_counts_scan(FLAG, Some("ab")).await.unwrap()
    } else {
        store.exposure_counts(FLAG, Some("ab")).await.unwrap()
    };
    let aggs = if scan {
        store
            .feedback_aggs_scan(FLAG, Some("ab"), None)
            .await
            .unwrap()
    } else {
        store.feedback_aggs(FLAG, Some("ab"), None).await.unwrap()
    };
    let _dropped = store.exposure_losses(FLAG).await.unwrap();
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
        FLAG,
        "control",
        &data,
        &catalog,
        None,
        switched,
        &Policy::default(),
    );
    let rows = v["variations"].as_array().map_or(0, Vec::len);
    (t.elapsed().as_secs_f64() * 1000.0, rows)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(backend: Backend, exposures: usize) {
    let kind = backend.kind();
    let url = backend.url();
    let store = Store::open(&url).await.unwrap();
    let t = Instant::now();
    let bytes = backend.load(exposures).await;
    let load_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    store.rebuild_aggregates().await.unwrap();
    let rebuild_secs = t.elapsed().as_secs_f64();
    println!(
        "{kind:<9} {exposures} exposures: loaded by bulk SQL in {load_secs:.1}s; exposure storage {:.0} bytes/user; aggregates built from the rows (the migration) in {rebuild_secs:.1}s",
        bytes as f64 / exposures as f64
    );

    // Results from the running aggregates: median of 21.
    let mut samples = Vec::new();
    for _ in 0..21 {
        let (ms, rows) = results_once(&store, false).await;
        assert!(rows > 0);
        samples.push(ms);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let scan = if exposures <= 1_000_000 {
        format!("{:.0} ms", results_once(&store, true).await.0)
    } else {
        "not run at this size".into()
    };
    println!(
        "{kind:<9} results with {exposures} exposures: median {:.2} ms (min {:.2}, max {:.2}, 21 runs); the full scan they replace: {scan}",
        median(samples),
        sorted[0],
        sorted[sorted.len() - 1]
    );

    // Feedback ingestion into the loaded store: 100 batches of 1,000 events.
    let batches = 100;
    let t = Instant::now();
    for b in 0..batches {
        let rows: Vec<FeedbackRow> = (0..1000)
            .map(|j| {
                let i = (b * 1000 + j) * 7919 % exposures;
                FeedbackRow {
                    event_id: format!("bench-{b}-{j}"),
                    flag: FLAG.into(),
                    variation: VARIATIONS[i % 2].into(),
                    user: format!("u-{i}"),
                    metric: if j % 3 == 0 { "csat" } else { "conversion" }.into(),
                    value: if j % 3 == 0 { 4.0 } else { 1.0 },
                    at_ms: 5,
                }
            })
            .collect();
        store.insert_feedback(&rows).await.unwrap();
    }
    let fb = (batches * 1000) as f64 / t.elapsed().as_secs_f64();

    // First exposures of new users, in the writer's batches.
    let new_users = 100_000;
    let t = Instant::now();
    let mut batch = Vec::with_capacity(4096);
    for i in 0..new_users {
        batch.push(Exposure {
            flag: FLAG.into(),
            variation: VARIATIONS[i % 2].into(),
            rule: Some("ab".into()),
            user: format!("new-{i}"),
            at_ms: 6,
            repeat: false,
        });
        if batch.len() == 4096 {
            store.record_exposures(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.record_exposures(&batch).await.unwrap();
    let ex = new_users as f64 / t.elapsed().as_secs_f64();
    println!(
        "{kind:<9} ingestion with {exposures} exposures stored: feedback {fb:.0} events/s (batches of 1,000); first exposures {ex:.0} users/s (batches of 4,096)"
    );
    // The aggregates still agree with the rows after all that (the scan is slow at 10M).
    if exposures > 1_000_000 {
        return;
    }
    let (running, scan) = (
        store.feedback_aggs(FLAG, Some("ab"), None).await.unwrap(),
        store
            .feedback_aggs_scan(FLAG, Some("ab"), None)
            .await
            .unwrap(),
    );
    assert_eq!(
        running
            .iter()
            .map(|a| (a.reporters, a.events))
            .collect::<Vec<_>>(),
        scan.iter()
            .map(|a| (a.reporters, a.events))
            .collect::<Vec<_>>()
    );
}

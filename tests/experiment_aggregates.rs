//! The running experiment aggregates against the full scan they replace, on randomized data
//! (exposures and feedback interleaved in random batches: feedback before the first
//! exposure, switches, events under another variation, duplicates, users never exposed),
//! on SQLite and on PostgreSQL: the store's figures and the results computed from them must
//! be the same both ways. Also: an older database gets its aggregates built on migration;
//! lost exposures are counted; finished experiments are deleted after their retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use serde_json::Value;
use switchyard::experiments::catalog::{Catalog, PerUser};
use switchyard::experiments::results::{self, MetricSums, Policy, VariationData};
use switchyard::state::{Exposure, FeedbackAgg, FeedbackRow, Store};

#[path = "support/db.rs"]
mod db;

use db::{open, Db};

const VARIATIONS: [&str; 3] = ["control", "treatment", "b"];
const RULES: [Option<&str>; 3] = [Some("main"), Some("holdout"), None];
const METRICS: [&str; 4] = ["conversion", "revenue", "csat", "thumbs"];

fn value(rng: &mut fastrand::Rng, metric: &str) -> f64 {
    match metric {
        "conversion" => f64::from(rng.u8(0..2)),
        "revenue" => f64::from(rng.u32(0..400)) / 4.0 + 0.1,
        "csat" => f64::from(rng.u8(1..6)),
        _ => [-1.0, 1.0][rng.usize(0..2)],
    }
}

/// Feeds `store` a random history (seeded) in batches, exposures and feedback interleaved.
async fn feed(store: &Store, seed: u64, users: usize, ops: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut event = 0usize;
    for _ in 0..ops {
        let size = rng.usize(1..40);
        if rng.bool() {
            let batch: Vec<Exposure> = (0..size)
                .map(|_| {
                    let u = rng.usize(0..users);
                    let v = if rng.u8(0..20) == 0 {
                        rng.usize(0..3)
                    } else {
                        u % 3
                    };
                    let flag = if rng.u8(0..10) == 0 { "g" } else { "f" };
                    Exposure {
                        flag: flag.into(),
                        variation: VARIATIONS[v].into(),
                        rule: RULES[(u / 3) % 3].map(str::to_owned),
                        user: format!("user-{u}"),
                        at_ms: 1_000 + event as u64,
                        repeat: rng.u8(0..10) == 0,
                    }
                })
                .collect();
            store.record_exposures(&batch).await.unwrap();
        } else {
            let rows: Vec<FeedbackRow> = (0..size)
                .map(|_| {
                    // Some users are never exposed (ids beyond `users`).
                    let u = rng.usize(0..users + users / 10);
                    let v = if rng.u8(0..15) == 0 {
                        rng.usize(0..3)
                    } else {
                        u % 3
                    };
                    let metric = METRICS[rng.usize(0..METRICS.len())];
                    event += 1;
                    // Now and then an event id already used (a duplicate).
                    let id = if event > 10 && rng.u8(0..20) == 0 {
                        rng.usize(1..event)
                    } else {
                        event
                    };
                    FeedbackRow {
                        event_id: format!("e{id}"),
                        flag: if rng.u8(0..10) == 0 { "g" } else { "f" }.into(),
                        variation: VARIATIONS[v].into(),
                        user: format!("user-{u}"),
                        metric: metric.into(),
                        value: value(&mut rng, metric),
                        at_ms: 1_000 + event as u64,
                    }
                })
                .collect();
            store.insert_feedback(&rows).await.unwrap();
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_aggs_equal(running: &[FeedbackAgg], scan: &[FeedbackAgg], what: &str) {
    assert_eq!(
        running.len(),
        scan.len(),
        "{what}: {running:#?}\nvs\n{scan:#?}"
    );
    for (r, s) in running.iter().zip(scan) {
        assert_eq!(
            (&r.variation, &r.metric, r.reporters, r.events),
            (&s.variation, &s.metric, s.reporters, s.events),
            "{what}"
        );
        for (x, y) in [
            (r.sum_of_sums, s.sum_of_sums),
            (r.sum_sq_of_sums, s.sum_sq_of_sums),
            (r.sum_of_max, s.sum_of_max),
            (r.sum_sq_of_max, s.sum_sq_of_max),
            (r.sum_of_means, s.sum_of_means),
            (r.sum_sq_of_means, s.sum_sq_of_means),
        ] {
            assert!(close(x, y), "{what}: {r:?} vs {s:?}");
        }
    }
}

/// Every JSON number equal within 1e-9 (relative), everything else identical.
fn assert_json_equal(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(close(x, y), "{at}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, v) in x {
                assert_json_equal(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_json_equal(v, w, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// The results answer for flag `f`, from the running figures or from the full scan, the way
/// the admin API assembles it.
async fn results_of(store: &Store, rule: Option<&str>, scan: bool) -> Value {
    let (counts, switched) = if scan {
        store.exposure_counts_scan("f", rule).await.unwrap()
    } else {
        store.exposure_counts("f", rule).await.unwrap()
    };
    let aggs = if scan {
        store.feedback_aggs_scan("f", rule, None).await.unwrap()
    } else {
        store.feedback_aggs("f", rule, None).await.unwrap()
    };
    let catalog = Catalog::default();
    let mut data: BTreeMap<String, VariationData> = VARIATIONS
        .iter()
        .zip([5000.0, 3000.0, 2000.0])
        .map(|(v, share)| {
            (
                (*v).to_owned(),
                VariationData {
                    expected_share: share,
                    ..Default::default()
                },
            )
        })
        .collect();
    for (v, users) in counts {
        data.get_mut(&v).unwrap().users = users;
    }
    for a in aggs {
        let def = catalog.get(&a.metric).unwrap();
        let (sum, sum_sq) = match def.per_user {
            PerUser::Max => (a.sum_of_max, a.sum_sq_of_max),
            PerUser::Sum => (a.sum_of_sums, a.sum_sq_of_sums),
            PerUser::Mean => (a.sum_of_means, a.sum_sq_of_means),
        };
        data.get_mut(&a.variation).unwrap().metrics.insert(
            a.metric.clone(),
            MetricSums {
                reporters: a.reporters,
                sum,
                sum_sq,
                events: a.events,
            },
        );
    }
    let policy = Policy {
        min_users: 10,
        min_events: 5,
        ..Policy::default()
    };
    results::compute("f", "control", &data, &catalog, None, switched, &policy)
}

async fn assert_running_equals_scan(store: &Store, what: &str) {
    for flag in ["f", "g", "nope"] {
        for rule in [None, Some("main"), Some("holdout"), Some("unknown")] {
            let what = format!("{what}: flag {flag}, rule {rule:?}");
            assert_eq!(
                store.exposure_counts(flag, rule).await.unwrap(),
                store.exposure_counts_scan(flag, rule).await.unwrap(),
                "{what}"
            );
            assert_aggs_equal(
                &store.feedback_aggs(flag, rule, None).await.unwrap(),
                &store.feedback_aggs_scan(flag, rule, None).await.unwrap(),
                &what,
            );
        }
    }
    for rule in [None, Some("main"), Some("holdout")] {
        let running = results_of(store, rule, false).await;
        let scan = results_of(store, rule, true).await;
        assert!(
            !running["variations"].as_array().unwrap().is_empty(),
            "{running}"
        );
        assert_json_equal(&running, &scan, &format!("{what}: results, rule {rule:?}"));
    }
}

async fn randomized(url: &str) {
    for seed in [1u64, 2, 3] {
        let store = open(url).await;
        feed(&store, seed, 300, 120).await;
        assert_running_equals_scan(&store, &format!("seed {seed}")).await;
    }
}

/// The aggregates a migration builds from an older database's rows equal the full scan, and
/// ingestion goes on from them.
async fn rebuilt(url: &str, downgrade: impl AsyncFnOnce()) {
    {
        let store = open(url).await;
        feed(&store, 7, 200, 80).await;
    }
    downgrade().await;
    let store = open(url).await;
    assert_running_equals_scan(&store, "after migration").await;
    feed(&store, 8, 200, 40).await;
    assert_running_equals_scan(&store, "after migration and more data").await;
    store.rebuild_aggregates().await.unwrap();
    assert_running_equals_scan(&store, "after a rebuild").await;
}

/// Lost exposures are counted per flag; finished flags (not in the config) are deleted once
/// their last activity is older than the retention, live ones never.
async fn losses_and_retention(url: &str) {
    let store = open(url).await;
    assert_eq!(store.exposure_losses("f").await.unwrap(), 0);
    store
        .record_exposure_losses(&[("f".into(), 3), ("g".into(), 0)])
        .await
        .unwrap();
    store
        .record_exposure_losses(&[("f".into(), 2)])
        .await
        .unwrap();
    assert_eq!(store.exposure_losses("f").await.unwrap(), 5);
    assert_eq!(store.exposure_losses("g").await.unwrap(), 0);

    let exposure = |flag: &str, user: &str, at_ms: u64| Exposure {
        flag: flag.into(),
        variation: "control".into(),
        rule: None,
        user: user.into(),
        at_ms,
        repeat: false,
    };
    store
        .record_exposures(&[exposure("old", "u1", 1_000), exposure("live", "u1", 1_000)])
        .await
        .unwrap();
    store
        .record_exposures(&[exposure("recent", "u1", 50_000)])
        .await
        .unwrap();
    store
        .insert_feedback(&[FeedbackRow {
            event_id: "x".into(),
            flag: "old".into(),
            variation: "control".into(),
            user: "u1".into(),
            metric: "conversion".into(),
            value: 1.0,
            at_ms: 2_000,
        }])
        .await
        .unwrap();
    let live = ["live".to_owned(), "f".to_owned()];
    let gone = store.prune_finished(&live, 10_000).await.unwrap();
    // `g` had nothing but a count of zero losses, `old` is past its retention.
    assert_eq!(gone, ["g", "old"]);
    assert_eq!(store.exposure_losses("f").await.unwrap(), 5);
    assert_eq!(store.exposure_counts("old", None).await.unwrap().0.len(), 0);
    assert_eq!(
        store
            .exposure_counts_scan("old", None)
            .await
            .unwrap()
            .0
            .len(),
        0
    );
    assert!(store
        .feedback_aggs_scan("old", None, None)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .feedback_aggs("old", None, None)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.exposure_counts("live", None).await.unwrap().0.len(),
        1
    );
    assert_eq!(
        store.exposure_counts("recent", None).await.unwrap().0.len(),
        1
    );
    // The event id of a deleted flag may be used again.
    assert_eq!(
        store
            .insert_feedback(&[FeedbackRow {
                event_id: "x".into(),
                flag: "live".into(),
                variation: "control".into(),
                user: "u1".into(),
                metric: "conversion".into(),
                value: 1.0,
                at_ms: 60_000,
            }])
            .await
            .unwrap(),
        [true]
    );
}

// ---------------------------------------------------------------------------------------------
// SQLite

#[tokio::test]
async fn sqlite_running_aggregates_equal_the_full_scan() {
    let db = Db::sqlite("agg-random");
    randomized(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_an_older_database_gets_its_aggregates_on_migration() {
    let db = Db::sqlite("agg-migrate");
    let Db::Sqlite { dir } = &db else {
        unreachable!()
    };
    let path = dir.join("state.db");
    rebuilt(&db.url(), async || {
        // Back to the schema before the aggregates (version 3), rows kept.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "DROP TABLE switchyard_aggregates; DROP TABLE switchyard_exposure_counts; \
                 DROP TABLE switchyard_feedback_users; DROP TABLE switchyard_experiment_flags; \
                 DROP TABLE switchyard_secrets; PRAGMA user_version = 3;",
            )
            .unwrap();
    })
    .await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_losses_and_retention() {
    let db = Db::sqlite("agg-retain");
    losses_and_retention(&db.url()).await;
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test]
async fn postgres_running_aggregates_equal_the_full_scan() {
    let db = Db::postgres("agg_random");
    randomized(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_an_older_database_gets_its_aggregates_on_migration() {
    let db = Db::postgres("agg_migrate");
    let Db::Postgres { schema } = &db else {
        unreachable!()
    };
    let s = format!("\"{schema}\"");
    rebuilt(&db.url(), async || {
        let (client, connection) =
            tokio_postgres::connect(&db::pg_base_url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DROP TABLE {s}.switchyard_aggregates; DROP TABLE {s}.switchyard_exposure_counts; \
                 DROP TABLE {s}.switchyard_feedback_users; \
                 DROP TABLE {s}.switchyard_experiment_flags; DROP TABLE {s}.switchyard_secrets; \
                 DELETE FROM {s}.switchyard_migrations WHERE version = 4;"
            ))
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
    })
    .await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_losses_and_retention() {
    let db = Db::postgres("agg_retain");
    losses_and_retention(&db.url()).await;
    db.cleanup().await;
}

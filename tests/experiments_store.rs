//! Experiment data in the state store (exposures, feedback events, their running aggregates
//! checked against the full scan, the request-id key) through the public API, on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests connect to `SWITCHYARD_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`), each in a schema of its own; they fail (never
//! skip) when PostgreSQL is unreachable. The `*_at_scale` tests print timings (run with
//! `--nocapture` to see them); they assert correctness only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use switchyard::state::{Exposure, FeedbackAgg, FeedbackRow, Store};

// ---------------------------------------------------------------------------------------------
// Fixtures

#[path = "support/db.rs"]
mod db;

use db::{open, Db};

fn exposure(flag: &str, user: &str, variation: &str, rule: Option<&str>, at_ms: u64) -> Exposure {
    Exposure {
        flag: flag.into(),
        variation: variation.into(),
        rule: rule.map(str::to_owned),
        user: user.into(),
        at_ms,
        repeat: false,
    }
}

fn event(
    event_id: &str,
    user: &str,
    variation: &str,
    metric: &str,
    value: f64,
    at_ms: u64,
) -> FeedbackRow {
    FeedbackRow {
        event_id: event_id.into(),
        flag: "f".into(),
        variation: variation.into(),
        user: user.into(),
        metric: metric.into(),
        value,
        at_ms,
    }
}

#[allow(clippy::too_many_arguments)]
fn agg(
    variation: &str,
    metric: &str,
    reporters: u64,
    events: u64,
    sums: (f64, f64),
    maxes: (f64, f64),
    means: (f64, f64),
) -> FeedbackAgg {
    FeedbackAgg {
        variation: variation.into(),
        metric: metric.into(),
        reporters,
        events,
        sum_of_sums: sums.0,
        sum_sq_of_sums: sums.1,
        sum_of_max: maxes.0,
        sum_sq_of_max: maxes.1,
        sum_of_means: means.0,
        sum_sq_of_means: means.1,
    }
}

fn counts(pairs: &[(&str, u64)], switched: u64) -> (Vec<(String, u64)>, u64) {
    (
        pairs.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect(),
        switched,
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios, run on both backends

/// The first exposure per (flag, user) is kept, with its rule; a later one with another
/// variation (in the same batch or a later one) marks the user switched; flags are separate.
async fn first_exposure_wins(url: &str) {
    let store = open(url).await;
    assert_eq!(
        store.exposure_counts("f", None).await.unwrap(),
        counts(&[], 0)
    );
    let r1 = Some("r1");
    store
        .record_exposures(&[
            exposure("f", "u1", "control", r1, 1_000),
            exposure("f", "u2", "treatment", r1, 1_001),
            exposure("f", "u1", "control", r1, 1_002), // same variation: no switch
        ])
        .await
        .unwrap();
    assert_eq!(
        store.exposure_counts("f", None).await.unwrap(),
        counts(&[("control", 1), ("treatment", 1)], 0)
    );
    store
        .record_exposures(&[
            // Switches within one batch.
            exposure("f", "u3", "control", r1, 2_000),
            exposure("f", "u3", "treatment", r1, 2_001),
            exposure("f", "u3", "control", r1, 2_002),
            // Switches across batches.
            exposure("f", "u2", "control", r1, 2_003),
            // Same variation again, under another rule: the first rule is kept.
            exposure("f", "u1", "control", Some("r2"), 2_004),
            exposure("f", "u4", "treatment", Some("r2"), 2_005),
            exposure("f", "u5", "treatment", None, 2_006),
            // Another flag.
            exposure("g", "u1", "treatment", r1, 2_007),
        ])
        .await
        .unwrap();
    // u2 switching back to its first variation leaves it switched.
    store
        .record_exposures(&[exposure("f", "u2", "treatment", r1, 3_000)])
        .await
        .unwrap();
    assert_eq!(
        store.exposure_counts("f", None).await.unwrap(),
        counts(&[("control", 1), ("treatment", 2)], 2)
    );
    assert_eq!(
        store.exposure_counts("f", Some("r1")).await.unwrap(),
        counts(&[("control", 1)], 2)
    );
    assert_eq!(
        store.exposure_counts("f", Some("r2")).await.unwrap(),
        counts(&[("treatment", 1)], 0)
    );
    assert_eq!(
        store.exposure_counts("f", Some("nope")).await.unwrap(),
        counts(&[], 0)
    );
    assert_eq!(
        store.exposure_counts("g", None).await.unwrap(),
        counts(&[("treatment", 1)], 0)
    );
    store.record_exposures(&[]).await.unwrap();
}

/// The key request ids are sealed with is created once per database: every store opened on
/// it (a replica) reads the same key, another database has another one.
async fn one_request_id_key_per_database(url: &str) {
    let a = open(url).await;
    let b = open(url).await;
    assert_eq!(a.request_id_key(), b.request_id_key());
    assert_ne!(a.request_id_key(), &[0u8; 32]);
    let other = open("sqlite::memory:").await;
    assert_ne!(a.request_id_key(), other.request_id_key());
    // No request id is stored any more: exposures alone are written.
    a.record_exposures(&[
        exposure("f", "alice", "control", Some("r"), 1_000),
        exposure("f", "bob", "treatment", None, 2_000),
        exposure("g", "bob", "blue", None, 2_001),
    ])
    .await
    .unwrap();
    b.record_exposures(&[
        exposure("f", "alice", "treatment", Some("r"), 3_000),
        exposure("f", "carol", "control", None, 3_001),
    ])
    .await
    .unwrap();
    // alice switched; bob and carol remain.
    assert_eq!(
        a.exposure_counts("f", None).await.unwrap(),
        counts(&[("control", 1), ("treatment", 1)], 1)
    );
    assert_eq!(
        b.exposure_counts("f", None).await.unwrap(),
        b.exposure_counts_scan("f", None).await.unwrap()
    );
}

/// A repeat (the proxy recorded the same flag, user and variation lately) writes nothing:
/// the user is counted once, and a repeat whose exposure the store never saw adds no user.
async fn repeats_write_nothing(url: &str) {
    let store = open(url).await;
    let repeat = |user: &str, variation: &str, at: u64| Exposure {
        repeat: true,
        ..exposure("f", user, variation, Some("r"), at)
    };
    store
        .record_exposures(&[
            exposure("f", "alice", "control", Some("r"), 1_000),
            repeat("alice", "control", 1_001),
        ])
        .await
        .unwrap();
    store
        .record_exposures(&[
            repeat("alice", "control", 2_000),
            exposure("f", "bob", "treatment", Some("r"), 2_001),
            repeat("bob", "treatment", 2_002),
            repeat("carol", "control", 2_003),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.exposure_counts("f", Some("r")).await.unwrap(),
        counts(&[("control", 1), ("treatment", 1)], 0)
    );
    assert_eq!(
        store.exposure_counts_scan("f", Some("r")).await.unwrap(),
        counts(&[("control", 1), ("treatment", 1)], 0)
    );
}

/// Event ids are unique: a repeat within a batch or across batches is not stored (the first
/// row is kept).
async fn feedback_duplicates(url: &str) {
    let store = open(url).await;
    assert_eq!(
        store.insert_feedback(&[]).await.unwrap(),
        Vec::<bool>::new()
    );
    let stored = store
        .insert_feedback(&[
            event("e1", "u1", "control", "m", 1.0, 10),
            event("e2", "u1", "control", "m", 2.0, 11),
            event("e1", "u1", "control", "m", 100.0, 12),
            event("e3", "u2", "treatment", "m", 3.0, 13),
            event("e1", "u2", "treatment", "m", 100.0, 14),
        ])
        .await
        .unwrap();
    assert_eq!(stored, [true, true, false, true, false]);
    let stored = store
        .insert_feedback(&[
            event("e3", "u2", "treatment", "m", 100.0, 20),
            event("e4", "u2", "treatment", "m", 4.0, 21),
            event("e4", "u2", "treatment", "m", 100.0, 22),
            event("e2", "u1", "control", "m", 100.0, 23),
        ])
        .await
        .unwrap();
    assert_eq!(stored, [false, true, false, false]);
    // Only the first rows count (no exposures: users count under the event's variation).
    assert_eq!(
        store.feedback_aggs("f", None, None).await.unwrap(),
        [
            agg("control", "m", 1, 2, (3.0, 9.0), (2.0, 4.0), (1.5, 2.25)),
            agg(
                "treatment",
                "m",
                1,
                2,
                (7.0, 49.0),
                (4.0, 16.0),
                (3.5, 12.25)
            ),
        ]
    );
    // A non-finite value is refused, and nothing of the batch is stored.
    let refused = store
        .insert_feedback(&[
            event("e5", "u1", "control", "m", 1.0, 30),
            event("e6", "u1", "control", "m", f64::NAN, 30),
        ])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        store
            .insert_feedback(&[event("e5", "u1", "control", "m", 1.0, 30)])
            .await
            .unwrap(),
        [true]
    );
}

/// Exposures, events, aggregates and the request-id key survive closing and reopening the
/// store.
async fn durable(url: &str) {
    let key = {
        let store = open(url).await;
        store
            .record_exposures(&[
                exposure("f", "u1", "control", Some("r"), 1_000),
                exposure("f", "u2", "treatment", Some("r"), 1_001),
                exposure("f", "u2", "control", Some("r"), 1_002),
            ])
            .await
            .unwrap();
        let stored = store
            .insert_feedback(&[event("e1", "u1", "control", "m", 2.5, 2_000)])
            .await
            .unwrap();
        assert_eq!(stored, [true]);
        *store.request_id_key()
    };
    let store = open(url).await;
    assert_eq!(store.request_id_key(), &key);
    assert_eq!(
        store.exposure_counts("f", Some("r")).await.unwrap(),
        counts(&[("control", 1)], 1)
    );
    assert_eq!(
        store
            .insert_feedback(&[event("e1", "u1", "control", "m", 9.0, 3_000)])
            .await
            .unwrap(),
        [false]
    );
    assert_eq!(
        store.feedback_aggs("f", None, None).await.unwrap(),
        [agg(
            "control",
            "m",
            1,
            1,
            (2.5, 6.25),
            (2.5, 6.25),
            (2.5, 6.25)
        )]
    );
}

/// Aggregates checked against a hand-computed example: several events per user, a switched
/// user, events under another variation than the user's first, a user never exposed, two
/// metrics, another flag; then the rule and since filters.
async fn aggregates_by_hand(url: &str) {
    let store = open(url).await;
    let (r1, r2) = (Some("r1"), Some("r2"));
    store
        .record_exposures(&[
            exposure("f", "alice", "control", r1, 100),
            exposure("f", "bob", "control", r1, 100),
            exposure("f", "carol", "treatment", r1, 100),
            exposure("f", "dave", "treatment", r2, 100),
            exposure("f", "erin", "control", r1, 100),
            exposure("f", "erin", "treatment", r1, 200),
        ])
        .await
        .unwrap();
    let mut other_flag = event("g1", "alice", "control", "rating", 50.0, 1_000);
    other_flag.flag = "g".into();
    let stored = store
        .insert_feedback(&[
            // alice (control): 1, 3 → sum 4, max 3, mean 2.
            event("a1", "alice", "control", "rating", 1.0, 1_000),
            event("a2", "alice", "control", "rating", 3.0, 2_000),
            // alice under treatment: not her first variation, left out.
            event("a3", "alice", "treatment", "rating", 7.0, 2_000),
            // alice, another metric.
            event("a4", "alice", "control", "latency", 0.5, 500),
            // bob (control): 5.
            event("b1", "bob", "control", "rating", 5.0, 1_000),
            // carol (treatment): 2, 4, 6 → sum 12, max 6, mean 4.
            event("c1", "carol", "treatment", "rating", 2.0, 1_000),
            event("c2", "carol", "treatment", "rating", 4.0, 2_000),
            event("c3", "carol", "treatment", "rating", 6.0, 3_000),
            // dave (treatment, rule r2): 10.
            event("d1", "dave", "treatment", "rating", 10.0, 2_500),
            // erin switched: left out.
            event("e1", "erin", "control", "rating", 100.0, 2_000),
            event("e2", "erin", "treatment", "rating", 100.0, 2_000),
            // frank was never exposed here: counts under the event's variation.
            event("f1", "frank", "treatment", "rating", 8.0, 1_500),
            other_flag,
        ])
        .await
        .unwrap();
    assert!(stored.iter().all(|&s| s));

    let all = store.feedback_aggs("f", None, None).await.unwrap();
    assert_eq!(
        all,
        [
            agg(
                "control",
                "latency",
                1,
                1,
                (0.5, 0.25),
                (0.5, 0.25),
                (0.5, 0.25)
            ),
            // alice + bob: sums 4, 5; maxes 3, 5; means 2, 5.
            agg(
                "control",
                "rating",
                2,
                3,
                (9.0, 41.0),
                (8.0, 34.0),
                (7.0, 29.0)
            ),
            // carol + dave + frank: sums 12, 10, 8; maxes 6, 10, 8; means 4, 10, 8.
            agg(
                "treatment",
                "rating",
                3,
                5,
                (30.0, 308.0),
                (24.0, 200.0),
                (22.0, 180.0)
            ),
        ]
    );

    // Rule r1: alice, bob, carol (dave is in r2; frank's rule is unknown).
    let in_r1 = store.feedback_aggs("f", r1, None).await.unwrap();
    assert_eq!(
        in_r1,
        [
            all[0].clone(),
            all[1].clone(),
            agg(
                "treatment",
                "rating",
                1,
                3,
                (12.0, 144.0),
                (6.0, 36.0),
                (4.0, 16.0)
            ),
        ]
    );
    assert_eq!(
        store.feedback_aggs("f", r2, None).await.unwrap(),
        [agg(
            "treatment",
            "rating",
            1,
            1,
            (10.0, 100.0),
            (10.0, 100.0),
            (10.0, 100.0)
        )]
    );
    assert_eq!(
        store.feedback_aggs("f", Some("nope"), None).await.unwrap(),
        []
    );

    // Since 2000: alice 3; carol 4, 6 (sum 10, max 6, mean 5) and dave 10; frank's event
    // (1500) and the latency one (500) are older.
    assert_eq!(
        store.feedback_aggs("f", None, Some(2_000)).await.unwrap(),
        [
            agg(
                "control",
                "rating",
                1,
                1,
                (3.0, 9.0),
                (3.0, 9.0),
                (3.0, 9.0)
            ),
            agg(
                "treatment",
                "rating",
                2,
                3,
                (20.0, 200.0),
                (16.0, 136.0),
                (15.0, 125.0)
            ),
        ]
    );
    assert_eq!(
        store.feedback_aggs("f", r1, Some(3_000)).await.unwrap(),
        [agg(
            "treatment",
            "rating",
            1,
            1,
            (6.0, 36.0),
            (6.0, 36.0),
            (6.0, 36.0)
        )]
    );
    assert_eq!(
        store.feedback_aggs("f", None, Some(3_001)).await.unwrap(),
        []
    );
    assert_eq!(
        store.feedback_aggs("g", None, None).await.unwrap(),
        [agg(
            "control",
            "rating",
            1,
            1,
            (50.0, 2500.0),
            (50.0, 2500.0),
            (50.0, 2500.0)
        )]
    );
    assert_eq!(store.feedback_aggs("none", None, None).await.unwrap(), []);
}

/// Two stores on one database insert overlapping event ids (in opposite orders) and
/// overlapping exposures at the same time: each event is stored exactly once, reported as
/// stored to exactly one of them, and no batch fails.
async fn concurrent_writers(url: &str) {
    const EVENTS: usize = 1_500;
    const BATCH: usize = 50;
    let a = open(url).await;
    let b = open(url).await;
    let row = |i: usize| {
        event(
            &format!("ev{i:05}"),
            &format!("u{}", i % 300),
            "control",
            "m",
            i as f64,
            i as u64,
        )
    };
    // a: 0..1000 ascending; b: 500..1500 descending.
    let a_rows: Vec<FeedbackRow> = (0..1_000).map(row).collect();
    let b_rows: Vec<FeedbackRow> = (500..EVENTS).rev().map(row).collect();
    let writer = |store: Store, rows: Vec<FeedbackRow>| async move {
        let mut stored = BTreeMap::new();
        for chunk in rows.chunks(BATCH) {
            let flags = store.insert_feedback(chunk).await.unwrap();
            for (r, s) in chunk.iter().zip(flags) {
                stored.insert(r.event_id.clone(), s);
            }
            tokio::task::yield_now().await;
        }
        stored
    };
    let exposer = |store: Store, reverse: bool| async move {
        let mut users: Vec<usize> = (0..300).collect();
        if reverse {
            users.reverse();
        }
        for chunk in users.chunks(30) {
            let batch: Vec<Exposure> = chunk
                .iter()
                .map(|u| {
                    let v = if reverse && u % 10 == 0 {
                        "treatment"
                    } else {
                        "control"
                    };
                    exposure("f", &format!("u{u}"), v, None, 1)
                })
                .collect();
            store.record_exposures(&batch).await.unwrap();
        }
    };
    let (a_stored, b_stored, (), ()) = tokio::join!(
        tokio::spawn(writer(a.clone(), a_rows)),
        tokio::spawn(writer(b.clone(), b_rows)),
        async { tokio::spawn(exposer(a.clone(), false)).await.unwrap() },
        async { tokio::spawn(exposer(b.clone(), true)).await.unwrap() },
    );
    let (a_stored, b_stored) = (a_stored.unwrap(), b_stored.unwrap());
    for i in 0..EVENTS {
        let id = format!("ev{i:05}");
        let times = usize::from(a_stored.get(&id) == Some(&true))
            + usize::from(b_stored.get(&id) == Some(&true));
        assert_eq!(times, 1, "{id} reported stored {times} times");
    }
    // Users u0, u10, … were exposed to both variations by one of the stores: 30 switched.
    let (per_variation, switched) = a.exposure_counts("f", None).await.unwrap();
    assert_eq!(switched, 30);
    assert_eq!(per_variation.iter().map(|(_, n)| n).sum::<u64>(), 270);
    // Every event once: the non-switched users' events, and their values.
    let aggs = b.feedback_aggs("f", None, None).await.unwrap();
    assert_eq!(aggs.len(), 1);
    let kept: Vec<usize> = (0..EVENTS).filter(|i| i % 300 % 10 != 0).collect();
    assert_eq!(aggs[0].events, kept.len() as u64);
    assert_eq!(aggs[0].reporters, 270);
    assert_eq!(aggs[0].sum_of_sums, kept.iter().sum::<usize>() as f64);
}

// ---------------------------------------------------------------------------------------------
// At scale: correctness against an in-memory model, and timings

const SCALE_SWITCH_EVERY: usize = 50;

/// Exposed users and feedback events: 100,000 each, or `SWITCHYARD_TEST_SCALE` (e.g.
/// 1000000 to time a million of each).
fn scale() -> usize {
    std::env::var("SWITCHYARD_TEST_SCALE")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n >= 1_000)
        .unwrap_or(100_000)
}

/// Users reporting feedback: the first 60 %.
fn scale_reporters() -> usize {
    scale() / 10 * 6
}

fn scale_variation(user: usize) -> &'static str {
    ["control", "treatment", "variant_b"][user % 3]
}

fn scale_rule(user: usize) -> &'static str {
    if user.is_multiple_of(4) {
        "holdout"
    } else {
        "main"
    }
}

fn scale_exposures() -> Vec<Exposure> {
    let mut all: Vec<Exposure> = (0..scale())
        .map(|u| {
            exposure(
                "chat",
                &format!("user-{u}"),
                scale_variation(u),
                Some(scale_rule(u)),
                1_000 + u as u64,
            )
        })
        .collect();
    // Every 50th user later sees another variation (a config change): switched.
    all.extend((0..scale()).step_by(SCALE_SWITCH_EVERY).map(|u| {
        exposure(
            "chat",
            &format!("user-{u}"),
            scale_variation(u + 1),
            Some(scale_rule(u)),
            5_000_000 + u as u64,
        )
    }));
    all
}

/// Event `j` comes from user `j % reporters`: the first 40 % of users report twice, the next
/// 20 % once; every 97th event names another variation than the user's first.
fn scale_events() -> Vec<FeedbackRow> {
    let reporters = scale_reporters();
    (0..scale())
        .map(|j| {
            let u = j % reporters;
            let variation = if j % 97 == 0 {
                scale_variation(u + 2)
            } else {
                scale_variation(u)
            };
            let metric = if j % 5 < 2 { "cost" } else { "rating" };
            FeedbackRow {
                event_id: format!("ev-{j}"),
                flag: "chat".into(),
                variation: variation.into(),
                user: format!("user-{u}"),
                metric: metric.into(),
                value: (j % 17) as f64 * 0.25 + 1.0,
                at_ms: 10_000_000 + j as u64,
            }
        })
        .collect()
}

/// The aggregates computed in memory from the same rows.
fn scale_expected(rule: Option<&str>, since_ms: Option<u64>) -> Vec<FeedbackAgg> {
    let reporters = scale_reporters();
    let mut per_user: BTreeMap<(String, usize, String), Vec<f64>> = BTreeMap::new();
    for (j, e) in scale_events().into_iter().enumerate() {
        let u = j % reporters;
        let exposed_variation = scale_variation(u);
        let switched = u.is_multiple_of(SCALE_SWITCH_EVERY);
        if switched
            || e.variation != exposed_variation
            || rule.is_some_and(|r| r != scale_rule(u))
            || since_ms.is_some_and(|s| e.at_ms < s)
        {
            continue;
        }
        per_user
            .entry((e.variation, u, e.metric))
            .or_default()
            .push(e.value);
    }
    let mut aggs: BTreeMap<(String, String), FeedbackAgg> = BTreeMap::new();
    for ((variation, _, metric), values) in per_user {
        let a = aggs
            .entry((variation.clone(), metric.clone()))
            .or_insert_with(|| FeedbackAgg {
                variation,
                metric,
                ..FeedbackAgg::default()
            });
        let sum: f64 = values.iter().sum();
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let mean = sum / values.len() as f64;
        a.reporters += 1;
        a.events += values.len() as u64;
        a.sum_of_sums += sum;
        a.sum_sq_of_sums += sum * sum;
        a.sum_of_max += max;
        a.sum_sq_of_max += max * max;
        a.sum_of_means += mean;
        a.sum_sq_of_means += mean * mean;
    }
    aggs.into_values().collect()
}

fn assert_aggs_close(got: &[FeedbackAgg], want: &[FeedbackAgg]) {
    assert_eq!(got.len(), want.len(), "{got:#?}\n{want:#?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (&g.variation, &g.metric, g.reporters, g.events),
            (&w.variation, &w.metric, w.reporters, w.events)
        );
        let pairs = [
            (g.sum_of_sums, w.sum_of_sums),
            (g.sum_sq_of_sums, w.sum_sq_of_sums),
            (g.sum_of_max, w.sum_of_max),
            (g.sum_sq_of_max, w.sum_sq_of_max),
            (g.sum_of_means, w.sum_of_means),
            (g.sum_sq_of_means, w.sum_sq_of_means),
        ];
        for (x, y) in pairs {
            assert!(
                (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                "{}/{}: {x} vs {y}",
                g.variation,
                g.metric
            );
        }
    }
}

async fn at_scale(url: &str) {
    let store = open(url).await;
    let kind = store.kind();

    let exposures = scale_exposures();
    let started = Instant::now();
    for batch in exposures.chunks(2_000) {
        store.record_exposures(batch).await.unwrap();
    }
    let took = started.elapsed();
    println!(
        "{kind}: record_exposures: {} rows in {took:.2?} ({:.0} rows/s, batches of 2000)",
        exposures.len(),
        exposures.len() as f64 / took.as_secs_f64()
    );

    let events = scale_events();
    let started = Instant::now();
    for batch in events.chunks(100) {
        store.insert_feedback(batch).await.unwrap();
    }
    let took = started.elapsed();
    println!(
        "{kind}: insert_feedback: {} events in {took:.2?} ({:.0} events/s, batches of 100)",
        events.len(),
        events.len() as f64 / took.as_secs_f64()
    );
    // Everything again: all duplicates.
    let again = store.insert_feedback(&events[..1_000]).await.unwrap();
    assert!(again.iter().all(|&s| !s));

    let started = Instant::now();
    let (per_variation, switched) = store.exposure_counts("chat", None).await.unwrap();
    let counted = started.elapsed();
    let aggs = store.feedback_aggs("chat", None, None).await.unwrap();
    let took = started.elapsed();
    println!(
        "{kind}: exposure_counts {counted:.2?} + feedback_aggs {:.2?} = {took:.2?} \
         ({} exposures, {} events)",
        took - counted,
        exposures.len(),
        events.len()
    );

    let mut want_counts: HashMap<&str, u64> = HashMap::new();
    for u in (0..scale()).filter(|u| u % SCALE_SWITCH_EVERY != 0) {
        *want_counts.entry(scale_variation(u)).or_default() += 1;
    }
    let mut want_counts: Vec<(String, u64)> = want_counts
        .into_iter()
        .map(|(v, n)| (v.to_owned(), n))
        .collect();
    want_counts.sort();
    assert_eq!(per_variation, want_counts);
    assert_eq!(switched, scale().div_ceil(SCALE_SWITCH_EVERY) as u64);
    assert_aggs_close(&aggs, &scale_expected(None, None));

    let since = 10_000_000 + scale() as u64 / 2;
    let started = Instant::now();
    let (in_rule, _) = store
        .exposure_counts("chat", Some("holdout"))
        .await
        .unwrap();
    let counted = started.elapsed();
    let aggs = store
        .feedback_aggs("chat", Some("holdout"), Some(since))
        .await
        .unwrap();
    let took = started.elapsed();
    println!(
        "{kind}: with rule and since: exposure_counts {counted:.2?} + feedback_aggs {:.2?} \
         = {took:.2?}",
        took - counted
    );
    assert_eq!(
        in_rule.iter().map(|(_, n)| n).sum::<u64>(),
        (0..scale())
            .filter(|u| u % 4 == 0 && u % SCALE_SWITCH_EVERY != 0)
            .count() as u64
    );
    assert_aggs_close(&aggs, &scale_expected(Some("holdout"), Some(since)));

    // The running aggregates of the rule against the full scan.
    let running = store
        .feedback_aggs("chat", Some("holdout"), None)
        .await
        .unwrap();
    assert_aggs_close(&running, &scale_expected(Some("holdout"), None));
    assert_aggs_close(
        &running,
        &store
            .feedback_aggs_scan("chat", Some("holdout"), None)
            .await
            .unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// SQLite

#[tokio::test]
async fn sqlite_first_exposure_wins_and_switches_are_counted() {
    let db = Db::sqlite("first");
    first_exposure_wins(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_one_request_id_key_per_database() {
    let db = Db::sqlite("req");
    one_request_id_key_per_database(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_repeats_write_nothing() {
    let db = Db::sqlite("repeat");
    repeats_write_nothing(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_feedback_duplicates_are_not_stored() {
    let db = Db::sqlite("dup");
    feedback_duplicates(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_experiment_data_survives_reopening() {
    let db = Db::sqlite("durable");
    durable(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_aggregates_match_a_hand_computed_example() {
    let db = Db::sqlite("aggs");
    aggregates_by_hand(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_writers_store_each_event_once() {
    let db = Db::sqlite("conc");
    concurrent_writers(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_in_memory_experiment_data() {
    first_exposure_wins("sqlite::memory:").await;
    aggregates_by_hand("sqlite::memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_at_scale() {
    let db = Db::sqlite("scale");
    at_scale(&db.url()).await;
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test]
async fn postgres_first_exposure_wins_and_switches_are_counted() {
    let db = Db::postgres("first");
    first_exposure_wins(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_one_request_id_key_per_database() {
    let db = Db::postgres("req");
    one_request_id_key_per_database(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_repeats_write_nothing() {
    let db = Db::postgres("repeat");
    repeats_write_nothing(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_feedback_duplicates_are_not_stored() {
    let db = Db::postgres("dup");
    feedback_duplicates(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_experiment_data_survives_reopening() {
    let db = Db::postgres("durable");
    durable(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_aggregates_match_a_hand_computed_example() {
    let db = Db::postgres("aggs");
    aggregates_by_hand(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_writers_store_each_event_once() {
    let db = Db::postgres("conc");
    concurrent_writers(&db.url()).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_at_scale() {
    let db = Db::postgres("scale");
    at_scale(&db.url()).await;
    db.cleanup().await;
}

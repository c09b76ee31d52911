//! The client-key check on the request path (`Keys::authorize`): find the key in the request's
//! headers, hash it (SHA-256), look it up among 10,000 keys, compare in constant time, check the
//! flag and the per-minute windows and budget. Target: at most 1 µs median.
//!
//! `cargo bench --bench keys`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, Criterion};
use http::HeaderMap;
use switchyard::keys::record::{Budget, KeyRecord};
use switchyard::keys::secret::NewSecret;
use switchyard::keys::store::KeyStore;
use switchyard::keys::{Keys, KeysSettings};
use switchyard::metrics::Metrics;

const KEYS: usize = 10_000;

fn setup() -> (Keys, Vec<String>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let store = KeyStore::open("sqlite::memory:")
            .await
            .unwrap_or_else(|e| panic!("store: {e}"));
        let mut secrets = Vec::new();
        for i in 0..KEYS {
            let secret = NewSecret::generate().unwrap_or_else(|e| panic!("{e}"));
            let limited = i % 2 == 1;
            let record = KeyRecord {
                name: format!("key-{i}"),
                hash: secret.hash(),
                previous: None,
                flags: vec!["support-assistant".into(), "summarizer".into()],
                rpm: limited.then_some(1_000_000_000_000),
                tpm: limited.then_some(1_000_000_000_000),
                budget: limited
                    .then(|| Budget::parse("1000000/month").ok())
                    .flatten(),
                expires_at_ms: None,
                attributes: [("team".to_owned(), serde_json::json!("ai"))].into(),
                created_at_ms: 0,
                revoked_at_ms: None,
            };
            store
                .insert(&record)
                .await
                .unwrap_or_else(|e| panic!("insert: {e}"));
            secrets.push(secret.reveal().to_owned());
        }
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
        let keys = Keys::with_store(store, metrics.keys.clone())
            .await
            .unwrap_or_else(|e| panic!("keys: {e}"));
        (keys, secrets)
    })
}

fn bench_key_check(c: &mut Criterion) {
    let (keys, secrets) = setup();
    let settings = KeysSettings {
        required: true,
        flush_interval: Duration::from_secs(1),
    };
    let headers = |secret: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {secret}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        h
    };
    let plain = headers(&secrets[0]);
    let limited = headers(&secrets[1]);
    let unknown = headers("sk-sy-000000000000000000000000000000000000000000000000");
    let mut g = c.benchmark_group("key_check");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("valid_key_no_limits", |b| {
        b.iter(|| {
            black_box(keys.authorize(
                Some(&settings),
                black_box(&plain),
                Some("support-assistant"),
                "support-assistant",
            ))
        })
    });
    g.bench_function("valid_key_rpm_tpm_budget", |b| {
        b.iter(|| {
            black_box(keys.authorize(
                Some(&settings),
                black_box(&limited),
                Some("support-assistant"),
                "support-assistant",
            ))
        })
    });
    g.bench_function("unknown_key", |b| {
        b.iter(|| {
            black_box(keys.authorize(
                Some(&settings),
                black_box(&unknown),
                Some("support-assistant"),
                "support-assistant",
            ))
        })
    });
    g.finish();
}

/// The group (a private module: the generated function needs no docs).
mod suite {
    criterion::criterion_group!(benches, super::bench_key_check);
}

criterion_main!(suite::benches);

//! The bandit's cost on the request path: a decision on a bandit flag (the experiment rule's
//! ranges from the epoch, the sticky-user lookup) against the same decision without a bandit;
//! and one epoch's computation (10,000 Monte Carlo draws, off the request path).
//!
//! `cargo bench --bench bandit`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::bandit::epoch::{compute, ArmInput, Input, Model, Params};
use switchyard::bandit::{BanditOverride, LiveBandits, Sticky};
use switchyard::flags::audience::Attributes;
use switchyard::state::{FlagOverrides, RuntimeState};
use switchyard::Config;

const TOML: &str = r#"
[providers.mock]
kind = "mock"

[flags.f]
off_variation = "control"
stable_variation = "control"
[flags.f.variations.control]
provider = "mock"
model_id = "a"
[flags.f.variations.treatment]
provider = "mock"
model_id = "b"
[[flags.f.rules]]
id = "exp"
allocation = [{ variation = "control", end = 5000 }, { variation = "treatment", end = 10000 }]
[flags.f.bandit]
metric = "conversion"
"#;

fn decisions(c: &mut Criterion) {
    let config = Config::parse(TOML, "bench.toml").unwrap();
    let mut state = RuntimeState::default();
    let mut weights = BTreeMap::new();
    weights.insert("control".to_owned(), 1500);
    weights.insert("treatment".to_owned(), 8500);
    state.flags.insert(
        "f".into(),
        FlagOverrides {
            bandit: Some(BanditOverride {
                epoch: 3,
                weights,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let bandits = LiveBandits::new(&config, &state, Arc::new(Sticky::default()));
    let flag = config.flags[0].clone();
    let attrs = Attributes::new();
    let users: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
    let mut g = c.benchmark_group("decide");
    let mut i = 0usize;
    g.bench_function("without bandit", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            black_box(flag.decide(true, &users[i], &attrs))
        })
    });
    // Warm: every user already remembered (a returning user).
    for u in &users {
        let d = flag.decide(true, u, &attrs);
        bandits.decide(0, &flag, u, d);
    }
    g.bench_function("bandit, returning user (sticky hit)", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let d = flag.decide(true, &users[i], &attrs);
            black_box(bandits.decide(0, &flag, &users[i], d))
        })
    });
    let fresh = LiveBandits::new(&config, &state, Arc::new(Sticky::default()));
    let mut n = 0u64;
    g.bench_function("bandit, new user (miss and insert)", |b| {
        b.iter(|| {
            n += 1;
            let u = format!("new-{n}");
            let d = flag.decide(true, &u, &attrs);
            black_box(fresh.decide(0, &flag, &u, d))
        })
    });
    g.finish();
}

fn epoch(c: &mut Criterion) {
    let arm = |v: &str, conv: u64| ArmInput {
        variation: v.into(),
        users: 10_000,
        n: 10_000,
        sum: conv as f64,
        sum_sq: conv as f64,
        guardrails: vec![],
    };
    let input = Input {
        flag: "f".into(),
        epoch: 1,
        seed: "1".into(),
        control: 0,
        arms: vec![arm("a", 1000), arm("b", 1100), arm("c", 1200)],
        weights_before: vec![3334, 3333, 3333],
        expected_users: vec![10_000.0; 3],
        params: Params {
            metric: "conversion".into(),
            model: Model::BetaBernoulli,
            higher_is_better: true,
            draws: 10_000,
            floor_buckets: 500,
            min_users_per_arm: 100,
            alpha: 0.05,
            relative_effect: 0.1,
            srm_threshold: 0.001,
            guardrails: vec![],
            stop: None,
        },
    };
    c.bench_function("epoch: 3 arms, 10,000 draws", |b| {
        b.iter(|| black_box(compute(&input)))
    });
}

criterion_group!(benches, decisions, epoch);
criterion_main!(benches);

//! Seeded simulations of the guarded bandit's epochs (the pure core the proxy runs): the
//! better arm gains traffic, every epoch's weights sum to 10,000 with each live arm at or
//! above the floor, a guardrail holds a faster-converting but slow arm at its floor, an
//! injected sample-ratio mismatch rolls back to the control, every epoch replays bit for bit
//! from its stored record, and A/A runs rarely promote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard::bandit::epoch::{
    compute, expected_users, ArmInput, GuardFigure, GuardKind, Guardrail, Input, Model, Params,
    Stop, Then, Tolerance, Why,
};
use switchyard::bandit::record::{replay, EpochRecord};
use switchyard::bandit::rng::{seed, Rng};
use switchyard::bandit::Status;

struct Arm {
    rate: f64,
    p95: f64,
    users: u64,
    conversions: u64,
}

struct Sim {
    arms: Vec<Arm>,
    weights: Vec<u32>,
    expected: Vec<f64>,
    seen: u64,
    params: Params,
    rng: Rng,
    /// Fraction of one arm's new users lost (an injected SRM): (arm, fraction).
    drop: Option<(usize, f64)>,
}

impl Sim {
    fn new(rates: &[f64], params: Params, sim_seed: u64) -> Sim {
        let k = rates.len() as u32;
        let mut weights = vec![10_000 / k; rates.len()];
        weights[0] += 10_000 - weights.iter().sum::<u32>();
        Sim {
            arms: rates
                .iter()
                .map(|r| Arm {
                    rate: *r,
                    p95: 1.0,
                    users: 0,
                    conversions: 0,
                })
                .collect(),
            weights,
            expected: Vec::new(),
            seen: 0,
            params,
            rng: Rng::new(sim_seed),
            drop: None,
        }
    }

    /// `n` new users arrive, each bucketed by the weights in force, and convert or not.
    fn traffic(&mut self, n: u64) {
        for _ in 0..n {
            let bucket = (self.rng.uniform() * 10_000.0) as u32;
            let mut end = 0;
            let mut arm = 0;
            for (i, w) in self.weights.iter().enumerate() {
                end += w;
                if bucket < end {
                    arm = i;
                    break;
                }
            }
            if let Some((d, frac)) = self.drop {
                if d == arm && self.rng.uniform() < frac {
                    continue;
                }
            }
            let a = &mut self.arms[arm];
            a.users += 1;
            if self.rng.uniform() < a.rate {
                a.conversions += 1;
            }
        }
    }

    /// One epoch, through a stored record read back (as the proxy and `ctl replay` do).
    fn epoch(&mut self, number: u64) -> EpochRecord {
        let users: Vec<u64> = self.arms.iter().map(|a| a.users).collect();
        let expected = expected_users(&self.expected, self.seen, &users, &self.weights);
        let input = Input {
            flag: "sim".into(),
            epoch: number,
            seed: seed("sim", number).to_string(),
            control: 0,
            arms: self
                .arms
                .iter()
                .enumerate()
                .map(|(i, a)| ArmInput {
                    variation: format!("v{i}"),
                    users: a.users,
                    n: a.users,
                    sum: a.conversions as f64,
                    sum_sq: a.conversions as f64,
                    guardrails: self
                        .params
                        .guardrails
                        .iter()
                        .map(|_| GuardFigure {
                            n: a.users,
                            sum: a.p95,
                            sum_sq: 0.0,
                        })
                        .collect(),
                })
                .collect(),
            weights_before: self.weights.clone(),
            expected_users: expected.clone(),
            params: self.params.clone(),
        };
        let outcome = compute(&input);
        let record = EpochRecord {
            flag: "sim".into(),
            epoch: number,
            at: String::new(),
            at_ms: number,
            algorithm: "thompson_beta_bernoulli".into(),
            status_before: Status::Running,
            status_after: Status::Running,
            input,
            outcome,
        };
        let stored = serde_json::to_string(&record).unwrap();
        let back: EpochRecord = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, record, "the record reads back as written");
        let r = replay(&back);
        assert!(r.matches, "epoch {number} replays: {:?}", r.differences);
        self.weights = record.outcome.weights_after.clone();
        self.expected = expected;
        self.seen = users.iter().sum();
        record
    }
}

fn params(draws: u32) -> Params {
    Params {
        metric: "conversion".into(),
        model: Model::BetaBernoulli,
        higher_is_better: true,
        draws,
        floor_buckets: 500,
        min_users_per_arm: 100,
        alpha: 0.05,
        relative_effect: 0.1,
        srm_threshold: 0.001,
        guardrails: vec![],
        stop: None,
    }
}

fn check_weights(r: &EpochRecord, floor: u32) {
    let w = &r.outcome.weights_after;
    assert_eq!(w.iter().sum::<u32>(), 10_000, "epoch {}: {w:?}", r.epoch);
    if r.outcome.why != Why::Srm && r.outcome.why != Why::Promoted {
        assert!(w.iter().all(|x| *x >= floor), "epoch {}: {w:?}", r.epoch);
    }
}

#[test]
fn the_better_of_three_arms_gains_traffic_within_the_floor_and_every_epoch_replays() {
    let mut sim = Sim::new(&[0.10, 0.10, 0.15], params(10_000), 42);
    let mut first_moved = None;
    let mut last = None;
    for e in 1..=20 {
        sim.traffic(1000);
        let r = sim.epoch(e);
        check_weights(&r, 500);
        if r.outcome.why == Why::Moved && first_moved.is_none() {
            first_moved = Some(r.outcome.weights_after.clone());
        }
        println!(
            "epoch {e:2}: {:?} p_best {:?} users {:?}",
            r.outcome.weights_after,
            r.outcome.p_best,
            r.input.arms.iter().map(|a| a.users).collect::<Vec<_>>()
        );
        last = Some(r);
    }
    let last = last.unwrap();
    let w = &last.outcome.weights_after;
    assert!(w[2] > w[0] && w[2] > w[1], "{w:?}");
    assert!(w[2] >= 8_000, "the 15 % arm ends with most traffic: {w:?}");
    let first = first_moved.unwrap();
    assert!(w[2] >= first[2], "{first:?} → {w:?}");
}

#[test]
fn nothing_moves_before_min_users_per_arm() {
    let mut sim = Sim::new(&[0.10, 0.30], params(2_000), 1);
    sim.traffic(150);
    let r = sim.epoch(1);
    assert_eq!(r.outcome.why, Why::TooFewUsers);
    assert_eq!(r.outcome.weights_after, vec![5_000, 5_000]);
}

#[test]
fn an_arm_better_on_the_metric_but_breaking_the_latency_guardrail_is_held_at_its_floor() {
    let mut p = params(5_000);
    p.guardrails = vec![Guardrail {
        metric: "p95_latency_seconds".into(),
        kind: GuardKind::Quantile,
        tolerance: Tolerance::Times(1.2),
        lower_is_better: true,
    }];
    let mut sim = Sim::new(&[0.10, 0.10, 0.15], p, 7);
    sim.arms[2].p95 = 1.5;
    let mut held = 0;
    for e in 1..=20 {
        sim.traffic(1000);
        let r = sim.epoch(e);
        check_weights(&r, 500);
        if r.outcome.why != Why::TooFewUsers {
            assert_eq!(r.outcome.why, Why::Guardrail);
            assert_eq!(r.outcome.weights_after[2], 500, "epoch {e}");
            assert_eq!(r.outcome.broken[2], vec!["p95_latency_seconds"]);
            held += 1;
        }
    }
    assert!(held >= 19);
}

#[test]
fn an_injected_sample_ratio_mismatch_rolls_back_to_the_control() {
    let mut sim = Sim::new(&[0.10, 0.12], params(2_000), 3);
    for e in 1..=3 {
        sim.traffic(2000);
        assert_ne!(sim.epoch(e).outcome.why, Why::Srm);
    }
    // One arm loses a third of its exposures from here on.
    sim.drop = Some((1, 0.33));
    let mut rolled = None;
    for e in 4..=20 {
        sim.traffic(2000);
        let r = sim.epoch(e);
        if r.outcome.why == Why::Srm {
            rolled = Some(r);
            break;
        }
    }
    let r = rolled.expect("the mismatch is detected");
    assert_eq!(r.outcome.weights_after, vec![10_000, 0]);
    assert!(r.outcome.srm_p_value < 0.001);
}

#[test]
fn a_clear_winner_is_promoted_by_the_stop_rule() {
    let mut p = params(5_000);
    p.stop = Some(Stop {
        p_best: 0.95,
        then: Then::Promote,
    });
    let mut sim = Sim::new(&[0.10, 0.20], p, 11);
    let mut promoted = None;
    for e in 1..=20 {
        sim.traffic(2000);
        let r = sim.epoch(e);
        check_weights(&r, 500);
        if r.outcome.why == Why::Promoted {
            promoted = Some(r);
            break;
        }
    }
    let r = promoted.expect("promoted within 20 epochs");
    assert_eq!(r.outcome.winner, Some(1));
    assert_eq!(r.outcome.weights_after, vec![0, 10_000]);
}

/// 1,000 seeded A/A runs of 20 epochs (two arms at 10 %, 500 new users per epoch, stop rule
/// p_best = 0.95 then promote, alpha = 0.05): how often a promotion happens. It must stay at
/// or below alpha, the configured error rate.
#[test]
fn a_a_runs_rarely_promote() {
    let runs = 1000;
    let mut promotions = 0;
    for run in 0..runs {
        let mut p = params(1_000);
        p.stop = Some(Stop {
            p_best: 0.95,
            then: Then::Promote,
        });
        let mut sim = Sim::new(&[0.10, 0.10], p, 10_000 + run);
        for e in 1..=20 {
            sim.traffic(500);
            let mut rec = sim.epoch(e);
            if rec.outcome.why == Why::Promoted {
                promotions += 1;
                rec.status_after = Status::Promoted;
                break;
            }
        }
    }
    let rate = promotions as f64 / runs as f64;
    println!(
        "A/A: {promotions} promotion(s) in {runs} runs ({:.1} %)",
        rate * 100.0
    );
    assert!(rate <= 0.05, "{promotions} / {runs}");
}

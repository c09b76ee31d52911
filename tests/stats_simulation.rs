//! Monte-Carlo checks of the experiment statistics as the product uses them:
//!
//! * A/A experiments peeked at 20 times: the always-valid mSPRT keeps the share of
//!   experiments ever declared significant at or below α, where a naive fixed-horizon z-test
//!   peeked the same way does not.
//! * Power: a 10 % → 12 % conversion lift is detected in at least 80 % of experiments within
//!   the sample size stated below.
//! * Sample-ratio mismatch: a third of one arm lost is always flagged; a correct split
//!   almost never is.
//!
//! Every verdict and SRM flag comes from the product's own results code
//! (`experiments::results::compute`, what `GET /admin/flags/F/results` serves), not a copy of
//! its rule. Deterministic (fixed seeds, a hand-written SplitMix64 generator) and sized to run
//! in a few seconds in a debug build. Run with `--nocapture` to see the observed figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use switchyard::experiments::catalog::Catalog;
use switchyard::experiments::results::{compute, MetricSums, Policy, VariationData};
use switchyard::experiments::stats::Arm;

/// Significance level of the verdict rule.
const ALPHA: f64 = 0.05;
/// The prior scale the product uses: effects of about 10 % of the control mean.
const RELATIVE_EFFECT: f64 = 0.1;
/// Minimum sample of the verdict rule, per variation.
const MIN_USERS: u64 = 100;
const MIN_CONVERSIONS: u64 = 25;
/// Two-sided 5 % critical value of the standard normal, for the naive z-test.
const Z_CRITICAL: f64 = 1.959_963_984_540_054;

/// SplitMix64 (Steele, Lea & Flood 2014): fast, tiny, statistically sound for simulations.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        // One round of mixing so nearby seeds give unrelated streams.
        let mut rng = SplitMix64(seed);
        rng.next_u64();
        rng
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Binomial(n, p) as a sum of n Bernoulli draws (each one comparison of a 64-bit word).
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        let threshold = (p * 18_446_744_073_709_551_616.0) as u64; // p · 2⁶⁴
        let mut hits = 0;
        for _ in 0..n {
            hits += u64::from(self.next_u64() < threshold);
        }
        hits
    }
}

/// A stream per experiment, independent of the others.
fn experiment_rng(test: u64, experiment: u64) -> SplitMix64 {
    SplitMix64::new(test.wrapping_mul(0x1000_0000_01B3) ^ experiment.wrapping_mul(0xA24B_AED4))
}

/// A conversion arm: `conversions` of `n` users converted (per-user value 0/1).
fn binary_arm(n: u64, conversions: u64) -> Arm {
    Arm::from_sums(n, conversions as f64, conversions as f64)
}

fn enough_data(n: u64, conversions: u64) -> bool {
    n >= MIN_USERS && conversions >= MIN_CONVERSIONS
}

/// The product's own results code on one look (`GET /admin/flags/F/results` computes exactly
/// this): two variations of `n` users each, `control` and `treatment` conversions, the
/// default policy (α, minimum sample, prior scale); returns the treatment's verdict and the
/// result's SRM flag.
fn product_results(
    n_control: u64,
    control: u64,
    n_treatment: u64,
    treatment: u64,
) -> (String, bool) {
    let data = |users: u64, conversions: u64| VariationData {
        users,
        expected_share: 0.5,
        metrics: BTreeMap::from([(
            "conversion".to_owned(),
            MetricSums {
                reporters: conversions,
                sum: conversions as f64,
                sum_sq: conversions as f64,
                events: conversions,
            },
        )]),
    };
    let variations = BTreeMap::from([
        ("control".to_owned(), data(n_control, control)),
        ("treatment".to_owned(), data(n_treatment, treatment)),
    ]);
    let policy = Policy {
        alpha: ALPHA,
        min_users: MIN_USERS,
        min_events: MIN_CONVERSIONS,
        relative_effect: RELATIVE_EFFECT,
        ..Policy::default()
    };
    let v = compute(
        "f",
        "control",
        &variations,
        &Catalog::default(),
        Some("conversion"),
        0,
        &policy,
    );
    let verdict = v["variations"][0]["verdict"].as_str().unwrap().to_owned();
    (verdict, v["srm"]["detected"].as_bool().unwrap())
}

/// The product's verdict on one look is a winner or a loser (significant either way).
fn msprt_significant(n: u64, control: u64, treatment: u64) -> bool {
    let (verdict, _) = product_results(n, control, n, treatment);
    verdict == "winner" || verdict == "loser"
}

/// A naive two-sided z-test at level α, as if each look were the planned final one.
fn naive_z_significant(n: u64, control: u64, treatment: u64) -> bool {
    if !enough_data(n, control) || !enough_data(n, treatment) {
        return false;
    }
    let (c, t) = (binary_arm(n, control), binary_arm(n, treatment));
    let se = (c.variance / c.n as f64 + t.variance / t.n as f64).sqrt();
    se > 0.0 && ((t.mean - c.mean) / se).abs() >= Z_CRITICAL
}

#[test]
fn aa_tests_peeked_20_times_keep_false_positives_below_alpha() {
    const EXPERIMENTS: u64 = 1_000;
    const PEEKS: u64 = 20;
    const USERS_PER_PEEK: u64 = 250; // per arm, so 5,000 per arm at the last look
    const RATE: f64 = 0.10;

    let mut msprt_ever = 0u32;
    let mut naive_ever = 0u32;
    let mut naive_final = 0u32;
    let mut msprt_final = 0u32;
    for e in 0..EXPERIMENTS {
        let mut rng = experiment_rng(1, e);
        let (mut control, mut treatment) = (0u64, 0u64);
        let (mut msprt_hit, mut naive_hit) = (false, false);
        for peek in 1..=PEEKS {
            control += rng.binomial(USERS_PER_PEEK, RATE);
            treatment += rng.binomial(USERS_PER_PEEK, RATE);
            let n = peek * USERS_PER_PEEK;
            let m = msprt_significant(n, control, treatment);
            let z = naive_z_significant(n, control, treatment);
            msprt_hit |= m;
            naive_hit |= z;
            if peek == PEEKS {
                msprt_final += u32::from(m);
                naive_final += u32::from(z);
            }
        }
        msprt_ever += u32::from(msprt_hit);
        naive_ever += u32::from(naive_hit);
    }
    let share = |k: u32| f64::from(k) / EXPERIMENTS as f64;
    println!(
        "A/A, {EXPERIMENTS} experiments at 10 % conversion, {PEEKS} looks every \
         {USERS_PER_PEEK} users per arm:"
    );
    println!(
        "  mSPRT:         significant at any look {:.1} %, at the last look only {:.1} %",
        100.0 * share(msprt_ever),
        100.0 * share(msprt_final)
    );
    println!(
        "  naive z-test:  significant at any look {:.1} %, at the last look only {:.1} %",
        100.0 * share(naive_ever),
        100.0 * share(naive_final)
    );
    assert!(
        share(msprt_ever) <= ALPHA,
        "always-valid p-values declared {:.1} % of A/A tests significant",
        100.0 * share(msprt_ever)
    );
    // Peeking breaks the fixed-horizon test: well above α (about 4× for 20 looks).
    assert!(
        share(naive_ever) > 2.0 * ALPHA,
        "naive z-test peeked 20 times: {:.1} %",
        100.0 * share(naive_ever)
    );
    // Looked at once, the z-test is calibrated; the inflation comes from peeking.
    assert!(
        share(naive_final) < 0.08,
        "{:.1} %",
        100.0 * share(naive_final)
    );
}

/// Users per arm at which a 10 % → 12 % lift is detected in at least 80 % of experiments.
const POWER_USERS_PER_ARM: u64 = 8_000;

#[test]
fn a_two_point_lift_is_detected_with_80_percent_power() {
    const EXPERIMENTS: u64 = 200;
    const USERS_PER_PEEK: u64 = 500;
    const MAX_USERS: u64 = 10_000;
    const PEEKS: u64 = MAX_USERS / USERS_PER_PEEK;

    // detected_by[k] = experiments detected (p ≤ α, minimum sample met) by look k + 1.
    let mut first_detection = vec![0u32; PEEKS as usize];
    let mut wrong_direction = 0u32;
    for e in 0..EXPERIMENTS {
        let mut rng = experiment_rng(2, e);
        let (mut control, mut treatment) = (0u64, 0u64);
        for peek in 1..=PEEKS {
            control += rng.binomial(USERS_PER_PEEK, 0.10);
            treatment += rng.binomial(USERS_PER_PEEK, 0.12);
            let n = peek * USERS_PER_PEEK;
            let (verdict, _) = product_results(n, control, n, treatment);
            if verdict == "winner" || verdict == "loser" {
                wrong_direction += u32::from(verdict == "loser");
                first_detection[(peek - 1) as usize] += 1;
                break;
            }
        }
    }
    println!("power, {EXPERIMENTS} experiments, 10 % → 12 % conversion, detected by n per arm:");
    let mut cumulative = 0u32;
    let mut power_at_target = None;
    for (k, hits) in first_detection.iter().enumerate() {
        cumulative += hits;
        let n = (k as u64 + 1) * USERS_PER_PEEK;
        let power = f64::from(cumulative) / EXPERIMENTS as f64;
        println!("  n = {n:>6}: {:5.1} %", 100.0 * power);
        if n == POWER_USERS_PER_ARM {
            power_at_target = Some(power);
        }
    }
    let power = power_at_target.unwrap();
    assert!(
        power >= 0.80,
        "detected in {:.1} % of experiments by {POWER_USERS_PER_ARM} users per arm",
        100.0 * power
    );
    assert_eq!(wrong_direction, 0, "a detection had an interval reaching 0");
}

#[test]
fn sample_ratio_mismatch_is_flagged_when_a_third_of_an_arm_is_lost() {
    const SIMULATIONS: u64 = 200;
    const USERS: u64 = 10_000;
    const THRESHOLD: f64 = 0.001;

    let (mut flagged_broken, mut flagged_healthy) = (0u32, 0u32);
    for s in 0..SIMULATIONS {
        let mut rng = experiment_rng(3, s);
        // Healthy: every user lands in an arm with probability ½ and is counted.
        let treatment = rng.binomial(USERS, 0.5);
        let (_, flagged) = product_results(USERS - treatment, 0, treatment, 0);
        flagged_healthy += u32::from(flagged);
        // Broken: same allocation, but a third of the treatment's users go missing.
        let treatment = rng.binomial(USERS, 0.5);
        let kept = rng.binomial(treatment, 2.0 / 3.0);
        let (_, flagged) = product_results(USERS - treatment, 0, kept, 0);
        flagged_broken += u32::from(flagged);
    }
    let share = |k: u32| f64::from(k) / SIMULATIONS as f64;
    println!(
        "SRM at p < {THRESHOLD}, {SIMULATIONS} simulations of {USERS} users: a third of one \
         arm lost flagged {:.1} %, correct 50/50 split flagged {:.1} %",
        100.0 * share(flagged_broken),
        100.0 * share(flagged_healthy)
    );
    assert_eq!(flagged_broken, SIMULATIONS as u32);
    assert!(share(flagged_healthy) <= 0.01);
}

#[test]
fn the_generator_is_unbiased_enough_for_these_checks() {
    let mut rng = SplitMix64::new(42);
    let n = 1_000_000;
    let hits = rng.binomial(n, 0.1);
    // 0.1 ± 5 standard errors (0.0003).
    assert!((hits as f64 / n as f64 - 0.1).abs() < 0.0015, "{hits}");
}

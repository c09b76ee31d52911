//! The statistics in `switchyard::experiments::stats` against reference values computed
//! independently with NumPy/SciPy (`tests/python/stats_reference.py`, which writes
//! `tests/fixtures/stats_reference.json`; `tests/python/test_stats_reference.py` proves the
//! committed fixture is what SciPy computes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use switchyard::experiments::stats::{benjamini_hochberg, mixture_tau2, msprt, srm, Arm};

const FIXTURE: &str = include_str!("fixtures/stats_reference.json");

/// Relative tolerance between Rust and SciPy.
const RTOL: f64 = 1e-9;
/// Absolute tolerance for values near 0 (differences of means, tiny p-values).
const ATOL: f64 = 1e-12;

#[derive(Deserialize)]
struct Reference {
    msprt: Vec<MsprtCase>,
    benjamini_hochberg: Vec<BhCase>,
    srm: Vec<SrmCase>,
}

#[derive(Deserialize)]
struct Sums {
    n: u64,
    sum: f64,
    sum_sq: f64,
}

#[derive(Deserialize)]
struct MsprtCase {
    name: String,
    control: Sums,
    treatment: Sums,
    alpha: f64,
    relative_effect: Option<f64>,
    tau2_given: Option<f64>,
    expected: MsprtExpected,
}

#[derive(Deserialize)]
struct MsprtExpected {
    control_mean: f64,
    control_variance: f64,
    treatment_mean: f64,
    treatment_variance: f64,
    tau2: f64,
    diff: f64,
    p_value: f64,
    /// `None` = unbounded.
    ci_low: Option<f64>,
    ci_high: Option<f64>,
}

#[derive(Deserialize)]
struct BhCase {
    name: String,
    p: Vec<f64>,
    adjusted: Vec<f64>,
}

#[derive(Deserialize)]
struct SrmCase {
    name: String,
    observed: Vec<u64>,
    shares: Vec<f64>,
    chi2: f64,
    p_value: f64,
}

fn reference() -> Reference {
    serde_json::from_str(FIXTURE).expect("tests/fixtures/stats_reference.json parses")
}

fn close(actual: f64, expected: f64) -> bool {
    actual == expected
        || (actual - expected).abs() <= RTOL * actual.abs().max(expected.abs())
        || (actual - expected).abs() <= ATOL
}

fn check(errors: &mut Vec<String>, case: &str, what: &str, actual: f64, expected: f64) {
    if !close(actual, expected) {
        errors.push(format!(
            "{case}: {what} = {actual:e}, SciPy says {expected:e} (relative error {:e})",
            ((actual - expected) / expected).abs()
        ));
    }
}

fn report(errors: &[String]) {
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

#[test]
fn fixture_covers_the_planned_cases() {
    let r = reference();
    assert!(r.msprt.len() >= 20, "{} mSPRT cases", r.msprt.len());
    assert!(r.benjamini_hochberg.len() >= 5);
    assert!(r.srm.len() >= 6);
    assert!(r.srm.iter().any(|c| c.observed.len() == 2));
    assert!(r.srm.iter().any(|c| c.observed.len() == 3));
    assert!(r
        .msprt
        .iter()
        .any(|c| c.expected.ci_low.is_none() && c.expected.p_value == 1.0));
}

#[test]
fn arm_summaries_match_numpy() {
    let mut errors = Vec::new();
    for case in reference().msprt {
        let c = Arm::from_sums(case.control.n, case.control.sum, case.control.sum_sq);
        let t = Arm::from_sums(case.treatment.n, case.treatment.sum, case.treatment.sum_sq);
        let e = &case.expected;
        check(
            &mut errors,
            &case.name,
            "control mean",
            c.mean,
            e.control_mean,
        );
        check(
            &mut errors,
            &case.name,
            "control s²",
            c.variance,
            e.control_variance,
        );
        check(
            &mut errors,
            &case.name,
            "treatment mean",
            t.mean,
            e.treatment_mean,
        );
        check(
            &mut errors,
            &case.name,
            "treatment s²",
            t.variance,
            e.treatment_variance,
        );
    }
    report(&errors);
}

#[test]
fn msprt_matches_scipy() {
    let mut errors = Vec::new();
    for case in reference().msprt {
        let e = &case.expected;
        // Feed the NumPy summaries so this test isolates `msprt` and `mixture_tau2`.
        let control = Arm {
            n: case.control.n,
            mean: e.control_mean,
            variance: e.control_variance,
        };
        let treatment = Arm {
            n: case.treatment.n,
            mean: e.treatment_mean,
            variance: e.treatment_variance,
        };
        let tau2 = match (case.tau2_given, case.relative_effect) {
            (Some(tau2), _) => tau2,
            (None, Some(relative)) => mixture_tau2(&control, relative),
            (None, None) => panic!("{}: neither tau2 nor relative_effect", case.name),
        };
        check(&mut errors, &case.name, "τ²", tau2, e.tau2);
        let r = msprt(&control, &treatment, tau2, case.alpha);
        check(&mut errors, &case.name, "diff", r.diff, e.diff);
        check(&mut errors, &case.name, "p", r.p_value, e.p_value);
        match (e.ci_low, e.ci_high) {
            (Some(low), Some(high)) => {
                check(&mut errors, &case.name, "ci_low", r.ci_low, low);
                check(&mut errors, &case.name, "ci_high", r.ci_high, high);
            }
            _ => {
                if r.ci_low != f64::NEG_INFINITY || r.ci_high != f64::INFINITY {
                    errors.push(format!(
                        "{}: interval ({}, {}) should be unbounded",
                        case.name, r.ci_low, r.ci_high
                    ));
                }
            }
        }
        // p ≤ α exactly when the interval excludes 0.
        if (r.p_value <= case.alpha) != (r.ci_low > 0.0 || r.ci_high < 0.0) {
            errors.push(format!("{}: p and interval disagree: {r:?}", case.name));
        }
    }
    report(&errors);
}

#[test]
fn msprt_from_sums_matches_scipy_end_to_end() {
    // The path the product takes: sums → Arm → τ² → mSPRT.
    let mut errors = Vec::new();
    for case in reference().msprt {
        let e = &case.expected;
        let control = Arm::from_sums(case.control.n, case.control.sum, case.control.sum_sq);
        let treatment = Arm::from_sums(case.treatment.n, case.treatment.sum, case.treatment.sum_sq);
        let tau2 = case
            .tau2_given
            .unwrap_or_else(|| mixture_tau2(&control, case.relative_effect.unwrap()));
        let r = msprt(&control, &treatment, tau2, case.alpha);
        check(
            &mut errors,
            &case.name,
            "p (from sums)",
            r.p_value,
            e.p_value,
        );
        if let (Some(low), Some(high)) = (e.ci_low, e.ci_high) {
            check(&mut errors, &case.name, "ci_low (from sums)", r.ci_low, low);
            check(
                &mut errors,
                &case.name,
                "ci_high (from sums)",
                r.ci_high,
                high,
            );
        }
    }
    report(&errors);
}

#[test]
fn benjamini_hochberg_matches_scipy() {
    let mut errors = Vec::new();
    for case in reference().benjamini_hochberg {
        let adjusted = benjamini_hochberg(&case.p);
        assert_eq!(adjusted.len(), case.adjusted.len(), "{}", case.name);
        for (i, (a, e)) in adjusted.iter().zip(&case.adjusted).enumerate() {
            check(&mut errors, &case.name, &format!("adjusted[{i}]"), *a, *e);
        }
    }
    report(&errors);
    assert!(benjamini_hochberg(&[]).is_empty());
}

#[test]
fn srm_matches_scipy_chisquare() {
    let mut errors = Vec::new();
    for case in reference().srm {
        let (chi2, p) = srm(&case.observed, &case.shares);
        check(&mut errors, &case.name, "χ²", chi2, case.chi2);
        // Relative, not absolute, even for the tiny p-values: the survival function must be
        // accurate in the tail too.
        if (p - case.p_value).abs() > RTOL * p.abs().max(case.p_value.abs()) {
            errors.push(format!(
                "{}: p = {p:e}, SciPy says {:e}",
                case.name, case.p_value
            ));
        }
    }
    report(&errors);
}

/// A p-value that could not be computed (NaN) is no evidence: it must adjust to 1 and must
/// not change the other adjustments (BH as if it were 1), nor break the sort.
#[test]
fn benjamini_hochberg_treats_an_undefined_p_value_as_no_evidence() {
    let adjusted = benjamini_hochberg(&[f64::NAN, 0.01, 0.5, 0.03]);
    let expected = [1.0, 0.04, 2.0 / 3.0, 0.06];
    for (a, e) in adjusted.iter().zip(expected) {
        assert!(close(*a, e), "{adjusted:?}, expected {expected:?}");
    }
    // Long enough for the standard library's sort to notice an inconsistent order.
    let p: Vec<f64> = (0..60u32)
        .map(|i| {
            if i.is_multiple_of(7) {
                f64::NAN
            } else {
                f64::from((i * 37) % 60 + 1) / 61.0
            }
        })
        .collect();
    let adjusted = benjamini_hochberg(&p);
    let as_one: Vec<f64> = p
        .iter()
        .map(|x| if x.is_nan() { 1.0 } else { *x })
        .collect();
    assert_eq!(adjusted, benjamini_hochberg(&as_one));
}

/// The mixture scale must not collapse when the control arm is constant at 0: a
/// hallucination rate of 0 % in the control (300 reporting users, none hallucinated) against
/// 20 % in the treatment is overwhelming evidence, and the product must call it a loser.
/// `mixture_tau2(&control, …)` alone gives τ² = 1e-18 here (mean 0 and variance 0), hence
/// p = 1 for ever; the scale has to come from the pooled arms.
#[test]
fn a_constant_zero_control_does_not_hide_a_large_regression() {
    use std::collections::BTreeMap;
    use switchyard::experiments::catalog::Catalog;
    use switchyard::experiments::results::{compute, MetricSums, Policy, VariationData};

    let variation = |hallucinated: f64| {
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "hallucination".to_owned(),
            MetricSums {
                reporters: 300,
                sum: hallucinated,
                sum_sq: hallucinated,
                events: 300,
            },
        );
        VariationData {
            users: 1000,
            expected_share: 0.5,
            metrics,
        }
    };
    let mut variations = BTreeMap::new();
    variations.insert("control".to_owned(), variation(0.0));
    variations.insert("treatment".to_owned(), variation(60.0));
    let r = compute(
        "f",
        "control",
        &variations,
        &Catalog::default(),
        None,
        0,
        &Policy::default(),
    );
    let row = &r["variations"][0];
    assert_eq!(row["metric"], "hallucination");
    assert_eq!(row["verdict"], "loser", "{r:#}");
}

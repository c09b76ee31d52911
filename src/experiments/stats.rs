//! Pure statistics for experiment results.
//!
//! * **mSPRT** (mixture sequential probability ratio test, normal mixture; Johari, Koomen,
//!   Pekelis & Walsh, "Always Valid Inference", 2017 — the method behind Optimizely's Stats
//!   Engine): an always-valid p-value and confidence interval for the difference of two means,
//!   so results may be looked at any number of times without inflating false positives.
//! * **Benjamini–Hochberg** adjustment across metrics and variations (false discovery rate).
//! * **Sample-ratio mismatch**: Pearson's χ² test of users per variation against the
//!   configured allocation.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Summary of one arm on one metric: users and the mean and (sample) variance of their values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arm {
    /// Users.
    pub n: u64,
    /// Mean per user.
    pub mean: f64,
    /// Sample variance per user.
    pub variance: f64,
}

impl Arm {
    /// From the sum and sum of squares of `n` per-user values.
    pub fn from_sums(n: u64, sum: f64, sum_sq: f64) -> Arm {
        if n == 0 {
            return Arm {
                n,
                mean: 0.0,
                variance: 0.0,
            };
        }
        let nf = n as f64;
        let mean = sum / nf;
        let variance = if n > 1 {
            ((sum_sq - nf * mean * mean) / (nf - 1.0)).max(0.0)
        } else {
            0.0
        };
        Arm { n, mean, variance }
    }

    /// The arms taken together (for a prior scale that does not collapse when the control
    /// alone is constant, e.g. a hallucination rate of exactly 0).
    pub fn pooled(arms: &[Arm]) -> Arm {
        let n: u64 = arms.iter().map(|a| a.n).sum();
        let sum: f64 = arms.iter().map(|a| a.n as f64 * a.mean).sum();
        let sum_sq: f64 = arms
            .iter()
            .map(|a| a.n.saturating_sub(1) as f64 * a.variance + a.n as f64 * a.mean * a.mean)
            .sum();
        Arm::from_sums(n, sum, sum_sq)
    }
}

/// An always-valid comparison of a treatment against the control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// treatment mean − control mean.
    pub diff: f64,
    /// The always-valid p-value (1 when it cannot be computed yet).
    pub p_value: f64,
    /// The always-valid (1 − α) confidence interval of `diff`.
    pub ci_low: f64,
    /// Its upper end.
    pub ci_high: f64,
}

/// The mixing variance τ² of the normal mixture: the scale of effects the test is tuned to
/// detect fastest, `relative_effect × |control mean|`, floored by a small fraction of the
/// control's standard deviation so a metric whose mean is near zero still gets a sane prior.
pub fn mixture_tau2(control: &Arm, relative_effect: f64) -> f64 {
    let tau = (relative_effect * control.mean.abs())
        .max(0.01 * control.variance.sqrt())
        .max(1e-9);
    tau * tau
}

/// mSPRT with a normal mixture N(0, τ²) over the difference of means, using the plug-in
/// variance `V = s²_c/n_c + s²_t/n_t`:
///
/// Λ = sqrt(V / (V + τ²)) · exp( θ̂² τ² / (2 V (V + τ²)) ),  p = min(1, 1/Λ),
///
/// and the interval is { θ : Λ(θ̂ − θ) < 1/α }, i.e. θ̂ ± sqrt( 2 V (V+τ²)/τ² · ( ln(1/α) +
/// ½ ln((V+τ²)/V) ) ). `1/Λ` at the current look is an upper bound of the running minimum,
/// so reporting it is conservative at every look.
pub fn msprt(control: &Arm, treatment: &Arm, tau2: f64, alpha: f64) -> Comparison {
    let diff = treatment.mean - control.mean;
    let v = if control.n > 0 && treatment.n > 0 {
        control.variance / control.n as f64 + treatment.variance / treatment.n as f64
    } else {
        0.0
    };
    if v <= 0.0 || !v.is_finite() || tau2 <= 0.0 {
        return Comparison {
            diff,
            p_value: 1.0,
            ci_low: f64::NEG_INFINITY,
            ci_high: f64::INFINITY,
        };
    }
    let log_lambda = 0.5 * (v / (v + tau2)).ln() + diff * diff * tau2 / (2.0 * v * (v + tau2));
    let p_value = (-log_lambda).exp().min(1.0);
    let half =
        (2.0 * v * (v + tau2) / tau2 * ((1.0 / alpha).ln() + 0.5 * ((v + tau2) / v).ln())).sqrt();
    Comparison {
        diff,
        p_value,
        ci_low: diff - half,
        ci_high: diff + half,
    }
}

/// Benjamini–Hochberg adjusted p-values (same order as given): significant at FDR `q` when
/// the adjusted value is ≤ q.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    // A p-value that could not be computed is no evidence; NaN would also make the order
    // inconsistent (wrong adjustments, or a panic in `sort_by`).
    let p: Vec<f64> = p
        .iter()
        .map(|&x| if x.is_nan() { 1.0 } else { x })
        .collect();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        let value = (p[i] * m as f64 / (rank + 1) as f64).min(1.0);
        running = running.min(value);
        adjusted[i] = running;
    }
    adjusted
}

/// Pearson's χ² goodness of fit of `observed` counts against `expected_shares` (which need
/// not sum to 1; they are normalised). Returns (χ², p-value); p = 1 with fewer than two arms
/// or no users.
pub fn srm(observed: &[u64], expected_shares: &[f64]) -> (f64, f64) {
    let total: u64 = observed.iter().sum();
    let share_sum: f64 = expected_shares.iter().sum();
    if observed.len() < 2
        || observed.len() != expected_shares.len()
        || total == 0
        || share_sum <= 0.0
    {
        return (0.0, 1.0);
    }
    let mut chi2 = 0.0;
    let mut df = 0usize;
    for (o, s) in observed.iter().zip(expected_shares) {
        let e = total as f64 * s / share_sum;
        if e > 0.0 {
            chi2 += (*o as f64 - e).powi(2) / e;
            df += 1;
        }
    }
    if df < 2 {
        return (chi2, 1.0);
    }
    let p = ChiSquared::new((df - 1) as f64).map_or(1.0, |d| d.sf(chi2));
    (chi2, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(n: u64, conversions: u64) -> Arm {
        Arm::from_sums(n, conversions as f64, conversions as f64)
    }

    #[test]
    fn from_sums_is_the_sample_mean_and_variance() {
        let a = Arm::from_sums(4, 10.0, 30.0); // values 1,2,3,4
        assert!((a.mean - 2.5).abs() < 1e-12);
        assert!((a.variance - 5.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn no_difference_means_no_evidence() {
        let c = binary(1000, 100);
        let r = msprt(&c, &c, mixture_tau2(&c, 0.1), 0.05);
        assert_eq!(r.diff, 0.0);
        assert!(r.p_value > 0.5);
        assert!(r.ci_low < 0.0 && r.ci_high > 0.0);
    }

    #[test]
    fn a_clear_lift_is_significant_and_the_interval_excludes_zero() {
        let c = binary(10_000, 1000);
        let t = binary(10_000, 1200);
        let r = msprt(&c, &t, mixture_tau2(&c, 0.1), 0.05);
        assert!(r.p_value < 0.05, "{r:?}");
        assert!(r.ci_low > 0.0);
        // The interval and the p-value agree: p < α ⇔ 0 is outside the interval.
        let weak = msprt(&c, &binary(10_000, 1030), mixture_tau2(&c, 0.1), 0.05);
        assert_eq!(weak.p_value < 0.05, weak.ci_low > 0.0 || weak.ci_high < 0.0);
    }

    #[test]
    fn bh_matches_a_hand_computed_example() {
        let adj = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.2]);
        let expect = [
            0.04,
            0.053_333_333_333_333_33,
            0.053_333_333_333_333_33,
            0.2,
        ];
        for (a, e) in adj.iter().zip(expect) {
            assert!((a - e).abs() < 1e-12, "{adj:?}");
        }
    }

    #[test]
    fn srm_flags_a_dropped_third_of_one_arm() {
        let (_, p_ok) = srm(&[5000, 5030], &[0.5, 0.5]);
        assert!(p_ok > 0.001);
        let (_, p_bad) = srm(&[5000, 3333], &[0.5, 0.5]);
        assert!(p_bad < 0.001);
    }
}

//! One epoch of the guarded bandit, as a pure function: the figures per arm, the parameters,
//! the seed and the weights in force go in; P(best), the new weights and why come out. The
//! record of an epoch holds every input, so [`compute`] run again on it must give the same
//! outcome bit for bit (`switchyard ctl bandit replay`).

use serde::{Deserialize, Serialize};

use super::allocate::{self, TOTAL};
use super::rng::Rng;
use crate::experiments::stats::{mixture_tau2, msprt, srm, Arm};

/// The posterior model of the primary metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Binary metric: Beta(1 + successes, 1 + failures) per arm.
    BetaBernoulli,
    /// Numeric metric: Normal(mean, variance / n) per arm (a flat prior).
    Gaussian,
}

impl Model {
    /// The algorithm's name in records.
    pub fn algorithm(self) -> &'static str {
        match self {
            Model::BetaBernoulli => "thompson_beta_bernoulli",
            Model::Gaussian => "thompson_gaussian",
        }
    }
}

/// How far a variation may be worse than the control on a guardrail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// `"+0.02"`: by at most this much (in the metric's unit).
    Plus(f64),
    /// `"x1.2"`: by at most this factor of the control's value.
    Times(f64),
}

impl Tolerance {
    /// How much worse than `control` is still allowed.
    pub fn allowed(self, control: f64) -> f64 {
        match self {
            Tolerance::Plus(d) => d,
            Tolerance::Times(k) => (k - 1.0) * control.abs(),
        }
    }

    /// As written in the config.
    pub fn label(self) -> String {
        match self {
            Tolerance::Plus(d) => format!("+{d}"),
            Tolerance::Times(k) => format!("x{k}"),
        }
    }
}

/// How a guardrail's figure is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    /// A mean (error rate per request, a feedback metric per user): the always-valid mSPRT
    /// interval of the difference, as experiment results use.
    Mean,
    /// A latency quantile: the point values, once both sides have enough samples.
    Quantile,
}

/// One guardrail: a metric a variation must not make worse than the control by more than
/// the tolerance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guardrail {
    /// `error_rate`, `p95_latency_seconds` or a feedback metric.
    pub metric: String,
    /// How it is compared.
    pub kind: GuardKind,
    /// How much worse is tolerated.
    pub tolerance: Tolerance,
    /// Whether a lower value is better (error rate, latency, hallucination).
    pub lower_is_better: bool,
}

/// What to do once one arm is best with enough confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    /// Freeze the weights and notify.
    Hold,
    /// Send everyone to the winner (audited).
    Promote,
}

/// The stop rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// P(best) the leader must reach.
    pub p_best: f64,
    /// What happens then.
    pub then: Then,
}

/// Everything that parameterises an epoch's computation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The primary metric.
    pub metric: String,
    /// Its posterior model.
    pub model: Model,
    /// Whether a higher value is better.
    pub higher_is_better: bool,
    /// Monte Carlo draws for P(best).
    pub draws: u32,
    /// Buckets every live arm keeps at least (floor × 10,000).
    pub floor_buckets: u32,
    /// Users each arm needs before anything moves.
    pub min_users_per_arm: u64,
    /// Significance level of guardrails and of the stop rule.
    pub alpha: f64,
    /// The mSPRT mixture's effect scale (relative to the control's mean).
    pub relative_effect: f64,
    /// SRM p-value below which the flag is rolled back.
    pub srm_threshold: f64,
    /// The guardrails.
    pub guardrails: Vec<Guardrail>,
    /// The stop rule, if any.
    pub stop: Option<Stop>,
}

/// A guardrail figure of one arm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuardFigure {
    /// Samples (requests, users, or latencies in the window).
    pub n: u64,
    /// Sum of the values (the quantile itself for [`GuardKind::Quantile`]).
    pub sum: f64,
    /// Sum of squares (0 for a quantile).
    pub sum_sq: f64,
}

/// The inputs of one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmInput {
    /// The variation.
    pub variation: String,
    /// Users first exposed to it in the bandit's rule.
    pub users: u64,
    /// Samples of the primary metric (users, counting non-reporters as 0 for binary metrics).
    pub n: u64,
    /// Successes (binary) or the sum of per-user values.
    pub sum: f64,
    /// Sum of squares of per-user values.
    pub sum_sq: f64,
    /// One figure per guardrail, in the parameters' order.
    pub guardrails: Vec<GuardFigure>,
}

impl ArmInput {
    fn metric(&self) -> Arm {
        Arm::from_sums(self.n, self.sum, self.sum_sq)
    }
}

/// Everything an epoch is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The flag.
    pub flag: String,
    /// The epoch number (1, 2, …).
    pub epoch: u64,
    /// The seed of the Monte Carlo draws ([`super::rng::seed`] of flag and epoch), as a
    /// decimal string so JSON readers without 64-bit integers keep it whole.
    pub seed: String,
    /// Index of the control among `arms`.
    pub control: usize,
    /// The arms, in the rule's allocation order.
    pub arms: Vec<ArmInput>,
    /// Bucket counts in force before this epoch.
    pub weights_before: Vec<u32>,
    /// Users each arm should have had under the weights in force as they arrived (for SRM).
    pub expected_users: Vec<f64>,
    /// The parameters.
    pub params: Params,
}

/// Why an epoch ended as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Weights moved toward P(best).
    Moved,
    /// Weights moved, and at least one arm was held at its floor by a guardrail.
    Guardrail,
    /// Nothing moved: an arm has fewer users than `min_users_per_arm`.
    TooFewUsers,
    /// Sample-ratio mismatch: the whole flag went back to the control.
    Srm,
    /// The stop rule fired with `then = "hold"`: weights frozen.
    Stopped,
    /// The stop rule fired with `then = "promote"`: the winner takes everything.
    Promoted,
}

impl Why {
    /// The snake_case name used in records and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Moved => "moved",
            Why::Guardrail => "guardrail",
            Why::TooFewUsers => "too_few_users",
            Why::Srm => "srm",
            Why::Stopped => "stopped",
            Why::Promoted => "promoted",
        }
    }
}

/// What one epoch decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Monte Carlo wins per arm (P(best) = wins / draws).
    pub wins: Vec<u64>,
    /// P(best) per arm.
    pub p_best: Vec<f64>,
    /// Bucket counts from now on (sum 10,000).
    pub weights_after: Vec<u32>,
    /// Why.
    pub why: Why,
    /// Per arm, the guardrails it breaks against the control.
    pub broken: Vec<Vec<String>>,
    /// The SRM test's p-value.
    pub srm_p_value: f64,
    /// The arm the stop rule chose, if it fired.
    pub winner: Option<usize>,
    /// Human-readable reasons.
    pub reasons: Vec<String>,
}

/// P(best) by Monte Carlo: `draws` joint posterior draws, counting which arm is best.
pub fn p_best(input: &Input, rng: &mut Rng) -> Vec<u64> {
    let p = &input.params;
    let arms: Vec<Arm> = input.arms.iter().map(ArmInput::metric).collect();
    let mut wins = vec![0u64; arms.len()];
    if arms.is_empty() {
        return wins;
    }
    // Gaussian posteriors: a flat prior, the sample variance (a wide one until an arm has
    // two samples, so it is neither favoured nor excluded for lack of data).
    let scale: Vec<(f64, f64)> = input
        .arms
        .iter()
        .zip(&arms)
        .map(|(a, arm)| match p.model {
            Model::BetaBernoulli => {
                let s = a.sum.clamp(0.0, a.n as f64);
                (1.0 + s, 1.0 + a.n as f64 - s)
            }
            Model::Gaussian if arm.n >= 2 => (arm.mean, (arm.variance / arm.n as f64).sqrt()),
            Model::Gaussian => (arm.mean, 1e6),
        })
        .collect();
    for _ in 0..p.draws {
        let mut best = 0;
        let mut best_value = f64::NAN;
        for (i, (a, b)) in scale.iter().enumerate() {
            let theta = match p.model {
                Model::BetaBernoulli => rng.beta(*a, *b),
                Model::Gaussian => a + b * rng.normal(),
            };
            let better = if best_value.is_nan() {
                true
            } else if p.higher_is_better {
                theta > best_value
            } else {
                theta < best_value
            };
            if better {
                best = i;
                best_value = theta;
            }
        }
        wins[best] += 1;
    }
    wins
}

/// The guardrails `arm` breaks against the control.
pub fn broken_guardrails(input: &Input, arm: usize) -> Vec<String> {
    let p = &input.params;
    let (Some(c), Some(t)) = (input.arms.get(input.control), input.arms.get(arm)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (g, guard) in p.guardrails.iter().enumerate() {
        let (Some(cf), Some(tf)) = (c.guardrails.get(g), t.guardrails.get(g)) else {
            continue;
        };
        if cf.n < p.min_users_per_arm || tf.n < p.min_users_per_arm {
            continue;
        }
        let broken = match guard.kind {
            GuardKind::Quantile => {
                let worse = if guard.lower_is_better {
                    tf.sum - cf.sum
                } else {
                    cf.sum - tf.sum
                };
                worse > guard.tolerance.allowed(cf.sum)
            }
            GuardKind::Mean => {
                let ca = Arm::from_sums(cf.n, cf.sum, cf.sum_sq);
                let ta = Arm::from_sums(tf.n, tf.sum, tf.sum_sq);
                let tau2 = mixture_tau2(&Arm::pooled(&[ca, ta]), p.relative_effect);
                let r = msprt(&ca, &ta, tau2, p.alpha);
                let (worse, significant) = if guard.lower_is_better {
                    (r.diff, r.ci_low > 0.0)
                } else {
                    (-r.diff, r.ci_high < 0.0)
                };
                significant && worse > guard.tolerance.allowed(ca.mean)
            }
        };
        if broken {
            out.push(guard.metric.clone());
        }
    }
    out
}

/// Whether `leader` is better than every arm in `others` on the primary metric by the
/// always-valid test at `alpha`.
fn separated(input: &Input, leader: usize, others: &[usize], alpha: f64) -> bool {
    let p = &input.params;
    let l = input.arms[leader].metric();
    others.iter().all(|&o| {
        let a = input.arms[o].metric();
        let tau2 = mixture_tau2(&Arm::pooled(&[a, l]), p.relative_effect);
        let r = msprt(&a, &l, tau2, alpha);
        if p.higher_is_better {
            r.ci_low > 0.0
        } else {
            r.ci_high < 0.0
        }
    })
}

/// Computes one epoch. Pure: the same input gives the same outcome, bit for bit.
pub fn compute(input: &Input) -> Outcome {
    let p = &input.params;
    let n = input.arms.len();
    let seed = input.seed.parse::<u64>().unwrap_or(0);
    let mut rng = Rng::new(seed);
    let wins = p_best(input, &mut rng);
    let draws = f64::from(p.draws.max(1));
    let p_best: Vec<f64> = wins.iter().map(|w| *w as f64 / draws).collect();
    let observed: Vec<u64> = input.arms.iter().map(|a| a.users).collect();
    let (_, srm_p_value) = srm(&observed, &input.expected_users);
    let mut outcome = Outcome {
        wins,
        p_best: p_best.clone(),
        weights_after: input.weights_before.clone(),
        why: Why::TooFewUsers,
        broken: vec![Vec::new(); n],
        srm_p_value,
        winner: None,
        reasons: Vec::new(),
    };
    let control = input.control.min(n.saturating_sub(1));
    if srm_p_value < p.srm_threshold {
        let mut w = vec![0; n];
        if n > 0 {
            w[control] = TOTAL;
        }
        outcome.weights_after = w;
        outcome.why = Why::Srm;
        outcome.reasons.push(format!(
            "sample ratio mismatch: users {observed:?} against expected {:?} (p = {srm_p_value:.2e} < {}); every user goes back to the control",
            input.expected_users.iter().map(|e| e.round()).collect::<Vec<_>>(),
            p.srm_threshold
        ));
        return outcome;
    }
    let short: Vec<&str> = input
        .arms
        .iter()
        .filter(|a| a.users < p.min_users_per_arm)
        .map(|a| a.variation.as_str())
        .collect();
    if !short.is_empty() {
        outcome.reasons.push(format!(
            "held: {} below {} users",
            short.join(", "),
            p.min_users_per_arm
        ));
        return outcome;
    }
    let mut pinned = vec![false; n];
    for (i, pin) in pinned.iter_mut().enumerate() {
        if i == control {
            continue;
        }
        let broken = broken_guardrails(input, i);
        if !broken.is_empty() {
            outcome.reasons.push(format!(
                "{} breaks {} against the control: held at the floor",
                input.arms[i].variation,
                broken.join(", ")
            ));
            *pin = true;
        }
        outcome.broken[i] = broken;
    }
    // The stop rule: the leader among unpinned arms reaches p_best and the always-valid test
    // separates it from every other unpinned arm (Bonferroni over all pairs, so the chance of
    // stopping on noise stays within alpha).
    if let Some(stop) = p.stop {
        let candidates: Vec<usize> = (0..n).filter(|&i| !pinned[i]).collect();
        let leader = candidates
            .iter()
            .copied()
            .max_by(|&a, &b| p_best[a].total_cmp(&p_best[b]).then(b.cmp(&a)));
        if let Some(leader) = leader {
            let others: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| i != leader)
                .collect();
            let pairs = (n * n.saturating_sub(1) / 2).max(1) as f64;
            if p_best[leader] >= stop.p_best && separated(input, leader, &others, p.alpha / pairs) {
                outcome.winner = Some(leader);
                let name = &input.arms[leader].variation;
                match stop.then {
                    Then::Hold => {
                        outcome.why = Why::Stopped;
                        outcome.reasons.push(format!(
                            "{name} is best with P(best) = {:.4} ≥ {}: weights frozen",
                            p_best[leader], stop.p_best
                        ));
                    }
                    Then::Promote => {
                        let mut w = vec![0; n];
                        w[leader] = TOTAL;
                        outcome.weights_after = w;
                        outcome.why = Why::Promoted;
                        outcome.reasons.push(format!(
                            "{name} is best with P(best) = {:.4} ≥ {}: promoted to 100 %",
                            p_best[leader], stop.p_best
                        ));
                    }
                }
                return outcome;
            }
        }
    }
    outcome.weights_after = allocate::buckets(&p_best, &vec![true; n], &pinned, p.floor_buckets);
    outcome.why = if pinned.iter().any(|p| *p) {
        Why::Guardrail
    } else {
        Why::Moved
    };
    outcome
}

/// Users each arm should have had by now, time-weighted: `previous` (what the last epoch
/// expected, when `previous_total` users had arrived) plus the users who arrived since, split
/// by the weights that were in force meanwhile.
pub fn expected_users(
    previous: &[f64],
    previous_total: u64,
    users: &[u64],
    weights: &[u32],
) -> Vec<f64> {
    let total: u64 = users.iter().sum();
    let (mut out, before) = if previous.len() == users.len() {
        (previous.to_vec(), previous_total)
    } else {
        (vec![0.0; users.len()], 0)
    };
    let new = total.saturating_sub(before) as f64;
    let sum: u32 = weights.iter().sum();
    for (e, w) in out.iter_mut().zip(weights) {
        if sum > 0 {
            *e += new * f64::from(*w) / f64::from(sum);
        }
    }
    out
}

/// The weights as a rule's bucket ranges: `(arm, end)` in arm order.
pub fn ranges(weights: &[u32]) -> Vec<(usize, u32)> {
    allocate::ranges(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            metric: "conversion".into(),
            model: Model::BetaBernoulli,
            higher_is_better: true,
            draws: 2000,
            floor_buckets: 500,
            min_users_per_arm: 100,
            alpha: 0.05,
            relative_effect: 0.1,
            srm_threshold: 0.001,
            guardrails: vec![],
            stop: None,
        }
    }

    fn arm(v: &str, users: u64, conv: u64) -> ArmInput {
        ArmInput {
            variation: v.into(),
            users,
            n: users,
            sum: conv as f64,
            sum_sq: conv as f64,
            guardrails: vec![],
        }
    }

    fn input(arms: Vec<ArmInput>) -> Input {
        let k = arms.len();
        Input {
            flag: "f".into(),
            epoch: 1,
            seed: super::super::rng::seed("f", 1).to_string(),
            control: 0,
            expected_users: arms.iter().map(|a| a.users as f64).collect(),
            weights_before: vec![TOTAL / k as u32; k],
            arms,
            params: params(),
        }
    }

    #[test]
    fn a_better_arm_gains_weight_and_the_result_is_reproducible() {
        let i = input(vec![arm("a", 2000, 200), arm("b", 2000, 300)]);
        let o = compute(&i);
        assert_eq!(o.why, Why::Moved);
        assert!(o.weights_after[1] > o.weights_after[0]);
        assert_eq!(o.weights_after.iter().sum::<u32>(), TOTAL);
        assert!(o.weights_after[0] >= 500);
        assert_eq!(compute(&i), o);
    }

    #[test]
    fn too_few_users_holds_the_weights() {
        let mut i = input(vec![arm("a", 2000, 200), arm("b", 50, 30)]);
        i.weights_before = vec![6000, 4000];
        let o = compute(&i);
        assert_eq!(o.why, Why::TooFewUsers);
        assert_eq!(o.weights_after, vec![6000, 4000]);
    }

    #[test]
    fn srm_sends_everyone_to_the_control() {
        let mut i = input(vec![arm("a", 5000, 500), arm("b", 3000, 300)]);
        i.expected_users = vec![4000.0, 4000.0];
        let o = compute(&i);
        assert_eq!(o.why, Why::Srm);
        assert_eq!(o.weights_after, vec![TOTAL, 0]);
    }
}

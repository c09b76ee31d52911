//! Experiment results of one flag: per variation and metric against the control, with
//! always-valid p-values and intervals, Benjamini–Hochberg across every comparison, a minimum
//! sample before any verdict, and a sample-ratio-mismatch check. Pure: the figures come in,
//! the JSON the admin API serves comes out.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::catalog::{Catalog, MetricDef, PerUser};
use super::stats::{benjamini_hochberg, mixture_tau2, msprt, srm, Arm};

/// Sums of one metric over one variation's users (each user's events combined first).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricSums {
    /// Users with at least one event.
    pub reporters: u64,
    /// Sum of the users' values.
    pub sum: f64,
    /// Sum of the squares of the users' values.
    pub sum_sq: f64,
    /// Events (before per-user combination).
    pub events: u64,
}

/// What one variation showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariationData {
    /// Users first exposed to this variation (in the experiment's rule).
    pub users: u64,
    /// The configured share of the experiment's traffic (for the SRM check).
    pub expected_share: f64,
    /// Per metric.
    pub metrics: BTreeMap<String, MetricSums>,
}

/// Thresholds of the verdicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Significance level, also the false discovery rate of Benjamini–Hochberg.
    pub alpha: f64,
    /// Users each side needs before any verdict.
    pub min_users: u64,
    /// Events (conversions for binary metrics, reporting users otherwise) each side needs.
    pub min_events: u64,
    /// The effect scale the mixture prior is tuned to, relative to the control's mean.
    pub relative_effect: f64,
    /// SRM p-value below which the split is flagged.
    pub srm_threshold: f64,
    /// `retain_exposures`: how long the exposures and events of a finished experiment (a
    /// flag no longer in the config) are kept after its last activity; `None` keeps them.
    pub retain_exposures: Option<std::time::Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            alpha: 0.05,
            min_users: 100,
            min_events: 25,
            relative_effect: 0.1,
            srm_threshold: 0.001,
            retain_exposures: None,
        }
    }
}

/// A variation's arm on a metric: non-reporters count as 0 for `Max`/`Sum` metrics.
pub fn arm(def: &MetricDef, users: u64, s: &MetricSums) -> Arm {
    let n = match def.per_user {
        PerUser::Max | PerUser::Sum => users.max(s.reporters),
        PerUser::Mean => s.reporters,
    };
    Arm::from_sums(n, s.sum, s.sum_sq)
}

fn events(def: &MetricDef, s: &MetricSums) -> u64 {
    if def.binary && def.per_user == PerUser::Max {
        s.sum.round() as u64
    } else {
        s.reporters
    }
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// Computes the results. `variations` is keyed by variation; `control` names one of them.
/// `metric` restricts to one metric. `left_out` counts users whose variation changed after
/// their first exposure (their later feedback is not counted).
pub fn compute(
    flag: &str,
    control: &str,
    variations: &BTreeMap<String, VariationData>,
    catalog: &Catalog,
    metric: Option<&str>,
    left_out: u64,
    policy: &Policy,
) -> Value {
    let names: Vec<&String> = variations.keys().collect();
    let observed: Vec<u64> = names.iter().map(|n| variations[*n].users).collect();
    let shares: Vec<f64> = names
        .iter()
        .map(|n| variations[*n].expected_share)
        .collect();
    let (chi2, srm_p) = srm(&observed, &shares);
    let srm_detected = srm_p < policy.srm_threshold;
    let empty = VariationData::default();
    let ctrl = variations.get(control).unwrap_or(&empty);

    let metrics: Vec<&MetricDef> = catalog
        .0
        .values()
        .filter(|d| metric.is_none_or(|m| m == d.name))
        .filter(|d| {
            metric.is_some() || variations.values().any(|v| v.metrics.contains_key(&d.name))
        })
        .collect();

    struct Row {
        variation: String,
        metric: String,
        users: u64,
        value: Option<f64>,
        control_value: Option<f64>,
        diff: f64,
        ci: (f64, f64),
        p: f64,
        enough: bool,
        higher_is_better: bool,
    }
    let mut rows = Vec::new();
    for def in &metrics {
        let cs = ctrl.metrics.get(&def.name).copied().unwrap_or_default();
        let c = arm(def, ctrl.users, &cs);
        for (name, data) in variations.iter().filter(|(n, _)| n.as_str() != control) {
            let ts = data.metrics.get(&def.name).copied().unwrap_or_default();
            let t = arm(def, data.users, &ts);
            // The prior's scale from both arms: a control that is constant (say, no
            // hallucination at all) must not collapse it and hide a large regression.
            let tau2 = mixture_tau2(&Arm::pooled(&[c, t]), policy.relative_effect);
            let r = msprt(&c, &t, tau2, policy.alpha);
            let enough = ctrl.users >= policy.min_users
                && data.users >= policy.min_users
                && events(def, &cs) >= policy.min_events
                && events(def, &ts) >= policy.min_events;
            rows.push(Row {
                variation: name.clone(),
                metric: def.name.clone(),
                users: data.users,
                value: (t.n > 0).then_some(t.mean),
                control_value: (c.n > 0).then_some(c.mean),
                diff: r.diff,
                ci: (r.ci_low, r.ci_high),
                p: r.p_value,
                enough,
                higher_is_better: def.higher_is_better,
            });
        }
    }
    let adjusted = benjamini_hochberg(&rows.iter().map(|r| r.p).collect::<Vec<_>>());
    let out: Vec<Value> = rows
        .iter()
        .zip(&adjusted)
        .map(|(r, adj)| {
            let significant = r.enough && *adj <= policy.alpha;
            let good = if r.higher_is_better {
                r.diff > 0.0
            } else {
                r.diff < 0.0
            };
            let verdict = if !r.enough {
                "too_early"
            } else if significant && good {
                "winner"
            } else if significant {
                "loser"
            } else {
                "inconclusive"
            };
            json!({
                "variation": r.variation,
                "metric": r.metric,
                "users": r.users,
                "value": r.value.map_or(Value::Null, finite),
                "control_value": r.control_value.map_or(Value::Null, finite),
                "lift": finite(r.diff),
                "relative_lift": match (r.value, r.control_value) {
                    (Some(_), Some(c)) if c != 0.0 => finite(r.diff / c),
                    _ => Value::Null,
                },
                "ci_low": finite(r.ci.0),
                "ci_high": finite(r.ci.1),
                "p_value": finite(r.p),
                "adjusted_p_value": finite(*adj),
                "significant": significant,
                "verdict": verdict,
            })
        })
        .collect();
    let users: BTreeMap<&String, u64> = variations.iter().map(|(k, v)| (k, v.users)).collect();
    let mut warnings = Vec::new();
    if srm_detected {
        warnings.push(format!(
            "sample ratio mismatch: users per variation {observed:?} do not fit the allocation (χ² = {chi2:.2}, p = {srm_p:.2e}); the results are not trustworthy"
        ));
    }
    if left_out > 0 {
        warnings.push(format!("{left_out} user(s) changed variation after their first exposure; their later feedback is left out"));
    }
    json!({
        "flag": flag,
        "control": control,
        "alpha": policy.alpha,
        "method": "mSPRT (normal mixture), always-valid p-values and intervals; Benjamini-Hochberg across metrics and variations",
        "min_sample": {"users": policy.min_users, "events": policy.min_events},
        "srm": {"chi2": finite(chi2), "p_value": finite(srm_p), "detected": srm_detected, "observed": users},
        "trustworthy": !srm_detected,
        "left_out_users": left_out,
        "warnings": warnings,
        "variations": out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(users: u64, conversions: u64, share: f64) -> VariationData {
        let mut metrics = BTreeMap::new();
        let c = conversions as f64;
        metrics.insert(
            "conversion".to_owned(),
            MetricSums {
                reporters: conversions,
                sum: c,
                sum_sq: c,
                events: conversions,
            },
        );
        VariationData {
            users,
            expected_share: share,
            metrics,
        }
    }

    fn run(control: VariationData, treatment: VariationData) -> Value {
        let mut v = BTreeMap::new();
        v.insert("control".to_owned(), control);
        v.insert("treatment".to_owned(), treatment);
        compute(
            "f",
            "control",
            &v,
            &Catalog::default(),
            None,
            0,
            &Policy::default(),
        )
    }

    #[test]
    fn a_clear_winner_is_declared() {
        let r = run(binary(10_000, 1000, 0.5), binary(10_000, 1300, 0.5));
        let row = &r["variations"][0];
        assert_eq!(row["metric"], "conversion");
        assert_eq!(row["verdict"], "winner", "{r}");
        assert_eq!(r["srm"]["detected"], false);
    }

    #[test]
    fn too_few_users_or_conversions_is_too_early() {
        let r = run(binary(50, 5, 0.5), binary(50, 40, 0.5));
        assert_eq!(r["variations"][0]["verdict"], "too_early");
        let r = run(binary(1000, 10, 0.5), binary(1000, 30, 0.5));
        assert_eq!(r["variations"][0]["verdict"], "too_early");
    }

    #[test]
    fn a_worse_variation_is_a_loser_and_lower_is_better_for_hallucination() {
        let r = run(binary(10_000, 1300, 0.5), binary(10_000, 1000, 0.5));
        assert_eq!(r["variations"][0]["verdict"], "loser");
        let mut c = VariationData {
            users: 2000,
            expected_share: 0.5,
            ..Default::default()
        };
        let mut t = c.clone();
        c.metrics.insert(
            "hallucination".into(),
            MetricSums {
                reporters: 2000,
                sum: 400.0,
                sum_sq: 400.0,
                events: 2000,
            },
        );
        t.metrics.insert(
            "hallucination".into(),
            MetricSums {
                reporters: 2000,
                sum: 200.0,
                sum_sq: 200.0,
                events: 2000,
            },
        );
        let r = run(c, t);
        assert_eq!(r["variations"][0]["verdict"], "winner", "{r}");
    }

    #[test]
    fn srm_marks_the_results_untrustworthy() {
        let r = run(binary(10_000, 1000, 0.5), binary(6_667, 700, 0.5));
        assert_eq!(r["srm"]["detected"], true);
        assert_eq!(r["trustworthy"], false);
    }
}

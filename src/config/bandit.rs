//! `[flags.F.bandit]`: the guarded bandit on the flag's experiment rule.

use serde::Deserialize;

use super::*;
use crate::bandit::epoch::{GuardKind, Guardrail, Model, Stop, Then, Tolerance};
use crate::bandit::BanditConfig;

/// `[flags.F.bandit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBandit {
    pub metric: String,
    #[serde(default)]
    pub guardrails: BTreeMap<String, String>,
    pub cadence: Option<String>,
    pub min_users_per_arm: Option<i64>,
    pub floor: Option<f64>,
    pub stop: Option<RawStop>,
    #[serde(default)]
    pub webhooks: Vec<String>,
}

/// `stop = { p_best, then }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStop {
    pub p_best: f64,
    pub then: Option<String>,
}

/// Parses `"+0.02"` or `"x1.2"`.
fn tolerance(s: &str) -> Result<Tolerance, String> {
    let s = s.trim();
    let bad = || {
        format!("{s:?}: write \"+D\" (worse than the control by at most D) or \"xK\" (at most K times the control's value, K ≥ 1)")
    };
    if let Some(d) = s.strip_prefix('+') {
        let d: f64 = d.trim().parse().map_err(|_| bad())?;
        return (d.is_finite() && d >= 0.0)
            .then_some(Tolerance::Plus(d))
            .ok_or_else(bad);
    }
    if let Some(k) = s.strip_prefix(['x', 'X', '×']) {
        let k: f64 = k.trim().parse().map_err(|_| bad())?;
        return (k.is_finite() && k >= 1.0)
            .then_some(Tolerance::Times(k))
            .ok_or_else(bad);
    }
    Err(bad())
}

impl Validator<'_> {
    /// Every flag's bandit, by flag key (after the flags and the metric catalog).
    pub(super) fn bandits(
        &mut self,
        raw: &RawConfig,
        flags: &[Arc<Flag>],
        catalog: &crate::experiments::catalog::Catalog,
    ) -> BTreeMap<String, Arc<BanditConfig>> {
        let mut out = BTreeMap::new();
        for flag in flags {
            let Some(b) = raw.flags.get(&flag.key).and_then(|f| f.bandit.as_ref()) else {
                continue;
            };
            let path = KeyPath::root().key("flags").key(&flag.key).key("bandit");
            if let Some(c) = self.bandit(&path, flag, b, catalog) {
                out.insert(flag.key.clone(), Arc::new(c));
            }
        }
        out
    }

    fn bandit(
        &mut self,
        path: &KeyPath,
        flag: &Flag,
        b: &RawBandit,
        catalog: &crate::experiments::catalog::Catalog,
    ) -> Option<BanditConfig> {
        let before = self.errors.len();
        let Some(rule) = flag.experiment_rule else {
            self.err(path, "a bandit needs the flag's experiment rule: a rule without an audience splitting traffic between variations (or `experiment_rule`)");
            return None;
        };
        let r = &flag.rules[rule];
        let mut arms: Vec<usize> = Vec::new();
        let mut covered = 0;
        for range in &r.allocation {
            match range.variation {
                Some(v) if !arms.contains(&v) => arms.push(v),
                Some(_) => {}
                None => covered = u32::MAX,
            }
            if covered != u32::MAX {
                covered = range.end;
            }
        }
        if r.rollout.is_some() || covered != BUCKETS || arms.len() < 2 {
            self.err(path, format!("the bandit's rule {:?} must allocate all 10000 buckets to at least two variations (no rollout, no unallocated range)", r.id));
        }
        if !arms.contains(&flag.stable_variation) {
            self.err(
                path,
                format!(
                    "the control (stable_variation {:?}) must be one of the rule's variations",
                    flag.variations[flag.stable_variation].key
                ),
            );
        }
        let (model, higher_is_better) = match catalog.get(&b.metric) {
            Some(d) if d.binary => (Model::BetaBernoulli, d.higher_is_better),
            Some(d) => (Model::Gaussian, d.higher_is_better),
            None => {
                self.err(
                    &path.key("metric"),
                    format!("unknown metric {:?}{}", b.metric, known(catalog.0.keys())),
                );
                (Model::BetaBernoulli, true)
            }
        };
        let mut guardrails = Vec::new();
        for (metric, t) in &b.guardrails {
            let gp = path.key("guardrails").key(metric);
            let tolerance = match tolerance(t) {
                Ok(t) => t,
                Err(m) => {
                    self.err(&gp, m);
                    continue;
                }
            };
            let (kind, lower_is_better) = match metric.as_str() {
                "error_rate" | "fallback_rate" => (GuardKind::Mean, true),
                "p50_latency_seconds" | "p95_latency_seconds" | "p99_latency_seconds" => {
                    (GuardKind::Quantile, true)
                }
                m => match catalog.get(m) {
                    Some(d) => (GuardKind::Mean, !d.higher_is_better),
                    None => {
                        self.err(&gp, format!("unknown guardrail metric {m:?}: error_rate, fallback_rate, p50/p95/p99_latency_seconds or a feedback metric"));
                        continue;
                    }
                },
            };
            guardrails.push(Guardrail {
                metric: metric.clone(),
                kind,
                tolerance,
                lower_is_better,
            });
        }
        let cadence = self.positive_duration(
            &path.key("cadence"),
            b.cadence.as_deref(),
            Duration::from_secs(15 * 60),
        );
        let min_users_per_arm = self.count(
            &path.key("min_users_per_arm"),
            b.min_users_per_arm,
            100,
            1..=1_000_000_000,
        );
        let floor = b.floor.unwrap_or(0.05);
        let most = 1.0 / arms.len().max(1) as f64;
        if !(floor.is_finite() && (0.0..=most).contains(&floor)) {
            self.err(
                &path.key("floor"),
                format!("{floor} is out of range (0 ..= {most:.4}: 1 / the number of arms)"),
            );
        }
        let stop = match &b.stop {
            None => None,
            Some(s) => {
                let sp = path.key("stop");
                if !(s.p_best > 0.5 && s.p_best < 1.0) {
                    self.err(
                        &sp.key("p_best"),
                        format!("{} is out of range (0.5 < p_best < 1)", s.p_best),
                    );
                }
                let then = match s.then.as_deref() {
                    None | Some("hold") => Then::Hold,
                    Some("promote") => Then::Promote,
                    Some(other) => {
                        self.err(
                            &sp.key("then"),
                            format!("{other:?} is not one of \"hold\", \"promote\""),
                        );
                        Then::Hold
                    }
                };
                Some(Stop {
                    p_best: s.p_best,
                    then,
                })
            }
        };
        let webhooks = self.webhooks(&path.key("webhooks"), &b.webhooks);
        if self.errors.len() > before {
            return None;
        }
        Some(BanditConfig {
            rule,
            metric: b.metric.clone(),
            model,
            higher_is_better,
            guardrails,
            cadence,
            min_users_per_arm,
            floor,
            stop,
            webhooks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_parse() {
        assert_eq!(tolerance("+0.02"), Ok(Tolerance::Plus(0.02)));
        assert_eq!(tolerance("x1.2"), Ok(Tolerance::Times(1.2)));
        assert!(tolerance("0.02").is_err());
        assert!(tolerance("x0.5").is_err());
        assert!(tolerance("+-1").is_err());
    }
}

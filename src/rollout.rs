//! Progressive rollouts: whether a stage's gate holds (pure), and what the proxy does about it
//! (advance, refuse with reasons, roll back on its own).

use std::time::Duration;

use crate::flags::Gate;

/// What the rolled-out variation showed during the current stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageFigures {
    /// Requests answered or failed.
    pub requests: u64,
    /// Requests that ended in an error.
    pub errors: u64,
    /// Requests answered by a fallback.
    pub fallbacks: u64,
    /// p95 latency of the rolled-out variation (seconds), when measured.
    pub p95_seconds: Option<f64>,
    /// p95 latency of the stable variation (seconds), when measured.
    pub stable_p95_seconds: Option<f64>,
    /// How long the stage has run.
    pub held_for: Duration,
}

impl StageFigures {
    /// Errors per request.
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.requests)
    }

    /// Fallbacks per request.
    pub fn fallback_rate(&self) -> f64 {
        ratio(self.fallbacks, self.requests)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The gate's verdict on a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether the stage may advance.
    pub pass: bool,
    /// Why not (empty when it passes).
    pub reasons: Vec<String>,
    /// Why the rollout must roll back now (empty when it need not).
    pub rollback: Vec<String>,
}

/// Evaluates `gate` on `f`.
pub fn evaluate(gate: &Gate, f: &StageFigures) -> Verdict {
    let mut reasons = Vec::new();
    if f.requests < gate.min_requests {
        reasons.push(format!(
            "{} requests in this stage, the gate needs {}",
            f.requests, gate.min_requests
        ));
    }
    if f.held_for < gate.hold {
        reasons.push(format!(
            "the stage has run {}s, the gate holds it {}s",
            f.held_for.as_secs(),
            gate.hold.as_secs()
        ));
    }
    if let Some(max) = gate.max_error_rate {
        if f.error_rate() > max {
            reasons.push(format!("error rate {:.4} is above {max}", f.error_rate()));
        }
    }
    if let Some(max) = gate.max_fallback_rate {
        if f.fallback_rate() > max {
            reasons.push(format!(
                "fallback rate {:.4} is above {max}",
                f.fallback_rate()
            ));
        }
    }
    if let Some(max) = gate.max_p95_seconds {
        match f.p95_seconds {
            Some(p) if p > max => reasons.push(format!("p95 latency {p:.3}s is above {max}s")),
            None => reasons.push("no p95 latency measured yet".into()),
            _ => {}
        }
    }
    if let Some(max) = gate.max_p95_ratio {
        match (f.p95_seconds, f.stable_p95_seconds) {
            (Some(p), Some(s)) if s > 0.0 && p / s > max => reasons.push(format!(
                "p95 latency is {:.2}× the stable variation's, above {max}×",
                p / s
            )),
            (Some(_), Some(_)) => {}
            _ => {
                reasons.push("p95 latency of this or the stable variation not measured yet".into())
            }
        }
    }
    let mut rollback = Vec::new();
    if f.requests >= gate.rollback_min_requests {
        if let Some(max) = gate.rollback_error_rate {
            if f.error_rate() >= max {
                rollback.push(format!(
                    "error rate {:.4} reached the rollback threshold {max}",
                    f.error_rate()
                ));
            }
        }
        if let Some(max) = gate.rollback_fallback_rate {
            if f.fallback_rate() >= max {
                rollback.push(format!(
                    "fallback rate {:.4} reached the rollback threshold {max}",
                    f.fallback_rate()
                ));
            }
        }
    }
    Verdict {
        pass: reasons.is_empty() && rollback.is_empty(),
        reasons,
        rollback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate {
            min_requests: 100,
            hold: Duration::from_secs(60),
            max_error_rate: Some(0.02),
            max_fallback_rate: Some(0.05),
            max_p95_seconds: Some(2.0),
            max_p95_ratio: Some(1.5),
            rollback_error_rate: Some(0.2),
            rollback_fallback_rate: None,
            rollback_min_requests: 20,
            source: crate::config::FigureSource::Local,
            window: None,
        }
    }

    fn good() -> StageFigures {
        StageFigures {
            requests: 200,
            errors: 1,
            fallbacks: 2,
            p95_seconds: Some(1.0),
            stable_p95_seconds: Some(0.9),
            held_for: Duration::from_secs(120),
        }
    }

    #[test]
    fn a_healthy_stage_passes() {
        let v = evaluate(&gate(), &good());
        assert!(v.pass, "{v:?}");
    }

    #[test]
    fn each_threshold_gives_its_reason() {
        let cases: Vec<(StageFigures, &str)> = vec![
            (
                StageFigures {
                    requests: 10,
                    errors: 0,
                    fallbacks: 0,
                    ..good()
                },
                "requests in this stage",
            ),
            (
                StageFigures {
                    held_for: Duration::from_secs(5),
                    ..good()
                },
                "holds it 60s",
            ),
            (
                StageFigures {
                    errors: 10,
                    ..good()
                },
                "error rate",
            ),
            (
                StageFigures {
                    fallbacks: 20,
                    ..good()
                },
                "fallback rate",
            ),
            (
                StageFigures {
                    p95_seconds: Some(3.0),
                    stable_p95_seconds: Some(2.5),
                    ..good()
                },
                "p95 latency 3.000s",
            ),
            (
                StageFigures {
                    p95_seconds: Some(1.9),
                    stable_p95_seconds: Some(1.0),
                    ..good()
                },
                "× the stable",
            ),
        ];
        for (f, needle) in cases {
            let v = evaluate(&gate(), &f);
            assert!(!v.pass);
            assert!(
                v.reasons.iter().any(|r| r.contains(needle)),
                "{needle}: {:?}",
                v.reasons
            );
        }
    }

    #[test]
    fn rollback_needs_its_minimum_sample() {
        let few = StageFigures {
            requests: 10,
            errors: 5,
            ..good()
        };
        assert!(evaluate(&gate(), &few).rollback.is_empty());
        let many = StageFigures {
            requests: 40,
            errors: 10,
            ..good()
        };
        assert!(!evaluate(&gate(), &many).rollback.is_empty());
    }
}

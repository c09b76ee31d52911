//! The immutable record of an epoch, and replaying it: everything [`compute`] read is in the
//! record, so running it again must give the recorded outcome bit for bit.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::epoch::{compute, Input, Outcome};
use super::settings::Status;

/// One epoch as stored (JSON text in the state store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The flag.
    pub flag: String,
    /// The epoch number.
    pub epoch: u64,
    /// When it ran (RFC 3339 UTC, milliseconds).
    pub at: String,
    /// When it ran (unix ms).
    pub at_ms: u64,
    /// `thompson_beta_bernoulli` or `thompson_gaussian`.
    pub algorithm: String,
    /// Where the bandit stood before.
    pub status_before: Status,
    /// Where it stands after.
    pub status_after: Status,
    /// The inputs: figures per arm, parameters, seed, weights before, expected users.
    pub input: Input,
    /// The outcome: P(best), weights after, why.
    pub outcome: Outcome,
}

impl EpochRecord {
    /// The record as the admin API serves it: the stored fields plus per-variation views
    /// that read easily (`p_best`, `weights_before`, `weights_after` by variation).
    pub fn to_json(&self) -> Value {
        let names: Vec<&str> = self
            .input
            .arms
            .iter()
            .map(|a| a.variation.as_str())
            .collect();
        let by = |xs: &dyn Fn(usize) -> Value| -> Value {
            Value::Object(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ((*n).to_owned(), xs(i)))
                    .collect(),
            )
        };
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("why".into(), json!(self.outcome.why.as_str()));
            obj.insert("p_best".into(), by(&|i| json!(self.outcome.p_best.get(i))));
            obj.insert(
                "weights_before".into(),
                by(&|i| json!(self.input.weights_before.get(i))),
            );
            obj.insert(
                "weights_after".into(),
                by(&|i| json!(self.outcome.weights_after.get(i))),
            );
        }
        v
    }
}

/// The result of replaying a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The outcome computed again from the record's inputs.
    pub recomputed: Outcome,
    /// Whether the recorded seed is the one derived from the flag and epoch.
    pub seed_matches: bool,
    /// Whether every field of the outcome matches, floats compared bit for bit.
    pub matches: bool,
    /// The fields that differ.
    pub differences: Vec<String>,
}

fn same_floats(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Recomputes `record`'s epoch and compares.
pub fn replay(record: &EpochRecord) -> Replay {
    let recomputed = compute(&record.input);
    let o = &record.outcome;
    let mut differences = Vec::new();
    if recomputed.wins != o.wins {
        differences.push("wins".to_owned());
    }
    if !same_floats(&recomputed.p_best, &o.p_best) {
        differences.push("p_best".to_owned());
    }
    if recomputed.weights_after != o.weights_after {
        differences.push("weights_after".to_owned());
    }
    if recomputed.why != o.why {
        differences.push("why".to_owned());
    }
    if recomputed.broken != o.broken {
        differences.push("broken".to_owned());
    }
    if recomputed.srm_p_value.to_bits() != o.srm_p_value.to_bits()
        && !(recomputed.srm_p_value.is_nan() && o.srm_p_value.is_nan())
    {
        differences.push("srm_p_value".to_owned());
    }
    if recomputed.winner != o.winner {
        differences.push("winner".to_owned());
    }
    if recomputed.reasons != o.reasons {
        differences.push("reasons".to_owned());
    }
    let seed_matches =
        record.input.seed == super::rng::seed(&record.flag, record.epoch).to_string();
    if !seed_matches {
        differences.push("seed".to_owned());
    }
    Replay {
        matches: differences.is_empty(),
        recomputed,
        seed_matches,
        differences,
    }
}

/// The replay as JSON: `{"flag", "epoch", "matches", "seed_matches", "differences",
/// "recorded": {...}, "recomputed": {...}}` with P(best) and weights side by side.
pub fn replay_json(record: &EpochRecord, r: &Replay) -> Value {
    let side = |o: &Outcome| {
        json!({
            "wins": o.wins,
            "p_best": o.p_best,
            "p_best_bits": o.p_best.iter().map(|p| format!("{:016x}", p.to_bits())).collect::<Vec<_>>(),
            "weights_after": o.weights_after,
            "why": o.why.as_str(),
            "srm_p_value": o.srm_p_value,
        })
    };
    json!({
        "flag": record.flag,
        "epoch": record.epoch,
        "variations": record.input.arms.iter().map(|a| a.variation.clone()).collect::<Vec<_>>(),
        "seed": record.input.seed,
        "matches": r.matches,
        "seed_matches": r.seed_matches,
        "differences": r.differences,
        "recorded": side(&record.outcome),
        "recomputed": side(&r.recomputed),
    })
}

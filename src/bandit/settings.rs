//! What configures a bandit (`[flags.F.bandit]`, validated) and what the runtime state holds
//! for it (weights in force, status, operators' setting overrides).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::epoch::{Guardrail, Model, Params, Stop};

/// Monte Carlo draws per epoch for P(best).
pub const DRAWS: u32 = 10_000;

/// A flag's bandit, validated from `[flags.F.bandit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BanditConfig {
    /// The rule whose allocation the bandit replaces (the flag's experiment rule).
    pub rule: usize,
    /// The primary metric.
    pub metric: String,
    /// Beta–Bernoulli for binary metrics, Gaussian for numeric ones.
    pub model: Model,
    /// Whether a higher value of the metric is better.
    pub higher_is_better: bool,
    /// Guardrails against the control.
    pub guardrails: Vec<Guardrail>,
    /// Time between epochs.
    pub cadence: Duration,
    /// Users each arm needs before anything moves.
    pub min_users_per_arm: u64,
    /// The least share of traffic each live arm keeps (0 ≤ floor ≤ 1 / arms).
    pub floor: f64,
    /// The stop rule.
    pub stop: Option<Stop>,
    /// Where a rollback (critical) and a stop (info) are posted, as alert notifications.
    pub webhooks: Vec<http::Uri>,
}

/// Where the bandit stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Epochs run at the cadence.
    #[default]
    Running,
    /// The stop rule froze the weights (`then = "hold"`).
    Stopped,
    /// The stop rule sent everyone to the winner (`then = "promote"`).
    Promoted,
    /// A sample-ratio mismatch sent everyone back to the control.
    RolledBack,
}

impl Status {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Promoted => "promoted",
            Status::RolledBack => "rolled_back",
        }
    }
}

/// Operators' overrides of a bandit's settings (absent: the config's value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SettingsOverride {
    /// No epochs while true (the weights in force stay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// The floor in basis points of traffic (500 = 5 %).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_bps: Option<u32>,
    /// The cadence in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cadence_ms: Option<u64>,
    /// Users each arm needs before anything moves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_users_per_arm: Option<u64>,
}

/// A flag's bandit in the runtime state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BanditOverride {
    /// The last epoch applied (0: none yet).
    pub epoch: u64,
    /// Buckets per variation in force (empty: the rule's configured allocation).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
    /// Where the bandit stands.
    pub status: Status,
    /// When (unix ms) the weights took effect.
    #[serde(skip_serializing_if = "is_zero")]
    pub since_ms: u64,
    /// Operators' setting overrides.
    #[serde(skip_serializing_if = "is_default")]
    pub settings: SettingsOverride,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_default(s: &SettingsOverride) -> bool {
    *s == SettingsOverride::default()
}

/// The settings in force: the config's, under the operators' overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// No epochs while true.
    pub paused: bool,
    /// Floor as a fraction of traffic.
    pub floor: f64,
    /// Time between epochs.
    pub cadence: Duration,
    /// Users each arm needs.
    pub min_users_per_arm: u64,
}

impl BanditConfig {
    /// The settings in force under `o`.
    pub fn effective(&self, o: Option<&BanditOverride>) -> Effective {
        let s = o.map(|o| o.settings.clone()).unwrap_or_default();
        Effective {
            paused: s.paused.unwrap_or(false),
            floor: s.floor_bps.map_or(self.floor, |b| f64::from(b) / 10_000.0),
            cadence: s.cadence_ms.map_or(self.cadence, Duration::from_millis),
            min_users_per_arm: s.min_users_per_arm.unwrap_or(self.min_users_per_arm),
        }
    }

    /// The parameters of an epoch under the settings in force.
    pub fn params(&self, e: &Effective, policy: &crate::experiments::results::Policy) -> Params {
        Params {
            metric: self.metric.clone(),
            model: self.model,
            higher_is_better: self.higher_is_better,
            draws: DRAWS,
            floor_buckets: (e.floor * 10_000.0).round() as u32,
            min_users_per_arm: e.min_users_per_arm,
            alpha: policy.alpha,
            relative_effect: policy.relative_effect,
            srm_threshold: policy.srm_threshold,
            guardrails: self.guardrails.clone(),
            stop: self.stop,
        }
    }
}

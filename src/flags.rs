//! Flags, variations, rules and the decision: which variation one bucketing id gets.
//!
//! Everything here is pure: a [`Decision`] is reproducible from the flag, whether it is
//! enabled, the bucketing id and the attributes. The hashing lives in [`bucket`], the audience
//! conditions in [`audience`].

pub mod audience;
pub mod bucket;

use std::sync::Arc;

use audience::{Attributes, Condition};

use crate::fallback::Responder;
use crate::providers::{Provider, Timeouts};

/// A flag: what a client names in `model`.
#[derive(Debug)]
pub struct Flag {
    /// The key clients send as `model`.
    pub key: String,
    /// Free text for operators.
    pub description: Option<String>,
    /// The kill switch as configured (runtime state may override it).
    pub enabled: bool,
    /// Index of the variation served to everyone while the flag is off, and to users no
    /// rule buckets.
    pub off_variation: usize,
    /// Index of the variation that `fallback_behavior = "stable"` retries on, and the control
    /// of experiment results.
    pub stable_variation: usize,
    /// How a variation's system prompt meets the client's system message.
    pub system_prompt_mode: PromptMode,
    /// Operator-forced rule-based answers for the whole flag (as configured).
    pub force_fallback: bool,
    /// The rule-based responder of this flag.
    pub responder: Arc<Responder>,
    /// The variations, in key order.
    pub variations: Vec<Variation>,
    /// The rules, in order; the last one is "everyone else".
    pub rules: Vec<Rule>,
    /// The rule whose users experiment results compare, if any.
    pub experiment_rule: Option<usize>,
    /// An attribute whose string value, when present, is hashed instead of the bucketing id
    /// (Optimizely's `$opt_bucketing_id`, on flags from a datafile).
    pub bucketing_id_attribute: Option<String>,
}

/// How the variation's system prompt is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptMode {
    /// The client's system (and developer) messages are removed; ours goes first.
    Replace,
    /// Ours goes first; the client's system messages stay after it.
    Insert,
}

/// One AI configuration.
#[derive(Debug)]
pub struct Variation {
    /// The variation's key.
    pub key: String,
    /// Where requests for it go.
    pub provider: Arc<Provider>,
    /// The model the provider is asked for.
    pub model_id: String,
    /// The prompt library entry, by name and text.
    pub system_prompt: Option<(String, Arc<str>)>,
    /// Sampling temperature forced on the request.
    pub temperature: Option<f64>,
    /// Cap on `max_tokens` / `max_completion_tokens`.
    pub token_budget: Option<u32>,
    /// Which tools the request may keep.
    pub tool_policy: ToolPolicy,
    /// What happens when the provider fails.
    pub fallback_behavior: FallbackBehavior,
    /// For the app: which retrieval profile to use (read via `/v1/decide`).
    pub retrieval_profile: Option<String>,
    /// Every variable of the variation as one JSON object, as `/v1/decide` returns it.
    pub variables: serde_json::Value,
    /// Operator-forced rule-based answers for this variation (as configured).
    pub force_fallback: bool,
    /// The provider's timeouts with this variation's overrides.
    pub timeouts: Timeouts,
    /// The response cache's policy (`None`: answers are not cached).
    pub cache: Option<crate::cache::CachePolicy>,
}

/// A tool policy: which of the client's tools reach the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPolicy {
    /// Tools pass unchanged.
    All,
    /// `tools` and `tool_choice` are removed.
    None,
    /// Only these tool names are kept.
    Allow {
        /// The policy's name in `[tool_policies]`.
        name: String,
        /// Allowed function names.
        tools: Vec<String>,
    },
}

impl ToolPolicy {
    /// The policy's name as written in the config.
    pub fn name(&self) -> &str {
        match self {
            ToolPolicy::All => "all",
            ToolPolicy::None => "none",
            ToolPolicy::Allow { name, .. } => name,
        }
    }
}

/// What to do when the provider fails (acted on by the fallback phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackBehavior {
    /// Answer from the rule-based responder.
    RuleBased,
    /// Retry on the flag's stable variation.
    Stable,
    /// Retry on another variation (index into the flag's variations).
    Variation(usize),
    /// Pass a clear error through.
    Error,
}

impl FallbackBehavior {
    /// The behaviour as written in the config.
    pub fn label(&self, flag: &Flag) -> String {
        match self {
            FallbackBehavior::RuleBased => "rule-based".into(),
            FallbackBehavior::Stable => "stable".into(),
            FallbackBehavior::Variation(i) => format!(
                "variation:{}",
                flag.variations.get(*i).map_or("", |v| v.key.as_str())
            ),
            FallbackBehavior::Error => "error".into(),
        }
    }
}

/// A rule: an optional audience and a traffic allocation.
#[derive(Debug)]
pub struct Rule {
    /// Salts the hash (Optimizely's rule/experiment id).
    pub id: String,
    /// The audience by name and conditions; `None` matches everyone.
    pub audience: Option<(String, Arc<Condition>)>,
    /// Ranges of the 10,000 buckets, ordered by `end` (empty for a rollout rule).
    pub allocation: Vec<Range>,
    /// A progressive rollout of one variation, whose allocation is the current stage's.
    pub rollout: Option<Rollout>,
    /// Optimizely experiment semantics, on rules from a datafile.
    pub datafile: Option<Arc<DatafileRule>>,
}

/// What an Optimizely experiment adds to a rule: forced users, a mutual-exclusion group, and
/// trying the next rule (not "everyone else") when the user is not allocated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatafileRule {
    /// The rule's key in the datafile (for people; the id salts the hash).
    pub key: String,
    /// Users (by id, not bucketing id) forced into a variation, before the audience.
    pub forced: Vec<(String, usize)>,
    /// The mutual-exclusion group: its id salts a first hash, and the user is in this rule
    /// only when that bucket falls in one of the group's ranges that name this rule.
    pub group: Option<Group>,
    /// An experiment: a user the audience admits but the allocation leaves out tries the
    /// next rule (a delivery rule jumps to "everyone else" instead).
    pub experiment: bool,
}

/// A mutual-exclusion group as one experiment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group id (salts the group hash).
    pub id: String,
    /// The group's allocation: (exclusive end, whether the range is this experiment's).
    pub ranges: Vec<(u32, bool)>,
}

impl Group {
    /// Whether a user whose group bucket is `bucket` is in this experiment.
    pub fn admits(&self, bucket: u32) -> bool {
        self.ranges
            .iter()
            .find(|(end, _)| bucket < *end)
            .is_some_and(|(_, mine)| *mine)
    }
}

/// A progressive rollout: one variation through growing stages, each passed through a gate.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The variation rolled out.
    pub variation: usize,
    /// Each stage's share as a bucket end (percent × 100), ascending.
    pub stages: Vec<u32>,
    /// The stage used while no runtime state says otherwise.
    pub initial_stage: u32,
    /// Advance on its own when the gate holds.
    pub auto_advance: bool,
    /// What a stage must show.
    pub gate: Gate,
}

/// Thresholds a rollout stage must meet before it advances, and the ones that roll it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Requests the rolled-out variation must have served in this stage.
    pub min_requests: u64,
    /// How long the stage must have run.
    pub hold: std::time::Duration,
    /// Highest error rate allowed to advance.
    pub max_error_rate: Option<f64>,
    /// Highest fallback rate allowed to advance.
    pub max_fallback_rate: Option<f64>,
    /// Highest p95 latency (seconds) allowed to advance.
    pub max_p95_seconds: Option<f64>,
    /// Highest p95 relative to the stable variation's allowed to advance.
    pub max_p95_ratio: Option<f64>,
    /// An error rate at or above this rolls the rollout back on its own.
    pub rollback_error_rate: Option<f64>,
    /// A fallback rate at or above this rolls the rollout back on its own.
    pub rollback_fallback_rate: Option<f64>,
    /// Requests needed before a rollback threshold is trusted.
    pub rollback_min_requests: u64,
    /// Where the figures come from: this process's counters or the fleet's, from Prometheus.
    pub source: crate::config::FigureSource,
    /// With a Prometheus source: the figures cover at most this last part of the stage
    /// (`None`: the whole stage).
    pub window: Option<std::time::Duration>,
}

impl Rollout {
    /// The bucket end of `stage` (clamped to the last stage).
    pub fn end_at(&self, stage: u32) -> u32 {
        let i = (stage as usize).min(self.stages.len().saturating_sub(1));
        self.stages.get(i).copied().unwrap_or(0)
    }
}

/// One entry of an allocation: buckets below `end` (and at or above the previous entry's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The variation index, or `None` for traffic deliberately left unallocated.
    pub variation: Option<usize>,
    /// Exclusive end, 0..=10000.
    pub end: u32,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    /// The kill switch is off: everyone gets the off variation.
    FlagDisabled,
    /// The user matched the rule's audience and its bucket fell in the allocation.
    RuleMatch,
    /// The last rule ("everyone else") decided, after no earlier rule held the user.
    EveryoneElse,
    /// No rule bucketed the user: the off variation is served.
    NotBucketed,
}

impl DecisionReason {
    /// A stable code for JSON and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionReason::FlagDisabled => "flag_disabled",
            DecisionReason::RuleMatch => "rule_match",
            DecisionReason::EveryoneElse => "everyone_else",
            DecisionReason::NotBucketed => "not_bucketed",
        }
    }
}

/// Which variation one bucketing id gets, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into the flag's variations.
    pub variation: usize,
    /// Index into the flag's rules, when a rule decided.
    pub rule: Option<usize>,
    /// The user's bucket (0..10000) in the rule that decided.
    pub bucket: Option<u32>,
    /// Why.
    pub reason: DecisionReason,
}

impl Flag {
    /// Decides the variation for `bucketing_id`.
    ///
    /// Rules are tried in order. A rule whose audience does not match is skipped. A user who
    /// matches but whose bucket runs off the allocation (or lands on an unallocated range)
    /// goes straight to the last rule, as Optimizely's delivery rules do. `enabled` is the
    /// effective kill switch (config plus runtime state).
    pub fn decide(&self, enabled: bool, bucketing_id: &str, attributes: &Attributes) -> Decision {
        self.decide_at(enabled, None, bucketing_id, attributes)
    }

    /// Decides with the rollout stage of each rule (`stages[i]` for rule `i`; `None` uses
    /// each rollout's initial stage).
    pub fn decide_at(
        &self,
        enabled: bool,
        stages: Option<&[u32]>,
        bucketing_id: &str,
        attributes: &Attributes,
    ) -> Decision {
        if !enabled {
            return Decision {
                variation: self.off_variation,
                rule: None,
                bucket: None,
                reason: DecisionReason::FlagDisabled,
            };
        }
        let last = self.rules.len().saturating_sub(1);
        let hashed = self
            .bucketing_id_attribute
            .as_deref()
            .and_then(|a| match attributes.get(a) {
                Some(audience::AttrValue::String(s)) => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or(bucketing_id);
        let mut index = 0;
        while index < self.rules.len() {
            let rule = &self.rules[index];
            let extra = rule.datafile.as_deref();
            if let Some(&(_, variation)) =
                extra.and_then(|d| d.forced.iter().find(|(user, _)| user == bucketing_id))
            {
                return Decision {
                    variation,
                    rule: Some(index),
                    bucket: None,
                    reason: DecisionReason::RuleMatch,
                };
            }
            let audience_ok = match &rule.audience {
                None => true,
                Some((_, condition)) => condition.matches(attributes),
            };
            if audience_ok {
                let in_group = match extra.and_then(|d| d.group.as_ref()) {
                    None => true,
                    Some(g) => g.admits(bucket::bucket(hashed, &g.id)),
                };
                let b = bucket::bucket(hashed, &rule.id);
                let stage = stages.and_then(|s| s.get(index).copied());
                if let Some(variation) = rule.variation_at(b, stage).filter(|_| in_group) {
                    let experiment = extra.is_some_and(|d| d.experiment);
                    let reason = if index == last && !experiment {
                        DecisionReason::EveryoneElse
                    } else {
                        DecisionReason::RuleMatch
                    };
                    return Decision {
                        variation,
                        rule: Some(index),
                        bucket: Some(b),
                        reason,
                    };
                }
                if extra.is_some_and(|d| d.experiment) {
                    index += 1;
                    continue;
                }
                if index == last {
                    break;
                }
                index = last;
                continue;
            }
            index += 1;
        }
        Decision {
            variation: self.off_variation,
            rule: None,
            bucket: None,
            reason: DecisionReason::NotBucketed,
        }
    }

    /// Looks a variation up by key.
    pub fn variation_index(&self, key: &str) -> Option<usize> {
        self.variations.iter().position(|v| v.key == key)
    }
}

impl Rule {
    /// The variation whose range holds `bucket`, if any (rollouts at their initial stage).
    pub fn variation_for(&self, bucket: u32) -> Option<usize> {
        self.variation_at(bucket, None)
    }

    /// The variation whose range holds `bucket` with a rollout at `stage`.
    pub fn variation_at(&self, bucket: u32, stage: Option<u32>) -> Option<usize> {
        if let Some(r) = &self.rollout {
            let end = r.end_at(stage.unwrap_or(r.initial_stage));
            return (bucket < end).then_some(r.variation);
        }
        self.allocation
            .iter()
            .find(|r| bucket < r.end)
            .and_then(|r| r.variation)
    }
}

//! The effective state of each flag: the config overlaid with the runtime overrides operators
//! set through the admin API (kill switch, forced fallback, rollout stage). Precedence: a
//! runtime override, when present, wins over `proxy.toml`; clearing it returns to the file.
//! A reload of `proxy.toml` keeps the overrides (they are keyed by flag, variation and rule
//! names; overrides naming things the new file no longer has are ignored).

use crate::flags::Flag;
use crate::state::{FlagOverrides, RuntimeState};

/// One flag's effective runtime view, indexed like the flag's variations and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagRuntime {
    /// The effective kill switch.
    pub enabled: bool,
    /// Whether `enabled` comes from a runtime override.
    pub enabled_overridden: bool,
    /// Rule-based answers forced for the whole flag.
    pub force_fallback: bool,
    /// Rule-based answers forced per variation.
    pub forced_variations: Vec<bool>,
    /// Each rule's rollout stage (0 for rules that are no rollout).
    pub stages: Vec<u32>,
    /// Each rule's rollout hold (frozen by an operator or an alert).
    pub held: Vec<bool>,
    /// Each rule's current stage start (unix ms), when known.
    pub stage_started_at_ms: Vec<Option<u64>>,
}

impl FlagRuntime {
    /// The view of `flag` under `overrides`.
    pub fn new(flag: &Flag, overrides: Option<&FlagOverrides>) -> FlagRuntime {
        let o = overrides.cloned().unwrap_or_default();
        let stages = flag
            .rules
            .iter()
            .map(|r| match &r.rollout {
                Some(ro) => o
                    .rollout_stage
                    .get(&r.id)
                    .copied()
                    .map_or(ro.initial_stage, |s| {
                        s.min(ro.stages.len().saturating_sub(1) as u32)
                    }),
                None => 0,
            })
            .collect();
        FlagRuntime {
            enabled: o.enabled.unwrap_or(flag.enabled),
            enabled_overridden: o.enabled.is_some(),
            force_fallback: o.force_fallback.unwrap_or(flag.force_fallback),
            forced_variations: flag
                .variations
                .iter()
                .map(|v| {
                    if o.forced_variations.contains(&v.key) {
                        true
                    } else if o.lifted_variations.contains(&v.key) {
                        false
                    } else {
                        v.force_fallback
                    }
                })
                .collect(),
            stages,
            held: flag
                .rules
                .iter()
                .map(|r| o.rollout_held.contains(&r.id))
                .collect(),
            stage_started_at_ms: flag
                .rules
                .iter()
                .map(|r| o.stage_started_at_ms.get(&r.id).copied())
                .collect(),
        }
    }

    /// Views of every flag of a config.
    pub fn all(flags: &[std::sync::Arc<Flag>], state: &RuntimeState) -> Vec<FlagRuntime> {
        flags
            .iter()
            .map(|f| FlagRuntime::new(f, state.flags.get(&f.key)))
            .collect()
    }

    /// Whether answers for variation `v` are forced to the rule-based responder.
    pub fn forced(&self, v: usize) -> bool {
        self.force_fallback || self.forced_variations.get(v).copied().unwrap_or(false)
    }
}

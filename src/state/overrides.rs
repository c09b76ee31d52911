//! What operators change at runtime: one flag's [`FlagOverrides`], the [`Change`]s that rewrite
//! them (pure), and the audit log's [`AuditEntry`] and [`AuditQuery`].

use std::collections::{BTreeMap, BTreeSet};

/// Runtime overrides of one flag (what operators changed at runtime; absent = the config's
/// value).
///
/// Serialized compactly: fields that hold no override are left out, so a flag without
/// overrides is `{}` in the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FlagOverrides {
    /// Kill switch override: `Some(false)` serves the off variation to everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Whole-flag forced fallback: `Some(true)` answers every request rule-based.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_fallback: Option<bool>,
    /// Variations whose answers are forced to their fallback.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub forced_variations: BTreeSet<String>,
    /// Variations whose forced fallback is lifted, even where `proxy.toml` forces it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lifted_variations: BTreeSet<String>,
    /// Rule id → current rollout stage index.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rollout_stage: BTreeMap<String, u32>,
    /// Rule ids whose rollout is frozen (no automatic advance).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub rollout_held: BTreeSet<String>,
    /// Rule id → unix milliseconds at which its current stage began.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_started_at_ms: BTreeMap<String, u64>,
    /// Who set each override last (`enabled`, `force_fallback`, `variation:V`, `stage:RULE`,
    /// `held:RULE` → actor).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_by: BTreeMap<String, String>,
    /// The flag's bandit: weights in force, status, settings overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandit: Option<crate::bandit::BanditOverride>,
}

impl FlagOverrides {
    /// True when nothing is overridden (the flag runs exactly as configured).
    pub fn is_empty(&self) -> bool {
        *self == FlagOverrides::default()
    }
}

/// Every flag's runtime overrides, as of one version of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    /// Bumped by every state-changing [`Store::apply`]; 0 for a fresh store.
    pub version: i64,
    /// Flags with at least one override; a flag missing here runs as configured.
    pub flags: BTreeMap<String, FlagOverrides>,
}

/// One line of the audit log: who changed what, when, before and after.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// Increasing with time; newer entries have larger ids.
    pub id: i64,
    /// When, RFC 3339 UTC with milliseconds (`2026-11-25T12:01:02.345Z`).
    pub at: String,
    /// Who: the admin token's name, or the component (`alerts`, `reload`…).
    pub actor: String,
    /// What: [`Change::action`].
    pub action: String,
    /// The flag concerned, if any.
    pub flag: Option<String>,
    /// The flag's overrides before the change (`null` for a note).
    pub before: serde_json::Value,
    /// The flag's overrides after the change (the note's detail for a note).
    pub after: serde_json::Value,
    /// The operator's reason, if given.
    pub reason: Option<String>,
}

/// Filters and paging of the audit log; `None` filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this flag's entries.
    pub flag: Option<String>,
    /// Only this actor's entries (a token name, `alert:<name>`…).
    pub actor: Option<String>,
    /// Only this action ([`Change::action`]).
    pub action: Option<String>,
    /// Only entries older than this id (the next page).
    pub before_id: Option<i64>,
    /// At most this many entries.
    pub limit: u32,
}

/// One change to the runtime state (or an audit-only note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Kill switch: action `set_enabled`.
    SetEnabled {
        /// The flag.
        flag: String,
        /// `false` serves the off variation to everyone.
        enabled: bool,
    },
    /// Force (or lift) rule-based answers for the whole flag (`variation: None`) or one
    /// variation: action `set_forced_fallback`.
    SetForcedFallback {
        /// The flag.
        flag: String,
        /// One variation, or the whole flag.
        variation: Option<String>,
        /// `true` forces, `false` lifts.
        forced: bool,
    },
    /// Move a rule's rollout to a stage, which began at `at_ms`: action `set_rollout_stage`.
    SetRolloutStage {
        /// The flag.
        flag: String,
        /// The rollout rule's id.
        rule: String,
        /// The stage index.
        stage: u32,
        /// Unix milliseconds at which the stage began.
        at_ms: u64,
    },
    /// Freeze (or release) a rule's rollout: action `set_rollout_held`.
    SetRolloutHeld {
        /// The flag.
        flag: String,
        /// The rollout rule's id.
        rule: String,
        /// `true` freezes, `false` releases.
        held: bool,
    },
    /// Drop every override of the flag, back to the config: action `clear_overrides`.
    ClearFlag {
        /// The flag.
        flag: String,
    },
    /// Drop one override, back to the config for that field: action `clear_override`.
    ClearField {
        /// The flag.
        flag: String,
        /// `enabled`, `force_fallback`, `variation:V`, `stage:RULE` or `held:RULE`.
        field: String,
    },
    /// A bandit epoch's weights and status take effect: action `bandit_epoch`.
    BanditEpoch {
        /// The flag.
        flag: String,
        /// The epoch number.
        epoch: u64,
        /// Buckets per variation from now on.
        weights: BTreeMap<String, u32>,
        /// Where the bandit stands after the epoch.
        status: crate::bandit::Status,
        /// Unix milliseconds at which the weights take effect.
        at_ms: u64,
    },
    /// Operators change a bandit's settings: action `set_bandit`. `None` fields keep their
    /// value; `reset` goes back to the rule's configured allocation and a running bandit.
    SetBandit {
        /// The flag.
        flag: String,
        /// The settings to override.
        settings: crate::bandit::SettingsOverride,
        /// Start over: configured weights, status running.
        reset: bool,
        /// Unix milliseconds of the change.
        at_ms: u64,
    },
    /// An audit-only entry (`reload`, `reload_failed`, alert notifications…); changes no state
    /// and does not bump the version.
    Note {
        /// The flag concerned, if any.
        flag: Option<String>,
        /// The action recorded in the audit log.
        action: String,
        /// Recorded as the entry's `after`.
        detail: serde_json::Value,
    },
}

impl Change {
    /// The flag the change concerns (`None` only for a note about no flag).
    pub fn flag(&self) -> Option<&str> {
        match self {
            Change::SetEnabled { flag, .. }
            | Change::SetForcedFallback { flag, .. }
            | Change::SetRolloutStage { flag, .. }
            | Change::SetRolloutHeld { flag, .. }
            | Change::BanditEpoch { flag, .. }
            | Change::SetBandit { flag, .. }
            | Change::ClearField { flag, .. }
            | Change::ClearFlag { flag } => Some(flag),
            Change::Note { flag, .. } => flag.as_deref(),
        }
    }

    /// The action name recorded in the audit log.
    pub fn action(&self) -> &str {
        match self {
            Change::SetEnabled { .. } => "set_enabled",
            Change::SetForcedFallback { .. } => "set_forced_fallback",
            Change::SetRolloutStage { .. } => "set_rollout_stage",
            Change::SetRolloutHeld { .. } => "set_rollout_held",
            Change::BanditEpoch { .. } => "bandit_epoch",
            Change::SetBandit { .. } => "set_bandit",
            Change::ClearFlag { .. } => "clear_overrides",
            Change::ClearField { .. } => "clear_override",
            Change::Note { action, .. } => action,
        }
    }

    /// Applies the change to one flag's overrides (pure; a note changes nothing).
    pub fn apply(&self, o: &mut FlagOverrides) {
        match self {
            Change::SetEnabled { enabled, .. } => o.enabled = Some(*enabled),
            Change::SetForcedFallback {
                variation: None,
                forced,
                ..
            } => o.force_fallback = Some(*forced),
            Change::SetForcedFallback {
                variation: Some(variation),
                forced,
                ..
            } => {
                // Both ways: forcing and lifting each override what the file says.
                if *forced {
                    o.forced_variations.insert(variation.clone());
                    o.lifted_variations.remove(variation);
                } else {
                    o.forced_variations.remove(variation);
                    o.lifted_variations.insert(variation.clone());
                }
            }
            Change::SetRolloutStage {
                rule, stage, at_ms, ..
            } => {
                o.rollout_stage.insert(rule.clone(), *stage);
                o.stage_started_at_ms.insert(rule.clone(), *at_ms);
            }
            Change::SetRolloutHeld { rule, held, .. } => {
                if *held {
                    o.rollout_held.insert(rule.clone());
                } else {
                    o.rollout_held.remove(rule);
                }
            }
            Change::BanditEpoch { .. } | Change::SetBandit { .. } => {
                crate::bandit::apply_change(self, o.bandit.get_or_insert_with(Default::default));
            }
            Change::ClearFlag { .. } => *o = FlagOverrides::default(),
            Change::ClearField { field, .. } => {
                match field.split_once(':') {
                    None if field == "enabled" => o.enabled = None,
                    None if field == "bandit" => o.bandit = None,
                    None if field == "force_fallback" => o.force_fallback = None,
                    Some(("variation", v)) => {
                        o.forced_variations.remove(v);
                        o.lifted_variations.remove(v);
                    }
                    Some(("stage", r)) => {
                        o.rollout_stage.remove(r);
                        o.stage_started_at_ms.remove(r);
                    }
                    Some(("held", r)) => {
                        o.rollout_held.remove(r);
                    }
                    _ => return,
                }
                o.set_by.remove(field);
            }
            Change::Note { .. } => {}
        }
    }

    /// Applies the change and records `actor` as the one who set the field it changes.
    pub fn apply_by(&self, o: &mut FlagOverrides, actor: &str) {
        self.apply(o);
        let field = match self {
            Change::SetEnabled { .. } => "enabled".to_owned(),
            Change::SetForcedFallback {
                variation: None, ..
            } => "force_fallback".to_owned(),
            Change::SetForcedFallback {
                variation: Some(v), ..
            } => format!("variation:{v}"),
            Change::SetRolloutStage { rule, .. } => format!("stage:{rule}"),
            Change::SetRolloutHeld { rule, .. } => format!("held:{rule}"),
            Change::BanditEpoch { .. } | Change::SetBandit { .. } => "bandit".to_owned(),
            Change::ClearFlag { .. } | Change::ClearField { .. } | Change::Note { .. } => return,
        };
        o.set_by.insert(field, actor.to_owned());
    }

    /// The flag whose stored overrides this change rewrites (`None` for a note).
    pub(super) fn state_flag(&self) -> Option<&str> {
        match self {
            Change::Note { .. } => None,
            other => other.flag(),
        }
    }
}

/// The flag's overrides as they appear in the audit log.
pub(super) fn overrides_json(o: &FlagOverrides) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
}

/// Overrides as an audit entry shows them: the fields, without who set them (the entry's
/// actor says that).
pub(super) fn audit_json(o: &FlagOverrides) -> serde_json::Value {
    let mut v = overrides_json(o);
    if let Some(m) = v.as_object_mut() {
        m.remove("set_by");
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn overrides_serialize_compactly_and_read_defaults() {
        let mut o = FlagOverrides::default();
        assert_eq!(overrides_json(&o), serde_json::json!({}));
        o.enabled = Some(false);
        o.rollout_stage.insert("r".into(), 2);
        assert_eq!(
            overrides_json(&o),
            serde_json::json!({"enabled": false, "rollout_stage": {"r": 2}})
        );
        let back: FlagOverrides = serde_json::from_value(
            serde_json::json!({"enabled": false, "rollout_stage": {"r": 2}}),
        )
        .unwrap();
        assert_eq!(back, o);
    }
}

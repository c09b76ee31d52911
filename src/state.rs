//! Runtime state and the audit log (temporary in-memory stand-in; the durable SQLite and
//! PostgreSQL store replaces this file).
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlagOverrides {
    pub enabled: Option<bool>,
    pub force_fallback: Option<bool>,
    pub forced_variations: BTreeSet<String>,
    pub rollout_stage: BTreeMap<String, u32>,
    pub rollout_held: BTreeSet<String>,
    pub stage_started_at_ms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    pub version: i64,
    pub flags: BTreeMap<String, FlagOverrides>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub flag: Option<String>,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    SetEnabled {
        flag: String,
        enabled: bool,
    },
    SetForcedFallback {
        flag: String,
        variation: Option<String>,
        forced: bool,
    },
    SetRolloutStage {
        flag: String,
        rule: String,
        stage: u32,
        at_ms: u64,
    },
    SetRolloutHeld {
        flag: String,
        rule: String,
        held: bool,
    },
    ClearFlag {
        flag: String,
    },
    Note {
        flag: Option<String>,
        action: String,
        detail: serde_json::Value,
    },
}

impl Change {
    pub fn flag(&self) -> Option<&str> {
        match self {
            Change::SetEnabled { flag, .. }
            | Change::SetForcedFallback { flag, .. }
            | Change::SetRolloutStage { flag, .. }
            | Change::SetRolloutHeld { flag, .. }
            | Change::ClearFlag { flag } => Some(flag),
            Change::Note { flag, .. } => flag.as_deref(),
        }
    }
    pub fn action(&self) -> &str {
        match self {
            Change::SetEnabled { .. } => "set_enabled",
            Change::SetForcedFallback { .. } => "set_forced_fallback",
            Change::SetRolloutStage { .. } => "set_rollout_stage",
            Change::SetRolloutHeld { .. } => "set_rollout_held",
            Change::ClearFlag { .. } => "clear_overrides",
            Change::Note { action, .. } => action,
        }
    }
    pub fn apply(&self, o: &mut FlagOverrides) {
        match self {
            Change::SetEnabled { enabled, .. } => o.enabled = Some(*enabled),
            Change::SetForcedFallback {
                variation: None,
                forced,
                ..
            } => o.force_fallback = Some(*forced),
            Change::SetForcedFallback {
                variation: Some(v),
                forced,
                ..
            } => {
                if *forced {
                    o.forced_variations.insert(v.clone());
                } else {
                    o.forced_variations.remove(v);
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
            Change::ClearFlag { .. } => *o = FlagOverrides::default(),
            Change::Note { .. } => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store error: {0}")]
    Storage(String),
    #[error("invalid state store url: {0}")]
    BadUrl(String),
}

#[derive(Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<(RuntimeState, Vec<AuditEntry>)>>,
    tx: Arc<Option<tokio::sync::watch::Sender<u64>>>,
}

impl Store {
    pub async fn open(_url: &str) -> Result<Store, StateError> {
        let (tx, _) = tokio::sync::watch::channel(0);
        Ok(Store {
            inner: Arc::default(),
            tx: Arc::new(Some(tx)),
        })
    }
    pub async fn load(&self) -> Result<RuntimeState, StateError> {
        self.inner
            .lock()
            .map(|g| g.0.clone())
            .map_err(|_| StateError::Storage("poisoned".into()))
    }
    pub async fn apply(
        &self,
        change: &Change,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<AuditEntry, StateError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| StateError::Storage("poisoned".into()))?;
        let (before, after) = match change.flag() {
            Some(f) if !matches!(change, Change::Note { .. }) => {
                let o = g.0.flags.entry(f.to_owned()).or_default();
                let before = serde_json::to_value(&*o).unwrap_or_default();
                change.apply(o);
                (before, serde_json::to_value(&*o).unwrap_or_default())
            }
            _ => (
                serde_json::Value::Null,
                match change {
                    Change::Note { detail, .. } => detail.clone(),
                    _ => serde_json::Value::Null,
                },
            ),
        };
        g.0.version += 1;
        let entry = AuditEntry {
            id: g.1.len() as i64 + 1,
            at: String::new(),
            actor: actor.into(),
            action: change.action().into(),
            flag: change.flag().map(str::to_owned),
            before,
            after,
            reason: reason.map(str::to_owned),
        };
        g.1.push(entry.clone());
        Ok(entry)
    }
    pub async fn audit(
        &self,
        flag: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StateError> {
        let g = self
            .inner
            .lock()
            .map_err(|_| StateError::Storage("poisoned".into()))?;
        Ok(g.1
            .iter()
            .rev()
            .filter(|e| flag.is_none() || e.flag.as_deref() == flag)
            .take(limit as usize)
            .cloned()
            .collect())
    }
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        match &*self.tx {
            Some(tx) => tx.subscribe(),
            None => tokio::sync::watch::channel(0).1,
        }
    }
    pub fn kind(&self) -> &'static str {
        "memory"
    }
}

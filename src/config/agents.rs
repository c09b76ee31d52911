//! `[admin] tokens = [{ …, policy = {…} }]`: agent tokens. A token with a `policy` is an agent's:
//! it works only on the MCP endpoint (`/mcp`), calls only the tools its policy allows, within
//! its limits (see [`crate::mcp`]).

use serde::Deserialize;

use super::*;

/// `policy = {…}` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentPolicy {
    /// Tools and tool groups (`read`, `rollout`, `bandit`, `fallback`, `kill_switch`, or one
    /// tool's name such as `rollout.advance`).
    #[serde(default)]
    pub allow: Vec<String>,
    pub max_stage_changes_per_hour: Option<i64>,
    pub bandit_floor_min: Option<f64>,
    pub kill_switch: Option<bool>,
}

/// What an agent token may do.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPolicy {
    /// The tools it may call (names from [`crate::mcp::tools::TOOLS`]).
    pub tools: Vec<String>,
    /// Rollout stage changes (advance, roll back, set) within any hour, at most.
    pub max_stage_changes_per_hour: Option<u32>,
    /// Bandit settings it may write: the floor never below this.
    pub bandit_floor_min: Option<f64>,
    /// Whether it may use the kill switch (off unless said).
    pub kill_switch: bool,
}

impl AgentPolicy {
    /// Whether `tool` is allowed by the list (limits are checked at the call).
    pub fn allows(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == tool)
    }
}

impl Validator<'_> {
    /// Validates one token's policy.
    pub(super) fn agent_policy(&mut self, path: &KeyPath, raw: &RawAgentPolicy) -> AgentPolicy {
        let mut tools = Vec::new();
        for (i, name) in raw.allow.iter().enumerate() {
            match crate::mcp::tools::expand(name) {
                Some(list) => {
                    for t in list {
                        if !tools.iter().any(|x| x == t) {
                            tools.push((*t).to_owned());
                        }
                    }
                }
                None => self.err(
                    &path.key("allow").index(i),
                    format!(
                        "unknown tool or group {name:?} (groups: {}; tools: {})",
                        crate::mcp::tools::GROUPS.join(", "),
                        crate::mcp::tools::names().join(", ")
                    ),
                ),
            }
        }
        // The kill switch is never in a group: it is allowed by naming it, or by
        // `kill_switch = true`; `kill_switch = false` forbids it whatever the list says.
        match raw.kill_switch {
            Some(true) if !tools.iter().any(|t| t == "kill_switch") => {
                tools.push("kill_switch".into())
            }
            Some(false) => tools.retain(|t| t != "kill_switch"),
            _ => {}
        }
        let kill_switch = tools.iter().any(|t| t == "kill_switch");
        let max_stage_changes_per_hour = raw.max_stage_changes_per_hour.map(|n| {
            self.count(
                &path.key("max_stage_changes_per_hour"),
                Some(n),
                1,
                0..=1_000_000,
            ) as u32
        });
        if let Some(f) = raw.bandit_floor_min {
            if !(0.0..=1.0).contains(&f) {
                self.err(
                    &path.key("bandit_floor_min"),
                    format!("{f} is not a share in [0, 1]"),
                );
            }
        }
        AgentPolicy {
            tools,
            max_stage_changes_per_hour,
            bandit_floor_min: raw.bandit_floor_min,
            kill_switch,
        }
    }
}

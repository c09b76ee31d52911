//! The MCP tools: each one is an existing admin operation (the same code path as the admin API,
//! [`crate::admin::api`]), with its input schema and the policy group it belongs to.

use http::Method;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

/// One tool.
#[derive(Debug)]
pub struct Tool {
    /// Its name in `tools/call`.
    pub name: &'static str,
    /// The policy group that allows it (besides its own name).
    pub group: &'static str,
    /// What it does, for the agent.
    pub description: &'static str,
    /// Whether it only reads.
    pub read_only: bool,
    /// Its arguments besides `reason`: (name, JSON type, required, description).
    pub args: &'static [(&'static str, &'static str, bool, &'static str)],
}

const FLAG: (&str, &str, bool, &str) = ("flag", "string", true, "the flag's key");
const RULE: (&str, &str, bool, &str) = (
    "rule",
    "string",
    false,
    "the rollout rule's id (default: the flag's first rollout rule)",
);

/// Every tool, in the order `tools/list` shows them.
pub const TOOLS: &[Tool] = &[
    Tool {
        name: "flags.list",
        group: "read",
        description: "List every flag with its effective state (kill switch, forced fallback, rollout stages) and live per-variation figures.",
        read_only: true,
        args: &[],
    },
    Tool {
        name: "flag.get",
        group: "read",
        description: "One flag's effective state and live per-variation figures (requests, error and fallback rates, latency quantiles, tokens, cost).",
        read_only: true,
        args: &[FLAG],
    },
    Tool {
        name: "flag.results",
        group: "read",
        description: "Experiment results of a flag: per-variation value, confidence interval, lift, p-value and verdict on a metric, and the sample-ratio check.",
        read_only: true,
        args: &[FLAG, ("metric", "string", false, "the metric (default: every metric with data)")],
    },
    Tool {
        name: "alerts.list",
        group: "read",
        description: "Every alert's current level per flag and variation.",
        read_only: true,
        args: &[],
    },
    Tool {
        name: "rollout.get",
        group: "read",
        description: "A flag's rollouts: stage, percent, gate thresholds, the figures the gate reads and whether it is met.",
        read_only: true,
        args: &[FLAG],
    },
    Tool {
        name: "audit.list",
        group: "read",
        description: "The audit log, newest first.",
        read_only: true,
        args: &[
            ("flag", "string", false, "only this flag's entries"),
            ("actor", "string", false, "only this actor's entries"),
            ("limit", "integer", false, "at most this many entries (1-1000, default 50)"),
        ],
    },
    Tool {
        name: "rollout.advance",
        group: "rollout",
        description: "Advance a rollout one stage; refused when its gate is not met (the reasons are returned). Counts as a stage change.",
        read_only: false,
        args: &[FLAG, RULE],
    },
    Tool {
        name: "rollout.rollback",
        group: "rollout",
        description: "Roll a rollout back one stage. Counts as a stage change.",
        read_only: false,
        args: &[FLAG, RULE],
    },
    Tool {
        name: "rollout.hold",
        group: "rollout",
        description: "Hold a rollout where it is (held = true: no automatic advance) or release it (held = false).",
        read_only: false,
        args: &[FLAG, RULE, ("held", "boolean", true, "true holds, false releases")],
    },
    Tool {
        name: "fallback.force",
        group: "fallback",
        description: "Force rule-based answers for a whole flag or one variation (forced = true), or lift that (forced = false).",
        read_only: false,
        args: &[
            FLAG,
            ("forced", "boolean", true, "true forces, false lifts"),
            ("variation", "string", false, "only this variation (default: the whole flag)"),
        ],
    },
    Tool {
        name: "kill_switch",
        group: "kill_switch",
        description: "The kill switch: enabled = false serves every user the flag's off variation; enabled = true restores it.",
        read_only: false,
        args: &[FLAG, ("enabled", "boolean", true, "false turns the flag off")],
    },
];

/// The policy groups (`allow = [...]` takes these or tool names).
pub const GROUPS: &[&str] = &["read", "rollout", "fallback", "kill_switch"];

/// Every tool's name.
pub fn names() -> Vec<&'static str> {
    TOOLS.iter().map(|t| t.name).collect()
}

/// The tool called `name`.
pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The tools a policy entry names: a group's, or one tool (`None`: neither).
pub fn expand(entry: &str) -> Option<Vec<&'static str>> {
    if GROUPS.contains(&entry) {
        return Some(
            TOOLS
                .iter()
                .filter(|t| t.group == entry)
                .map(|t| t.name)
                .collect(),
        );
    }
    find(entry).map(|t| vec![t.name])
}

/// The tool's input schema: its arguments and the required `reason`.
pub fn input_schema(tool: &Tool) -> Value {
    let mut props = Map::new();
    let mut required = vec![json!("reason")];
    for (name, kind, req, desc) in tool.args {
        props.insert((*name).into(), json!({"type": kind, "description": desc}));
        if *req {
            required.push(json!(name));
        }
    }
    props.insert(
        "reason".into(),
        json!({"type": "string", "minLength": 1, "description": "why this call is made (recorded in the audit log)"}),
    );
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// The admin operation a call is: (method, path below `/admin`, query, JSON body).
pub struct Operation {
    /// The HTTP method.
    pub method: Method,
    /// The path below `/admin`.
    pub path: String,
    /// The query string.
    pub query: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// Checks the arguments against the tool's list and types (a message on a bad one).
pub fn check_args(tool: &Tool, args: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in args {
        if k == "reason" {
            continue;
        }
        let Some((_, kind, _, _)) = tool.args.iter().find(|(n, ..)| n == k) else {
            let known: Vec<&str> = tool.args.iter().map(|a| a.0).collect();
            return Err(format!(
                "unknown argument `{k}` (arguments: {}reason)",
                known.iter().map(|a| format!("{a}, ")).collect::<String>()
            ));
        };
        let ok = match *kind {
            "string" => v.as_str().is_some_and(|s| !s.is_empty()),
            "boolean" => v.is_boolean(),
            "integer" => v.as_u64().is_some(),
            _ => true,
        };
        if !ok {
            return Err(format!("`{k}` must be a non-empty {kind}"));
        }
    }
    for (name, _, required, _) in tool.args {
        if *required && !args.contains_key(*name) {
            return Err(format!("`{name}` is required"));
        }
    }
    Ok(())
}

/// The admin operation of a call whose arguments passed [`check_args`].
pub fn operation(tool: &Tool, args: &Map<String, Value>, reason: &str) -> Operation {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("");
    let flag = seg(s("flag"));
    let rule = args.get("rule").cloned().unwrap_or(Value::Null);
    let get = |path: String, query: Option<String>| Operation {
        method: Method::GET,
        path,
        query,
        body: Vec::new(),
    };
    let change = |method: Method, path: String, body: Value| Operation {
        method,
        path,
        query: None,
        body: body.to_string().into_bytes(),
    };
    match tool.name {
        "flags.list" => get("/flags".into(), None),
        "flag.get" => get(format!("/flags/{flag}"), None),
        "flag.results" => get(
            format!("/flags/{flag}/results"),
            args.get("metric")
                .and_then(Value::as_str)
                .map(|m| format!("metric={}", seg(m))),
        ),
        "alerts.list" => get("/alerts".into(), None),
        "rollout.get" => get(format!("/flags/{flag}/rollout"), None),
        "audit.list" => {
            let mut q = Vec::new();
            for k in ["flag", "actor"] {
                if let Some(v) = args.get(k).and_then(Value::as_str) {
                    q.push(format!("{k}={}", seg(v)));
                }
            }
            if let Some(n) = args.get("limit").and_then(Value::as_u64) {
                q.push(format!("limit={n}"));
            }
            get("/audit".into(), (!q.is_empty()).then(|| q.join("&")))
        }
        "rollout.advance" => change(
            Method::POST,
            format!("/flags/{flag}/rollout/advance"),
            json!({"rule": rule, "reason": reason}),
        ),
        "rollout.rollback" => change(
            Method::POST,
            format!("/flags/{flag}/rollout/rollback"),
            json!({"rule": rule, "reason": reason}),
        ),
        "rollout.hold" => change(
            Method::PUT,
            format!("/flags/{flag}/rollout/hold"),
            json!({"rule": rule, "held": args.get("held"), "reason": reason}),
        ),
        "fallback.force" => change(
            Method::PUT,
            format!("/flags/{flag}/fallback"),
            json!({"forced": args.get("forced"), "variation": args.get("variation"), "reason": reason}),
        ),
        _ => change(
            Method::PUT,
            format!("/flags/{flag}/enabled"),
            json!({"enabled": args.get("enabled"), "reason": reason}),
        ),
    }
}

/// Whether a tool changes a rollout's stage (the `max_stage_changes_per_hour` limit).
pub fn changes_stage(tool: &Tool) -> bool {
    matches!(tool.name, "rollout.advance" | "rollout.rollback")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand_to_their_tools() {
        assert_eq!(
            expand("rollout"),
            Some(vec!["rollout.advance", "rollout.rollback", "rollout.hold"])
        );
        assert_eq!(expand("kill_switch"), Some(vec!["kill_switch"]));
        assert_eq!(expand("flag.get"), Some(vec!["flag.get"]));
        assert_eq!(expand("nope"), None);
        for t in TOOLS {
            assert!(GROUPS.contains(&t.group), "{}", t.name);
        }
    }

    #[test]
    fn arguments_are_checked_and_mapped() {
        let t = find("rollout.advance").unwrap_or(&TOOLS[0]);
        let mut args = Map::new();
        assert!(check_args(t, &args)
            .unwrap_err()
            .contains("`flag` is required"));
        args.insert("flag".into(), json!("a/b"));
        assert!(check_args(t, &args).is_ok());
        let op = operation(t, &args, "why");
        assert_eq!(op.path, "/flags/a%2Fb/rollout/advance");
        assert_eq!(op.method, Method::POST);
        args.insert("force".into(), json!(true));
        assert!(check_args(t, &args)
            .unwrap_err()
            .contains("unknown argument"));
    }
}

//! Parsing a condition tree from its JSON form, rejecting what Optimizely would never match.

use serde_json::{Map, Value};

use super::semver::split_version;
use super::{json_number, Condition, Leaf, Match, MAX_DEPTH};

/// Parses one node of a condition tree at nesting `depth`.
pub(super) fn parse_node(v: &Value, depth: usize) -> Result<Condition, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "conditions are nested deeper than {MAX_DEPTH} levels"
        ));
    }
    match v {
        Value::Array(items) => parse_list(items, depth),
        Value::Object(map) => parse_leaf(map).map(Condition::Leaf),
        other => Err(format!(
            "a condition must be a list or a leaf object, got {}",
            json_kind(other)
        )),
    }
}

/// The operators of a condition list.
#[derive(Clone, Copy)]
enum Operator {
    And,
    Or,
    Not,
}

fn parse_list(items: &[Value], depth: usize) -> Result<Condition, String> {
    let (op, operands) = match items.split_first() {
        Some((Value::String(name), rest)) => {
            let op = match name.as_str() {
                "and" => Operator::And,
                "or" => Operator::Or,
                "not" => Operator::Not,
                other => return Err(format!("unknown operator {other:?}")),
            };
            (op, rest)
        }
        // Optimizely: a list without an explicit operator is an "or".
        _ => (Operator::Or, items),
    };
    if matches!(op, Operator::Not) && operands.len() != 1 {
        return Err("\"not\" takes exactly one operand".to_owned());
    }
    let mut children = operands
        .iter()
        .map(|operand| parse_node(operand, depth + 1))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match op {
        Operator::And => Condition::And(children),
        Operator::Or => Condition::Or(children),
        Operator::Not => match children.pop() {
            Some(child) => Condition::Not(Box::new(child)),
            None => return Err("\"not\" takes exactly one operand".to_owned()),
        },
    })
}

fn parse_leaf(map: &Map<String, Value>) -> Result<Leaf, String> {
    if let Some(key) = map.keys().find(|k| {
        !matches!(
            k.as_str(),
            "attribute" | "name" | "match" | "value" | "type"
        )
    }) {
        return Err(format!("unknown key {key:?} in leaf condition"));
    }

    let attribute = match (map.get("attribute"), map.get("name")) {
        (Some(_), Some(_)) => {
            return Err("leaf condition has both \"attribute\" and \"name\"".to_owned())
        }
        (Some(v), None) | (None, Some(v)) => match v {
            Value::String(s) => s.clone(),
            _ => return Err("leaf \"attribute\" must be a string".to_owned()),
        },
        (None, None) => return Err("leaf condition is missing \"attribute\"".to_owned()),
    };

    if let Some(kind) = map.get("type") {
        if kind.as_str() != Some("custom_attribute") {
            return Err(format!(
                "unsupported condition type {kind} (only \"custom_attribute\")"
            ));
        }
    }

    let matcher = match map.get("match") {
        // Optimizely's legacy behaviour: no match type means "exact".
        None | Some(Value::Null) => Match::Exact,
        Some(Value::String(name)) => {
            Match::from_name(name).ok_or_else(|| format!("unknown match type {name:?}"))?
        }
        Some(_) => return Err("leaf \"match\" must be a string".to_owned()),
    };

    let value = match map.get("value") {
        Some(v) => v.clone(),
        None if matcher == Match::Exists => Value::Null,
        None => {
            return Err(format!(
                "leaf condition for {:?} is missing \"value\"",
                matcher.as_str()
            ))
        }
    };
    check_condition_value(matcher, &value)?;

    Ok(Leaf {
        attribute,
        matcher,
        value,
    })
}

/// Rejects condition values Optimizely would never match with `matcher`.
fn check_condition_value(matcher: Match, value: &Value) -> Result<(), String> {
    let name = matcher.as_str();
    let check_number = |n: &serde_json::Number| match json_number(n) {
        Some(_) => Ok(()),
        None => Err(format!(
            "condition value for {name:?} must be between -2^53 and 2^53"
        )),
    };
    match (matcher, value) {
        (Match::Exists, _) => Ok(()),
        (Match::Exact, Value::String(_) | Value::Bool(_)) => Ok(()),
        (Match::Exact, Value::Number(n)) => check_number(n),
        (Match::Exact, _) => Err(format!(
            "condition value for {name:?} must be a string, number or boolean"
        )),
        (Match::Substring, Value::String(_)) => Ok(()),
        (Match::Substring, _) => Err(format!("condition value for {name:?} must be a string")),
        (m, Value::Number(n)) if m.is_numeric() => check_number(n),
        (m, _) if m.is_numeric() => Err(format!("condition value for {name:?} must be a number")),
        (m, Value::String(version)) if m.is_semver() => match split_version(version) {
            Some(_) => Ok(()),
            None => Err(format!(
                "condition value for {name:?} is not a valid version: {version:?}"
            )),
        },
        (_, _) => Err(format!(
            "condition value for {name:?} must be a version string"
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

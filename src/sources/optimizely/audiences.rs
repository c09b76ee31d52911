//! Optimizely audience conditions compiled into one [`Condition`] tree per rule.
//!
//! A rule's `audienceConditions` (or, without them, its `audienceIds`, or-ed) is a tree of
//! `and` / `or` / `not` over audience ids; each audience holds a tree of the same shape over
//! attribute tests. Three-valued evaluation is compositional, so substituting each audience id
//! with its own tree gives the SDKs' result exactly. What the SDKs evaluate to "unknown" (an
//! audience id the datafile lacks, a test of a kind they skip such as ODP segments, a
//! malformed test, a `not` without an operand) becomes a leaf that is always unknown.

use std::collections::HashMap;

use serde_json::Value;

use crate::flags::audience::{Condition, Leaf, Match};

/// A leaf that always evaluates to unknown (no request carries this attribute name).
fn unknown() -> Condition {
    Condition::Leaf(Leaf {
        attribute: "\u{0}switchyard-unknown-condition".into(),
        matcher: Match::Exact,
        value: Value::Null,
    })
}

/// Audiences by id: their condition trees (typed audiences win over legacy ones).
#[derive(Debug, Default)]
pub struct AudienceMap {
    by_id: HashMap<String, Value>,
    /// Leaves that could not be evaluated and count as unknown, for the source's status.
    pub unsupported: Vec<String>,
}

impl AudienceMap {
    /// Collects `audiences` then `typedAudiences` (later entries replace earlier ones).
    pub fn new<'a>(audiences: impl Iterator<Item = (&'a str, &'a Value)>) -> AudienceMap {
        let mut by_id = HashMap::new();
        for (id, conditions) in audiences {
            // Legacy audiences carry their conditions as a JSON string.
            let tree = match conditions {
                Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                other => other.clone(),
            };
            by_id.insert(id.to_owned(), tree);
        }
        AudienceMap {
            by_id,
            unsupported: Vec::new(),
        }
    }

    /// The condition of a rule, or `None` when it has no audience (everyone matches).
    pub fn rule_condition(
        &mut self,
        audience_conditions: Option<&Value>,
        audience_ids: &[String],
    ) -> Option<Condition> {
        let tree = match audience_conditions {
            Some(Value::Null) | None => {
                Value::Array(audience_ids.iter().cloned().map(Value::String).collect())
            }
            Some(v) => v.clone(),
        };
        if matches!(&tree, Value::Array(a) if a.is_empty()) {
            return None;
        }
        Some(self.tree(&tree, &|map, leaf| map.audience(leaf), 0))
    }

    fn audience(&mut self, leaf: &Value) -> Condition {
        let Some(id) = leaf.as_str() else {
            return unknown();
        };
        let Some(tree) = self.by_id.get(id).cloned() else {
            self.unsupported
                .push(format!("audience {id:?} is not in the datafile"));
            return unknown();
        };
        if tree.is_null() {
            return unknown();
        }
        self.tree(&tree, &|map, leaf| map.attribute_test(leaf), 0)
    }

    fn attribute_test(&mut self, leaf: &Value) -> Condition {
        match Condition::from_json(leaf) {
            Ok(c @ Condition::Leaf(_)) => c,
            Ok(_) | Err(_) => {
                self.unsupported.push(format!(
                    "condition {} is evaluated as unknown",
                    serde_json::to_string(leaf).unwrap_or_default()
                ));
                unknown()
            }
        }
    }

    /// Optimizely's condition tree: a list is `[op, operands…]` (no operator means `or`), any
    /// other value is a leaf.
    fn tree(
        &mut self,
        v: &Value,
        leaf: &dyn Fn(&mut AudienceMap, &Value) -> Condition,
        depth: usize,
    ) -> Condition {
        if depth > 64 {
            return unknown();
        }
        let Value::Array(items) = v else {
            return leaf(self, v);
        };
        let (op, operands) = match items.first().and_then(Value::as_str) {
            Some(op @ ("and" | "or" | "not")) => (op, &items[1..]),
            _ => ("or", &items[..]),
        };
        let mut children: Vec<Condition> = Vec::new();
        for operand in operands {
            children.push(self.tree(operand, leaf, depth + 1));
            if op == "not" {
                break;
            }
        }
        match op {
            "and" => Condition::And(children),
            "not" => match children.pop() {
                Some(c) => Condition::Not(Box::new(c)),
                None => unknown(),
            },
            _ => Condition::Or(children),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::audience::{AttrValue, Attributes};
    use serde_json::json;

    fn map() -> AudienceMap {
        let legacy = json!("[\"and\", [\"or\", {\"name\": \"plan\", \"type\": \"custom_attribute\", \"value\": \"pro\"}]]");
        let typed = json!(["and", ["or", {"name": "age", "type": "custom_attribute", "match": "ge", "value": 18}]]);
        let odp = json!(["or", {"name": "odp.audiences", "type": "third_party_dimension", "match": "qualified", "value": "seg"}]);
        let entries = [("1", &legacy), ("2", &typed), ("3", &odp)];
        AudienceMap::new(entries.into_iter())
    }

    #[test]
    fn ids_or_conditions() {
        let mut m = map();
        let c = m.rule_condition(None, &["1".into(), "2".into()]).unwrap();
        let pro: Attributes = [("plan", AttrValue::from("pro"))].into_iter().collect();
        let adult: Attributes = [("age", AttrValue::Number(20.0))].into_iter().collect();
        assert_eq!(c.evaluate(&pro), Some(true));
        assert_eq!(c.evaluate(&adult), Some(true));
        let c = m
            .rule_condition(Some(&json!(["and", "1", ["not", "2"]])), &[])
            .unwrap();
        assert_eq!(c.evaluate(&pro), None, "age missing: unknown");
        assert!(m.rule_condition(Some(&json!([])), &["1".into()]).is_none());
        assert!(m.rule_condition(None, &[]).is_none());
    }

    #[test]
    fn unsupported_is_unknown() {
        let mut m = map();
        let c = m
            .rule_condition(Some(&json!(["or", "3", "9"])), &[])
            .unwrap();
        assert_eq!(c.evaluate(&Attributes::new()), None);
        assert_eq!(m.unsupported.len(), 2);
        let c = m.rule_condition(Some(&json!(["not"])), &[]).unwrap();
        assert_eq!(c.evaluate(&Attributes::new()), None);
    }
}

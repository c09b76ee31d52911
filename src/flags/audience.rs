//! Audience conditions: Optimizely typed-audience condition trees evaluated
//! with three-valued logic.
//!
//! Conditions arrive as JSON in the same shape as the `conditions` of an
//! Optimizely datafile audience:
//!
//! ```json
//! ["and",
//!   ["or", {"attribute": "email", "match": "substring", "value": "@acme.example"},
//!          {"attribute": "plan", "value": "enterprise"}],
//!   ["not", {"attribute": "beta_opt_out", "match": "exists"}]]
//! ```
//!
//! A list starts with an optional operator (`"and"`, `"or"`, `"not"`; a list
//! without one means `"or"`) followed by operands, each a nested list or a
//! leaf object. A bare leaf object is also a valid condition.
//!
//! Evaluation follows Optimizely's `condition_tree_evaluator` and
//! `custom_attribute_condition_evaluator`: every node evaluates to
//! `Some(true)`, `Some(false)` or `None` ("unknown", e.g. the attribute is
//! missing or has a type the matcher cannot compare). Unlike Optimizely,
//! malformed conditions (unknown match types, condition values of the wrong
//! type, ...) are rejected by [`Condition::from_json`] instead of evaluating
//! to unknown at decision time.
//!
//! This file holds the attribute and condition types and their evaluation;
//! parsing lives in [`parse`] and version comparison in [`semver`].

mod parse;
mod semver;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// Largest magnitude Optimizely accepts for numeric values (2^53); numbers
/// beyond it evaluate to unknown.
const MAX_SAFE_NUMBER: f64 = 9_007_199_254_740_992.0;

/// Maximum nesting depth of a condition tree accepted by
/// [`Condition::from_json`].
const MAX_DEPTH: usize = 64;

/// A typed user attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A text value.
    String(String),
    /// A numeric value. Only finite values with magnitude at most 2^53 take
    /// part in numeric comparisons; others evaluate to unknown.
    Number(f64),
    /// A boolean value.
    Bool(bool),
}

impl AttrValue {
    /// Types a textual value, such as one taken from a request header or a
    /// CLI `key=value` argument: `"true"` / `"false"` become [`AttrValue::Bool`],
    /// text that parses as a finite `f64` (Rust's `f64` syntax, so not
    /// `"nan"`, `"inf"` or anything overflowing to infinity) becomes
    /// [`AttrValue::Number`], and anything else stays an
    /// [`AttrValue::String`].
    ///
    /// Note that this types version-like text such as `"2.1"` as a number,
    /// which `semver_*` and `substring` conditions then treat as unknown.
    /// Inserting raw text as [`AttrValue::String`] instead keeps every
    /// matcher working, because `exact` and the numeric matchers also accept
    /// numeric and boolean text (see [`Leaf`]).
    pub fn from_text(s: &str) -> AttrValue {
        match s {
            "true" => AttrValue::Bool(true),
            "false" => AttrValue::Bool(false),
            _ => match parse_finite(s) {
                Some(n) => AttrValue::Number(n),
                None => AttrValue::String(s.to_owned()),
            },
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::String(s.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::String(s)
    }
}

impl From<f64> for AttrValue {
    fn from(n: f64) -> Self {
        AttrValue::Number(n)
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// A small ordered set of user attributes, keyed by name.
///
/// Inserting a key that is already present replaces its value in place.
/// Equality compares entries in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    entries: Vec<(String, AttrValue)>,
}

impl Attributes {
    /// An empty attribute set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing any earlier value for `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: AttrValue) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The attributes in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Attributes from a JSON object: string, number and boolean members are
    /// kept; members of any other type (null, arrays, objects) are skipped.
    pub fn from_json_object(map: &Map<String, Value>) -> Attributes {
        let mut attrs = Attributes::new();
        for (key, value) in map {
            let value = match value {
                Value::String(s) => AttrValue::String(s.clone()),
                Value::Bool(b) => AttrValue::Bool(*b),
                Value::Number(n) => match n.as_f64() {
                    Some(f) => AttrValue::Number(f),
                    None => continue,
                },
                Value::Null | Value::Array(_) | Value::Object(_) => continue,
            };
            attrs.insert(key.as_str(), value);
        }
        attrs
    }
}

impl<K: Into<String>> FromIterator<(K, AttrValue)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, AttrValue)>>(iter: I) -> Self {
        let mut attrs = Attributes::new();
        for (key, value) in iter {
            attrs.insert(key, value);
        }
        attrs
    }
}

/// An audience condition tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// False if any operand is false, else unknown if any operand is
    /// unknown, else true (so an empty `And` is true).
    And(Vec<Condition>),
    /// True if any operand is true, else unknown if any operand is unknown,
    /// else false (so an empty `Or` is false).
    Or(Vec<Condition>),
    /// Negation; unknown stays unknown.
    Not(Box<Condition>),
    /// A single attribute test.
    Leaf(Leaf),
}

/// A leaf condition: one test of one user attribute.
///
/// Leaf semantics follow Optimizely's custom-attribute evaluator. A leaf is
/// unknown (`None`) whenever the attribute is missing (except for
/// [`Match::Exists`]) or the attribute's type does not suit the matcher.
///
/// Extension to Optimizely, because header attributes arrive as text: when
/// the condition value is a number (for `exact`, `gt`, `ge`, `lt`, `le`), an
/// [`AttrValue::String`] attribute that parses as a finite number (as in
/// [`AttrValue::from_text`]) is compared numerically; and for `exact` with a
/// boolean condition value, the strings `"true"` / `"false"` compare as
/// booleans.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// Name of the user attribute tested.
    pub attribute: String,
    /// How the attribute is compared with `value`.
    pub matcher: Match,
    /// The condition value (`Null` when absent, as for `exists`).
    pub value: Value,
}

/// Leaf match types, as named in Optimizely datafiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Match {
    /// `"exact"`: equal string, boolean or number (the default match type).
    Exact,
    /// `"exists"`: the attribute is present (never unknown).
    Exists,
    /// `"substring"`: the attribute string contains the condition string.
    Substring,
    /// `"gt"`: attribute number > condition number.
    Gt,
    /// `"ge"`: attribute number >= condition number.
    Ge,
    /// `"lt"`: attribute number < condition number.
    Lt,
    /// `"le"`: attribute number <= condition number.
    Le,
    /// `"semver_eq"`: attribute version equals the condition version.
    SemverEq,
    /// `"semver_lt"`: attribute version is lower than the condition version.
    SemverLt,
    /// `"semver_le"`: attribute version is lower than or equal to the
    /// condition version.
    SemverLe,
    /// `"semver_gt"`: attribute version is higher than the condition version.
    SemverGt,
    /// `"semver_ge"`: attribute version is higher than or equal to the
    /// condition version.
    SemverGe,
}

impl Match {
    /// Every match type.
    pub const ALL: [Match; 12] = [
        Match::Exact,
        Match::Exists,
        Match::Substring,
        Match::Gt,
        Match::Ge,
        Match::Lt,
        Match::Le,
        Match::SemverEq,
        Match::SemverLt,
        Match::SemverLe,
        Match::SemverGt,
        Match::SemverGe,
    ];

    /// The datafile name of this match type, e.g. `"semver_ge"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Match::Exact => "exact",
            Match::Exists => "exists",
            Match::Substring => "substring",
            Match::Gt => "gt",
            Match::Ge => "ge",
            Match::Lt => "lt",
            Match::Le => "le",
            Match::SemverEq => "semver_eq",
            Match::SemverLt => "semver_lt",
            Match::SemverLe => "semver_le",
            Match::SemverGt => "semver_gt",
            Match::SemverGe => "semver_ge",
        }
    }

    /// The match type with datafile name `name`, if any.
    pub fn from_name(name: &str) -> Option<Match> {
        Match::ALL.into_iter().find(|m| m.as_str() == name)
    }

    fn is_numeric(self) -> bool {
        matches!(self, Match::Gt | Match::Ge | Match::Lt | Match::Le)
    }

    fn is_semver(self) -> bool {
        matches!(
            self,
            Match::SemverEq | Match::SemverLt | Match::SemverLe | Match::SemverGt | Match::SemverGe
        )
    }
}

impl Condition {
    /// Parses a condition from its JSON form (see the module docs).
    ///
    /// Leaf objects take `attribute` (or Optimizely's alias `name`), an
    /// optional `match` (default `"exact"`), `value` (required except for
    /// `exists`) and an optional `type`, which must be `"custom_attribute"`.
    /// Unknown keys, unknown operators or match types, condition values of
    /// the wrong type for their match type (and numbers beyond ±2^53, which
    /// Optimizely never matches), invalid versions for `semver_*`, and `not`
    /// lists without exactly one operand are errors.
    pub fn from_json(v: &Value) -> Result<Condition, String> {
        parse::parse_node(v, 0)
    }

    /// Evaluates the condition against `attrs`: `Some(true)` / `Some(false)`,
    /// or `None` when the result is unknown.
    pub fn evaluate(&self, attrs: &Attributes) -> Option<bool> {
        match self {
            Condition::And(operands) => {
                let mut saw_unknown = false;
                for operand in operands {
                    match operand.evaluate(attrs) {
                        Some(false) => return Some(false),
                        None => saw_unknown = true,
                        Some(true) => {}
                    }
                }
                if saw_unknown {
                    None
                } else {
                    Some(true)
                }
            }
            Condition::Or(operands) => {
                let mut saw_unknown = false;
                for operand in operands {
                    match operand.evaluate(attrs) {
                        Some(true) => return Some(true),
                        None => saw_unknown = true,
                        Some(false) => {}
                    }
                }
                if saw_unknown {
                    None
                } else {
                    Some(false)
                }
            }
            Condition::Not(operand) => operand.evaluate(attrs).map(|b| !b),
            Condition::Leaf(leaf) => leaf.evaluate(attrs),
        }
    }

    /// Whether the condition definitely holds (unknown counts as no match).
    pub fn matches(&self, attrs: &Attributes) -> bool {
        self.evaluate(attrs) == Some(true)
    }
}

impl Leaf {
    /// Evaluates this leaf against `attrs` (see the type docs for the rules).
    pub fn evaluate(&self, attrs: &Attributes) -> Option<bool> {
        let user = attrs.get(&self.attribute);
        if self.matcher == Match::Exists {
            return Some(user.is_some());
        }
        let user = user?;
        match self.matcher {
            Match::Exists => Some(true),
            Match::Exact => exact_match(&self.value, user),
            Match::Substring => match (&self.value, user) {
                (Value::String(needle), AttrValue::String(haystack)) => {
                    Some(haystack.contains(needle.as_str()))
                }
                _ => None,
            },
            Match::Gt | Match::Ge | Match::Lt | Match::Le => {
                let target = condition_number(&self.value)?;
                let actual = attribute_number(user)?;
                Some(match self.matcher {
                    Match::Gt => actual > target,
                    Match::Ge => actual >= target,
                    Match::Lt => actual < target,
                    _ => actual <= target,
                })
            }
            Match::SemverEq
            | Match::SemverLt
            | Match::SemverLe
            | Match::SemverGt
            | Match::SemverGe => {
                let target = self.value.as_str()?;
                let AttrValue::String(actual) = user else {
                    return None;
                };
                let ord = semver::compare_versions(target, actual)?;
                Some(match self.matcher {
                    Match::SemverEq => ord == Ordering::Equal,
                    Match::SemverLt => ord == Ordering::Less,
                    Match::SemverLe => ord != Ordering::Greater,
                    Match::SemverGt => ord == Ordering::Greater,
                    _ => ord != Ordering::Less,
                })
            }
        }
    }
}

/// `exact` match of a user value against a condition value.
fn exact_match(condition: &Value, user: &AttrValue) -> Option<bool> {
    match condition {
        Value::String(expected) => match user {
            AttrValue::String(actual) => Some(actual == expected),
            AttrValue::Number(_) | AttrValue::Bool(_) => None,
        },
        Value::Bool(expected) => match user {
            AttrValue::Bool(actual) => Some(actual == expected),
            AttrValue::String(text) => match text.as_str() {
                "true" => Some(*expected),
                "false" => Some(!*expected),
                _ => None,
            },
            AttrValue::Number(_) => None,
        },
        Value::Number(_) => {
            let expected = condition_number(condition)?;
            let actual = attribute_number(user)?;
            Some(actual == expected)
        }
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Text parsed as a finite `f64`.
fn parse_finite(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Whether `n` is usable in a numeric comparison (finite, |n| <= 2^53).
fn is_safe_number(n: f64) -> bool {
    n.is_finite() && n.abs() <= MAX_SAFE_NUMBER
}

/// A JSON number usable in comparisons. Integers are range-checked exactly,
/// before any rounding to `f64`.
fn json_number(n: &serde_json::Number) -> Option<f64> {
    let in_range = if let Some(u) = n.as_u64() {
        u <= 1 << 53
    } else if let Some(i) = n.as_i64() {
        i.unsigned_abs() <= 1 << 53
    } else {
        true
    };
    n.as_f64().filter(|f| in_range && is_safe_number(*f))
}

/// A numeric condition value usable in comparisons.
fn condition_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => json_number(n),
        _ => None,
    }
}

/// A user attribute as a number usable in comparisons, including numeric
/// text.
fn attribute_number(user: &AttrValue) -> Option<f64> {
    match user {
        AttrValue::Number(n) => Some(*n),
        AttrValue::String(text) => parse_finite(text),
        AttrValue::Bool(_) => None,
    }
    .filter(|n| is_safe_number(*n))
}

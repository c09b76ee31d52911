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
        parse_node(v, 0)
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
                let ord = compare_versions(target, actual)?;
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

// ---------------------------------------------------------------------------
// Parsing

fn parse_node(v: &Value, depth: usize) -> Result<Condition, String> {
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

// ---------------------------------------------------------------------------
// Semantic versions, per Optimizely's SDKs (python-sdk
// `compare_user_version_with_target_version`, javascript-sdk
// `semantic_version.compareVersion`).
//
// A version is `N`, `N.N` or `N.N.N` (ASCII digits, no empty parts, no
// whitespace anywhere), optionally followed by a pre-release suffix
// (`-...`, when the first `-` comes before any `+`) or a build suffix
// (`+...`). The suffix is kept whole as one extra part. The target
// (condition) version only constrains the parts it has, so target "2.1"
// equals user "2.1.9".

/// Whether `v` carries a pre-release suffix: it has a `-` and no `+` before it.
fn is_pre_release(v: &str) -> bool {
    match (v.find('-'), v.find('+')) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(pre), Some(build)) => pre < build,
    }
}

/// Whether `v` carries a build suffix: it has a `+` and no `-` before it.
fn is_build(v: &str) -> bool {
    match (v.find('-'), v.find('+')) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(pre), Some(build)) => build < pre,
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits a version into its numeric parts plus an optional trailing suffix
/// part; `None` if the version is invalid.
fn split_version(v: &str) -> Option<Vec<&str>> {
    if v.chars().any(char::is_whitespace) {
        return None;
    }
    let delimiter = if is_pre_release(v) {
        Some('-')
    } else if is_build(v) {
        Some('+')
    } else {
        None
    };
    let (prefix, suffix) = match delimiter.and_then(|d| v.split_once(d)) {
        Some((prefix, suffix)) => (prefix, suffix),
        None => (v, ""),
    };
    let mut parts: Vec<&str> = prefix.split('.').collect();
    if parts.len() > 3 || !parts.iter().all(|p| is_digits(p)) {
        return None;
    }
    if !suffix.is_empty() {
        parts.push(suffix);
    }
    Some(parts)
}

/// Compares two strings of ASCII digits as unbounded integers.
fn compare_numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// How the user version compares with the target version (`Greater` means
/// the user version is higher), or `None` if either is invalid.
fn compare_versions(target: &str, user: &str) -> Option<Ordering> {
    let target_parts = split_version(target)?;
    let user_parts = split_version(user)?;
    let target_pre = is_pre_release(target);
    let target_build = is_build(target);
    let user_pre = is_pre_release(user);

    for (idx, target_part) in target_parts.iter().enumerate() {
        let Some(user_part) = user_parts.get(idx) else {
            return Some(if target_pre || target_build {
                Ordering::Greater
            } else {
                Ordering::Less
            });
        };
        if !is_digits(user_part) {
            match user_part.cmp(target_part) {
                Ordering::Less => {
                    return Some(if target_pre && !user_pre {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    })
                }
                Ordering::Greater => {
                    return Some(if !target_pre && user_pre {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    })
                }
                Ordering::Equal => {}
            }
        } else if is_digits(target_part) {
            match compare_numeric(user_part, target_part) {
                Ordering::Equal => {}
                other => return Some(other),
            }
        }
        // A numeric user part against a non-numeric target suffix: the
        // javascript-sdk compares it with NaN and moves on (the python-sdk
        // raises), so it counts as equal here.
    }
    if user_pre && !target_pre {
        return Some(Ordering::Less);
    }
    Some(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cond(v: Value) -> Condition {
        match Condition::from_json(&v) {
            Ok(c) => c,
            Err(e) => panic!("{v} failed to parse: {e}"),
        }
    }

    fn leaf(attribute: &str, matcher: &str, value: Value) -> Condition {
        cond(json!({"attribute": attribute, "match": matcher, "value": value}))
    }

    fn attrs1(key: &str, value: AttrValue) -> Attributes {
        let mut a = Attributes::new();
        a.insert(key, value);
        a
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::String(v.to_owned())
    }

    fn n(v: f64) -> AttrValue {
        AttrValue::Number(v)
    }

    fn b(v: bool) -> AttrValue {
        AttrValue::Bool(v)
    }

    const T: Option<bool> = Some(true);
    const F: Option<bool> = Some(false);
    const U: Option<bool> = None;

    /// Runs (condition value, attribute value or None for missing, expected).
    fn check_table(matcher: &str, cases: &[(Value, Option<AttrValue>, Option<bool>)]) {
        for (value, attr, expected) in cases {
            let c = leaf("x", matcher, value.clone());
            let attrs = match attr {
                Some(a) => attrs1("x", a.clone()),
                None => attrs1("other", s("y")),
            };
            assert_eq!(
                c.evaluate(&attrs),
                *expected,
                "{matcher} {value} vs {attr:?}"
            );
            assert_eq!(c.matches(&attrs), *expected == T);
        }
    }

    #[test]
    fn from_text_types_values() {
        assert_eq!(AttrValue::from_text("true"), b(true));
        assert_eq!(AttrValue::from_text("false"), b(false));
        assert_eq!(AttrValue::from_text("True"), s("True"));
        assert_eq!(AttrValue::from_text("42"), n(42.0));
        assert_eq!(AttrValue::from_text("-1.5e3"), n(-1500.0));
        assert_eq!(AttrValue::from_text(".5"), n(0.5));
        assert_eq!(AttrValue::from_text("nan"), s("nan"));
        assert_eq!(AttrValue::from_text("NaN"), s("NaN"));
        assert_eq!(AttrValue::from_text("inf"), s("inf"));
        assert_eq!(AttrValue::from_text("-infinity"), s("-infinity"));
        assert_eq!(AttrValue::from_text("1e999"), s("1e999"));
        assert_eq!(AttrValue::from_text(" 42"), s(" 42"));
        assert_eq!(AttrValue::from_text(""), s(""));
        assert_eq!(AttrValue::from_text("2.1.0"), s("2.1.0"));
        assert_eq!(AttrValue::from_text("a@b.c"), s("a@b.c"));
    }

    #[test]
    fn attributes_basics() {
        let mut a = Attributes::new();
        assert!(a.is_empty());
        a.insert("k", s("v1"));
        a.insert(String::from("n"), n(1.0));
        a.insert("k", s("v2"));
        assert_eq!(a.len(), 2);
        assert!(!a.is_empty());
        assert_eq!(a.get("k"), Some(&s("v2")));
        assert_eq!(a.get("n"), Some(&n(1.0)));
        assert_eq!(a.get("missing"), None);
        let collected: Vec<_> = a.iter().collect();
        assert_eq!(collected, vec![("k", &s("v2")), ("n", &n(1.0))]);
        let built: Attributes = [("k", s("v2")), ("n", n(1.0))].into_iter().collect();
        assert_eq!(built, a);
        assert_eq!(Attributes::default(), Attributes::new());
    }

    #[test]
    fn attributes_from_json_object() {
        let v = json!({"s": "x", "i": 3, "f": 2.5, "b": true, "null": null, "arr": [1], "obj": {}});
        let Value::Object(map) = v else {
            panic!("not an object")
        };
        let a = Attributes::from_json_object(&map);
        assert_eq!(a.len(), 4);
        assert_eq!(a.get("s"), Some(&s("x")));
        assert_eq!(a.get("i"), Some(&n(3.0)));
        assert_eq!(a.get("f"), Some(&n(2.5)));
        assert_eq!(a.get("b"), Some(&b(true)));
        assert_eq!(a.get("null"), None);
        assert_eq!(a.get("arr"), None);
        assert_eq!(a.get("obj"), None);
    }

    #[test]
    fn parses_shapes() {
        let bare = cond(json!({"attribute": "email", "match": "substring", "value": "@acme"}));
        assert_eq!(
            bare,
            Condition::Leaf(Leaf {
                attribute: "email".into(),
                matcher: Match::Substring,
                value: json!("@acme"),
            })
        );
        // Optimizely datafile form: "name", "type", default match "exact".
        let legacy = cond(json!({"name": "plan", "type": "custom_attribute", "value": "pro"}));
        assert_eq!(
            legacy,
            Condition::Leaf(Leaf {
                attribute: "plan".into(),
                matcher: Match::Exact,
                value: json!("pro"),
            })
        );
        assert_eq!(
            cond(json!({"attribute": "p", "match": null, "value": 1})),
            Condition::Leaf(Leaf {
                attribute: "p".into(),
                matcher: Match::Exact,
                value: json!(1),
            })
        );
        let exists = cond(json!({"attribute": "p", "match": "exists"}));
        assert_eq!(
            exists,
            Condition::Leaf(Leaf {
                attribute: "p".into(),
                matcher: Match::Exists,
                value: Value::Null,
            })
        );
        // Datafiles write exists conditions with "value": null.
        assert!(Condition::from_json(
            &json!({"name": "p", "type": "custom_attribute", "match": "exists", "value": null})
        )
        .is_ok());

        let l = json!({"attribute": "a", "value": 1});
        let Condition::Leaf(inner) = cond(l.clone()) else {
            panic!("leaf expected")
        };
        let lc = Condition::Leaf(inner);
        assert_eq!(
            cond(json!([l.clone(), l.clone()])),
            Condition::Or(vec![lc.clone(), lc.clone()])
        );
        assert_eq!(
            cond(json!(["or", l.clone()])),
            Condition::Or(vec![lc.clone()])
        );
        assert_eq!(cond(json!(["and"])), Condition::And(vec![]));
        assert_eq!(cond(json!([])), Condition::Or(vec![]));
        assert_eq!(
            cond(json!([
                "and",
                ["or", l.clone(), l.clone()],
                ["not", l.clone()]
            ])),
            Condition::And(vec![
                Condition::Or(vec![lc.clone(), lc.clone()]),
                Condition::Not(Box::new(lc.clone())),
            ])
        );
        for m in Match::ALL {
            assert_eq!(Match::from_name(m.as_str()), Some(m));
        }
        assert_eq!(Match::from_name("regex"), None);
    }

    #[test]
    fn parse_errors() {
        let cases: &[(Value, &str)] = &[
            (
                json!("and"),
                "a condition must be a list or a leaf object, got a string",
            ),
            (
                json!(3),
                "a condition must be a list or a leaf object, got a number",
            ),
            (
                json!(null),
                "a condition must be a list or a leaf object, got null",
            ),
            (
                json!(["xor", {"attribute": "a", "value": 1}]),
                "unknown operator \"xor\"",
            ),
            (
                json!(["and", "or"]),
                "a condition must be a list or a leaf object, got a string",
            ),
            (json!(["not"]), "\"not\" takes exactly one operand"),
            (
                json!(["not", {"attribute": "a", "value": 1}, {"attribute": "b", "value": 1}]),
                "\"not\" takes exactly one operand",
            ),
            (
                json!({"value": 1}),
                "leaf condition is missing \"attribute\"",
            ),
            (
                json!({"attribute": 1, "value": 1}),
                "leaf \"attribute\" must be a string",
            ),
            (
                json!({"attribute": "a", "name": "a", "value": 1}),
                "leaf condition has both \"attribute\" and \"name\"",
            ),
            (
                json!({"attribute": "a", "value": 1, "extra": 1}),
                "unknown key \"extra\" in leaf condition",
            ),
            (
                json!({"attribute": "a", "value": 1, "type": "third_party_dimension"}),
                "unsupported condition type \"third_party_dimension\" (only \"custom_attribute\")",
            ),
            (
                json!({"attribute": "a", "value": 1, "type": null}),
                "unsupported condition type null (only \"custom_attribute\")",
            ),
            (
                json!({"attribute": "a", "match": "foo", "value": 1}),
                "unknown match type \"foo\"",
            ),
            (
                json!({"attribute": "a", "match": 3, "value": 1}),
                "leaf \"match\" must be a string",
            ),
            (
                json!({"attribute": "a"}),
                "leaf condition for \"exact\" is missing \"value\"",
            ),
            (
                json!({"attribute": "a", "match": "gt"}),
                "leaf condition for \"gt\" is missing \"value\"",
            ),
            (
                json!({"attribute": "a", "value": null}),
                "condition value for \"exact\" must be a string, number or boolean",
            ),
            (
                json!({"attribute": "a", "value": [1]}),
                "condition value for \"exact\" must be a string, number or boolean",
            ),
            (
                json!({"attribute": "a", "value": 9_007_199_254_740_993_u64}),
                "condition value for \"exact\" must be between -2^53 and 2^53",
            ),
            (
                json!({"attribute": "a", "match": "substring", "value": 1}),
                "condition value for \"substring\" must be a string",
            ),
            (
                json!({"attribute": "a", "match": "gt", "value": "5"}),
                "condition value for \"gt\" must be a number",
            ),
            (
                json!({"attribute": "a", "match": "le", "value": true}),
                "condition value for \"le\" must be a number",
            ),
            (
                json!({"attribute": "a", "match": "lt", "value": -1e300}),
                "condition value for \"lt\" must be between -2^53 and 2^53",
            ),
            (
                json!({"attribute": "a", "match": "semver_ge", "value": 2}),
                "condition value for \"semver_ge\" must be a version string",
            ),
            (
                json!({"attribute": "a", "match": "semver_eq", "value": "1.2.3.4"}),
                "condition value for \"semver_eq\" is not a valid version: \"1.2.3.4\"",
            ),
            (
                json!({"attribute": "a", "match": "semver_lt", "value": "v1.2"}),
                "condition value for \"semver_lt\" is not a valid version: \"v1.2\"",
            ),
        ];
        for (v, expected) in cases {
            assert_eq!(
                Condition::from_json(v).as_ref().map_err(String::as_str),
                Err(*expected),
                "{v}"
            );
        }
    }

    #[test]
    fn parse_rejects_excessive_nesting() {
        let mut v = json!({"attribute": "a", "value": 1});
        for _ in 0..=MAX_DEPTH {
            v = json!(["and", v]);
        }
        assert!(Condition::from_json(&v).is_err());
        let mut ok = json!({"attribute": "a", "value": 1});
        for _ in 0..MAX_DEPTH {
            ok = json!(["and", ok]);
        }
        assert!(Condition::from_json(&ok).is_ok());
    }

    #[test]
    fn exact_table() {
        check_table(
            "exact",
            &[
                (json!("Lacerta"), Some(s("Lacerta")), T),
                (json!("Lacerta"), Some(s("The Big Dipper")), F),
                (json!("Lacerta"), Some(s("lacerta")), F),
                (json!("Lacerta"), Some(b(false)), U),
                (json!("Lacerta"), None, U),
                (json!("42"), Some(n(42.0)), U),
                (json!(9000), Some(n(9000.0)), T),
                (json!(9000.0), Some(n(9000.0)), T),
                (json!(9000), Some(n(8000.0)), F),
                (json!(9000), Some(s("hi")), U),
                (json!(9000), Some(b(true)), U),
                (json!(9000), None, U),
                (json!(1.5), Some(n(1.5)), T),
                (json!(1), Some(n(9_007_199_254_740_994.0)), U),
                (json!(1), Some(n(f64::INFINITY)), U),
                (json!(1), Some(n(f64::NAN)), U),
                (json!(false), Some(b(false)), T),
                (json!(false), Some(b(true)), F),
                (json!(false), Some(n(0.0)), U),
                (json!(false), None, U),
                // Extensions: numeric and boolean text.
                (json!(9000), Some(s("9000")), T),
                (json!(9000), Some(s("9000.0")), T),
                (json!(9000), Some(s("9001")), F),
                (json!(9000), Some(s("1e999")), U),
                (json!(9000), Some(s("NaN")), U),
                (json!(true), Some(s("true")), T),
                (json!(true), Some(s("false")), F),
                (json!(false), Some(s("false")), T),
                (json!(false), Some(s("true")), F),
                (json!(true), Some(s("yes")), U),
                (json!(true), Some(s("TRUE")), U),
            ],
        );
    }

    #[test]
    fn exists_table() {
        check_table(
            "exists",
            &[
                (Value::Null, None, F),
                (Value::Null, Some(s("hi")), T),
                (Value::Null, Some(s("")), T),
                (Value::Null, Some(n(10.0)), T),
                (Value::Null, Some(b(false)), T),
            ],
        );
    }

    #[test]
    fn substring_table() {
        check_table(
            "substring",
            &[
                (json!("buy now"), Some(s("Limited time, buy now!")), T),
                (json!("buy now"), Some(s("Breaking news!")), F),
                (json!("@acme.example"), Some(s("jo@acme.example")), T),
                (json!(""), Some(s("anything")), T),
                (json!("buy now"), Some(n(10.0)), U),
                (json!("1"), Some(n(10.0)), U),
                (json!("buy now"), Some(b(true)), U),
                (json!("buy now"), None, U),
            ],
        );
    }

    #[test]
    fn numeric_tables() {
        check_table(
            "gt",
            &[
                (json!(48), Some(n(48.1)), T),
                (json!(48), Some(n(49.0)), T),
                (json!(48), Some(n(47.9)), F),
                (json!(48), Some(n(48.0)), F),
                (json!(48.2), Some(n(48.3)), T),
                (json!(48.2), Some(n(48.2)), F),
                (json!(48), Some(s("a long way")), U),
                (json!(48), Some(b(false)), U),
                (json!(48), Some(n(f64::INFINITY)), U),
                (json!(48), Some(n(9_007_199_254_740_994.0)), U),
                (json!(48), None, U),
                (json!(48), Some(s("49")), T),
                (json!(48), Some(s("-49")), F),
            ],
        );
        check_table(
            "ge",
            &[
                (json!(48), Some(n(48.0)), T),
                (json!(48), Some(n(48.1)), T),
                (json!(48), Some(n(47.9)), F),
                (json!(48.2), Some(n(48.2)), T),
                (json!(48), Some(s("48")), T),
                (json!(48), Some(s("x")), U),
                (json!(48), None, U),
            ],
        );
        check_table(
            "lt",
            &[
                (json!(48), Some(n(47.9)), T),
                (json!(48), Some(n(48.0)), F),
                (json!(48), Some(n(49.0)), F),
                (json!(48.2), Some(n(48.1)), T),
                (json!(48), Some(n(-9_007_199_254_740_992.0)), T),
                (json!(48), Some(b(true)), U),
                (json!(48), None, U),
            ],
        );
        check_table(
            "le",
            &[
                (json!(48), Some(n(48.0)), T),
                (json!(48), Some(n(47.9)), T),
                (json!(48), Some(n(48.1)), F),
                (json!(48.2), Some(n(48.2)), T),
                (json!(48), Some(s("48.0")), T),
                (json!(48), Some(s("")), U),
                (json!(48), None, U),
            ],
        );
    }

    #[test]
    fn semver_evaluator_table() {
        // Expectations from the Optimizely SDK test suites (python-sdk
        // tests/helpers_tests/test_condition.py), target version "2.0".
        let t = json!("2.0");
        check_table(
            "semver_eq",
            &[
                (t.clone(), Some(s("2.0.0")), T),
                (t.clone(), Some(s("2.0")), T),
                (t.clone(), Some(s("2.9")), F),
                (t.clone(), Some(s("1.9")), F),
                (t.clone(), Some(b(true)), U),
                (t.clone(), Some(n(37.0)), U),
                (t.clone(), Some(s("3.7.2.2")), U),
                (t.clone(), Some(s("+")), U),
                (t.clone(), None, U),
            ],
        );
        check_table(
            "semver_le",
            &[
                (t.clone(), Some(s("2.0.0")), T),
                (t.clone(), Some(s("1.9")), T),
                (t.clone(), Some(s("2.5.1")), F),
            ],
        );
        check_table(
            "semver_ge",
            &[
                (t.clone(), Some(s("2.0.0")), T),
                (t.clone(), Some(s("2.9")), T),
                (t.clone(), Some(s("1.9")), F),
            ],
        );
        check_table(
            "semver_lt",
            &[
                (t.clone(), Some(s("1.9")), T),
                (t.clone(), Some(s("2.0.0")), F),
                (t.clone(), Some(s("2.5.1")), F),
            ],
        );
        check_table(
            "semver_gt",
            &[
                (t.clone(), Some(s("2.9")), T),
                (t.clone(), Some(s("2.0.0")), F),
                (t.clone(), Some(s("1.9")), F),
                (t.clone(), Some(b(true)), U),
                (t.clone(), Some(n(37.0)), U),
                (t.clone(), Some(s("3.7.2.2")), U),
                (t.clone(), Some(s("+")), U),
            ],
        );
        // Target "2.1" only constrains major and minor.
        check_table(
            "semver_eq",
            &[
                (json!("2.1"), Some(s("2.1.9")), T),
                (json!("2.1"), Some(s("2.10")), F),
            ],
        );
    }

    #[test]
    fn compare_versions_table() {
        use Ordering::{Equal, Greater, Less};
        // (target, user, user compared with target): the expectations of
        // the Optimizely python-sdk and javascript-sdk semantic-version tests.
        let cases: &[(&str, &str, Ordering)] = &[
            ("2.0.1", "2.0.1", Equal),
            ("2.9.9-beta", "2.9.9-beta", Equal),
            ("2.1", "2.1.0", Equal),
            ("2", "2.12", Equal),
            ("2.9", "2.9.1", Equal),
            ("2.9.1", "2.9.1+beta", Equal),
            ("2.9+beta", "2.9+beta", Equal),
            ("2.9.9+beta", "2.9.9+beta", Equal),
            ("2.9.9+beta-alpha", "2.9.9+beta-alpha", Equal),
            ("2.2.3", "2.2.3+beta", Equal),
            ("2.0.0", "2.0.1", Greater),
            ("2.0", "3.0.1", Greater),
            ("2.0.0", "2.1", Greater),
            ("2.1.2-beta", "2.1.2-release", Greater),
            ("2.1.3-beta1", "2.1.3-beta2", Greater),
            ("2.9.9-beta", "2.9.9", Greater),
            ("2.9.9+beta", "2.9.9", Greater),
            ("3.7.0-prerelease+build", "3.7.0-prerelease+rc", Greater),
            ("2.2.3-beta-beta1", "2.2.3-beta-beta2", Greater),
            ("2.2.3-beta+beta1", "2.2.3-beta+beta2", Greater),
            ("2.2.3+beta2-beta1", "2.2.3+beta3-beta2", Greater),
            ("2.2.3+beta", "2.2.3", Greater),
            ("2.0.1", "2.0.0", Less),
            ("3.0", "2.0.1", Less),
            ("2.3", "2.0.1", Less),
            ("2.3.5", "2.3.1", Less),
            ("2.9.8", "2.9", Less),
            ("3.1", "3", Less),
            ("2.1.2-release", "2.1.2-beta", Less),
            ("2.9.9+beta", "2.9.9-beta", Less),
            (
                "3.7.0+build3.7.0-prerelease+build",
                "3.7.0-prerelease",
                Less,
            ),
            ("2.1.3-beta-beta2", "2.1.3-beta", Less),
            ("2.1.3-beta1+beta3", "2.1.3-beta1+beta2", Less),
            ("2.1.3", "2.1.3-beta", Less),
            // Numeric parts compare as integers, not text.
            ("2.9", "2.10", Greater),
            ("2.010", "2.10", Equal),
            (
                "1.0.99999999999999999999999",
                "1.0.100000000000000000000000",
                Greater,
            ),
        ];
        for &(target, user, expected) in cases {
            assert_eq!(
                compare_versions(target, user),
                Some(expected),
                "target {target} user {user}"
            );
        }
        let invalid = [
            "-",
            ".",
            "..",
            "+",
            "+test",
            " ",
            "2 .3. 0",
            "2.",
            ".2.2",
            "3.7.2.2",
            "3.x",
            ",",
            "+build-prerelease",
            "2..2",
            "",
            "v1.2.3",
            "1.2.3\t",
        ];
        for version in invalid {
            assert_eq!(compare_versions("2.1.0", version), None, "user {version:?}");
            assert_eq!(
                compare_versions(version, "2.1.0"),
                None,
                "target {version:?}"
            );
        }
    }

    /// A leaf on attribute "t" (set to true below) that evaluates to `r`.
    fn fixed(r: Option<bool>) -> Condition {
        match r {
            Some(v) => leaf("t", "exact", json!(v)),
            None => leaf("missing", "exact", json!(true)),
        }
    }

    #[test]
    fn three_valued_truth_tables() {
        let attrs = attrs1("t", b(true));
        let vals = [T, F, U];
        for x in vals {
            assert_eq!(fixed(x).evaluate(&attrs), x);
            let not = Condition::Not(Box::new(fixed(x)));
            assert_eq!(not.evaluate(&attrs), x.map(|v| !v));
            for y in vals {
                let and = Condition::And(vec![fixed(x), fixed(y)]).evaluate(&attrs);
                let or = Condition::Or(vec![fixed(x), fixed(y)]).evaluate(&attrs);
                let expected_and = if x == F || y == F {
                    F
                } else if x == U || y == U {
                    U
                } else {
                    T
                };
                let expected_or = if x == T || y == T {
                    T
                } else if x == U || y == U {
                    U
                } else {
                    F
                };
                assert_eq!(and, expected_and, "and {x:?} {y:?}");
                assert_eq!(or, expected_or, "or {x:?} {y:?}");
            }
        }
        assert_eq!(Condition::And(vec![]).evaluate(&attrs), T);
        assert_eq!(Condition::Or(vec![]).evaluate(&attrs), F);
        assert_eq!(cond(json!([])).evaluate(&attrs), F);
        assert_eq!(cond(json!(["and"])).evaluate(&attrs), T);
    }

    #[test]
    fn nested_tree() {
        let tree = cond(json!([
            "and",
            [
                "or",
                {"attribute": "email", "match": "substring", "value": "@acme.example"},
                {"attribute": "plan", "value": "enterprise"}
            ],
            ["not", {"attribute": "opt_out", "match": "exists"}]
        ]));
        let mut a = Attributes::new();
        a.insert("email", s("jo@acme.example"));
        assert_eq!(tree.evaluate(&a), T);
        a.insert("opt_out", b(false));
        assert_eq!(tree.evaluate(&a), F);

        let mut a = Attributes::new();
        a.insert("plan", s("enterprise"));
        assert_eq!(tree.evaluate(&a), T);
        a.insert("plan", s("free"));
        // email missing -> unknown, plan false -> or is unknown; not(exists) true.
        assert_eq!(tree.evaluate(&a), U);
        assert!(!tree.matches(&a));
        a.insert("email", s("jo@other.example"));
        assert_eq!(tree.evaluate(&a), F);

        // Optimizely's datafile form with implicit "or" nesting.
        let legacy = cond(json!(["and", ["or", ["or",
            {"name": "device_type", "type": "custom_attribute", "value": "iPhone", "match": "substring"}]],
            ["or", ["or", {"name": "num_users", "type": "custom_attribute", "value": 15, "match": "exact"}]],
            ["or", ["or", {"name": "decimal_value", "type": "custom_attribute", "value": 2.5, "match": "gt"}]]]));
        let attrs: Attributes = [
            ("device_type", s("my iPhone")),
            ("num_users", n(15.0)),
            ("decimal_value", n(2.6)),
        ]
        .into_iter()
        .collect();
        assert_eq!(legacy.evaluate(&attrs), T);
        let attrs: Attributes = [
            ("device_type", s("my iPhone")),
            ("num_users", AttrValue::from_text("15")),
            ("decimal_value", s("2.4")),
        ]
        .into_iter()
        .collect();
        assert_eq!(legacy.evaluate(&attrs), F);
    }

    #[test]
    fn programmatic_leaf_with_bad_value_is_unknown() {
        let attrs = attrs1("x", s("1.0"));
        for matcher in Match::ALL {
            let l = Condition::Leaf(Leaf {
                attribute: "x".into(),
                matcher,
                value: json!({"bad": true}),
            });
            let expected = if matcher == Match::Exists { T } else { U };
            assert_eq!(l.evaluate(&attrs), expected, "{matcher:?}");
        }
    }

    // -- property tests ---------------------------------------------------

    fn attr_value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            prop::sample::select(vec![
                "", "a", "abc", "1", "2.5", "true", "false", "1.2.3", "2.0-beta", "x@y"
            ])
            .prop_map(s),
            (-5i32..5).prop_map(|i| n(f64::from(i) / 2.0)),
            any::<bool>().prop_map(b),
        ]
    }

    fn attributes() -> impl Strategy<Value = Attributes> {
        prop::collection::vec(
            (prop::sample::select(vec!["a", "b", "c"]), attr_value()),
            0..4,
        )
        .prop_map(|pairs| pairs.into_iter().collect())
    }

    fn leaf_json() -> impl Strategy<Value = Value> {
        let name = prop::sample::select(vec!["a", "b", "c", "d"]);
        let value = prop_oneof![
            prop::sample::select(vec!["a", "1", "true", "b"]).prop_map(|v| json!(v)),
            (-5i32..5).prop_map(|i| json!(f64::from(i) / 2.0)),
            any::<bool>().prop_map(|v| json!(v)),
        ];
        let numeric = (-5i32..5).prop_map(|i| json!(i));
        let version = prop::sample::select(vec!["1", "1.2", "1.2.3", "2.0-beta", "2.0.0+b"])
            .prop_map(|v| json!(v));
        prop_oneof![
            (name.clone(), value).prop_map(|(a, v)| json!({"attribute": a, "value": v})),
            name.clone()
                .prop_map(|a| json!({"attribute": a, "match": "exists"})),
            (name.clone(), prop::sample::select(vec!["a", "", "1"]))
                .prop_map(|(a, v)| json!({"attribute": a, "match": "substring", "value": v})),
            (
                name.clone(),
                prop::sample::select(vec!["gt", "ge", "lt", "le"]),
                numeric
            )
                .prop_map(|(a, m, v)| json!({"attribute": a, "match": m, "value": v})),
            (
                name,
                prop::sample::select(vec![
                    "semver_eq",
                    "semver_lt",
                    "semver_le",
                    "semver_gt",
                    "semver_ge"
                ]),
                version
            )
                .prop_map(|(a, m, v)| json!({"attribute": a, "match": m, "value": v})),
        ]
    }

    fn condition() -> impl Strategy<Value = Condition> {
        leaf_json()
            .prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(|v| {
                        let mut list = vec![json!("and")];
                        list.extend(v);
                        Value::Array(list)
                    }),
                    prop::collection::vec(inner.clone(), 0..4).prop_map(|v| {
                        let mut list = vec![json!("or")];
                        list.extend(v);
                        Value::Array(list)
                    }),
                    inner.prop_map(|c| json!(["not", c])),
                ]
            })
            .prop_map(cond)
    }

    proptest! {
        #[test]
        fn double_negation_is_identity(c in condition(), attrs in attributes()) {
            let nn = Condition::Not(Box::new(Condition::Not(Box::new(c.clone()))));
            prop_assert_eq!(nn.evaluate(&attrs), c.evaluate(&attrs));
        }

        #[test]
        fn single_operand_and_or_is_identity(c in condition(), attrs in attributes()) {
            prop_assert_eq!(Condition::And(vec![c.clone()]).evaluate(&attrs), c.evaluate(&attrs));
            prop_assert_eq!(Condition::Or(vec![c.clone()]).evaluate(&attrs), c.evaluate(&attrs));
        }

        #[test]
        fn de_morgan_holds(x in condition(), y in condition(), attrs in attributes()) {
            let lhs = Condition::Not(Box::new(Condition::And(vec![x.clone(), y.clone()])));
            let rhs = Condition::Or(vec![
                Condition::Not(Box::new(x)),
                Condition::Not(Box::new(y)),
            ]);
            prop_assert_eq!(lhs.evaluate(&attrs), rhs.evaluate(&attrs));
        }

        #[test]
        fn matches_is_evaluate_true(c in condition(), attrs in attributes()) {
            prop_assert_eq!(c.matches(&attrs), c.evaluate(&attrs) == Some(true));
        }

        #[test]
        fn from_text_never_yields_non_finite(text in ".{0,12}") {
            if let AttrValue::Number(v) = AttrValue::from_text(&text) {
                prop_assert!(v.is_finite());
            }
        }
    }
}

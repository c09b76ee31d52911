//! Unit and property tests of audience conditions.

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

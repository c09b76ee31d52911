//! Decision properties, through the public API on parsed configs: stickiness, monotonic
//! rollouts, allocation accuracy, audience fall-through and the kill switch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use switchyard::flags::audience::{AttrValue, Attributes};
use switchyard::flags::{DecisionReason, Flag};
use switchyard::Config;

fn config_with(rules: &str) -> Config {
    let text = format!(
        r#"
[providers.mock]
kind = "mock"
[audiences.internal]
conditions = ["or", {{ attribute = "team", match = "exact", value = "ai" }}]
[flags.f]
off_variation = "off"
[flags.f.variations.off]
provider = "mock"
model_id = "m-off"
[flags.f.variations.a]
provider = "mock"
model_id = "m-a"
[flags.f.variations.b]
provider = "mock"
model_id = "m-b"
[flags.f.variations.c]
provider = "mock"
model_id = "m-c"
{rules}
"#
    );
    Config::parse(&text, "decisions.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn flag(config: &Config) -> &Flag {
    config.flag("f").unwrap().1
}

fn key(flag: &Flag, i: usize) -> &str {
    &flag.variations[i].key
}

fn rollout(percent_bp: u32) -> Config {
    config_with(&format!(
        r#"
[[flags.f.rules]]
id = "rollout"
allocation = [{{ variation = "b", end = {percent_bp} }}]
[[flags.f.rules]]
id = "everyone-else"
allocation = [{{ variation = "a", end = 10000 }}]
"#
    ))
}

proptest! {
    #[test]
    fn the_same_id_always_gets_the_same_variation(id in "\\PC{0,40}") {
        let config = rollout(2500);
        let f = flag(&config);
        let attrs = Attributes::new();
        let first = f.decide(true, &id, &attrs);
        for _ in 0..5 {
            prop_assert_eq!(f.decide(true, &id, &attrs), first);
        }
    }

    #[test]
    fn growing_a_rollout_never_moves_a_user_out(id in "[a-z0-9-]{1,24}", small in 0u32..10000, extra in 0u32..10000) {
        let large = (small + extra).min(10000);
        let (before, after) = (rollout(small), rollout(large));
        let attrs = Attributes::new();
        let was = flag(&before).decide(true, &id, &attrs);
        let now = flag(&after).decide(true, &id, &attrs);
        if key(flag(&before), was.variation) == "b" {
            prop_assert_eq!(key(flag(&after), now.variation), "b");
        }
    }
}

#[test]
fn shares_match_the_allocation_within_one_percent_over_100k_ids() {
    let config = config_with(
        r#"
[[flags.f.rules]]
id = "abc"
allocation = [{ variation = "a", end = 2000 }, { variation = "b", end = 5000 }, { variation = "c", end = 10000 }]
"#,
    );
    let f = flag(&config);
    let attrs = Attributes::new();
    let mut counts = [0u32; 4];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let n = 100_000;
    for _ in 0..n {
        // xorshift: random ids without a dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let id = format!("user-{rng:x}");
        counts[f.decide(true, &id, &attrs).variation] += 1;
    }
    let share = |name: &str| {
        let i = f.variation_index(name).unwrap();
        f64::from(counts[i]) / f64::from(n)
    };
    for (name, expected) in [("a", 0.2), ("b", 0.3), ("c", 0.5)] {
        let got = share(name);
        assert!(
            (got - expected).abs() <= 0.01,
            "{name}: {got} vs {expected}"
        );
    }
    assert_eq!(counts[f.variation_index("off").unwrap()], 0);
}

#[test]
fn audience_rule_first_then_fall_through_to_everyone_else() {
    let config = config_with(
        r#"
[[flags.f.rules]]
id = "internal"
audience = "internal"
allocation = [{ variation = "c", end = 10000 }]
[[flags.f.rules]]
id = "half"
allocation = [{ variation = "b", end = 5000 }]
[[flags.f.rules]]
id = "everyone-else"
allocation = [{ variation = "a", end = 10000 }]
"#,
    );
    let f = flag(&config);
    let mut internal = Attributes::new();
    internal.insert("team", AttrValue::String("ai".into()));
    let d = f.decide(true, "u-1", &internal);
    assert_eq!(key(f, d.variation), "c");
    assert_eq!(f.rules[d.rule.unwrap()].id, "internal");
    assert_eq!(d.reason, DecisionReason::RuleMatch);

    // Not in the audience: the 50 % rule; those whose bucket runs off its end go to everyone-else.
    let none = Attributes::new();
    let mut seen_half = false;
    let mut seen_else = false;
    for i in 0..200 {
        let d = f.decide(true, &format!("u-{i}"), &none);
        match f.rules[d.rule.unwrap()].id.as_str() {
            "half" => {
                seen_half = true;
                assert_eq!(key(f, d.variation), "b");
                assert!(d.bucket.unwrap() < 5000);
            }
            "everyone-else" => {
                seen_else = true;
                assert_eq!(key(f, d.variation), "a");
                assert_eq!(d.reason, DecisionReason::EveryoneElse);
            }
            other => panic!("unexpected rule {other}"),
        }
    }
    assert!(seen_half && seen_else);
}

#[test]
fn not_bucketed_by_the_last_rule_gets_the_off_variation() {
    let config = config_with(
        r#"
[[flags.f.rules]]
id = "only"
allocation = [{ variation = "b", end = 100 }]
"#,
    );
    let f = flag(&config);
    let attrs = Attributes::new();
    let mut off = 0;
    for i in 0..500 {
        let d = f.decide(true, &format!("u-{i}"), &attrs);
        if d.reason == DecisionReason::NotBucketed {
            assert_eq!(key(f, d.variation), "off");
            assert_eq!(d.rule, None);
            off += 1;
        }
    }
    assert!(off > 400, "{off}");
}

#[test]
fn the_kill_switch_serves_the_off_variation_to_everyone() {
    let config = rollout(10000);
    let f = flag(&config);
    for i in 0..100 {
        let d = f.decide(false, &format!("u-{i}"), &Attributes::new());
        assert_eq!(key(f, d.variation), "off");
        assert_eq!(d.reason, DecisionReason::FlagDisabled);
        assert_eq!(d.bucket, None);
    }
}

#[test]
fn buckets_match_optimizely_for_the_same_rule_id() {
    // Optimizely's SDK test suites assert these buckets for user id + experiment id.
    let config = config_with(
        r#"
[[flags.f.rules]]
id = "1886780721"
allocation = [{ variation = "a", end = 10000 }]
"#,
    );
    let f = flag(&config);
    assert_eq!(
        f.decide(true, "ppid1", &Attributes::new()).bucket,
        Some(5254)
    );
    assert_eq!(
        f.decide(true, "ppid2", &Attributes::new()).bucket,
        Some(4299)
    );
}

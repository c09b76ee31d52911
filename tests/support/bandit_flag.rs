//! The experiment flag the bandit tests put a bandit on: `assist`, variations `control` and
//! `treatment` on the mock provider (model ids `model-control` / `model-treatment`), split
//! 50/50 by rule `exp`.

/// The flag's TOML, followed by its `[flags.assist.bandit]` table with `bandit` as the body.
pub fn assist(bandit: &str) -> String {
    format!(
        r#"
[flags.assist]
off_variation = "control"
stable_variation = "control"
[flags.assist.variations.control]
provider = "mock"
model_id = "model-control"
[flags.assist.variations.treatment]
provider = "mock"
model_id = "model-treatment"
[[flags.assist.rules]]
id = "exp"
allocation = [{{ variation = "control", end = 5000 }}, {{ variation = "treatment", end = 10000 }}]

[flags.assist.bandit]
{bandit}
"#
    )
}

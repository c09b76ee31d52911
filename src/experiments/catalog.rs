//! The metrics feedback events can carry: the built-in ones and those declared under
//! `[metrics]`, each with its kind, its valid range and how a user's events combine.

use std::collections::BTreeMap;

/// How one user's events of a metric combine into the user's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerUser {
    /// 1 if any event was 1 (conversion): users without events count as 0.
    Max,
    /// The sum (revenue): users without events count as 0.
    Sum,
    /// The mean of the user's events (CSAT, thumbs, hallucination): only users with events count.
    Mean,
}

/// One metric's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    /// The name events use.
    pub name: String,
    /// Whether values are 0/1.
    pub binary: bool,
    /// Inclusive bounds.
    pub min: f64,
    /// Inclusive bounds.
    pub max: f64,
    /// Whether only the listed values are allowed (thumbs: -1 or +1).
    pub allowed: Option<Vec<f64>>,
    /// How a user's events combine.
    pub per_user: PerUser,
    /// Whether higher is better (for `winner`/`loser`).
    pub higher_is_better: bool,
}

/// Every metric by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog(pub BTreeMap<String, MetricDef>);

fn def(
    name: &str,
    binary: bool,
    min: f64,
    max: f64,
    per_user: PerUser,
    higher_is_better: bool,
) -> MetricDef {
    MetricDef {
        name: name.into(),
        binary,
        min,
        max,
        allowed: None,
        per_user,
        higher_is_better,
    }
}

impl Default for Catalog {
    fn default() -> Self {
        let mut m = BTreeMap::new();
        for d in [
            def("conversion", true, 0.0, 1.0, PerUser::Max, true),
            def("revenue", false, 0.0, f64::MAX, PerUser::Sum, true),
            def("task_completed", true, 0.0, 1.0, PerUser::Mean, true),
            MetricDef {
                allowed: Some(vec![-1.0, 1.0]),
                ..def("thumbs", false, -1.0, 1.0, PerUser::Mean, true)
            },
            def("csat", false, 1.0, 5.0, PerUser::Mean, true),
            def("hallucination", false, 0.0, 1.0, PerUser::Mean, false),
        ] {
            m.insert(d.name.clone(), d);
        }
        Catalog(m)
    }
}

impl Catalog {
    /// Looks a metric up.
    pub fn get(&self, name: &str) -> Option<&MetricDef> {
        self.0.get(name)
    }

    /// Reads an event's `value` for `metric`: booleans as 0/1 where the metric allows, numbers
    /// within range.
    pub fn value(&self, metric: &MetricDef, v: &serde_json::Value) -> Result<f64, String> {
        let x = match v {
            serde_json::Value::Bool(b) if metric.binary || metric.name == "hallucination" => {
                f64::from(u8::from(*b))
            }
            serde_json::Value::Bool(_) => {
                return Err(format!("`{}` takes a number, not a boolean", metric.name))
            }
            serde_json::Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| "value is not a finite number".to_owned())?,
            serde_json::Value::Null => return Err("`value` is required".into()),
            _ => {
                return Err(format!(
                    "`value` of `{}` must be a number{}",
                    metric.name,
                    if metric.binary { " or a boolean" } else { "" }
                ))
            }
        };
        if !x.is_finite() {
            return Err("value is not a finite number".into());
        }
        if metric.binary && x != 0.0 && x != 1.0 {
            return Err(format!(
                "`{}` takes 0 or 1 (or a boolean), got {x}",
                metric.name
            ));
        }
        if let Some(allowed) = &metric.allowed {
            if !allowed.contains(&x) {
                return Err(format!(
                    "`{}` takes one of {allowed:?}, got {x}",
                    metric.name
                ));
            }
        }
        if x < metric.min || x > metric.max {
            return Err(format!(
                "`{}` takes values in [{}, {}], got {x}",
                metric.name,
                metric.min,
                if metric.max == f64::MAX {
                    "∞".to_owned()
                } else {
                    metric.max.to_string()
                }
            ));
        }
        Ok(x)
    }
}

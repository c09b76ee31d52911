//! `[metrics]`, `[experiments]`: the metric catalog and the results policy.

use super::*;

impl Validator<'_> {
    pub(super) fn catalog(&mut self, raw: &RawConfig) -> crate::experiments::catalog::Catalog {
        use crate::experiments::catalog::{Catalog, MetricDef, PerUser};
        let mut catalog = Catalog::default();
        for (name, m) in &raw.metrics {
            let path = KeyPath::root().key("metrics").key(name);
            if catalog.get(name).is_some() {
                self.err(&path, "this metric is built in");
                continue;
            }
            let binary = match m.kind.as_str() {
                "binary" => true,
                "numeric" => false,
                other => {
                    self.err(
                        &path.key("kind"),
                        format!("{other:?} is not one of \"binary\", \"numeric\""),
                    );
                    continue;
                }
            };
            let per_user = match m.per_user.as_deref() {
                None if binary => PerUser::Max,
                None => PerUser::Mean,
                Some("max") => PerUser::Max,
                Some("sum") => PerUser::Sum,
                Some("mean") => PerUser::Mean,
                Some(other) => {
                    self.err(
                        &path.key("per_user"),
                        format!("{other:?} is not one of \"max\", \"sum\", \"mean\""),
                    );
                    continue;
                }
            };
            let (min, max) = if binary {
                (0.0, 1.0)
            } else {
                (m.min.unwrap_or(f64::MIN), m.max.unwrap_or(f64::MAX))
            };
            if min > max {
                self.err(&path, "min is larger than max");
            }
            catalog.0.insert(
                name.clone(),
                MetricDef {
                    name: name.clone(),
                    binary,
                    min,
                    max,
                    allowed: None,
                    per_user,
                    higher_is_better: m.higher_is_better.unwrap_or(true),
                },
            );
        }
        catalog
    }

    pub(super) fn experiment_policy(
        &mut self,
        raw: &RawConfig,
    ) -> crate::experiments::results::Policy {
        let mut p = crate::experiments::results::Policy::default();
        let path = KeyPath::root().key("experiments");
        let e = &raw.experiments;
        if let Some(a) = e.alpha {
            if a > 0.0 && a < 1.0 {
                p.alpha = a;
            } else {
                self.err(
                    &path.key("alpha"),
                    format!("{a} is out of range (0 < alpha < 1)"),
                );
            }
        }
        if let Some(r) = e.relative_effect {
            if r > 0.0 && r.is_finite() {
                p.relative_effect = r;
            } else {
                self.err(&path.key("relative_effect"), "must be a positive number");
            }
        }
        for (key, v, slot) in [
            ("min_users", e.min_users, &mut p.min_users),
            ("min_events", e.min_events, &mut p.min_events),
        ] {
            match v {
                Some(n) if n >= 0 => *slot = n as u64,
                Some(n) => self.err(&path.key(key), format!("{n} must not be negative")),
                None => {}
            }
        }
        if let Some(text) = e.retain_exposures.as_deref() {
            match parse_duration(text) {
                Ok(d) if d >= Duration::from_secs(3600) => p.retain_exposures = Some(d),
                Ok(_) => self.err(&path.key("retain_exposures"), "must be at least 1h"),
                Err(msg) => self.err(&path.key("retain_exposures"), msg),
            }
        }
        p
    }
}

//! `[[alerts]]`: tiered alert rules, validated against the flags.

use super::*;

impl Validator<'_> {
    pub(super) fn alerts(
        &mut self,
        raw: &RawConfig,
        flags: &HashMap<String, usize>,
    ) -> Vec<AlertRule> {
        let mut out = Vec::new();
        let mut names = Vec::new();
        for (i, a) in raw.alerts.iter().enumerate() {
            let path = KeyPath::root().key("alerts").index(i);
            let before = self.errors.len();
            if a.name.trim().is_empty() {
                self.err(&path.key("name"), "an alert needs a name");
            } else if names.contains(&a.name) {
                self.err(
                    &path.key("name"),
                    format!("duplicate alert name {:?}", a.name),
                );
            }
            names.push(a.name.clone());
            let flag_known = flags.contains_key(&a.flag) || raw.flags.contains_key(&a.flag);
            if !flag_known {
                self.err(&path.key("flag"), format!("unknown flag {:?}", a.flag));
            }
            if let (Some(v), Some(f)) = (&a.variation, raw.flags.get(&a.flag)) {
                if !f.variations.contains_key(v) {
                    self.err(
                        &path.key("variation"),
                        format!("unknown variation {v:?} of flag {:?}", a.flag),
                    );
                }
            }
            if a.metric.trim().is_empty() {
                self.err(&path.key("metric"), "an alert needs a metric");
            }
            let (direction, tiers_raw, tiers_key) = match (&a.above, &a.below) {
                (Some(t), None) => (AlertDirection::Above, Some(t), "above"),
                (None, Some(t)) => (AlertDirection::Below, Some(t), "below"),
                _ => {
                    self.err(&path, "an alert needs exactly one of `above` or `below`");
                    (AlertDirection::Above, None, "above")
                }
            };
            let tiers = tiers_raw.map_or([None; 3], |t| [t.info, t.warning, t.critical]);
            if tiers_raw.is_some() && tiers.iter().all(Option::is_none) {
                self.err(
                    &path.key(tiers_key),
                    "give at least one of info, warning, critical",
                );
            }
            // Tiers must be ordered: above → info ≤ warning ≤ critical; below → the reverse.
            let set: Vec<f64> = tiers.iter().flatten().copied().collect();
            let ordered = set.windows(2).all(|w| match direction {
                AlertDirection::Above => w[0] <= w[1],
                AlertDirection::Below => w[0] >= w[1],
            });
            if !ordered || set.iter().any(|x| !x.is_finite()) {
                self.err(&path.key(tiers_key), "thresholds must be finite and ordered info → warning → critical (increasing for `above`, decreasing for `below`)");
            }
            let window = self.duration(
                &path.key("window"),
                a.window.as_deref(),
                Duration::from_secs(300),
            );
            let min_samples = match a.min_samples {
                None => 100,
                Some(n) if n >= 0 => n as u64,
                Some(n) => {
                    self.err(
                        &path.key("min_samples"),
                        format!("{n} must not be negative"),
                    );
                    100
                }
            };
            let mut actions: [Vec<AlertAction>; 3] = Default::default();
            for (tier, list) in &a.actions {
                let Some(t) = ["info", "warning", "critical"]
                    .iter()
                    .position(|x| x == tier)
                else {
                    self.err(
                        &path.key("actions").key(tier),
                        "tiers are info, warning and critical",
                    );
                    continue;
                };
                for action in list {
                    match action.as_str() {
                        "notify" => actions[t].push(AlertAction::Notify),
                        "hold_rollout" => actions[t].push(AlertAction::HoldRollout),
                        "kill" => actions[t].push(AlertAction::Kill),
                        other => self.err(
                            &path.key("actions").key(tier),
                            format!("unknown action {other:?} (notify, hold_rollout, kill)"),
                        ),
                    }
                }
            }
            let webhooks = self.webhooks(&path.key("webhooks"), &a.webhooks);
            let source = self.source(&path.key("source"), a.source.as_deref());
            if self.errors.len() == before {
                out.push(AlertRule {
                    name: a.name.clone(),
                    flag: a.flag.clone(),
                    variation: a.variation.clone(),
                    metric: a.metric.clone(),
                    direction,
                    tiers,
                    relative_to_control: a.relative_to_control.unwrap_or(false),
                    window,
                    min_samples,
                    actions,
                    webhooks,
                    source,
                });
            }
        }
        out
    }

    /// Webhook URLs (`[[alerts]] webhooks`, `[flags.F.bandit] webhooks`): http(s) with a host.
    pub(super) fn webhooks(&mut self, path: &KeyPath, urls: &[String]) -> Vec<Uri> {
        let mut out = Vec::new();
        for (j, w) in urls.iter().enumerate() {
            match w.parse::<Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http") | Some("https"))
                        && u.host().is_some() =>
                {
                    out.push(u)
                }
                _ => self.err(&path.index(j), format!("invalid URL {w:?}")),
            }
        }
        out
    }
}

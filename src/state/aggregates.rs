//! Running experiment aggregates, maintained as exposures and feedback are ingested, so a
//! results query reads a handful of rows instead of every event of a flag.
//!
//! The rules are those of the full scan ([`super::Store::feedback_aggs_scan`], kept as the
//! reference): each user's events of a metric in a variation are combined first (count, sum,
//! max; mean = sum / count), and such a *group* counts in
//!
//! - bucket `u` while the user has no exposure row (counted only when no rule is asked for);
//! - bucket `n` (no rule) or `r<rule>` once the user's first exposure was to the group's
//!   variation in that rule, and the user has not switched;
//! - nowhere otherwise (exposed to another variation first, or switched).
//!
//! Tables (both backends): `switchyard_feedback_users` (one row per user, variation and
//! metric: n, s, m), `switchyard_aggregates` (per flag, bucket, variation and metric: the
//! number of groups, events and Σ, Σ² of the sums, maxima and means), and
//! `switchyard_exposure_counts` (per flag, bucket and variation: users first exposed and not
//! switched, and switched users). This module is the pure part: given the rows a batch
//! touches, what to write.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::{Exposure, FeedbackRow};

/// A user's combined events of one metric in one variation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct UserFigures {
    /// Events.
    pub n: i64,
    /// Their sum.
    pub s: f64,
    /// Their largest value.
    pub m: f64,
}

impl UserFigures {
    fn with(old: Option<UserFigures>, x: f64) -> UserFigures {
        match old {
            None => UserFigures { n: 1, s: x, m: x },
            Some(o) => UserFigures {
                n: o.n + 1,
                s: o.s + x,
                m: if x > o.m { x } else { o.m },
            },
        }
    }
}

/// A user's stored first exposure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExposureRow {
    /// The variation first served.
    pub variation: String,
    /// Its rule.
    pub rule: Option<String>,
    /// Served another variation since.
    pub switched: bool,
}

/// A change to one aggregate row (added to what is stored).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct AggDelta {
    /// Groups (reporting users).
    pub reporters: i64,
    /// Events.
    pub events: i64,
    /// Σ sums, Σ sums².
    pub s: f64,
    pub s2: f64,
    /// Σ maxima, Σ maxima².
    pub m: f64,
    pub m2: f64,
    /// Σ means, Σ means².
    pub a: f64,
    pub a2: f64,
}

impl AggDelta {
    /// Adds (`sign` = 1) or takes away (−1) one group's contribution.
    fn add(&mut self, f: &UserFigures, sign: i64) {
        let k = sign as f64;
        let mean = f.s / f.n as f64;
        self.reporters += sign;
        self.events += sign * f.n;
        self.s += k * f.s;
        self.s2 += k * f.s * f.s;
        self.m += k * f.m;
        self.m2 += k * f.m * f.m;
        self.a += k * mean;
        self.a2 += k * mean * mean;
    }
}

/// The bucket of users first exposed in `rule`.
pub(crate) fn rule_bucket(rule: Option<&str>) -> String {
    match rule {
        None => "n".to_owned(),
        Some(r) => format!("r{r}"),
    }
}

/// Where a user's group in `variation` counts (`None`: nowhere).
pub(crate) fn bucket(exposure: Option<&ExposureRow>, variation: &str) -> Option<String> {
    match exposure {
        None => Some("u".to_owned()),
        Some(e) if !e.switched && e.variation == variation => Some(rule_bucket(e.rule.as_deref())),
        Some(_) => None,
    }
}

/// (flag, user).
pub(crate) type UserKey = (String, String);
/// (flag, user, variation, metric).
pub(crate) type GroupKey = (String, String, String, String);
/// (flag, bucket, variation, metric).
pub(crate) type AggKey = (String, String, String, String);
/// (flag, bucket, variation).
pub(crate) type CountKey = (String, String, String);

/// What a feedback batch writes besides the raw events.
#[derive(Debug, Default)]
pub(crate) struct FeedbackPlan {
    /// Per-user rows, with their new figures.
    pub users: Vec<(GroupKey, UserFigures)>,
    /// Aggregate rows to add to.
    pub aggs: Vec<(AggKey, AggDelta)>,
}

/// Folds the freshly stored events (in order) into the users' figures and the aggregates.
/// `exposures` holds the stored first exposure of every (flag, user) of the batch that has
/// one; `users` the stored figures of every group of the batch that has some.
pub(crate) fn plan_feedback(
    fresh: &[&FeedbackRow],
    exposures: &HashMap<UserKey, ExposureRow>,
    mut users: HashMap<GroupKey, UserFigures>,
) -> FeedbackPlan {
    let mut touched: Vec<GroupKey> = Vec::new();
    let mut aggs: HashMap<AggKey, AggDelta> = HashMap::new();
    for r in fresh {
        let key = (
            r.flag.clone(),
            r.user.clone(),
            r.variation.clone(),
            r.metric.clone(),
        );
        let (old, new) = match users.entry(key.clone()) {
            Entry::Occupied(mut slot) => {
                let old = *slot.get();
                let new = UserFigures::with(Some(old), r.value);
                slot.insert(new);
                (Some(old), new)
            }
            Entry::Vacant(slot) => {
                let new = UserFigures::with(None, r.value);
                slot.insert(new);
                (None, new)
            }
        };
        touched.push(key);
        let exposure = exposures.get(&(r.flag.clone(), r.user.clone()));
        if let Some(b) = bucket(exposure, &r.variation) {
            let d = aggs
                .entry((r.flag.clone(), b, r.variation.clone(), r.metric.clone()))
                .or_default();
            if let Some(o) = old {
                d.add(&o, -1);
            }
            d.add(&new, 1);
        }
    }
    touched.sort();
    touched.dedup();
    let users = touched
        .into_iter()
        .filter_map(|k| users.get(&k).copied().map(|f| (k, f)))
        .collect();
    let mut aggs: Vec<(AggKey, AggDelta)> = aggs.into_iter().collect();
    aggs.sort_by(|a, b| a.0.cmp(&b.0));
    FeedbackPlan { users, aggs }
}

/// A batch of exposures reduced to one per (flag, user): the first, and whether a later one
/// in the batch had another variation. Sorted by (flag, user).
pub(crate) fn reduce_exposures(batch: &[Exposure]) -> Vec<(&Exposure, bool)> {
    let mut users: std::collections::BTreeMap<(&str, &str), (&Exposure, bool)> =
        std::collections::BTreeMap::new();
    for e in batch {
        match users.entry((&e.flag, &e.user)) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((e, false));
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let (first, switched) = slot.get_mut();
                if first.variation != e.variation {
                    *switched = true;
                }
            }
        }
    }
    users.into_values().collect()
}

/// What an exposure batch writes.
#[derive(Debug, Default)]
pub(crate) struct ExposurePlan<'a> {
    /// New users: (exposure, switched already).
    pub inserts: Vec<(&'a Exposure, bool)>,
    /// Known users now switched.
    pub switches: Vec<UserKey>,
    /// Exposure counts to add to: (users, switched).
    pub counts: Vec<(CountKey, (i64, i64))>,
    /// Aggregate rows to add to.
    pub aggs: Vec<(AggKey, AggDelta)>,
}

/// Whose stored feedback an exposure batch moves: users without an exposure row, and users
/// it switches.
pub(crate) fn users_moved(
    reduced: &[(&Exposure, bool)],
    existing: &HashMap<UserKey, ExposureRow>,
) -> Vec<UserKey> {
    reduced
        .iter()
        .filter(
            |(e, switched)| match existing.get(&(e.flag.clone(), e.user.clone())) {
                None => true,
                Some(x) => !x.switched && (x.variation != e.variation || *switched),
            },
        )
        .map(|(e, _)| (e.flag.clone(), e.user.clone()))
        .collect()
}

/// Plans an exposure batch: `existing` holds the stored exposure of every user of the batch
/// that has one, `groups` the stored feedback groups (variation, metric, figures) of the
/// users [`users_moved`] named.
pub(crate) fn plan_exposures<'a>(
    reduced: &[(&'a Exposure, bool)],
    existing: &HashMap<UserKey, ExposureRow>,
    groups: &HashMap<UserKey, Vec<(String, String, UserFigures)>>,
) -> ExposurePlan<'a> {
    let mut plan = ExposurePlan::default();
    let mut counts: HashMap<CountKey, (i64, i64)> = HashMap::new();
    let mut aggs: HashMap<AggKey, AggDelta> = HashMap::new();
    let none = Vec::new();
    for (e, switched) in reduced {
        let key = (e.flag.clone(), e.user.clone());
        let theirs = groups.get(&key).unwrap_or(&none);
        match existing.get(&key) {
            None => {
                plan.inserts.push((e, *switched));
                let rb = rule_bucket(e.rule.as_deref());
                let c = counts
                    .entry((e.flag.clone(), rb.clone(), e.variation.clone()))
                    .or_default();
                if *switched {
                    c.1 += 1;
                } else {
                    c.0 += 1;
                }
                for (variation, metric, f) in theirs {
                    aggs.entry((
                        e.flag.clone(),
                        "u".into(),
                        variation.clone(),
                        metric.clone(),
                    ))
                    .or_default()
                    .add(f, -1);
                    if !*switched && *variation == e.variation {
                        aggs.entry((
                            e.flag.clone(),
                            rb.clone(),
                            variation.clone(),
                            metric.clone(),
                        ))
                        .or_default()
                        .add(f, 1);
                    }
                }
            }
            Some(x) if !x.switched && (x.variation != e.variation || *switched) => {
                plan.switches.push(key.clone());
                let rb = rule_bucket(x.rule.as_deref());
                let c = counts
                    .entry((e.flag.clone(), rb.clone(), x.variation.clone()))
                    .or_default();
                c.0 -= 1;
                c.1 += 1;
                for (variation, metric, f) in theirs {
                    if *variation == x.variation {
                        aggs.entry((
                            e.flag.clone(),
                            rb.clone(),
                            variation.clone(),
                            metric.clone(),
                        ))
                        .or_default()
                        .add(f, -1);
                    }
                }
            }
            Some(_) => {}
        }
    }
    plan.counts = counts.into_iter().collect();
    plan.counts.sort_by(|a, b| a.0.cmp(&b.0));
    plan.aggs = aggs.into_iter().collect();
    plan.aggs.sort_by(|a, b| a.0.cmp(&b.0));
    plan
}

/// The bucket filter of a results query: `None` reads every bucket.
pub(crate) fn query_bucket(rule: Option<&str>) -> Option<String> {
    rule.map(|r| rule_bucket(Some(r)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row(user: &str, variation: &str, value: f64) -> FeedbackRow {
        FeedbackRow {
            event_id: format!("{user}-{value}"),
            flag: "f".into(),
            variation: variation.into(),
            user: user.into(),
            metric: "csat".into(),
            value,
            at_ms: 1,
        }
    }

    #[test]
    fn a_users_events_combine_before_they_are_summed() {
        let rows = [row("a", "v", 2.0), row("a", "v", 4.0), row("b", "v", 5.0)];
        let refs: Vec<&FeedbackRow> = rows.iter().collect();
        let plan = plan_feedback(&refs, &HashMap::new(), HashMap::new());
        assert_eq!(plan.users.len(), 2);
        let (key, d) = &plan.aggs[0];
        assert_eq!(key.1, "u");
        assert_eq!((d.reporters, d.events), (2, 3));
        assert!((d.s - 11.0).abs() < 1e-12 && (d.s2 - (36.0 + 25.0)).abs() < 1e-12);
        assert!((d.m - 9.0).abs() < 1e-12 && (d.a - 8.0).abs() < 1e-12);
    }

    #[test]
    fn a_switched_or_other_variation_user_counts_nowhere() {
        let x = ExposureRow {
            variation: "v".into(),
            rule: Some("r".into()),
            switched: false,
        };
        assert_eq!(bucket(Some(&x), "v").as_deref(), Some("rr"));
        assert_eq!(bucket(Some(&x), "w"), None);
        let s = ExposureRow {
            switched: true,
            ..x
        };
        assert_eq!(bucket(Some(&s), "v"), None);
        assert_eq!(bucket(None, "w").as_deref(), Some("u"));
    }
}

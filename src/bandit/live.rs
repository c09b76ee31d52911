//! The decision under a bandit: the experiment rule's allocation replaced by the epoch's
//! bucket ranges, and sticky users — a user keeps the variation of their first exposure
//! while that variation is live.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::flags::{Decision, DecisionReason, Flag};
use crate::state::RuntimeState;

/// Users remembered per process, at most (about 60 bytes each).
pub const STICKY_CAPACITY: usize = 1_000_000;
const SHARDS: usize = 64;

/// A bandit flag's ranges in force.
#[derive(Debug, Clone, PartialEq)]
pub struct BanditView {
    /// The rule whose allocation the ranges replace.
    pub rule: usize,
    /// `(variation index, exclusive end)`, consecutive, ending at 10,000.
    pub ranges: Vec<(usize, u32)>,
    /// Per variation: whether it has buckets (a sticky user keeps only a live variation).
    pub live: Vec<bool>,
    /// Each variation's key, shared with the sticky cache.
    names: Vec<Arc<str>>,
}

impl BanditView {
    /// The view of `flag` under the bandit's weights (`None`: the rule's configured
    /// allocation).
    pub fn new(
        flag: &Flag,
        rule: usize,
        weights: Option<&std::collections::BTreeMap<String, u32>>,
    ) -> BanditView {
        let mut ranges = Vec::new();
        match weights.filter(|w| !w.is_empty()) {
            Some(w) => {
                let mut end = 0;
                for v in arms(flag, rule) {
                    let n = w.get(&flag.variations[v].key).copied().unwrap_or(0);
                    if n > 0 {
                        end += n;
                        ranges.push((v, end));
                    }
                }
            }
            None => {
                if let Some(r) = flag.rules.get(rule) {
                    ranges = r
                        .allocation
                        .iter()
                        .filter_map(|a| a.variation.map(|v| (v, a.end)))
                        .collect();
                }
            }
        }
        let mut live = vec![false; flag.variations.len()];
        let mut start = 0;
        for (v, end) in &ranges {
            if *end > start {
                live[*v] = true;
            }
            start = *end;
        }
        BanditView {
            rule,
            ranges,
            live,
            names: flag
                .variations
                .iter()
                .map(|v| Arc::from(v.key.as_str()))
                .collect(),
        }
    }

    fn variation_at(&self, bucket: u32) -> Option<usize> {
        self.ranges
            .iter()
            .find(|(_, end)| bucket < *end)
            .map(|(v, _)| *v)
    }
}

/// The arms of a bandit: the variations of its rule's allocation, in allocation order.
pub fn arms(flag: &Flag, rule: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    if let Some(r) = flag.rules.get(rule) {
        for v in r.allocation.iter().filter_map(|a| a.variation) {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// Every flag's bandit view, by flag index, and the process's sticky users.
#[derive(Debug, Default)]
pub struct LiveBandits {
    /// By flag index; `None` for flags without a bandit.
    pub flags: Vec<Option<BanditView>>,
    /// Users' first variations (shared across rebuilds of the live view).
    pub sticky: Arc<Sticky>,
}

impl LiveBandits {
    /// The views of `config`'s bandits under `state`.
    pub fn new(config: &Config, state: &RuntimeState, sticky: Arc<Sticky>) -> LiveBandits {
        let flags = config
            .flags
            .iter()
            .map(|f| {
                let b = config.bandits.get(&f.key)?;
                let o = state.flags.get(&f.key).and_then(|o| o.bandit.as_ref());
                Some(BanditView::new(f, b.rule, o.map(|o| &o.weights)))
            })
            .collect();
        LiveBandits { flags, sticky }
    }

    /// The decision under the flag's bandit: a user the bandit's rule decided gets the
    /// variation of their first exposure while it is live, else the variation of their bucket
    /// in the ranges in force (and is remembered). Other decisions pass unchanged.
    pub fn decide(&self, index: usize, flag: &Flag, user: &str, d: Decision) -> Decision {
        let Some(Some(view)) = self.flags.get(index) else {
            return d;
        };
        if d.rule != Some(view.rule) || d.reason == DecisionReason::FlagDisabled {
            return d;
        }
        let Some(bucket) = d.bucket else {
            return d;
        };
        let key = self.sticky.key(&flag.key, user);
        if let Some(first) = self.sticky.get(key) {
            if let Some(i) = view.names.iter().position(|n| *n == first) {
                if view.live[i] {
                    return Decision { variation: i, ..d };
                }
            }
        }
        let Some(v) = view.variation_at(bucket) else {
            return d;
        };
        self.sticky.remember(key, &view.names[v]);
        Decision { variation: v, ..d }
    }
}

#[derive(Debug, Default)]
struct Shard {
    current: HashMap<u64, Arc<str>>,
    previous: HashMap<u64, Arc<str>>,
}

/// Users' first variations per (flag, user), bounded: each of 64 shards keeps two
/// generations; when the current one fills, it becomes the previous one and the oldest is
/// dropped. A user forgotten that way (not seen for about a million decisions on this
/// process) is decided by the ranges in force, which may move them; the exposure store still
/// holds their first exposure and results leave their later feedback out.
#[derive(Debug)]
pub struct Sticky {
    shards: Vec<Mutex<Shard>>,
    per_generation: usize,
    hasher: RandomState,
}

impl Default for Sticky {
    fn default() -> Self {
        Sticky::with_capacity(STICKY_CAPACITY)
    }
}

impl Sticky {
    /// A cache of about `capacity` users.
    pub fn with_capacity(capacity: usize) -> Sticky {
        Sticky {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_generation: (capacity / SHARDS / 2).max(1),
            hasher: RandomState::new(),
        }
    }

    /// The key of (flag, user).
    pub fn key(&self, flag: &str, user: &str) -> u64 {
        self.hasher.hash_one((flag, user))
    }

    fn shard(&self, key: u64) -> Option<std::sync::MutexGuard<'_, Shard>> {
        self.shards
            .get((key as usize) % SHARDS)
            .and_then(|m| m.lock().ok())
    }

    /// The first variation remembered for `key`.
    pub fn get(&self, key: u64) -> Option<Arc<str>> {
        let s = self.shard(key)?;
        s.current
            .get(&key)
            .or_else(|| s.previous.get(&key))
            .cloned()
    }

    /// Remembers `variation` for `key` unless one is remembered already.
    pub fn remember(&self, key: u64, variation: &Arc<str>) {
        let Some(mut s) = self.shard(key) else {
            return;
        };
        if s.current.contains_key(&key) {
            return;
        }
        let v = s.previous.remove(&key).unwrap_or_else(|| variation.clone());
        if s.current.len() >= self.per_generation {
            s.previous = std::mem::take(&mut s.current);
        }
        s.current.insert(key, v);
    }

    /// Users remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|m| m.lock().ok().map(|s| s.current.len() + s.previous.len()))
            .sum()
    }

    /// Whether no user is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_variation_is_kept_and_the_cache_is_bounded() {
        let s = Sticky::with_capacity(SHARDS * 2 * 10);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let k = s.key("f", "u1");
        s.remember(k, &a);
        s.remember(k, &b);
        assert_eq!(s.get(k).as_deref(), Some("a"));
        for i in 0..10_000 {
            s.remember(s.key("f", &format!("x{i}")), &b);
        }
        assert!(s.len() <= SHARDS * 2 * 10);
    }
}

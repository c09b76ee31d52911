//! Levels and the hysteresis state machine of one alert on one variation. Pure: no clock, no
//! I/O, so every rule of the scheme is tested here.

use crate::config::AlertDirection;

/// How many consecutive evaluations a new level must hold before it is announced.
pub const CONFIRM: u32 = 2;

/// The margin (relative to the threshold) a value must cross back by to leave a level.
pub const MARGIN: f64 = 0.05;

/// The smallest margin, for thresholds at or near zero.
pub const MIN_MARGIN: f64 = 1e-6;

/// An alert level; `Ok` means no tier is crossed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// No tier crossed.
    #[default]
    Ok,
    /// The info tier.
    Info,
    /// The warning tier.
    Warning,
    /// The critical tier.
    Critical,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [Level::Ok, Level::Info, Level::Warning, Level::Critical];

    /// The name used in JSON, logs and webhooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    /// The level of a name (`ok`, `info`, `warning`, `critical`).
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The value of the `switchyard_alert_level` gauge (0 ok … 3 critical).
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The index of the tier (info 0, warning 1, critical 2); `None` for `Ok`.
    pub fn tier(self) -> Option<usize> {
        (self as usize).checked_sub(1)
    }

    /// The level of tier index `t` (info 0, warning 1, critical 2).
    pub fn of_tier(t: usize) -> Level {
        match t {
            0 => Level::Info,
            1 => Level::Warning,
            _ => Level::Critical,
        }
    }
}

/// An alert's thresholds and which side of them is bad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Whether high or low values are bad.
    pub direction: AlertDirection,
    /// Info, warning, critical (any may be absent).
    pub tiers: [Option<f64>; 3],
}

impl Thresholds {
    /// The threshold of `level`, if it has one.
    pub fn of(&self, level: Level) -> Option<f64> {
        level
            .tier()
            .and_then(|t| self.tiers.get(t).copied().flatten())
    }

    fn crosses(&self, value: f64, threshold: f64) -> bool {
        match self.direction {
            AlertDirection::Above => value >= threshold,
            AlertDirection::Below => value <= threshold,
        }
    }

    /// Whether a value has *not* crossed back past `threshold` by the margin yet.
    fn still_holds(&self, value: f64, threshold: f64) -> bool {
        let margin = (threshold.abs() * MARGIN).max(MIN_MARGIN);
        match self.direction {
            AlertDirection::Above => value > threshold - margin,
            AlertDirection::Below => value < threshold + margin,
        }
    }

    /// The highest level whose threshold `value` crosses, without hysteresis.
    pub fn raw_level(&self, value: f64) -> Level {
        for t in (0..3).rev() {
            if let Some(th) = self.tiers[t] {
                if self.crosses(value, th) {
                    return Level::of_tier(t);
                }
            }
        }
        Level::Ok
    }

    /// The level `value` stands for when `current` is in force: a rise takes effect at the
    /// threshold; a fall only once the value has crossed back past the threshold of the level
    /// it leaves by the margin (so a value hovering at a threshold stays on the higher level).
    pub fn level_from(&self, value: f64, current: Level) -> Level {
        let raw = self.raw_level(value);
        if raw >= current {
            return raw;
        }
        for t in (0..3).rev() {
            let level = Level::of_tier(t);
            if level <= raw || level > current {
                continue;
            }
            if let Some(th) = self.tiers[t] {
                if self.still_holds(value, th) {
                    return level;
                }
            }
        }
        raw
    }
}

/// A change of the announced level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The level announced before.
    pub from: Level,
    /// The level announced now.
    pub to: Level,
}

/// Levels seen on consecutive evaluations, all on the same side of the announced level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// The level every evaluation of the streak reached at least (rising) or at most
    /// (falling): what is announced when the streak is long enough.
    pub level: Level,
    /// Consecutive evaluations.
    pub count: u32,
}

/// The announced level of one alert on one variation, with what is needed to change it.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// The level last announced (kept while data is insufficient).
    pub announced: Level,
    /// A change under way, not announced yet.
    pub streak: Option<Streak>,
    /// Per tier: whether its actions have run since the level last entered it.
    pub acted: [bool; 3],
}

impl Tracker {
    /// A tracker that announced `level` before (restored from the audit log).
    pub fn restored(level: Level) -> Tracker {
        let mut acted = [false; 3];
        for (t, a) in acted.iter_mut().enumerate() {
            *a = Level::of_tier(t) <= level;
        }
        Tracker {
            announced: level,
            streak: None,
            acted,
        }
    }

    /// One evaluation. `value` is `None` when the data is insufficient: nothing changes then,
    /// and a streak in progress is broken. Returns the change of announced level, if any.
    pub fn step(&mut self, thresholds: &Thresholds, value: Option<f64>) -> Option<Transition> {
        let Some(value) = value else {
            self.streak = None;
            return None;
        };
        let candidate = thresholds.level_from(value, self.announced);
        if candidate == self.announced {
            self.streak = None;
            return None;
        }
        let rising = candidate > self.announced;
        let streak = match self.streak {
            Some(s) if (s.level > self.announced) == rising => Streak {
                // The level every evaluation of the streak has reached.
                level: if rising {
                    s.level.min(candidate)
                } else {
                    s.level.max(candidate)
                },
                count: s.count + 1,
            },
            _ => Streak {
                level: candidate,
                count: 1,
            },
        };
        if streak.count < CONFIRM {
            self.streak = Some(streak);
            return None;
        }
        self.streak = None;
        let from = self.announced;
        self.announced = streak.level;
        // Leaving a tier re-arms its actions for the next time the level enters it.
        for (t, acted) in self.acted.iter_mut().enumerate() {
            if Level::of_tier(t) > streak.level {
                *acted = false;
            }
        }
        Some(Transition {
            from,
            to: streak.level,
        })
    }

    /// The tiers whose actions are due: entered (at or below the announced level) and not
    /// acted upon yet.
    pub fn due(&self) -> Vec<usize> {
        (0..3)
            .filter(|t| Level::of_tier(*t) <= self.announced && !self.acted[*t])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn above() -> Thresholds {
        Thresholds {
            direction: AlertDirection::Above,
            tiers: [Some(0.01), Some(0.05), Some(0.10)],
        }
    }

    fn below() -> Thresholds {
        Thresholds {
            direction: AlertDirection::Below,
            tiers: [Some(0.5), Some(0.3), Some(0.1)],
        }
    }

    /// Feeds values, returns the transitions in order.
    fn run(th: &Thresholds, t: &mut Tracker, values: &[Option<f64>]) -> Vec<(Level, Level)> {
        values
            .iter()
            .filter_map(|v| t.step(th, *v))
            .map(|tr| (tr.from, tr.to))
            .collect()
    }

    #[test]
    fn raw_levels_pick_the_highest_crossed_tier() {
        let th = above();
        assert_eq!(th.raw_level(0.0), Level::Ok);
        assert_eq!(th.raw_level(0.01), Level::Info);
        assert_eq!(th.raw_level(0.07), Level::Warning);
        assert_eq!(th.raw_level(0.5), Level::Critical);
        let th = below();
        assert_eq!(th.raw_level(0.9), Level::Ok);
        assert_eq!(th.raw_level(0.5), Level::Info);
        assert_eq!(th.raw_level(0.2), Level::Warning);
        assert_eq!(th.raw_level(0.0), Level::Critical);
    }

    #[test]
    fn missing_tiers_are_skipped() {
        let th = Thresholds {
            direction: AlertDirection::Above,
            tiers: [None, None, Some(1.0)],
        };
        assert_eq!(th.raw_level(0.9), Level::Ok);
        assert_eq!(th.raw_level(1.0), Level::Critical);
        assert_eq!(th.level_from(0.96, Level::Critical), Level::Critical);
        assert_eq!(th.level_from(0.94, Level::Critical), Level::Ok);
    }

    #[test]
    fn falling_needs_the_margin() {
        let th = above();
        // Warning at 0.05: the margin is 0.0025.
        assert_eq!(th.level_from(0.049, Level::Warning), Level::Warning);
        assert_eq!(th.level_from(0.0476, Level::Warning), Level::Warning);
        assert_eq!(th.level_from(0.0474, Level::Warning), Level::Info);
        assert_eq!(th.level_from(0.0, Level::Critical), Level::Ok);
        // From critical, a value just under critical stays critical; one in the middle of
        // warning is warning.
        assert_eq!(th.level_from(0.098, Level::Critical), Level::Critical);
        assert_eq!(th.level_from(0.07, Level::Critical), Level::Warning);
        let th = below();
        assert_eq!(th.level_from(0.31, Level::Warning), Level::Warning);
        assert_eq!(th.level_from(0.32, Level::Warning), Level::Info);
    }

    #[test]
    fn a_zero_threshold_has_a_small_absolute_margin() {
        let th = Thresholds {
            direction: AlertDirection::Below,
            tiers: [None, Some(0.0), None],
        };
        assert_eq!(th.level_from(0.0, Level::Ok), Level::Warning);
        assert_eq!(th.level_from(1e-7, Level::Warning), Level::Warning);
        assert_eq!(th.level_from(1e-5, Level::Warning), Level::Ok);
    }

    #[test]
    fn a_level_is_announced_after_two_evaluations() {
        let th = above();
        let mut t = Tracker::default();
        assert_eq!(t.step(&th, Some(0.07)), None);
        assert_eq!(
            t.step(&th, Some(0.07)),
            Some(Transition {
                from: Level::Ok,
                to: Level::Warning
            })
        );
        assert_eq!(t.step(&th, Some(0.07)), None);
        assert_eq!(t.announced, Level::Warning);
    }

    #[test]
    fn a_rising_streak_announces_the_level_held_throughout() {
        let th = above();
        let mut t = Tracker::default();
        // Warning then critical: warning held twice (critical ≥ warning), critical once.
        let got = run(&th, &mut t, &[Some(0.07), Some(0.2), Some(0.2), Some(0.2)]);
        assert_eq!(
            got,
            vec![
                (Level::Ok, Level::Warning),
                (Level::Warning, Level::Critical)
            ]
        );
        // Straight to critical when it holds twice.
        let mut t = Tracker::default();
        let got = run(&th, &mut t, &[Some(0.2), Some(0.2)]);
        assert_eq!(got, vec![(Level::Ok, Level::Critical)]);
    }

    #[test]
    fn resolve_is_announced_once() {
        let th = above();
        let mut t = Tracker::restored(Level::Critical);
        let got = run(&th, &mut t, &[Some(0.0), Some(0.0), Some(0.0), Some(0.0)]);
        assert_eq!(got, vec![(Level::Critical, Level::Ok)]);
    }

    #[test]
    fn hovering_at_a_threshold_makes_no_storm() {
        let th = above();
        let mut t = Tracker::default();
        // Alternating just above and just below warning, from ok: info is announced (both
        // values are ≥ info), warning never (never twice in a row).
        let mut values = Vec::new();
        for _ in 0..50 {
            values.push(Some(0.0501));
            values.push(Some(0.0499));
        }
        let got = run(&th, &mut t, &values);
        assert_eq!(got, vec![(Level::Ok, Level::Info)]);
        // Once at warning, hovering within the margin never leaves it.
        let mut t = Tracker::restored(Level::Warning);
        assert!(run(&th, &mut t, &values).is_empty());
        // Even hovering across the margin, one evaluation out of two, changes nothing.
        let mut values = Vec::new();
        for _ in 0..50 {
            values.push(Some(0.051));
            values.push(Some(0.040));
        }
        assert!(run(&th, &mut t, &values).is_empty());
        assert_eq!(t.announced, Level::Warning);
    }

    #[test]
    fn insufficient_data_changes_nothing_and_breaks_a_streak() {
        let th = above();
        let mut t = Tracker::default();
        let got = run(&th, &mut t, &[Some(0.2), None, Some(0.2), None, Some(0.2)]);
        assert!(got.is_empty());
        assert_eq!(t.announced, Level::Ok);
        let mut t = Tracker::restored(Level::Critical);
        assert!(run(&th, &mut t, &[None, None, None]).is_empty());
        assert_eq!(t.announced, Level::Critical);
    }

    #[test]
    fn actions_are_due_once_per_entry() {
        let th = above();
        let mut t = Tracker::default();
        run(&th, &mut t, &[Some(0.2), Some(0.2)]);
        assert_eq!(t.due(), vec![0, 1, 2]);
        t.acted = [true; 3];
        assert!(t.due().is_empty());
        // Down to warning: critical re-arms; back to critical: due again.
        run(&th, &mut t, &[Some(0.06), Some(0.06)]);
        assert_eq!(t.announced, Level::Warning);
        assert!(t.due().is_empty());
        run(&th, &mut t, &[Some(0.2), Some(0.2)]);
        assert_eq!(t.due(), vec![2]);
    }

    #[test]
    fn restored_trackers_do_not_act_again() {
        let t = Tracker::restored(Level::Warning);
        assert_eq!(t.acted, [true, true, false]);
        assert!(t.due().is_empty());
    }

    #[test]
    fn names_round_trip() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.as_str()), Some(l));
        }
        assert_eq!(Level::parse("insufficient_data"), None);
        assert_eq!(Level::Critical.code(), 3);
        assert_eq!(Level::Ok.tier(), None);
        assert_eq!(Level::Warning.tier(), Some(1));
    }
}

//! Windowed request counters: a ring of (instant, totals) snapshots per (flag, variation),
//! taken at evaluations, so a rate over `window` is the difference between the live totals and
//! the oldest snapshot still inside the window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::metrics::VariationTotals;

/// The most snapshots one ring keeps, whatever the windows and the evaluation interval.
pub const MAX_SNAPSHOTS: usize = 4096;

/// Snapshots of one variation's counters.
#[derive(Debug, Default)]
pub struct Ring {
    snaps: VecDeque<(Instant, VariationTotals)>,
}

/// Request counters over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    /// Requests.
    pub requests: u64,
    /// Upstream errors.
    pub errors: u64,
    /// Fallback answers.
    pub fallbacks: u64,
    /// How far back the baseline snapshot is (shorter than the window until the process has
    /// run that long).
    pub covered: Duration,
}

impl Ring {
    /// Records `totals` at `now` and forgets what no window needs any more. `retention` is the
    /// longest window read from this ring and `shortest` the shortest; snapshots are kept at
    /// least `shortest / 16` apart (and at most [`MAX_SNAPSHOTS`] of them over `retention`).
    pub fn record(
        &mut self,
        now: Instant,
        totals: VariationTotals,
        retention: Duration,
        shortest: Duration,
    ) {
        // Counters only grow; smaller ones mean new series (a variation's provider or model
        // changed on reload): the old snapshots no longer compare.
        if let Some((_, last)) = self.snaps.back() {
            if totals.requests < last.requests
                || totals.errors < last.errors
                || totals.fallbacks < last.fallbacks
            {
                self.snaps.clear();
            }
        }
        if let Some(oldest_kept) = now.checked_sub(retention) {
            while self.snaps.len() > 1 && self.snaps.front().is_some_and(|s| s.0 < oldest_kept) {
                self.snaps.pop_front();
            }
            if self.snaps.len() == 1 && self.snaps.front().is_some_and(|s| s.0 < oldest_kept) {
                self.snaps.pop_front();
            }
        }
        let spacing = (shortest / 16).max(retention / MAX_SNAPSHOTS as u32);
        let due = self
            .snaps
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= spacing);
        if due {
            self.snaps.push_back((now, totals));
        }
        while self.snaps.len() > MAX_SNAPSHOTS {
            self.snaps.pop_front();
        }
    }

    /// The counters over the last `window` up to `current` (the live totals at `now`): from
    /// the oldest snapshot inside the window, or the oldest there is when the ring is younger
    /// than the window.
    pub fn delta(&self, now: Instant, window: Duration, current: VariationTotals) -> Delta {
        let start = now.checked_sub(window);
        let base = self
            .snaps
            .iter()
            .find(|(at, _)| start.is_none_or(|s| *at >= s));
        let Some((at, base)) = base else {
            return Delta::default();
        };
        Delta {
            requests: current.requests.saturating_sub(base.requests),
            errors: current.errors.saturating_sub(base.errors),
            fallbacks: current.fallbacks.saturating_sub(base.fallbacks),
            covered: now.saturating_duration_since(*at),
        }
    }

    /// Snapshots held.
    pub fn len(&self) -> usize {
        self.snaps.len()
    }

    /// Whether no snapshot is held.
    pub fn is_empty(&self) -> bool {
        self.snaps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn totals(requests: u64, errors: u64) -> VariationTotals {
        VariationTotals {
            requests,
            errors,
            ..VariationTotals::default()
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn deltas_use_the_oldest_snapshot_inside_the_window() {
        let t0 = Instant::now();
        let mut r = Ring::default();
        for i in 0..20u64 {
            r.record(t0 + S * i as u32, totals(i * 10, i), 10 * S, 10 * S);
        }
        // At t0+19 s, the window of 10 s starts at t0+9 s: the baseline is the snapshot taken
        // then (90 requests, 9 errors).
        let now = t0 + 19 * S;
        let d = r.delta(now, 10 * S, totals(190, 19));
        assert_eq!((d.requests, d.errors), (100, 10));
        assert_eq!(d.covered, 10 * S);
        // Older snapshots were dropped.
        assert!(r.len() <= 11, "{}", r.len());
    }

    #[test]
    fn before_a_full_window_what_there_is_is_used() {
        let t0 = Instant::now();
        let mut r = Ring::default();
        r.record(t0, totals(5, 0), 300 * S, 300 * S);
        r.record(t0 + 20 * S, totals(50, 5), 300 * S, 300 * S);
        let d = r.delta(t0 + 20 * S, 300 * S, totals(50, 5));
        assert_eq!((d.requests, d.errors), (45, 5));
        assert_eq!(d.covered, 20 * S);
    }

    #[test]
    fn an_empty_ring_gives_nothing() {
        let r = Ring::default();
        assert_eq!(r.delta(Instant::now(), S, totals(10, 1)), Delta::default());
        assert!(r.is_empty());
    }

    #[test]
    fn a_counter_reset_starts_over() {
        let t0 = Instant::now();
        let mut r = Ring::default();
        r.record(t0, totals(100, 10), 60 * S, 60 * S);
        r.record(t0 + S * 10, totals(3, 0), 60 * S, 60 * S);
        assert_eq!(r.len(), 1);
        let d = r.delta(t0 + S * 20, 60 * S, totals(13, 1));
        assert_eq!((d.requests, d.errors), (10, 1));
    }

    #[test]
    fn snapshots_are_spaced_and_bounded() {
        let t0 = Instant::now();
        let mut r = Ring::default();
        // A 1 h window evaluated every 10 ms for 2 h: never more than MAX_SNAPSHOTS.
        let step = Duration::from_millis(10);
        for i in 0..720_000u32 {
            r.record(t0 + step * i, totals(u64::from(i), 0), 3600 * S, 3600 * S);
        }
        assert!(r.len() <= MAX_SNAPSHOTS, "{}", r.len());
        let now = t0 + step * 719_999;
        let d = r.delta(now, 3600 * S, totals(719_999, 0));
        // Within one spacing (1 h / 16 at most) of the exact 360,000.
        assert!(
            d.covered <= 3600 * S && d.covered >= 3300 * S,
            "{:?}",
            d.covered
        );
        // With a short window beside a longer one, the short one stays accurate to 1/16.
        let mut r = Ring::default();
        for i in 0..100_000u32 {
            r.record(t0 + step * i, totals(u64::from(i), 0), 60 * S, 2 * S);
        }
        let now = t0 + step * 99_999;
        let d = r.delta(now, 2 * S, totals(99_999, 0));
        assert!(
            d.covered <= 2 * S && d.covered >= Duration::from_millis(1800),
            "{:?}",
            d.covered
        );
    }
}

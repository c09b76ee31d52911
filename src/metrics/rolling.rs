//! Rolling-window latency quantiles from hdrhistogram, for the single-replica view
//! (`switchyard_latency_quantile_seconds` and the admin API's p50/p95/p99).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;

/// Rolling-window latency quantiles from hdrhistogram: a ring of slots, the oldest dropped as
/// time moves on. A slot's histogram (13 KB at this range and precision) is made when the
/// first latency of its period is recorded, so an idle variation holds none.
#[derive(Debug)]
pub(super) struct Rolling {
    slots: [Option<Box<Hdr<u32>>>; SLOTS],
    current: usize,
    slot_started: Instant,
    slot_len: Duration,
}

pub(super) const SLOTS: usize = 6;
pub(super) const SLOT_LEN: Duration = Duration::from_secs(10);

/// 1 µs to 1 h at two significant figures.
fn histogram() -> Option<Hdr<u32>> {
    Hdr::new_with_bounds(1, 3_600_000_000, 2).ok()
}

impl Rolling {
    pub(super) fn new() -> Rolling {
        Rolling {
            slots: Default::default(),
            current: 0,
            slot_started: Instant::now(),
            slot_len: SLOT_LEN,
        }
    }

    pub(super) fn rotate(&mut self) {
        let elapsed = self.slot_started.elapsed();
        if elapsed < self.slot_len {
            return;
        }
        let steps = (elapsed.as_nanos() / self.slot_len.as_nanos().max(1)) as usize;
        for _ in 0..steps.min(SLOTS) {
            self.current = (self.current + 1) % SLOTS;
            if let Some(slot) = self.slots.get_mut(self.current) {
                *slot = None;
            }
        }
        self.slot_started += self.slot_len * steps as u32;
    }

    pub(super) fn record(&mut self, d: Duration) {
        self.rotate();
        let micros = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let Some(slot) = self.slots.get_mut(self.current) else {
            return;
        };
        if slot.is_none() {
            *slot = histogram().map(Box::new);
        }
        if let Some(h) = slot {
            let _ = h.record(micros);
        }
    }

    /// Drops every slot's histogram (quantiles were turned off).
    pub(super) fn clear(&mut self) {
        self.slots = Default::default();
    }

    pub(super) fn quantiles(&mut self) -> (u64, [f64; 3]) {
        let (n, qs, _) = self.summary();
        (n, qs)
    }

    /// Count, p50/p95/p99 and sum (seconds) of the window.
    pub(super) fn summary(&mut self) -> (u64, [f64; 3], f64) {
        self.rotate();
        let mut live = self.slots.iter().flatten();
        let Some(first) = live.next() else {
            return (0, [0.0; 3], 0.0);
        };
        let mut merged = Hdr::clone(first);
        for s in live {
            let _ = merged.add(&**s);
        }
        let q = |p: f64| merged.value_at_quantile(p) as f64 / 1e6;
        let n = merged.len();
        (
            n,
            [q(0.5), q(0.95), q(0.99)],
            merged.mean() * n as f64 / 1e6,
        )
    }
}

//! Handles created on first use. A series exists in the registry (and in every scrape) only
//! once something was recorded in it: a configuration of a thousand flags costs nothing
//! until its variations see traffic, and a variation that never failed carries no error
//! series. Reading a handle that was never created reads zero and creates nothing.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock, Weak};

use prometheus::{Counter, Histogram, IntCounter};

use super::{HandleLabels, Metrics};

/// What every lazy handle of one (flag, variation, client API) needs to create itself.
#[derive(Debug)]
pub(super) struct Owner {
    pub(super) labels: Arc<HandleLabels>,
    pub(super) api: &'static str,
    pub(super) metrics: Weak<Metrics>,
    /// `[telemetry] latency_quantiles` of the config in force (shared by every owner).
    pub(super) quantiles: Arc<AtomicBool>,
}

/// Creates a handle from its owner's labels and an argument (the index of an outcome or an
/// error class; unused elsewhere).
type Make<T> = fn(&Owner, &Metrics, usize) -> prometheus::Result<T>;

/// A handle created the first time something is recorded in it.
pub struct Lazy<T> {
    cell: OnceLock<T>,
    owner: Arc<Owner>,
    make: Make<T>,
    arg: usize,
}

impl<T> std::fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("created", &self.cell.get().is_some())
            .finish()
    }
}

impl<T> Lazy<T> {
    pub(super) fn new(owner: &Arc<Owner>, make: Make<T>, arg: usize) -> Lazy<T> {
        Lazy {
            cell: OnceLock::new(),
            owner: owner.clone(),
            make,
            arg,
        }
    }

    /// The handle, created now if it was not yet (`None` once the registry is gone or the
    /// labels were refused: then nothing is recorded).
    pub(super) fn resolve(&self) -> Option<&T> {
        if let Some(h) = self.cell.get() {
            return Some(h);
        }
        let metrics = self.owner.metrics.upgrade()?;
        let h = (self.make)(&self.owner, &metrics, self.arg).ok()?;
        Some(self.cell.get_or_init(|| h))
    }

    /// The handle if it was created.
    pub(super) fn peek(&self) -> Option<&T> {
        self.cell.get()
    }
}

impl Lazy<Histogram> {
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(h) = self.resolve() {
            h.observe(v);
        }
    }

    /// Observations so far.
    pub fn get_sample_count(&self) -> u64 {
        self.peek().map_or(0, Histogram::get_sample_count)
    }

    /// Sum of the observations so far.
    pub fn get_sample_sum(&self) -> f64 {
        self.peek().map_or(0.0, Histogram::get_sample_sum)
    }
}

impl Lazy<IntCounter> {
    /// Adds one.
    pub fn inc(&self) {
        if let Some(c) = self.resolve() {
            c.inc();
        }
    }

    /// Adds `v`.
    pub fn inc_by(&self, v: u64) {
        if let Some(c) = self.resolve() {
            c.inc_by(v);
        }
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.peek().map_or(0, IntCounter::get)
    }
}

impl Lazy<Counter> {
    /// Adds `v`.
    pub fn inc_by(&self, v: f64) {
        if let Some(c) = self.resolve() {
            c.inc_by(v);
        }
    }

    /// The sum so far.
    pub fn get(&self) -> f64 {
        self.peek().map_or(0.0, Counter::get)
    }
}

//! The response cache's families: look-ups by result, the hit ratio and the bytes served and
//! stored, per (flag, variation).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::cache::Verdict;

/// `switchyard_cache_requests_total`, `switchyard_cache_hit_ratio`, `switchyard_cache_bytes_total`.
#[derive(Clone)]
pub struct CacheMetrics {
    requests: IntCounterVec,
    ratio: GaugeVec,
    bytes: IntCounterVec,
}

/// One variation's cache handles.
#[derive(Clone)]
pub struct CacheHandles {
    hit: IntCounter,
    miss: IntCounter,
    bypass: IntCounter,
    ratio: prometheus::Gauge,
    served: IntCounter,
    stored: IntCounter,
}

impl CacheMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<CacheMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_cache_requests_total",
                "Response cache look-ups of variations that cache, by result (hit, miss, bypass: not looked up).",
            ),
            &["flag", "variation", "result"],
        )?;
        let ratio = GaugeVec::new(
            Opts::new(
                "switchyard_cache_hit_ratio",
                "Hits over hits and misses since the process started, per variation.",
            ),
            &["flag", "variation"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "switchyard_cache_bytes_total",
                "Bytes of answers served from the cache (direction=served) and stored in it (direction=stored).",
            ),
            &["flag", "variation", "direction"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(ratio.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(CacheMetrics {
            requests,
            ratio,
            bytes,
        })
    }

    /// The handles of one variation (its labels come from the config).
    pub fn handles(&self, flag: &str, variation: &str) -> CacheHandles {
        let r = |result: &str| self.requests.with_label_values(&[flag, variation, result]);
        let b = |direction: &str| self.bytes.with_label_values(&[flag, variation, direction]);
        CacheHandles {
            hit: r("hit"),
            miss: r("miss"),
            bypass: r("bypass"),
            ratio: self.ratio.with_label_values(&[flag, variation]),
            served: b("served"),
            stored: b("stored"),
        }
    }
}

impl CacheHandles {
    /// Counts one look-up and updates the hit ratio.
    pub fn record(&self, verdict: Verdict) {
        match verdict {
            Verdict::Hit => self.hit.inc(),
            Verdict::Miss => self.miss.inc(),
            Verdict::Bypass => {
                self.bypass.inc();
                return;
            }
        }
        let (hits, misses) = (self.hit.get(), self.miss.get());
        self.ratio.set(hits as f64 / (hits + misses).max(1) as f64);
    }

    /// Bytes answered from the cache.
    pub fn served(&self, bytes: usize) {
        self.served.inc_by(bytes as u64);
    }

    /// Bytes stored in the cache.
    pub fn stored(&self, bytes: usize) {
        self.stored.inc_by(bytes as u64);
    }
}

//! Per-key families: `switchyard_key_requests_total{key,outcome}` and
//! `switchyard_key_spend_usd_total{key}`. The `key` label is the key's name (operators choose
//! names; never the secret); requests without a usable key count under `_none`.

use prometheus::{CounterVec, IntCounter, IntCounterVec, Opts, Registry};

/// Every `outcome` of `switchyard_key_requests_total`.
pub const OUTCOMES: [&str; 5] = [
    "allowed",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "over_budget",
];

/// The per-key families.
#[derive(Debug, Clone)]
pub struct KeyMetrics {
    requests: IntCounterVec,
    spend: CounterVec,
}

/// One key's handles.
#[derive(Debug, Clone)]
pub struct KeyHandles {
    outcomes: [IntCounter; 5],
    /// `switchyard_key_spend_usd_total{key}`.
    pub spend: prometheus::Counter,
}

impl KeyHandles {
    /// The counter of one outcome (an unknown one counts as `unauthorized`).
    pub fn outcome(&self, outcome: &str) -> &IntCounter {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(1);
        &self.outcomes[i]
    }
}

impl KeyMetrics {
    /// Registers the families.
    pub fn new(registry: &Registry) -> prometheus::Result<KeyMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_key_requests_total",
                "Requests by client key name and outcome of the key check.",
            ),
            &["key", "outcome"],
        )?;
        let spend = CounterVec::new(
            Opts::new(
                "switchyard_key_spend_usd_total",
                "Estimated spend in USD by client key name, on this replica.",
            ),
            &["key"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(spend.clone()))?;
        Ok(KeyMetrics { requests, spend })
    }

    /// A key's handles.
    pub fn handles(&self, key: &str) -> KeyHandles {
        KeyHandles {
            outcomes: OUTCOMES.map(|o| self.requests.with_label_values(&[key, o])),
            spend: self.spend.with_label_values(&[key]),
        }
    }

    /// A request refused before a key was known.
    pub fn unknown(&self, outcome: &str) {
        self.requests.with_label_values(&["_none", outcome]).inc();
    }
}

//! The export sink's family: per-request records by what became of them.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// `switchyard_export_records_total{result}`.
#[derive(Clone)]
pub struct ExportMetrics {
    /// Written to a file.
    pub written: IntCounter,
    /// Dropped because the sink's queue was full (requests never wait for the sink).
    pub dropped: IntCounter,
    /// Lost to a write error.
    pub failed: IntCounter,
}

impl ExportMetrics {
    /// Registers the family in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<ExportMetrics> {
        let records = IntCounterVec::new(
            Opts::new(
                "switchyard_export_records_total",
                "Per-request export records by result: written, dropped (the sink's queue was full), failed (a write error).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(records.clone()))?;
        Ok(ExportMetrics {
            written: records.with_label_values(&["written"]),
            dropped: records.with_label_values(&["dropped"]),
            failed: records.with_label_values(&["failed"]),
        })
    }
}

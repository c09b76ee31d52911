//! Export: every decision and outcome, for the team's own warehouse.
//!
//! Four kinds of record, each a JSON object on one line (JSON Lines), each described by a JSON
//! Schema in `docs/schemas/`:
//!
//! * `exposure` — a user's first exposure to a flag, from the state store;
//! * `feedback` — a feedback event, from the state store;
//! * `eval` — an online eval's score (a feedback event whose id starts `eval:`);
//! * `request` — one request's outcome: flag, variation, rule, provider, model, latency, time to
//!   first token, tokens, cost, outcome, fallback reason, request id (no prompt or answer text
//!   unless `[export] include_content = true`).
//!
//! Per-request records never touch the state store (no write per request): the request path
//! hands them to the [`sink::Sink`], whose queue is bounded (a full queue drops the record and
//! counts it, never blocks) and whose own thread appends them in batches to rotating files
//! under `[export] dir`. Files rather than NATS: they need no broker to run or to be
//! reachable, survive a restart, are read back with a byte offset as the resume cursor, and
//! any log shipper (Vector, Fluent Bit, a cron `aws s3 sync`) forwards them.
//!
//! `GET /admin/export` ([`admin`]) and `switchyard ctl export` ([`cli`]) read every kind a
//! page at a time with a cursor that resumes exactly after the last record read ([`cursor`]).

pub mod admin;
pub mod cli;
pub mod cursor;
pub mod files;
pub mod record;
pub mod sink;

use std::path::PathBuf;

pub use record::Draft;
pub use sink::Sink;

/// `[export]`: the continuous sink of per-request records.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// Where the record files are written (`None`: no per-request records).
    pub dir: Option<PathBuf>,
    /// A file is closed and a new one started past this size.
    pub rotate_bytes: u64,
    /// The oldest files are deleted beyond this many.
    pub max_files: usize,
    /// Records waiting to be written; beyond it records are dropped (and counted).
    pub queue: usize,
    /// Records carry the prompt (the last user turn) and, for complete answers, the answer.
    pub include_content: bool,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            dir: None,
            rotate_bytes: 64 * 1024 * 1024,
            max_files: 64,
            queue: 65_536,
            include_content: false,
        }
    }
}

//! Export: every decision and outcome, for the team's own warehouse.

use std::path::PathBuf;

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
    /// Records carry the prompt and the answer.
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

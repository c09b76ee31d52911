//! The continuous sink: per-request records appended as JSON Lines to rotating files, by a
//! thread of its own, in batches. The request path only hands a record to a bounded queue;
//! when the queue is full the record is dropped and counted
//! (`switchyard_export_records_total{result="dropped"}`), so the sink never slows a request.
//!
//! Files are named `requests-<unix ms, 16 digits>.jsonl`, so names sort in the order they were
//! written; one is closed past `rotate_bytes` and the oldest are deleted beyond `max_files`.
//! Lines are written whole and flushed after each batch: a reader takes only complete lines.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use super::record::RequestRecord;
use super::ExportSettings;
use crate::metrics::export::ExportMetrics;

/// Records written before the file is flushed.
const BATCH: usize = 512;

/// Where the request path hands records. Cheap to clone.
#[derive(Clone)]
pub struct Sink {
    tx: Option<SyncSender<RequestRecord>>,
    metrics: ExportMetrics,
    include_content: bool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("enabled", &self.tx.is_some())
            .finish()
    }
}

impl Sink {
    /// The sink `settings` describe: a writer thread when `dir` is set, else nothing.
    pub fn new(settings: &ExportSettings, metrics: ExportMetrics) -> Sink {
        let tx = settings.dir.as_ref().and_then(|dir| {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "export directory unusable: no per-request records");
                return None;
            }
            let (tx, rx) = sync_channel(settings.queue);
            let writer = Writer {
                dir: dir.clone(),
                rotate_bytes: settings.rotate_bytes,
                max_files: settings.max_files,
                current: None,
                metrics: metrics.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name("switchyard-export".into())
                .spawn(move || writer.run(rx));
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "export writer did not start: no per-request records");
                    None
                }
            }
        });
        Sink {
            tx,
            metrics,
            include_content: settings.include_content,
        }
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether records carry prompts and answers.
    pub fn include_content(&self) -> bool {
        self.include_content
    }

    /// Queues a record; a full queue drops it (counted).
    pub fn send(&self, record: RequestRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => self.metrics.failed.inc(),
        }
    }
}

/// The file being written.
struct Current {
    out: BufWriter<File>,
    size: u64,
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    rotate_bytes: u64,
    max_files: usize,
    current: Option<Current>,
    metrics: ExportMetrics,
}

impl Writer {
    /// Writes until every sender is gone.
    fn run(mut self, rx: Receiver<RequestRecord>) {
        while let Ok(first) = rx.recv() {
            let mut n = 0;
            self.write(&first);
            while n < BATCH {
                match rx.try_recv() {
                    Ok(r) => {
                        self.write(&r);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            self.flush();
        }
        self.flush();
    }

    fn write(&mut self, record: &RequestRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(_) => {
                self.metrics.failed.inc();
                return;
            }
        };
        line.push(b'\n');
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.size >= self.rotate_bytes)
        {
            self.flush();
            self.current = None;
        }
        if self.current.is_none() {
            self.current = self.open();
        }
        let Some(c) = self.current.as_mut() else {
            self.metrics.failed.inc();
            return;
        };
        match c.out.write_all(&line) {
            Ok(()) => {
                c.size += line.len() as u64;
                self.metrics.written.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing an export record failed");
                self.metrics.failed.inc();
                self.current = None;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(c) = self.current.as_mut() {
            if let Err(e) = c.out.flush() {
                tracing::warn!(error = %e, "flushing export records failed");
                self.current = None;
            }
        }
    }

    /// A new file, named after now (later than any existing one), and the oldest files past
    /// `max_files` deleted.
    fn open(&mut self) -> Option<Current> {
        let existing = list(&self.dir);
        let mut ms = crate::clock::now_ms();
        if let Some(last) = existing.last().and_then(|n| stamp(n)) {
            ms = ms.max(last + 1);
        }
        let path = self.dir.join(file_name(ms));
        let file = OpenOptions::new().create_new(true).append(true).open(&path);
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot create an export file");
                return None;
            }
        };
        let keep = self.max_files.saturating_sub(1);
        if existing.len() > keep {
            for old in &existing[..existing.len() - keep] {
                let _ = std::fs::remove_file(self.dir.join(old));
            }
        }
        Some(Current {
            out: BufWriter::with_capacity(64 * 1024, file),
            size: 0,
        })
    }
}

/// `requests-<ms>.jsonl`.
pub fn file_name(ms: u64) -> String {
    format!("requests-{ms:016}.jsonl")
}

/// The unix ms in a record file's name; `None` for any other name.
pub fn stamp(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("requests-")?.strip_suffix(".jsonl")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The record files in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| stamp(n).is_some())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_record_file_names_have_a_stamp() {
        assert_eq!(
            stamp(&file_name(1_764_000_000_000)),
            Some(1_764_000_000_000)
        );
        assert_eq!(stamp("requests-1.jsonl"), None);
        assert_eq!(stamp("../requests-0000000000000001.jsonl"), None);
        assert_eq!(stamp("requests-000000000000000a.jsonl"), None);
        assert!(file_name(2) > file_name(1));
    }
}

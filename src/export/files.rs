//! Reading per-request records back from the sink's files, a page at a time: whole lines
//! only (a line still being written waits for the next page), filtered by flag and time, with
//! the file and byte offset after the last line read as the next cursor.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::sink::{file_name, list, stamp};

/// The most read from one file per page.
const CHUNK: u64 = 8 * 1024 * 1024;

/// A page of record lines (each with its newline) and where the next page starts.
#[derive(Debug)]
pub struct Page {
    /// Matching lines.
    pub lines: Vec<Bytes>,
    /// The next cursor: (file stamp, offset).
    pub next: (u64, u64),
}

/// What a line needs for the filters.
#[derive(serde::Deserialize)]
struct Head {
    flag: String,
    at_ms: u64,
}

/// Up to `limit` records of `flag` (any when `None`) at or after `since_ms`, after `after`.
pub fn read_page(
    dir: &Path,
    after: Option<(u64, u64)>,
    flag: Option<&str>,
    since_ms: u64,
    limit: usize,
) -> std::io::Result<Page> {
    let files: Vec<u64> = list(dir).iter().filter_map(|n| stamp(n)).collect();
    let (mut idx, mut offset) = match after {
        None => (0, 0),
        Some((file, off)) => match files.iter().position(|f| *f == file) {
            Some(i) => (i, off),
            // Deleted by retention (or never existed): the next file on.
            None => (
                files.iter().position(|f| *f > file).unwrap_or(files.len()),
                0,
            ),
        },
    };
    let mut next = match (files.get(idx), after) {
        (Some(f), _) => (*f, offset),
        (None, Some(a)) => a,
        (None, None) => (0, 0),
    };
    let mut lines = Vec::new();
    while let Some(&file) = files.get(idx) {
        let chunk = read_chunk(&dir.join(file_name(file)), offset)?;
        let mut at = 0;
        while lines.len() < limit {
            let Some(end) = memchr::memchr(b'\n', &chunk[at..]) else {
                break;
            };
            let line = chunk.slice(at..at + end + 1);
            at += end + 1;
            next = (file, offset + at as u64);
            if let Ok(h) = serde_json::from_slice::<Head>(&line) {
                if h.at_ms >= since_ms && flag.is_none_or(|f| f == h.flag) {
                    lines.push(line);
                }
            }
        }
        if lines.len() >= limit {
            break;
        }
        let exhausted = at == chunk.len() || (chunk.len() as u64) < CHUNK;
        match files.get(idx + 1) {
            // Only the newest file is still written: an older one is done (a torn last line
            // of a crashed writer is left behind).
            Some(&later) if exhausted => {
                idx += 1;
                offset = 0;
                next = (later, 0);
            }
            _ if at > 0 && !exhausted => offset += at as u64,
            _ => break,
        }
    }
    Ok(Page { lines, next })
}

fn read_chunk(path: &Path, offset: u64) -> std::io::Result<Bytes> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(CHUNK).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

//! One cached answer and its encoding in a shared backend: one byte naming its kind, then the
//! body as the client received it.

use bytes::Bytes;

/// What a cached answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A complete JSON answer.
    Json,
    /// A stream's events (`text/event-stream`), replayed as a stream.
    Sse,
}

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// JSON or events.
    pub kind: EntryKind,
    /// The body, exactly as the client received it.
    pub body: Bytes,
}

impl Entry {
    /// The bytes stored in a shared backend.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 1);
        out.push(match self.kind {
            EntryKind::Json => b'j',
            EntryKind::Sse => b's',
        });
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`Entry::encode`]'s bytes; anything else is no entry (a miss).
    pub fn decode(bytes: Vec<u8>) -> Option<Entry> {
        let kind = match bytes.first()? {
            b'j' => EntryKind::Json,
            b's' => EntryKind::Sse,
            _ => return None,
        };
        let body = Bytes::from(bytes).slice(1..);
        Some(Entry { kind, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_a_miss() {
        for kind in [EntryKind::Json, EntryKind::Sse] {
            let e = Entry {
                kind,
                body: Bytes::from_static(b"data: {}\n\n"),
            };
            assert_eq!(Entry::decode(e.encode()), Some(e));
        }
        assert_eq!(Entry::decode(Vec::new()), None);
        assert_eq!(Entry::decode(b"x{}".to_vec()), None);
    }
}

//! Export cursors: where the next page starts, as one URL-safe token. An exposure cursor names
//! the last (first_at_ms, flag, user) read, a feedback cursor the last (at_ms, event_id), a
//! request cursor a record file and the byte offset after the last line read. Strings are
//! hex-encoded, so a cursor never needs escaping.

use crate::state::export::{ExposureKey, FeedbackKey};

/// A parsed cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// After this exposure.
    Exposure(ExposureKey),
    /// After this feedback event.
    Feedback(FeedbackKey),
    /// In this record file (by its stamp), at this byte offset.
    Requests {
        /// The file's stamp (the unix ms in its name).
        file: u64,
        /// Bytes already read.
        offset: u64,
    },
}

impl Cursor {
    /// Reads a cursor made by [`Cursor::encode`]; anything else is an error message.
    pub fn parse(s: &str) -> Result<Cursor, String> {
        let bad = || format!("invalid cursor {s:?} (pass back the x-switchyard-next-cursor value)");
        let parts: Vec<&str> = s.split('.').collect();
        let num = |p: &str| p.parse::<u64>().map_err(|_| bad());
        let text = |p: &str| unhex(p).ok_or_else(bad);
        match parts.as_slice() {
            ["e", ms, flag, user] => Ok(Cursor::Exposure((num(ms)?, text(flag)?, text(user)?))),
            ["f", ms, id] => Ok(Cursor::Feedback((num(ms)?, text(id)?))),
            ["r", file, offset] => Ok(Cursor::Requests {
                file: num(file)?,
                offset: num(offset)?,
            }),
            _ => Err(bad()),
        }
    }

    /// The token.
    pub fn encode(&self) -> String {
        match self {
            Cursor::Exposure((ms, flag, user)) => format!("e.{ms}.{}.{}", hex(flag), hex(user)),
            Cursor::Feedback((ms, id)) => format!("f.{ms}.{}", hex(id)),
            Cursor::Requests { file, offset } => format!("r.{file}.{offset}"),
        }
    }
}

fn hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for c in [
            Cursor::Exposure((12, "f.x".into(), "user é 1".into())),
            Cursor::Exposure((0, String::new(), String::new())),
            Cursor::Feedback((99, "eval:a.b".into())),
            Cursor::Requests {
                file: 1_764_000_000_000,
                offset: 4096,
            },
        ] {
            assert_eq!(Cursor::parse(&c.encode()), Ok(c));
        }
        for bad in [
            "",
            "x.1",
            "e.1.zz.00",
            "f.-1.00",
            "r.1",
            "e.1.0.00",
            "r.1.2.3",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Maps key paths to lines of the source file and back, so every configuration error can
//! name the file, the line and the key.

use std::fmt;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A dotted key path such as `flags.support-assistant.rules[1].allocation[0].end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The empty path (the whole file).
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path plus a key.
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        KeyPath(segs)
    }

    /// This path plus an index.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A parsed document kept for looking spans up.
pub struct SourceMap<'a> {
    src: &'a str,
    doc: Option<Spanned<DeTable<'a>>>,
}

impl<'a> SourceMap<'a> {
    /// Parses `src` for spans (a syntax error leaves only line arithmetic).
    pub fn new(src: &'a str) -> Self {
        SourceMap {
            src,
            doc: DeTable::parse(src).ok(),
        }
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line where `path` (or the deepest part of it that exists) is written.
    pub fn line_of_path(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut best: Option<usize> = None;
        let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
        let mut value: Option<&DeValue<'_>> = None;
        for seg in &path.0 {
            match seg {
                Seg::Key(k) => {
                    let t = match (table, value) {
                        (Some(t), _) => t,
                        (None, Some(DeValue::Table(t))) => t,
                        _ => break,
                    };
                    let Some((key, v)) = t.get_key_value(k.as_str()) else {
                        break;
                    };
                    best = Some(key.span().start);
                    table = None;
                    value = Some(v.get_ref());
                }
                Seg::Index(n) => {
                    let Some(DeValue::Array(a)) = value else {
                        break;
                    };
                    let Some(item) = a.get(*n) else { break };
                    best = Some(item.span().start);
                    table = None;
                    value = Some(item.get_ref());
                }
            }
        }
        best.map(|offset| self.line_of(offset))
    }

    /// The key path of the key at `offset` (for serde's errors, which point at the key), or
    /// else of the last key written before it.
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let Some(doc) = self.doc.as_ref() else {
            return KeyPath::root();
        };
        let mut best: Option<(usize, KeyPath)> = None;
        let mut exact: Option<KeyPath> = None;
        collect(
            doc.get_ref(),
            &KeyPath::root(),
            offset,
            &mut best,
            &mut exact,
        );
        exact.or(best.map(|(_, p)| p)).unwrap_or_default()
    }
}

fn consider(
    span: std::ops::Range<usize>,
    path: &KeyPath,
    offset: usize,
    best: &mut Option<(usize, KeyPath)>,
    exact: &mut Option<KeyPath>,
) {
    if span.contains(&offset) {
        // Deeper keys are visited later, so the innermost one wins.
        *exact = Some(path.clone());
    }
    if span.start <= offset && best.as_ref().is_none_or(|(start, _)| span.start >= *start) {
        *best = Some((span.start, path.clone()));
    }
}

fn collect(
    table: &DeTable<'_>,
    at: &KeyPath,
    offset: usize,
    best: &mut Option<(usize, KeyPath)>,
    exact: &mut Option<KeyPath>,
) {
    for (key, value) in table.iter() {
        let path = at.key(key.get_ref());
        consider(key.span(), &path, offset, best, exact);
        collect_value(value.get_ref(), &path, offset, best, exact);
    }
}

fn collect_value(
    value: &DeValue<'_>,
    at: &KeyPath,
    offset: usize,
    best: &mut Option<(usize, KeyPath)>,
    exact: &mut Option<KeyPath>,
) {
    match value {
        DeValue::Table(t) => collect(t, at, offset, best, exact),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let path = at.index(i);
                if item.span().contains(&offset) && !matches!(item.get_ref(), DeValue::Table(_)) {
                    *exact = Some(path.clone());
                }
                collect_value(item.get_ref(), &path, offset, best, exact);
            }
        }
        _ => {}
    }
}

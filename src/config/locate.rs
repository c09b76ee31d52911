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

    /// The innermost key path whose key or value spans `offset` (for serde's errors).
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let mut path = KeyPath::root();
        let Some(doc) = self.doc.as_ref() else {
            return path;
        };
        let mut current: &DeTable<'_> = doc.get_ref();
        loop {
            let mut next: Option<&DeValue<'_>> = None;
            for (key, v) in current.iter() {
                let ks = key.span();
                let vs = v.span();
                if ks.contains(&offset) || vs.contains(&offset) {
                    path.0.push(Seg::Key(key.get_ref().to_string()));
                    if ks.contains(&offset) {
                        return path;
                    }
                    next = Some(v.get_ref());
                    break;
                }
            }
            let mut value = match next {
                Some(v) => v,
                None => return path,
            };
            // Descend through arrays (arrays of tables, inline arrays) to the element.
            loop {
                match value {
                    DeValue::Table(t) => {
                        current = t;
                        break;
                    }
                    DeValue::Array(a) => {
                        match a.iter().position(|item| item.span().contains(&offset)) {
                            Some(i) => {
                                path.0.push(Seg::Index(i));
                                value = a[i].get_ref();
                            }
                            None => return path,
                        }
                    }
                    _ => return path,
                }
            }
        }
    }
}

//! `previous_response_id`: which variation answered each response id, so a continuation stays
//! on it.

use std::sync::Arc;

use crate::api::Inbound;

/// Which variation answered each response id, so `previous_response_id` continues on it: two
/// generations of at most [`Affinity::GENERATION`] ids each, the older dropped when the newer
/// fills or ages past [`Affinity::MAX_AGE`] (so an id is kept for at least that long, unless
/// more than a generation's worth of responses come first).
#[derive(Debug, Default)]
pub struct Affinity {
    inner: std::sync::Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: std::collections::HashMap<String, (Arc<str>, Arc<str>)>,
    previous: std::collections::HashMap<String, (Arc<str>, Arc<str>)>,
    since: Option<std::time::Instant>,
}

impl Affinity {
    /// Ids per generation.
    pub const GENERATION: usize = 100_000;
    /// The longest a generation lasts.
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Records that `flag`'s `variation` answered response `id`.
    pub fn remember(&self, id: &str, flag: &Arc<str>, variation: &Arc<str>) {
        if id.is_empty() || id.len() > 256 {
            return;
        }
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        let since = *g.since.get_or_insert(now);
        if g.current.len() >= Self::GENERATION || now.duration_since(since) > Self::MAX_AGE {
            g.previous = std::mem::take(&mut g.current);
            g.since = Some(now);
        }
        g.current
            .insert(id.to_owned(), (flag.clone(), variation.clone()));
    }

    /// The variation of `flag` that answered the response `req` continues, if known.
    pub fn pinned(&self, req: &dyn Inbound, flag: &crate::flags::Flag) -> Option<usize> {
        let id = req.previous_response_id()?;
        let g = self.inner.lock().ok()?;
        let (f, v) = g.current.get(id).or_else(|| g.previous.get(id))?;
        if f.as_ref() != flag.key {
            return None;
        }
        flag.variations.iter().position(|x| x.key == v.as_ref())
    }
}

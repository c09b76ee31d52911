//! `GET /admin/export?kind=exposures|feedback|requests|evals&flag=F&since=T&cursor=C&limit=N`:
//! one page of records as JSON Lines (`application/x-ndjson`), the cursor of the next page in
//! `x-switchyard-next-cursor`. A page shorter than `limit` means the end for now; passing the
//! cursor back later continues exactly after the last record (nothing lost, nothing twice).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use super::cursor::Cursor;
use crate::admin::api::AdminError;
use crate::app::App;
use crate::body::{full, Body};
use crate::state::export::{FeedbackKind, PageQuery};

/// The header carrying the next page's cursor.
pub const NEXT_CURSOR_HEADER: &str = "x-switchyard-next-cursor";
/// Records per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 1000;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 10_000;

/// What kind of record a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First exposures.
    Exposures,
    /// Feedback events (eval scores included).
    Feedback,
    /// Online eval scores only.
    Evals,
    /// Per-request records.
    Requests,
}

impl Kind {
    /// From the `kind` parameter.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "exposures" => Kind::Exposures,
            "feedback" => Kind::Feedback,
            "evals" => Kind::Evals,
            "requests" => Kind::Requests,
            _ => return None,
        })
    }
}

/// The endpoint.
pub async fn handle(app: &Arc<App>, query: Option<&str>) -> Response<Body> {
    match page(app, query).await {
        Ok((body, next)) => {
            let mut resp = Response::new(full(body));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            if let Ok(v) = HeaderValue::from_str(&next.encode()) {
                h.insert(NEXT_CURSOR_HEADER, v);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

fn param(query: Option<&str>, name: &str) -> Result<Option<String>, AdminError> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return crate::query::percent_decode(v).map(Some).map_err(|_| {
                AdminError::bad(format!("`{name}` is not valid percent-encoded UTF-8"))
            });
        }
    }
    Ok(None)
}

/// `since`: RFC 3339 (`2026-11-30T08:00:00Z`), unix milliseconds, or a duration back from now
/// (`24h`).
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .map_err(|_| format!("`since` {s:?} is before 1970"));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(d.as_millis() as u64));
    }
    Err(format!(
        "invalid `since` {s:?}: write an RFC 3339 time (2026-11-30T08:00:00Z), unix milliseconds, or a duration back from now (24h)"
    ))
}

async fn page(app: &Arc<App>, query: Option<&str>) -> Result<(Bytes, Cursor), AdminError> {
    let kind = match param(query, "kind")? {
        Some(k) => Kind::parse(&k).ok_or_else(|| {
            AdminError::bad(format!(
                "unknown kind {k:?} (exposures, feedback, evals, requests)"
            ))
        })?,
        None => {
            return Err(AdminError::bad(
                "`kind` is required (exposures, feedback, evals, requests)",
            ))
        }
    };
    let flag = param(query, "flag")?.filter(|f| !f.is_empty());
    let since_ms = match param(query, "since")?.filter(|s| !s.trim().is_empty()) {
        Some(s) => parse_since(&s, crate::clock::now_ms()).map_err(AdminError::bad)?,
        None => 0,
    };
    let limit = match param(query, "limit")? {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(AdminError::bad(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    let cursor = param(query, "cursor")?
        .filter(|c| !c.is_empty())
        .map(|c| Cursor::parse(&c))
        .transpose()
        .map_err(AdminError::bad)?;
    let wrong = || AdminError::bad("this cursor belongs to another kind of export");
    let mut out = BytesMut::new();
    let next = match kind {
        Kind::Exposures => {
            let after = match cursor {
                None => None,
                Some(Cursor::Exposure(k)) => Some(k),
                Some(_) => return Err(wrong()),
            };
            let q = PageQuery {
                flag,
                since_ms,
                after: after.clone(),
                limit,
            };
            let rows = app.store.export_exposures(&q).await?;
            for r in &rows {
                line(
                    &mut out,
                    &json!({"kind": "exposure", "flag": r.flag, "variation": r.variation,
                    "rule": r.rule, "user": r.user, "at_ms": r.first_at_ms, "switched": r.switched}),
                );
            }
            match rows.last() {
                Some(r) => Cursor::Exposure((r.first_at_ms, r.flag.clone(), r.user.clone())),
                None => Cursor::Exposure(after.unwrap_or((0, String::new(), String::new()))),
            }
        }
        Kind::Feedback | Kind::Evals => {
            let after = match cursor {
                None => None,
                Some(Cursor::Feedback(k)) => Some(k),
                Some(_) => return Err(wrong()),
            };
            let q = PageQuery {
                flag,
                since_ms,
                after: after.clone(),
                limit,
            };
            let (which, label) = match kind {
                Kind::Evals => (FeedbackKind::Evals, "eval"),
                _ => (FeedbackKind::All, "feedback"),
            };
            let rows = app.store.export_feedback(&q, which).await?;
            for r in &rows {
                line(
                    &mut out,
                    &json!({"kind": label, "event_id": r.event_id, "flag": r.flag,
                    "variation": r.variation, "user": r.user, "metric": r.metric,
                    "value": r.value, "at_ms": r.at_ms}),
                );
            }
            match rows.last() {
                Some(r) => Cursor::Feedback((r.at_ms, r.event_id.clone())),
                None => Cursor::Feedback(after.unwrap_or((0, String::new()))),
            }
        }
        Kind::Requests => {
            let after = match cursor {
                None => None,
                Some(Cursor::Requests { file, offset }) => Some((file, offset)),
                Some(_) => return Err(wrong()),
            };
            let live = app.live.load();
            let Some(dir) = live.config.export.dir.clone() else {
                return Err(AdminError::new(
                    StatusCode::CONFLICT,
                    "export_disabled",
                    "per-request records are not written: set [export] dir in proxy.toml",
                ));
            };
            let page = tokio::task::spawn_blocking(move || {
                super::files::read_page(&dir, after, flag.as_deref(), since_ms, limit)
            })
            .await
            .map_err(|e| {
                AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(|e| {
                AdminError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "export_read_failed",
                    format!("reading the record files failed: {e}"),
                )
            })?;
            for l in &page.lines {
                out.put_slice(l);
            }
            Cursor::Requests {
                file: page.next.0,
                offset: page.next.1,
            }
        }
    };
    Ok((out.freeze(), next))
}

fn line(out: &mut BytesMut, v: &serde_json::Value) {
    out.put_slice(v.to_string().as_bytes());
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_three_forms() {
        let now = 1_764_500_000_000;
        assert_eq!(parse_since("1764000000000", now), Ok(1_764_000_000_000));
        assert_eq!(
            parse_since("2025-11-24T16:00:00Z", now),
            Ok(1_764_000_000_000)
        );
        assert_eq!(parse_since("1h", now), Ok(now - 3_600_000));
        assert!(parse_since("yesterday", now).is_err());
    }
}

//! Flags from other systems, served beside the flags of `proxy.toml`: today an Optimizely
//! datafile ([`optimizely`]), polled with conditional requests.
//!
//! The live config is always `proxy.toml`'s flags plus the last good datafile's, built by
//! [`Sources::merge`]. A datafile that does not parse or does not validate against the config
//! (an unknown provider or prompt, a key `proxy.toml` also defines) is rejected: the last good
//! flags keep serving, and the rejection shows on `/readyz`, in
//! `switchyard_source_updates_total{outcome="rejected"}` and in the log.

pub mod optimizely;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::app::App;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::providers::Secret;
use optimizely::Datafile;

/// The `source` label and the name in messages.
const SOURCE: &str = "optimizely";
/// Largest datafile accepted.
const MAX_DATAFILE_BYTES: usize = 32 << 20;
/// First retry delay after a failed fetch (doubling up to the poll interval).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Where the datafile comes from.
#[derive(Debug, Clone)]
pub enum DatafileLocation {
    /// Fetched over HTTP(S); `{sdk_key}` in the template is replaced by the key.
    Url {
        /// The URL as configured (the key itself is not in it).
        template: String,
        /// The SDK key, from the environment.
        sdk_key: Option<Secret>,
    },
    /// Read from a file.
    Path(PathBuf),
}

/// `[sources.optimizely]`.
#[derive(Debug, Clone)]
pub struct OptimizelySettings {
    /// Where the datafile comes from.
    pub location: DatafileLocation,
    /// `Authorization` value for authenticated datafiles.
    pub access_token: Option<Secret>,
    /// How often the datafile is checked.
    pub poll_interval: Duration,
    /// The provider of variations without a `provider` variable.
    pub default_provider: Option<String>,
    /// Where decision events go (Optimizely's event API), if anywhere.
    pub events_url: Option<String>,
}

/// The flag sources' state: the file's config, the last good datafile, the last poll.
#[derive(Debug, Default)]
pub struct Sources {
    inner: Mutex<Inner>,
    /// Held while a merged config is built and swapped in, so a reload and a datafile update
    /// never undo each other.
    updating: tokio::sync::Mutex<()>,
    /// The ids decision events name, from the last good datafile.
    event_ids: arc_swap::ArcSwapOption<optimizely::events::EventIds>,
    /// Decision events waiting to be sent.
    outbox: optimizely::events::Outbox,
}

#[derive(Debug, Default)]
struct Inner {
    base: Option<Arc<Config>>,
    datafile: Option<Arc<Datafile>>,
    last_modified: Option<String>,
    status: Status,
}

#[derive(Debug, Default, Clone)]
struct Status {
    polls: u64,
    healthy: bool,
    error: Option<String>,
    /// The error is a failed fetch (cleared by the next good poll), not a rejected datafile.
    fetch_failed: bool,
    skipped: Vec<String>,
    notes: Vec<String>,
    last_poll_ms: Option<u64>,
    last_change_ms: Option<u64>,
}

fn errors(messages: Vec<String>) -> ConfigErrors {
    ConfigErrors(
        messages
            .into_iter()
            .map(|message| ConfigError {
                origin: "the Optimizely datafile".into(),
                line: None,
                key: String::new(),
                message,
            })
            .collect(),
    )
}

fn merge_datafile(
    mut base: Config,
    d: &Datafile,
) -> Result<(Config, optimizely::Mapped), ConfigErrors> {
    let Some(settings) = base.optimizely.clone() else {
        return Ok((base, optimizely::Mapped::default()));
    };
    let mut mapped =
        optimizely::to_flags(d, &base, settings.default_provider.as_deref()).map_err(errors)?;
    let flags = std::mem::take(&mut mapped.flags);
    base.add_flags(flags, "the Optimizely datafile", &d.revision)?;
    Ok((base, mapped))
}

impl Sources {
    /// Sets the file's config (as loaded) and returns it with the datafile's flags added.
    /// Call [`Sources::lock`] first when the result is to be swapped in.
    pub fn merge(&self, base: Config) -> Result<Config, ConfigErrors> {
        let datafile = self.inner.lock().ok().and_then(|i| i.datafile.clone());
        let merged = match (&base.optimizely, datafile) {
            (Some(_), Some(d)) => merge_datafile(base.clone(), &d)?.0,
            _ => base.clone(),
        };
        if let Ok(mut inner) = self.inner.lock() {
            inner.base = Some(Arc::new(base));
        }
        Ok(merged)
    }

    /// Sets the file's config without merging (at start, before any datafile).
    pub fn set_base(&self, base: &Config) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.base = Some(Arc::new(base.clone()));
        }
    }

    /// Serialises building and swapping a merged config.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.updating.lock().await
    }

    /// The sources' state for `/readyz`.
    pub fn status_json(&self, config: &Config) -> Value {
        let Some(settings) = &config.optimizely else {
            return json!({});
        };
        let Ok(inner) = self.inner.lock() else {
            return json!({});
        };
        let s = &inner.status;
        let location = match &settings.location {
            DatafileLocation::Url { template, .. } => template.clone(),
            DatafileLocation::Path(p) => p.display().to_string(),
        };
        json!({ SOURCE: {
            "datafile": location,
            "healthy": s.healthy,
            "revision": inner.datafile.as_ref().map(|d| d.revision.clone()),
            "error": s.error,
            "polls": s.polls,
            "last_poll_ms": s.last_poll_ms,
            "last_change_ms": s.last_change_ms,
            "skipped_flags": s.skipped,
            "notes": s.notes,
        }})
    }

    /// Whether the source's last poll was good (or it is not configured).
    pub fn healthy(&self, config: &Config) -> bool {
        config.optimizely.is_none() || self.inner.lock().map(|i| i.status.healthy).unwrap_or(false)
    }

    /// Whether the source has served flags at least once (or is not configured).
    pub fn ready(&self, config: &Config) -> bool {
        config.optimizely.is_none()
            || self
                .inner
                .lock()
                .map(|i| i.datafile.is_some())
                .unwrap_or(false)
    }
}

/// What one poll found.
enum Fetched {
    Unchanged,
    New {
        body: Bytes,
        last_modified: Option<String>,
    },
}

/// Starts the poller; it follows the live config (a reload may add, change or drop the
/// source) and ends when `stop` turns true.
pub fn spawn(app: &Arc<App>, stop: watch::Receiver<bool>) {
    app.sources.outbox.spawn(app, stop.clone());
    tokio::spawn(poll_loop(app.clone(), stop));
}

/// Queues a decision event for an exposure to a datafile flag when `events_url` is set (a
/// user's first exposure only; cheap, never waits).
pub fn expose(app: &App, e: &crate::state::Exposure) {
    if e.repeat {
        return;
    }
    let live = app.live.load();
    if live
        .config
        .optimizely
        .as_ref()
        .is_none_or(|o| o.events_url.is_none())
    {
        return;
    }
    let (Some(ids), Some(rule)) = (app.sources.event_ids.load_full(), &e.rule) else {
        return;
    };
    let Some(p) =
        optimizely::events::Pending::new(&ids, &e.flag, rule, &e.variation, &e.user, e.at_ms)
    else {
        return;
    };
    if !app.sources.outbox.push(p) {
        app.metrics
            .source_events
            .with_label_values(&[SOURCE, "dropped"])
            .inc();
    }
}

async fn poll_loop(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        let settings = app.live.load().config.optimizely.clone();
        let wait = match settings {
            None => Duration::from_secs(1),
            Some(settings) => {
                if poll_once(&app, &settings).await {
                    failures = 0;
                    settings.poll_interval
                } else {
                    failures = failures.saturating_add(1);
                    let backoff =
                        FIRST_RETRY.saturating_mul(1 << failures.min(16).saturating_sub(1));
                    backoff.min(settings.poll_interval)
                }
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One poll; false when the fetch failed (retried with backoff).
async fn poll_once(app: &App, settings: &OptimizelySettings) -> bool {
    let last_modified = app
        .sources
        .inner
        .lock()
        .ok()
        .and_then(|i| i.last_modified.clone());
    let now = crate::clock::now_ms();
    let fetched = fetch(app, settings, last_modified.as_deref()).await;
    let outcome = match fetched {
        Err(e) => {
            tracing::warn!(source = SOURCE, error = %e, "datafile fetch failed: the last good flags keep serving");
            record(app, now, Err(e));
            if let Ok(mut i) = app.sources.inner.lock() {
                i.status.fetch_failed = true;
            }
            app.metrics
                .source_updates
                .with_label_values(&[SOURCE, "fetch_error"])
                .inc();
            return false;
        }
        Ok(Fetched::Unchanged) => "unchanged",
        Ok(Fetched::New {
            body,
            last_modified,
        }) => {
            if let Ok(mut i) = app.sources.inner.lock() {
                i.last_modified = last_modified;
            }
            apply(app, &body, now).await
        }
    };
    if outcome == "unchanged" {
        let fetch_failed = app
            .sources
            .inner
            .lock()
            .map(|i| i.status.fetch_failed)
            .unwrap_or(false);
        if fetch_failed {
            record(app, now, Ok(()));
        } else if let Ok(mut i) = app.sources.inner.lock() {
            i.status.polls += 1;
            i.status.last_poll_ms = Some(now);
        }
    }
    app.metrics
        .source_updates
        .with_label_values(&[SOURCE, outcome])
        .inc();
    true
}

fn record(app: &App, now: u64, result: Result<(), String>) {
    if let Ok(mut i) = app.sources.inner.lock() {
        i.status.polls += 1;
        i.status.last_poll_ms = Some(now);
        i.status.healthy = result.is_ok() && i.datafile.is_some();
        i.status.error = result.err();
        i.status.fetch_failed = false;
        app.metrics
            .source_healthy
            .with_label_values(&[SOURCE])
            .set(i64::from(i.status.healthy));
    }
}

/// Parses, maps and swaps in a new datafile; the outcome label.
async fn apply(app: &App, body: &[u8], now: u64) -> &'static str {
    let _guard = app.sources.lock().await;
    let result = Datafile::parse(body)
        .map_err(|e| errors(vec![e]))
        .and_then(|d| {
            let base = app
                .sources
                .inner
                .lock()
                .ok()
                .and_then(|i| i.base.clone())
                .unwrap_or_else(|| app.live.load().config.clone());
            let (merged, mapped) = merge_datafile((*base).clone(), &d)?;
            Ok((d, merged, mapped))
        });
    match result {
        Ok((d, merged, mapped)) => {
            let revision = d.revision.clone();
            let flags = merged.flags.len();
            if let Ok(mut i) = app.sources.inner.lock() {
                i.datafile = Some(Arc::new(d));
                app.sources
                    .event_ids
                    .store(Some(Arc::new(mapped.event_ids)));
                i.status.skipped = mapped.skipped;
                i.status.notes = mapped.notes;
                i.status.last_change_ms = Some(now);
            }
            record(app, now, Ok(()));
            if let Err(e) = app.swap_config(merged).await {
                tracing::error!(error = %e, "cannot rebuild the live view");
            }
            tracing::info!(source = SOURCE, %revision, flags, "datafile applied");
            "applied"
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(source = SOURCE, errors = %message, "datafile rejected: the last good flags keep serving");
            record(app, now, Err(message));
            "rejected"
        }
    }
}

async fn fetch(
    app: &App,
    settings: &OptimizelySettings,
    last_modified: Option<&str>,
) -> Result<Fetched, String> {
    match &settings.location {
        DatafileLocation::Path(path) => {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let stamp = format!("{:?}/{}", meta.modified().ok(), meta.len());
            if last_modified == Some(stamp.as_str()) {
                return Ok(Fetched::Unchanged);
            }
            let body = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Ok(Fetched::New {
                body: body.into(),
                last_modified: Some(stamp),
            })
        }
        DatafileLocation::Url { template, sdk_key } => {
            let key = sdk_key
                .as_ref()
                .and_then(|k| k.header_value().to_str().ok())
                .unwrap_or("");
            let url = template.replace("{sdk_key}", key);
            let mut req = Request::get(url.as_str());
            if let Some(lm) = last_modified {
                req = req.header(header::IF_MODIFIED_SINCE, lm);
            }
            if let Some(token) = &settings.access_token {
                req = req.header(header::AUTHORIZATION, token.header_value().clone());
            }
            // Messages name the template, never the URL with the key in it.
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|_| format!("{template} is not a valid URL"))?;
            let client = app.clients.get(Duration::from_secs(10), false);
            let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
                .await
                .map_err(|_| format!("{template}: no answer within 30s"))?
                .map_err(|e| format!("{template}: {e}"))?;
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Fetched::Unchanged);
            }
            if !status.is_success() {
                return Err(format!("{template}: HTTP {status}"));
            }
            let last_modified = resp
                .headers()
                .get(header::LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(resp.into_body(), MAX_DATAFILE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{template}: reading the body: {e}"))?
                .to_bytes();
            Ok(Fetched::New {
                body,
                last_modified,
            })
        }
    }
}

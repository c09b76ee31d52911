//! Decision events back to Optimizely, so its results page counts the users the proxy served.
//!
//! Each first exposure of a user to a datafile flag's experiment or delivery rule becomes one
//! `campaign_activated` decision in Optimizely's event-batch format (`POST /v1/events`, as the
//! SDKs' event processor sends it). Events wait in a bounded queue (a full queue drops and
//! counts), are sent in batches off the request path, and a failed batch is retried with
//! backoff before it is dropped and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::app::App;

/// Largest number of events waiting to be sent.
pub const QUEUE: usize = 10_000;
/// Most events in one batch.
const BATCH: usize = 500;
/// How long a partial batch waits for more events.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Attempts per batch.
const ATTEMPTS: u32 = 5;

/// What the datafile says about one (flag, rule, variation): the ids Optimizely's event
/// format names.
#[derive(Debug, Clone)]
pub struct DecisionIds {
    /// The rule's layer (Optimizely's "campaign").
    pub campaign_id: String,
    /// The experiment or delivery rule.
    pub experiment_id: String,
    /// The variation's id.
    pub variation_id: String,
    /// The rule's key.
    pub rule_key: String,
    /// `feature-test` (an experiment) or `rollout` (a delivery rule).
    pub rule_type: &'static str,
    /// The variation's `featureEnabled`.
    pub enabled: bool,
}

/// Ids of one datafile: the project, and each (flag, rule id, variation key).
#[derive(Debug, Clone, Default)]
pub struct EventIds {
    /// `accountId`.
    pub account_id: String,
    /// `projectId`.
    pub project_id: String,
    /// `revision`.
    pub revision: String,
    /// `anonymizeIP`.
    pub anonymize_ip: bool,
    /// `botFiltering`, when the datafile sets it.
    pub bot_filtering: Option<bool>,
    /// (flag key, rule id, variation key) → ids.
    pub decisions: HashMap<(String, String, String), DecisionIds>,
}

/// One exposure to report.
#[derive(Debug)]
pub struct Pending {
    ids: Arc<EventIds>,
    decision: DecisionIds,
    flag: String,
    variation: String,
    user: String,
    at_ms: u64,
}

impl Pending {
    /// An exposure of `user` to `variation` of `flag` under rule `rule`, if the datafile
    /// knows the triple.
    pub fn new(
        ids: &Arc<EventIds>,
        flag: &str,
        rule: &str,
        variation: &str,
        user: &str,
        at_ms: u64,
    ) -> Option<Pending> {
        let decision = ids
            .decisions
            .get(&(flag.to_owned(), rule.to_owned(), variation.to_owned()))?
            .clone();
        Some(Pending {
            ids: ids.clone(),
            decision,
            flag: flag.to_owned(),
            variation: variation.to_owned(),
            user: user.to_owned(),
            at_ms,
        })
    }
}

fn uuid() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The event-batch payload of events from one datafile revision.
pub fn payload(batch: &[Pending]) -> Option<Value> {
    let first = batch.first()?;
    let visitors: Vec<Value> = batch
        .iter()
        .map(|p| {
            let d = &p.decision;
            let mut attributes = Vec::new();
            if let Some(b) = p.ids.bot_filtering {
                attributes.push(json!({"entity_id": "$opt_bot_filtering", "key": "$opt_bot_filtering", "type": "custom", "value": b}));
            }
            // As the SDKs normalise them: an empty campaign is the experiment, a variation id
            // that is not numeric is null.
            let campaign = if d.campaign_id.is_empty() {
                &d.experiment_id
            } else {
                &d.campaign_id
            };
            let numeric = !d.variation_id.is_empty() && d.variation_id.bytes().all(|b| b.is_ascii_digit());
            let variation_id = numeric.then_some(d.variation_id.as_str());
            json!({
                "visitor_id": p.user,
                "attributes": attributes,
                "snapshots": [{
                    "decisions": [{
                        "campaign_id": campaign,
                        "experiment_id": d.experiment_id,
                        "variation_id": variation_id,
                        "metadata": {
                            "flag_key": p.flag,
                            "rule_key": d.rule_key,
                            "rule_type": d.rule_type,
                            "variation_key": p.variation,
                            "enabled": d.enabled,
                        },
                    }],
                    "events": [{
                        "entity_id": campaign,
                        "type": "campaign_activated",
                        "timestamp": p.at_ms,
                        "uuid": uuid(),
                        "key": "campaign_activated",
                    }],
                }],
            })
        })
        .collect();
    Some(json!({
        "account_id": first.ids.account_id,
        "project_id": first.ids.project_id,
        "revision": first.ids.revision,
        "client_name": "switchyard",
        "client_version": env!("CARGO_PKG_VERSION"),
        "anonymize_ip": first.ids.anonymize_ip,
        "enrich_decisions": true,
        "visitors": visitors,
    }))
}

/// The queue's sending end and its receiver until the sender task takes it.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Pending>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Pending>>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Outbox {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Outbox {
    /// Queues an event without waiting; false when the queue is full (dropped).
    pub fn push(&self, p: Pending) -> bool {
        self.tx.try_send(p).is_ok()
    }

    /// Starts the sender (once); it ends when `stop` turns true.
    pub fn spawn(&self, app: &Arc<App>, stop: watch::Receiver<bool>) {
        if let Some(rx) = self.rx.lock().ok().and_then(|mut r| r.take()) {
            tokio::spawn(send_loop(app.clone(), rx, stop));
        }
    }
}

async fn send_loop(
    app: Arc<App>,
    mut rx: mpsc::Receiver<Pending>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        let flush = tokio::select! {
            _ = stop.changed() => return,
            got = rx.recv() => match got {
                None => return,
                Some(p) => {
                    batch.push(p);
                    batch.len() >= BATCH
                }
            },
            _ = tokio::time::sleep(FLUSH_EVERY), if !batch.is_empty() => true,
        };
        if flush {
            // One payload per datafile revision (a batch may straddle a datafile update).
            let mut by_revision: Vec<Vec<Pending>> = Vec::new();
            for p in batch.drain(..) {
                match by_revision
                    .iter_mut()
                    .find(|b| b.first().is_some_and(|f| Arc::ptr_eq(&f.ids, &p.ids)))
                {
                    Some(b) => b.push(p),
                    None => by_revision.push(vec![p]),
                }
            }
            for b in by_revision {
                send(&app, &b).await;
            }
        }
    }
}

async fn send(app: &App, batch: &[Pending]) {
    let Some(body) = payload(batch) else { return };
    let url = app
        .live
        .load()
        .config
        .optimizely
        .as_ref()
        .and_then(|o| o.events_url.clone());
    let Some(url) = url else {
        count(app, "dropped", batch.len());
        return;
    };
    let body = Bytes::from(body.to_string());
    let client = app.clients.get(Duration::from_secs(10), false);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        let req = Request::post(url.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()));
        let Ok(req) = req else {
            count(app, "failed", batch.len());
            return;
        };
        let outcome = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await;
        match outcome {
            Ok(Ok(resp)) if resp.status().is_success() => {
                count(app, "sent", batch.len());
                return;
            }
            Ok(Ok(resp)) => {
                tracing::warn!(status = %resp.status(), attempt, "Optimizely refused a batch of decision events");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, attempt, "sending decision events failed"),
            Err(_) => tracing::warn!(attempt, "sending decision events timed out"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
    count(app, "failed", batch.len());
}

fn count(app: &App, outcome: &str, n: usize) {
    app.metrics
        .source_events
        .with_label_values(&["optimizely", outcome])
        .inc_by(n as u64);
}

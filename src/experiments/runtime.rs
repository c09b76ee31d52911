//! Experiments at runtime: exposures recorded off the request path (a bounded queue drained
//! in batches into the state store), recent request ids remembered for feedback attribution,
//! `POST /v1/feedback`, results, and the business-metric gauges.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::catalog::PerUser;
use super::feedback::{self, Target};
use super::results::{self, MetricSums, VariationData};
use crate::app::App;
use crate::flags::audience::Attributes;
use crate::flags::Flag;
use crate::openai::ApiError;
use crate::state::{Exposure, FeedbackRow, StateError, Store};

/// Exposures waiting to be written, at most.
const QUEUE: usize = 65_536;
/// Request ids remembered in memory, at most (older ones are looked up in the store, where
/// they land within `GATHER`; the memory only spares a store query for fresh feedback).
const RECENT: usize = 20_000;
/// Exposures remembered as already recorded, per generation (two generations are kept).
const SEEN: usize = 100_000;
/// Exposures written in one transaction, at most.
const BATCH: usize = 4096;
/// How long the writer gathers exposures before a transaction.
const GATHER: Duration = Duration::from_millis(200);
/// How often the business-metric gauges are refreshed (at least).
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long request ids are kept in the store.
const KEEP_REQUESTS: Duration = Duration::from_secs(7 * 24 * 3600);

/// A request id's decision: (flag, variation, user).
type Decided = (String, String, String);

/// What the request path remembers, under one lock.
#[derive(Default)]
struct Recent {
    /// Request id → its decision, for the newest `RECENT` requests.
    map: HashMap<String, Decided>,
    order: VecDeque<String>,
    /// Hashes of (flag, user, variation) recorded lately: the current generation and the one
    /// before it. A repeat is sent to the store as a request id only.
    seen: HashSet<u64>,
    seen_before: HashSet<u64>,
}

impl Recent {
    /// Whether `key` was recorded lately; remembers it either way.
    fn repeat(&mut self, key: u64) -> bool {
        if self.seen.contains(&key) {
            return true;
        }
        let before = self.seen_before.contains(&key);
        if self.seen.len() >= SEEN {
            self.seen_before = std::mem::take(&mut self.seen);
        }
        self.seen.insert(key);
        before
    }
}

/// The experiments side of the app.
pub struct Experiments {
    tx: mpsc::Sender<Exposure>,
    rx: Mutex<Option<mpsc::Receiver<Exposure>>>,
    recent: Mutex<Recent>,
    /// Keyed per process, so which exposures collide is not predictable from outside.
    hasher: RandomState,
}

impl std::fmt::Debug for Experiments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Experiments")
    }
}

impl Default for Experiments {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Experiments {
            tx,
            rx: Mutex::new(Some(rx)),
            recent: Mutex::new(Recent::default()),
            hasher: RandomState::new(),
        }
    }
}

impl Experiments {
    /// Records an answered request (cheap: a map insert and a queue push; never waits).
    pub fn expose(&self, app: &App, mut exposure: Exposure) {
        let key = self
            .hasher
            .hash_one((&exposure.flag, &exposure.user, &exposure.variation));
        if let Ok(mut recent) = self.recent.lock() {
            exposure.repeat = recent.repeat(key);
            let Recent { map, order, .. } = &mut *recent;
            if order.len() >= RECENT {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
            order.push_back(exposure.request_id.clone());
            map.insert(
                exposure.request_id.clone(),
                (
                    exposure.flag.clone(),
                    exposure.variation.clone(),
                    exposure.user.clone(),
                ),
            );
        }
        crate::sources::expose(app, &exposure);
        if self.tx.try_send(exposure).is_err() {
            app.metrics.exposures.with_label_values(&["dropped"]).inc();
        }
    }

    async fn lookup(&self, store: &Store, request_id: &str) -> Result<Option<Decided>, StateError> {
        if let Some(found) = self
            .recent
            .lock()
            .ok()
            .and_then(|r| r.map.get(request_id).cloned())
        {
            return Ok(Some(found));
        }
        store.lookup_request(request_id).await
    }
}

/// Starts the exposure writer and the business-metric refresher.
pub fn spawn(app: &Arc<App>, mut stop: watch::Receiver<bool>) {
    let Some(mut rx) = app.experiments.rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let writer = app.clone();
    let mut writer_stop = stop.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    // Gather for a moment: one transaction (and one fsync) per batch, not per
                    // handful of requests, keeps the store's work off the proxy's cores.
                    let until = tokio::time::Instant::now() + GATHER;
                    while batch.len() < BATCH {
                        let room = BATCH - batch.len();
                        match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
                _ = writer_stop.changed() => {
                    // Drain what is queued, then stop.
                    while let Ok(e) = rx.try_recv() {
                        batch.push(e);
                    }
                    write(&writer, &mut batch).await;
                    return;
                }
            }
            write(&writer, &mut batch).await;
        }
    });
    let refresher = app.clone();
    tokio::spawn(async move {
        let mut pruned_at = 0u64;
        let mut pause = REFRESH_EVERY;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(pause) => {
                    // The gauges aggregate every event: with a large store that takes time, so
                    // the refresh never takes more than a tenth of the time (and CPU) it covers.
                    let started = std::time::Instant::now();
                    refresh_gauges(&refresher).await;
                    pause = REFRESH_EVERY.max(started.elapsed() * 10);
                    let now = crate::clock::now_ms();
                    if now.saturating_sub(pruned_at) > 3_600_000 {
                        pruned_at = now;
                        let _ = refresher.store.prune_requests(now.saturating_sub(KEEP_REQUESTS.as_millis() as u64)).await;
                    }
                }
            }
        }
    });
}

async fn write(app: &App, batch: &mut Vec<Exposure>) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    for attempt in 0..5 {
        match app.store.record_exposures(batch).await {
            Ok(()) => {
                app.metrics
                    .exposures
                    .with_label_values(&["written"])
                    .inc_by(batch.len() as u64);
                batch.clear();
                return;
            }
            Err(e) if attempt == 4 => {
                tracing::warn!(error = %e, lost = batch.len(), "exposures not written: state store unavailable");
                app.metrics
                    .exposures
                    .with_label_values(&["failed"])
                    .inc_by(batch.len() as u64);
                app.metrics.state_error();
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    batch.clear();
}

/// `POST /v1/feedback`.
pub async fn post_feedback(app: &App, body: &[u8]) -> Result<(http::StatusCode, Value), ApiError> {
    let live = app.live.load_full();
    let events = feedback::batch(body, &live.config.catalog)?;
    let now = crate::clock::now_ms();
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let mut row_index = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let e = match e {
            Ok(e) => e,
            Err(message) => {
                errors.push(json!({"index": i, "message": message}));
                continue;
            }
        };
        let decided = match &e.target {
            Target::Request(id) => match app.experiments.lookup(&app.store, id).await {
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err(format!(
                    "unknown request id `{id}` (not answered by this proxy, or older than 7 days)"
                )),
                Err(err) => return Err(ApiError::StateUnavailable(err.to_string())),
            },
            Target::User { flag, user } => match live.config.flag(flag) {
                Some((fi, f)) => {
                    let d = live
                        .decide(fi, user, &Attributes::new())
                        .unwrap_or_else(|| f.decide(f.enabled, user, &Attributes::new()));
                    Ok((
                        flag.clone(),
                        f.variations[d.variation].key.clone(),
                        user.clone(),
                    ))
                }
                None => Err(format!("unknown flag `{flag}`")),
            },
        };
        match decided {
            Ok((flag, variation, user)) => {
                rows.push(FeedbackRow {
                    event_id: e.event_id,
                    flag,
                    variation,
                    user,
                    metric: e.metric,
                    value: e.value,
                    at_ms: now,
                });
                row_index.push(i);
            }
            Err(message) => errors.push(json!({"index": i, "message": message})),
        }
    }
    let stored = if rows.is_empty() {
        Vec::new()
    } else {
        app.store.insert_feedback(&rows).await.map_err(|e| {
            app.metrics.state_error();
            ApiError::StateUnavailable(e.to_string())
        })?
    };
    let mut accepted = 0;
    let mut duplicates = 0;
    for (row, fresh) in rows.iter().zip(&stored) {
        if *fresh {
            accepted += 1;
            app.metrics
                .feedback_events
                .with_label_values(&[&row.flag, &row.variation, &row.metric])
                .inc();
        } else {
            duplicates += 1;
        }
    }
    let status = if accepted + duplicates == 0 && !errors.is_empty() {
        http::StatusCode::BAD_REQUEST
    } else {
        http::StatusCode::OK
    };
    let mut body = json!({"accepted": accepted, "duplicates": duplicates, "errors": errors});
    if status == http::StatusCode::BAD_REQUEST {
        let first = body["errors"][0]["message"]
            .as_str()
            .unwrap_or("invalid event")
            .to_owned();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("error".into(), json!({"message": format!("no event was accepted: {first}"), "type": "invalid_request_error", "param": null, "code": "invalid_event"}));
        }
    }
    Ok((status, body))
}

/// The experiment's rule id and each variation's configured share of it.
fn experiment_shares(flag: &Flag) -> (Option<String>, BTreeMap<String, f64>) {
    let mut shares: BTreeMap<String, f64> = flag
        .variations
        .iter()
        .map(|v| (v.key.clone(), 0.0))
        .collect();
    let Some(r) = flag.experiment_rule.and_then(|i| flag.rules.get(i)) else {
        return (None, shares);
    };
    let mut prev = 0u32;
    for range in &r.allocation {
        if let Some(v) = range.variation.and_then(|v| flag.variations.get(v)) {
            *shares.entry(v.key.clone()).or_default() += f64::from(range.end.saturating_sub(prev));
        }
        prev = range.end;
    }
    (Some(r.id.clone()), shares)
}

/// Per-variation figures of a flag from the store. With `only_with_feedback`, a flag without
/// feedback yields nothing (and its exposures are not counted: that query reads them all).
async fn gather(
    app: &App,
    flag: &Flag,
    since_ms: Option<u64>,
    only_with_feedback: bool,
) -> Result<(BTreeMap<String, VariationData>, u64, Option<String>), StateError> {
    let live = app.live.load();
    let (rule, shares) = experiment_shares(flag);
    let aggs = app
        .store
        .feedback_aggs(&flag.key, rule.as_deref(), since_ms)
        .await?;
    if only_with_feedback && aggs.is_empty() {
        return Ok((BTreeMap::new(), 0, rule));
    }
    let (counts, switched) = app
        .store
        .exposure_counts(&flag.key, rule.as_deref())
        .await?;
    let mut data: BTreeMap<String, VariationData> = BTreeMap::new();
    for (v, share) in &shares {
        // Only variations the experiment's rule allocates take part (all of them without one).
        if rule.is_none() || *share > 0.0 {
            data.insert(
                v.clone(),
                VariationData {
                    expected_share: *share,
                    ..Default::default()
                },
            );
        }
    }
    for (v, users) in counts {
        if let Some(d) = data.get_mut(&v) {
            d.users = users;
        }
    }
    for a in aggs {
        let Some(def) = live.config.catalog.get(&a.metric) else {
            continue;
        };
        let Some(d) = data.get_mut(&a.variation) else {
            continue;
        };
        let (sum, sum_sq) = match def.per_user {
            PerUser::Max => (a.sum_of_max, a.sum_sq_of_max),
            PerUser::Sum => (a.sum_of_sums, a.sum_sq_of_sums),
            PerUser::Mean => (a.sum_of_means, a.sum_sq_of_means),
        };
        d.metrics.insert(
            a.metric.clone(),
            MetricSums {
                reporters: a.reporters,
                sum,
                sum_sq,
                events: a.events,
            },
        );
    }
    Ok((data, switched, rule))
}

/// Per-variation figures of a flag's experiment (users first exposed in its rule, feedback
/// sums per metric): what results are computed from, for other consumers (the bandit).
pub async fn experiment_data(
    app: &App,
    flag: &Flag,
) -> Result<BTreeMap<String, VariationData>, StateError> {
    gather(app, flag, None, false).await.map(|(d, _, _)| d)
}

/// `GET /admin/flags/{flag}/results[?metric=M]`.
pub async fn results(app: &App, flag_key: &str, metric: Option<&str>) -> Result<Value, ApiError> {
    let live = app.live.load_full();
    let (_, flag) = live
        .config
        .flag(flag_key)
        .ok_or_else(|| ApiError::UnknownFlag(flag_key.to_owned()))?;
    if let Some(m) = metric {
        if live.config.catalog.get(m).is_none() {
            return Err(ApiError::field("metric", format!("unknown metric `{m}`")));
        }
    }
    let (data, switched, rule) = gather(app, flag, None, false)
        .await
        .map_err(|e| ApiError::StateUnavailable(e.to_string()))?;
    let control = flag.variations[flag.stable_variation].key.clone();
    let mut v = results::compute(
        &flag.key,
        &control,
        &data,
        &live.config.catalog,
        metric,
        switched,
        &live.config.experiment_policy,
    );
    if let Some(obj) = v.as_object_mut() {
        obj.insert("rule".into(), json!(rule));
    }
    Ok(v)
}

/// Business metrics over the last `window`: (variation, metric) → (mean per user, users).
pub async fn business_values(
    app: &App,
    flag_key: &str,
    window: Duration,
) -> Result<HashMap<(String, String), (f64, u64)>, StateError> {
    let live = app.live.load_full();
    let Some((_, flag)) = live.config.flag(flag_key) else {
        return Ok(HashMap::new());
    };
    let since = crate::clock::now_ms().saturating_sub(window.as_millis() as u64);
    let (data, _, _) = gather(app, flag, Some(since), true).await?;
    let mut out = HashMap::new();
    for (variation, d) in &data {
        for (metric, sums) in &d.metrics {
            let Some(def) = live.config.catalog.get(metric) else {
                continue;
            };
            let arm = results::arm(def, d.users, sums);
            out.insert((variation.clone(), metric.clone()), (arm.mean, arm.n));
        }
    }
    Ok(out)
}

async fn refresh_gauges(app: &App) {
    let live = app.live.load_full();
    for flag in &live.config.flags {
        let Ok((data, _, _)) = gather(app, flag, None, true).await else {
            return;
        };
        for (variation, d) in &data {
            for (metric, sums) in &d.metrics {
                let Some(def) = live.config.catalog.get(metric) else {
                    continue;
                };
                let arm = results::arm(def, d.users, sums);
                app.metrics
                    .business
                    .with_label_values(&[&flag.key, variation, metric])
                    .set(arm.mean);
                app.metrics
                    .business_users
                    .with_label_values(&[&flag.key, variation, metric])
                    .set(arm.n as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_exposure_is_a_repeat_for_two_generations() {
        let mut r = Recent::default();
        assert!(!r.repeat(1));
        assert!(r.repeat(1));
        // Fill the current generation: 1 moves to the previous one and still counts.
        for k in 2..=SEEN as u64 {
            assert!(!r.repeat(k));
        }
        assert!(!r.repeat(0));
        assert!(r.repeat(1));
        assert!(r.seen.len() <= SEEN && r.seen_before.len() <= SEEN);
        // After two more generations a key is forgotten (and recorded again).
        for k in 10 * SEEN as u64..12 * SEEN as u64 + 2 {
            r.repeat(k);
        }
        assert!(!r.repeat(2));
    }
}

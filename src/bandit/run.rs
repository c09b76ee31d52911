//! The loop beside the request path: on the leader, each bandit flag runs an epoch at its
//! cadence (gather the figures, compute, record, apply); on every replica, first exposures
//! are read from the store into the sticky cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::epoch::{self, ArmInput, GuardFigure, GuardKind, Input, Why};
use super::live::arms;
use super::record::EpochRecord;
use super::settings::Status;
use super::{rng, BanditConfig};
use crate::alerts;
use crate::app::App;
use crate::experiments::catalog::PerUser;
use crate::flags::Flag;
use crate::state::{Change, StateError};

/// How often the loop looks at the bandits.
const TICK: Duration = Duration::from_millis(500);
/// First exposures read into the sticky cache per flag and tick, at most.
const WARM_BATCH: u32 = 10_000;
/// The actor epochs are audited as.
pub const ACTOR: &str = "bandit";

/// Why an epoch could not run.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// No such flag.
    #[error("unknown flag `{0}`")]
    UnknownFlag(String),
    /// The flag has no `[flags.F.bandit]`.
    #[error("flag `{0}` has no bandit ([flags.{0}.bandit])")]
    NoBandit(String),
    /// The bandit does not run epochs now (paused, stopped, flag off…).
    #[error("{0}")]
    NotRunning(String),
    /// Another process recorded this epoch first.
    #[error("epoch {1} of `{0}` is already recorded (another replica ran it)")]
    Taken(String, u64),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Starts the loop; it ends when `stop` turns true.
pub fn spawn(app: &Arc<App>, mut stop: watch::Receiver<bool>) {
    let app = app.clone();
    tokio::spawn(async move {
        let mut next_due: HashMap<String, u64> = HashMap::new();
        let mut warmed: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            warm(&app, &mut warmed).await;
            if !app.fleet.is_leader() {
                next_due.clear();
                continue;
            }
            let live = app.live.load_full();
            let now = crate::clock::now_ms();
            for (key, b) in &live.config.bandits {
                let o = live.state.flags.get(key).and_then(|o| o.bandit.as_ref());
                let cadence = b.effective(o).cadence.as_millis() as u64;
                let due = match next_due.get(key) {
                    Some(d) => *d,
                    None => {
                        let last = last_epoch_at(&app, key).await.unwrap_or(now);
                        let d = last.saturating_add(cadence);
                        next_due.insert(key.clone(), d);
                        d
                    }
                };
                if now < due {
                    continue;
                }
                next_due.insert(key.clone(), now.saturating_add(cadence));
                match run_epoch(&app, key, None).await {
                    Ok(r) => {
                        tracing::info!(flag = %key, epoch = r.epoch, why = r.outcome.why.as_str(), "bandit epoch")
                    }
                    Err(EpochError::NotRunning(_)) => {}
                    Err(e) => tracing::warn!(flag = %key, error = %e, "bandit epoch not run"),
                }
            }
            next_due.retain(|k, _| live.config.bandits.contains_key(k));
        }
    });
}

async fn last_epoch_at(app: &App, flag: &str) -> Option<u64> {
    let rows = app.store.bandit_epochs(flag, None, 1).await.ok()?;
    let r: EpochRecord = serde_json::from_str(rows.first()?).ok()?;
    Some(r.at_ms)
}

/// Reads first exposures in each bandit's rule, newer than the last read, into the sticky
/// cache (so a user first served by another replica, or before a restart, keeps their
/// variation here too).
async fn warm(app: &App, warmed: &mut HashMap<String, u64>) {
    let live = app.live.load_full();
    for (key, b) in &live.config.bandits {
        let Some((_, flag)) = live.config.flag(key) else {
            continue;
        };
        let Some(rule) = flag.rules.get(b.rule) else {
            continue;
        };
        let since = warmed.get(key).copied().unwrap_or(0);
        let Ok(rows) = app
            .store
            .first_exposures(key, &rule.id, since, WARM_BATCH)
            .await
        else {
            continue;
        };
        let mut last = since;
        for (user, variation, at) in &rows {
            let k = live.bandits.sticky.key(key, user);
            live.bandits
                .sticky
                .remember(k, &Arc::from(variation.as_str()));
            last = last.max(*at);
        }
        if rows.len() as u32 == WARM_BATCH && last == since {
            last += 1;
        }
        warmed.insert(key.clone(), last);
    }
}

/// The bucket counts per arm from the bandit's state, or the rule's configured allocation.
fn weights_in_force(flag: &Flag, b: &BanditConfig, w: Option<&BTreeMap<String, u32>>) -> Vec<u32> {
    let arms = arms(flag, b.rule);
    match w.filter(|w| !w.is_empty()) {
        Some(w) => arms
            .iter()
            .map(|v| w.get(&flag.variations[*v].key).copied().unwrap_or(0))
            .collect(),
        None => {
            let mut out = vec![0u32; arms.len()];
            let mut prev = 0;
            if let Some(r) = flag.rules.get(b.rule) {
                for a in &r.allocation {
                    if let Some(i) = a.variation.and_then(|v| arms.iter().position(|x| *x == v)) {
                        out[i] += a.end.saturating_sub(prev);
                    }
                    prev = a.end;
                }
            }
            out
        }
    }
}

/// Runs one epoch of `flag` now: gathers the figures, computes, stores the record, applies
/// the weights (audited as `bandit`, or as `actor` when an operator asked for it).
pub async fn run_epoch(
    app: &App,
    flag_key: &str,
    actor: Option<&str>,
) -> Result<EpochRecord, EpochError> {
    let live = app.live.load_full();
    let (fi, flag) = live
        .config
        .flag(flag_key)
        .ok_or_else(|| EpochError::UnknownFlag(flag_key.to_owned()))?;
    let b = live
        .config
        .bandits
        .get(flag_key)
        .ok_or_else(|| EpochError::NoBandit(flag_key.to_owned()))?;
    let o = live
        .state
        .flags
        .get(flag_key)
        .and_then(|o| o.bandit.clone())
        .unwrap_or_default();
    let settings = b.effective(Some(&o));
    let rt = &live.runtime[fi];
    if !rt.enabled {
        return Err(EpochError::NotRunning(format!(
            "flag `{flag_key}` is off (kill switch): the bandit waits"
        )));
    }
    if rt.force_fallback {
        return Err(EpochError::NotRunning(format!(
            "flag `{flag_key}` is forced to fallback: the bandit waits"
        )));
    }
    if settings.paused {
        return Err(EpochError::NotRunning(format!(
            "the bandit of `{flag_key}` is paused"
        )));
    }
    if o.status != Status::Running {
        return Err(EpochError::NotRunning(format!(
            "the bandit of `{flag_key}` is {} (PUT /admin/flags/{flag_key}/bandit with {{\"reset\": true}} starts it again)",
            o.status.as_str()
        )));
    }
    let previous: Option<EpochRecord> = app
        .store
        .bandit_epochs(flag_key, None, 1)
        .await?
        .first()
        .and_then(|t| serde_json::from_str(t).ok());
    let number = o.epoch.max(previous.as_ref().map_or(0, |p| p.epoch)) + 1;
    let arm_vs = arms(flag, b.rule);
    let data = crate::experiments::runtime::experiment_data(app, flag).await?;
    let def = live.config.catalog.get(&b.metric);
    let handles = live.routes.flags.get(fi);
    let mut arms_in = Vec::new();
    for &v in &arm_vs {
        let key = &flag.variations[v].key;
        let d = data.get(key).cloned().unwrap_or_default();
        let s = d.metrics.get(&b.metric).copied().unwrap_or_default();
        let n = match def.map(|d| d.per_user) {
            Some(PerUser::Max | PerUser::Sum) => d.users.max(s.reporters),
            _ => s.reporters,
        };
        let h = handles.and_then(|h| h.get(v));
        let guardrails = b
            .guardrails
            .iter()
            .map(|g| match (g.kind, g.metric.as_str()) {
                (GuardKind::Mean, "error_rate" | "fallback_rate") => {
                    let t = h.map(|h| h.totals()).unwrap_or_default();
                    let bad = if g.metric == "error_rate" {
                        t.errors
                    } else {
                        t.fallbacks
                    } as f64;
                    GuardFigure {
                        n: t.requests,
                        sum: bad,
                        sum_sq: bad,
                    }
                }
                (GuardKind::Quantile, m) => {
                    let q = match m {
                        "p50_latency_seconds" => 0,
                        "p99_latency_seconds" => 2,
                        _ => 1,
                    };
                    let (count, qs) = h.and_then(|h| h.quantiles()).unwrap_or((0, [0.0; 3]));
                    GuardFigure {
                        n: count,
                        sum: qs[q],
                        sum_sq: 0.0,
                    }
                }
                (GuardKind::Mean, m) => {
                    let s = d.metrics.get(m).copied().unwrap_or_default();
                    let gdef = live.config.catalog.get(m);
                    let n = match gdef.map(|d| d.per_user) {
                        Some(PerUser::Max | PerUser::Sum) => d.users.max(s.reporters),
                        _ => s.reporters,
                    };
                    GuardFigure {
                        n,
                        sum: s.sum,
                        sum_sq: s.sum_sq,
                    }
                }
            })
            .collect();
        arms_in.push(ArmInput {
            variation: key.clone(),
            users: d.users,
            n,
            sum: s.sum,
            sum_sq: s.sum_sq,
            guardrails,
        });
    }
    let weights_before = weights_in_force(flag, b, Some(&o.weights));
    let expected_users = expected(&arms_in, &weights_before, previous.as_ref());
    let control = arm_vs
        .iter()
        .position(|v| *v == flag.stable_variation)
        .unwrap_or(0);
    let input = Input {
        flag: flag_key.to_owned(),
        epoch: number,
        seed: rng::seed(flag_key, number).to_string(),
        control,
        arms: arms_in,
        weights_before,
        expected_users,
        params: b.params(&settings, &live.config.experiment_policy),
    };
    let outcome = epoch::compute(&input);
    let status_after = match outcome.why {
        Why::Srm => Status::RolledBack,
        Why::Stopped => Status::Stopped,
        Why::Promoted => Status::Promoted,
        _ => Status::Running,
    };
    let at_ms = crate::clock::now_ms();
    let record = EpochRecord {
        flag: flag_key.to_owned(),
        epoch: number,
        at: crate::clock::format_rfc3339_ms(at_ms as i64),
        at_ms,
        algorithm: b.model.algorithm().to_owned(),
        status_before: o.status,
        status_after,
        input,
        outcome,
    };
    let text = serde_json::to_string(&record)
        .map_err(|e| StateError::Storage(format!("encoding the epoch record: {e}")))?;
    if !app
        .store
        .insert_bandit_epoch(flag_key, number, at_ms, &text)
        .await?
    {
        return Err(EpochError::Taken(flag_key.to_owned(), number));
    }
    let weights: BTreeMap<String, u32> = record
        .input
        .arms
        .iter()
        .zip(&record.outcome.weights_after)
        .map(|(a, w)| (a.variation.clone(), *w))
        .collect();
    let change = Change::BanditEpoch {
        flag: flag_key.to_owned(),
        epoch: number,
        weights: weights.clone(),
        status: status_after,
        at_ms,
    };
    let why = record.outcome.why.as_str();
    let mut reason = format!("epoch {number}: {why}");
    if !record.outcome.reasons.is_empty() {
        reason = format!("{reason}: {}", record.outcome.reasons.join("; "));
    }
    let actor = actor.map_or_else(|| ACTOR.to_owned(), |a| format!("{a} (bandit)"));
    app.change(&change, &actor, Some(&reason)).await?;
    for (v, w) in &weights {
        app.metrics
            .bandit_weight
            .with_label_values(&[flag_key, v])
            .set(f64::from(*w) / 10_000.0);
    }
    match record.outcome.why {
        Why::Srm => {
            tracing::error!(flag = %flag_key, epoch = number, "bandit: sample ratio mismatch, every user back to the control");
        }
        Why::Stopped | Why::Promoted => {
            tracing::warn!(flag = %flag_key, epoch = number, why, "bandit stopped");
        }
        _ => {}
    }
    if status_after != record.status_before {
        notify(app, b, &record, &weights, &reason).await;
    }
    Ok(record)
}

/// Announces the bandit's change of level: an alert entry in the audit log (read by the
/// console and `GET /admin/audit`), the `bandit:FLAG` alert's gauge and its webhooks.
async fn notify(
    app: &App,
    b: &BanditConfig,
    record: &EpochRecord,
    weights: &BTreeMap<String, u32>,
    reason: &str,
) {
    let flag = record.flag.as_str();
    let control = record
        .input
        .arms
        .get(record.input.control)
        .map(|a| a.variation.clone())
        .unwrap_or_default();
    let level = alerts::bandit::level_of(record.status_after);
    let srm = record.outcome.why == Why::Srm;
    let winner = record
        .outcome
        .winner
        .and_then(|w| record.input.arms.get(w))
        .map(|a| a.variation.clone());
    let value = if srm {
        record.outcome.srm_p_value
    } else {
        record
            .outcome
            .winner
            .and_then(|w| record.outcome.p_best.get(w).copied())
            .unwrap_or(0.0)
    };
    let metric = if srm { "srm" } else { "p_best" };
    let note = Change::Note {
        flag: Some(flag.to_owned()),
        action: "alert".into(),
        detail: json!({
            "alert": alerts::bandit::name(flag),
            "variation": control,
            "metric": metric,
            "level": level.as_str(),
            "value": value,
            "epoch": record.epoch,
        }),
    };
    if let Err(e) = app.change(&note, ACTOR, Some(reason)).await {
        tracing::warn!(flag, error = %e, "bandit alert not audited: state store unavailable");
    }
    let event = alerts::bandit::Event {
        flag: flag.to_owned(),
        variation: control,
        metric,
        level,
        previous: alerts::bandit::level_of(record.status_before),
        value: Some(value),
        threshold: if srm {
            Some(record.input.params.srm_threshold)
        } else {
            record.input.params.stop.map(|s| s.p_best)
        },
        samples: record.input.arms.iter().map(|a| a.users).sum(),
        epoch: record.epoch,
        why: record.outcome.why.as_str(),
        action: match record.status_after {
            Status::Promoted => "promote",
            Status::Stopped => "hold",
            _ => "rollback",
        },
        winner,
        weights: weights.clone(),
        reason: reason.to_owned(),
        at_ms: record.at_ms,
    };
    app.alerts.bandit_event(&b.webhooks, &event);
}

fn expected(arms: &[ArmInput], weights: &[u32], previous: Option<&EpochRecord>) -> Vec<f64> {
    let users: Vec<u64> = arms.iter().map(|a| a.users).collect();
    match previous {
        Some(p) => epoch::expected_users(
            &p.input.expected_users,
            p.input.arms.iter().map(|a| a.users).sum(),
            &users,
            weights,
        ),
        None => epoch::expected_users(&[], 0, &users, weights),
    }
}

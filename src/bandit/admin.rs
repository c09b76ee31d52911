//! The bandit's admin operations: `GET /admin/flags/{flag}/bandit` (state and epochs),
//! `PUT /admin/flags/{flag}/bandit` (settings: floor, cadence, min users, pause, reset;
//! audited runtime overrides), `POST /admin/flags/{flag}/bandit/epoch` (run one now) and
//! `GET /admin/flags/{flag}/bandit/epochs/{n}` (one record, for replay).

use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::live::arms;
use super::record::EpochRecord;
use super::run::{run_epoch, EpochError};
use super::SettingsOverride;
use crate::admin::api::AdminError;
use crate::app::App;
use crate::state::{Change, StateError};

type Result<T> = std::result::Result<T, AdminError>;

impl From<EpochError> for AdminError {
    fn from(e: EpochError) -> AdminError {
        match e {
            EpochError::UnknownFlag(_) | EpochError::NoBandit(_) => {
                AdminError::not_found(e.to_string())
            }
            EpochError::NotRunning(_) | EpochError::Taken(..) => {
                AdminError::new(StatusCode::CONFLICT, "bandit_not_running", e.to_string())
            }
            EpochError::State(s) => s.into(),
        }
    }
}

/// `PUT /admin/flags/{flag}/bandit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// The least share of traffic each live arm keeps (0 ..= 1 / arms).
    #[serde(default)]
    pub floor: Option<f64>,
    /// Time between epochs (`"15m"`, at least 1 s).
    #[serde(default)]
    pub cadence: Option<String>,
    /// Users each arm needs before anything moves (≥ 1).
    #[serde(default)]
    pub min_users_per_arm: Option<u64>,
    /// No epochs while true.
    #[serde(default)]
    pub paused: Option<bool>,
    /// Back to the configured allocation and a running bandit (after a stop or a rollback).
    #[serde(default)]
    pub reset: bool,
    /// The operator's reason (audited).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochBody {
    #[serde(default)]
    reason: Option<String>,
}

fn parse<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AdminError::bad("invalid JSON body: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| AdminError::bad(format!("invalid JSON body: {e}")))
}

fn limit(query: Option<&str>) -> Result<u32> {
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    AdminError::bad(format!("limit: {v:?} is not a number in 1..=1000"))
                });
        }
    }
    Ok(50)
}

/// Handles a bandit path (`segs` after `/admin/`, starting `flags/{flag}/bandit`).
pub async fn handle(
    app: &App,
    actor: &str,
    method: &Method,
    segs: &[&str],
    query: Option<&str>,
    body: &[u8],
) -> Result<(StatusCode, Value)> {
    let key = segs.get(1).copied().unwrap_or_default();
    match (method, segs.get(3..).unwrap_or_default()) {
        (&Method::GET, []) => Ok((StatusCode::OK, state_json(app, key, limit(query)?).await?)),
        (&Method::PUT, []) => {
            let b: SettingsBody = parse(body)?;
            let (settings, reset) = validate(app, key, &b)?;
            let change = Change::SetBandit {
                flag: key.to_owned(),
                settings,
                reset,
                at_ms: crate::clock::now_ms(),
            };
            let entry = app.change(&change, actor, b.reason.as_deref()).await?;
            let mut v = state_json(app, key, 10).await?;
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "audit".into(),
                    serde_json::to_value(entry).unwrap_or(Value::Null),
                );
            }
            Ok((StatusCode::OK, v))
        }
        (&Method::POST, ["epoch"]) => {
            let b: EpochBody = parse(body)?;
            let _ = b.reason;
            let r = run_epoch(app, key, Some(actor)).await?;
            Ok((StatusCode::OK, r.to_json()))
        }
        (&Method::GET, ["epochs", n]) => {
            let n: u64 = n
                .parse()
                .map_err(|_| AdminError::bad(format!("epoch {n:?} is not a number")))?;
            known(app, key)?;
            let rows = app.store.bandit_epochs(key, Some(n), 1).await?;
            let text = rows
                .first()
                .ok_or_else(|| AdminError::not_found(format!("flag `{key}` has no epoch {n}")))?;
            let r = decode(text)?;
            Ok((StatusCode::OK, r.to_json()))
        }
        _ => Err(AdminError::not_found(format!(
            "unknown admin path /admin/{}",
            segs.join("/")
        ))),
    }
}

fn decode(text: &str) -> Result<EpochRecord> {
    serde_json::from_str(text)
        .map_err(|e| AdminError::from(StateError::Storage(format!("unreadable epoch record: {e}"))))
}

fn known(app: &App, key: &str) -> Result<()> {
    let live = app.live.load();
    if live.config.flag(key).is_none() {
        return Err(EpochError::UnknownFlag(key.to_owned()).into());
    }
    if !live.config.bandits.contains_key(key) {
        return Err(EpochError::NoBandit(key.to_owned()).into());
    }
    Ok(())
}

fn validate(app: &App, key: &str, b: &SettingsBody) -> Result<(SettingsOverride, bool)> {
    known(app, key)?;
    let live = app.live.load();
    let mut s = SettingsOverride {
        paused: b.paused,
        min_users_per_arm: b.min_users_per_arm,
        ..Default::default()
    };
    if let (Some((_, flag)), Some(bandit)) = (live.config.flag(key), live.config.bandits.get(key)) {
        if let Some(f) = b.floor {
            let most = 1.0 / arms(flag, bandit.rule).len().max(1) as f64;
            if !(f.is_finite() && (0.0..=most).contains(&f)) {
                return Err(AdminError::bad(format!(
                    "floor: {f} is out of range (0 ..= {most:.4}: 1 / the number of arms)"
                )));
            }
            s.floor_bps = Some((f * 10_000.0).round() as u32);
        }
    }
    if let Some(c) = &b.cadence {
        let d = humantime::parse_duration(c)
            .map_err(|e| AdminError::bad(format!("cadence: {c:?}: {e}")))?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(366 * 24 * 3600) {
            return Err(AdminError::bad(format!(
                "cadence: {c:?} is out of range (1s ..= 366d)"
            )));
        }
        s.cadence_ms = Some(d.as_millis() as u64);
    }
    if b.min_users_per_arm == Some(0) || b.min_users_per_arm.is_some_and(|n| n > 1_000_000_000) {
        return Err(AdminError::bad(
            "min_users_per_arm: out of range (1 ..= 1000000000)",
        ));
    }
    Ok((s, b.reset))
}

/// The bandit's state and its newest epochs.
pub async fn state_json(app: &App, key: &str, limit: u32) -> Result<Value> {
    known(app, key)?;
    let live = app.live.load_full();
    let (fi, flag) = live
        .config
        .flag(key)
        .ok_or_else(|| AdminError::not_found(format!("unknown flag `{key}`")))?;
    let b = live
        .config
        .bandits
        .get(key)
        .ok_or_else(|| AdminError::not_found(format!("flag `{key}` has no bandit")))?;
    let o = live
        .state
        .flags
        .get(key)
        .and_then(|o| o.bandit.clone())
        .unwrap_or_default();
    let e = b.effective(Some(&o));
    let mut weights = serde_json::Map::new();
    if let Some(Some(view)) = live.bandits.flags.get(fi) {
        let mut start = 0;
        for (v, end) in &view.ranges {
            weights.insert(flag.variations[*v].key.clone(), json!(end - start));
            start = *end;
        }
    }
    let rows = app.store.bandit_epochs(key, None, limit).await?;
    let epochs: Vec<Value> = rows
        .iter()
        .filter_map(|t| serde_json::from_str::<EpochRecord>(t).ok())
        .map(|r| r.to_json())
        .collect();
    let rt = &live.runtime[fi];
    let overridden_by = if !rt.enabled {
        Some("kill switch")
    } else if rt.force_fallback {
        Some("forced fallback")
    } else {
        None
    };
    Ok(json!({
        "flag": key,
        "rule": flag.rules.get(b.rule).map(|r| r.id.clone()),
        "control": flag.variations[flag.stable_variation].key,
        "metric": b.metric,
        "algorithm": b.model.algorithm(),
        "status": o.status.as_str(),
        "epoch": o.epoch,
        "paused": e.paused,
        "overridden_by": overridden_by,
        "weights": weights,
        "weights_since": (o.since_ms > 0).then(|| crate::clock::format_rfc3339_ms(o.since_ms as i64)),
        "settings": {
            "floor": e.floor,
            "cadence": humantime::format_duration(e.cadence).to_string(),
            "min_users_per_arm": e.min_users_per_arm,
            "paused": e.paused,
            "guardrails": b.guardrails.iter().map(|g| json!({"metric": g.metric, "tolerance": g.tolerance.label()})).collect::<Vec<_>>(),
            "stop": b.stop.map(|s| json!({"p_best": s.p_best, "then": match s.then { super::epoch::Then::Hold => "hold", super::epoch::Then::Promote => "promote" }})),
            "overrides": o.settings,
        },
        "sticky_users": live.bandits.sticky.len(),
        "epochs": epochs,
    }))
}

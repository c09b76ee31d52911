//! Rollouts through the admin API: finding a flag's rollout rule, moving it to a stage,
//! advancing it past its gate (or forcing it), the gate's figures and verdict, and the
//! rollout's JSON view.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use super::body::AdvanceBody;
use super::{flag, AdminError, Result};
use crate::app::{App, Live};
use crate::clock::now_ms;
use crate::flags::Flag;
use crate::rollout::{self, StageFigures, Verdict};
use crate::state::Change;

pub(super) fn rollout_rules(f: &Flag) -> impl Iterator<Item = usize> + '_ {
    f.rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.rollout.is_some())
        .map(|(i, _)| i)
}

pub(super) fn rollout_rule(f: &Flag, rule: Option<&str>) -> Result<usize> {
    match rule {
        Some(id) => f
            .rules
            .iter()
            .position(|r| r.id == id && r.rollout.is_some())
            .ok_or_else(|| {
                AdminError::not_found(format!("flag `{}` has no rollout rule `{id}`", f.key))
            }),
        None => rollout_rules(f)
            .next()
            .ok_or_else(|| AdminError::not_found(format!("flag `{}` has no rollout rule", f.key))),
    }
}

pub(super) async fn set_stage(
    app: &Arc<App>,
    actor: &str,
    key: &str,
    rule: &str,
    stage: u32,
    reason: Option<&str>,
) -> Result<(StatusCode, Value)> {
    let change = Change::SetRolloutStage {
        flag: key.to_owned(),
        rule: rule.to_owned(),
        stage,
        at_ms: now_ms(),
    };
    let entry = app.change(&change, actor, reason).await?;
    let live = app.live.load();
    let (i, f) = flag(&live, key)?;
    let r = rollout_rule(f, Some(rule))?;
    Ok((
        StatusCode::OK,
        json!({"rollout": rollout_json(app, &live, i, f, r), "audit": entry}),
    ))
}

pub(super) async fn advance(
    app: &Arc<App>,
    actor: &str,
    key: &str,
    b: AdvanceBody,
) -> Result<(StatusCode, Value)> {
    let live = app.live.load_full();
    let (i, f) = flag(&live, key)?;
    let r = rollout_rule(f, b.rule.as_deref())?;
    let Some(ro) = f.rules[r].rollout.as_ref() else {
        return Err(AdminError::not_found("no rollout"));
    };
    let stage = live.runtime[i].stages[r];
    if stage as usize + 1 >= ro.stages.len() {
        return Err(AdminError::new(
            StatusCode::CONFLICT,
            "at_last_stage",
            "the rollout is at its last stage already",
        ));
    }
    let verdict = gate_verdict(app, &live, i, f, r);
    if !verdict.pass && !b.force {
        let mut reasons = verdict.reasons.clone();
        reasons.extend(verdict.rollback.iter().cloned());
        return Err(AdminError {
            status: StatusCode::CONFLICT,
            code: "gate_not_met",
            message: format!(
                "the gate of stage {stage} is not met: {}",
                reasons.join("; ")
            ),
            extra: Some(("reasons", json!(reasons))),
            allow: None,
        });
    }
    let reason = match (b.force && !verdict.pass, b.reason) {
        (true, Some(r)) => Some(format!("forced past the gate: {r}")),
        (true, None) => Some("forced past the gate".to_owned()),
        (false, r) => r,
    };
    set_stage(
        app,
        actor,
        key,
        &f.rules[r].id,
        stage + 1,
        reason.as_deref(),
    )
    .await
}

/// The gate's verdict on rule `r` of flag `i` as things stand.
pub fn gate_verdict(app: &App, live: &Live, i: usize, f: &Flag, r: usize) -> Verdict {
    let Some(ro) = f.rules[r].rollout.as_ref() else {
        return Verdict {
            pass: false,
            reasons: vec!["not a rollout".into()],
            rollback: Vec::new(),
        };
    };
    match gate_figures(app, live, i, f, r) {
        Ok(figures) => rollout::evaluate(&ro.gate, &figures),
        Err(why) => Verdict {
            pass: false,
            reasons: vec![why],
            rollback: Vec::new(),
        },
    }
}

/// The figures rule `r`'s gate reads: this process's, or the fleet's from Prometheus (`Err`:
/// why they are missing; the gate then fails closed).
pub fn gate_figures(
    app: &App,
    live: &Live,
    i: usize,
    f: &Flag,
    r: usize,
) -> std::result::Result<StageFigures, String> {
    let local = stage_figures(app, live, i, f, r);
    match f.rules[r].rollout.as_ref().map(|ro| ro.gate.source) {
        Some(crate::config::FigureSource::Prometheus) => crate::fleet::figures::stage_figures(
            app,
            live,
            &f.key,
            &f.rules[r].id,
            live.runtime[i].stages[r],
            local.held_for,
        ),
        _ => Ok(local),
    }
}

/// What the rolled-out variation showed since its stage began.
pub fn stage_figures(app: &App, live: &Live, i: usize, f: &Flag, r: usize) -> StageFigures {
    let Some(ro) = f.rules[r].rollout.as_ref() else {
        return StageFigures::default();
    };
    let rt = &live.runtime[i];
    let handles = &live.routes.flags[i];
    let now = handles[ro.variation].totals();
    let stage = rt.stages[r];
    let base = app.stage_baseline(&f.key, &f.rules[r].id, stage, now);
    let started_ms = rt.stage_started_at_ms[r].unwrap_or(base.since_ms);
    let p95 = |v: usize| {
        handles
            .get(v)
            .and_then(|h| h.quantiles())
            .filter(|(n, _)| *n > 0)
            .map(|(_, q)| q[1])
    };
    StageFigures {
        requests: now.requests.saturating_sub(base.totals.requests),
        errors: now.errors.saturating_sub(base.totals.errors),
        fallbacks: now.fallbacks.saturating_sub(base.totals.fallbacks),
        p95_seconds: p95(ro.variation),
        stable_p95_seconds: p95(f.stable_variation),
        held_for: Duration::from_millis(now_ms().saturating_sub(started_ms)),
    }
}

pub(crate) fn rollout_json(app: &App, live: &Live, i: usize, f: &Flag, r: usize) -> Value {
    let rule = &f.rules[r];
    let Some(ro) = rule.rollout.as_ref() else {
        return Value::Null;
    };
    let rt = &live.runtime[i];
    let stage = rt.stages[r];
    let read = gate_figures(app, live, i, f, r);
    let verdict = gate_verdict(app, live, i, f, r);
    let figures = read.clone().unwrap_or_default();
    let pct: Vec<f64> = ro.stages.iter().map(|e| f64::from(*e) / 100.0).collect();
    json!({
        "flag": f.key,
        "rule": rule.id,
        "variation": f.variations[ro.variation].key,
        "stage": stage,
        "percent": f64::from(ro.end_at(stage)) / 100.0,
        "stages": pct,
        "last_stage": ro.stages.len() - 1,
        "held": rt.held[r],
        "auto_advance": ro.auto_advance,
        "gate": {
            "min_requests": ro.gate.min_requests,
            "hold_seconds": ro.gate.hold.as_secs_f64(),
            "max_error_rate": ro.gate.max_error_rate,
            "max_fallback_rate": ro.gate.max_fallback_rate,
            "max_p95_seconds": ro.gate.max_p95_seconds,
            "max_p95_ratio": ro.gate.max_p95_ratio,
            "rollback_error_rate": ro.gate.rollback_error_rate,
            "rollback_fallback_rate": ro.gate.rollback_fallback_rate,
            "source": ro.gate.source.as_str(),
            "window_seconds": ro.gate.window.map(|w| w.as_secs_f64()),
        },
        "figures_error": read.err(),
        "figures": {
            "requests": figures.requests,
            "errors": figures.errors,
            "fallbacks": figures.fallbacks,
            "error_rate": figures.error_rate(),
            "fallback_rate": figures.fallback_rate(),
            "p95_seconds": figures.p95_seconds,
            "stable_p95_seconds": figures.stable_p95_seconds,
            "stage_age_seconds": figures.held_for.as_secs_f64(),
        },
        "gate_met": verdict.pass,
        "reasons": verdict.reasons,
        "rollback_reasons": verdict.rollback,
    })
}

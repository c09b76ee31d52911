//! The guarded bandit: per flag, on the experiment rule, traffic shifts each epoch toward the
//! variation most likely to be best on the primary metric (Thompson sampling), while
//! guardrails against the control, a sample-ratio check and a stop rule keep it safe.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`rng`] | the seeded generator and the Normal, Gamma and Beta draws (replayable) |
//! | [`allocate`] | P(best) → bucket counts summing to 10,000, each live arm ≥ the floor |
//! | [`epoch`] | one epoch as a pure function: inputs → P(best), weights, why |
//! | [`settings`] | `[flags.F.bandit]` validated, and the runtime state of a bandit |
//! | [`live`] | the decision under a bandit: its bucket ranges, and sticky users |
//! | [`record`] | the immutable epoch record, and replaying it |
//! | [`run`] | the loop beside the request path (leader only) that gathers, computes, applies |
//! | [`cli`] | `switchyard ctl bandit`: show, replay (recomputed locally), set, epoch |
//! | [`openapi`] | the bandit's operations in the admin API's OpenAPI document |
//! | [`admin`] | `GET`/`PUT /admin/flags/{flag}/bandit` and "run an epoch now" |
//!
//! What moves users: only the weights of *new* users. A user keeps the variation of their
//! first exposure while it is live (see [`live::Sticky`]). The kill switch, a forced fallback
//! and operator rollout changes act before and after the decision as for any flag, so they
//! override the bandit; the loop runs no epoch while the flag is off or forced to fallback.

pub mod admin;
pub mod allocate;
pub mod cli;
pub mod epoch;
pub mod live;
pub mod openapi;
pub mod record;
pub mod rng;
pub mod run;
pub mod settings;

pub use live::{LiveBandits, Sticky};
pub use settings::{BanditConfig, BanditOverride, SettingsOverride, Status};

use crate::state::Change;

/// Applies a bandit change to the flag's bandit state (pure; called by the state store inside
/// its transaction).
pub fn apply_change(change: &Change, b: &mut BanditOverride) {
    match change {
        Change::BanditEpoch {
            epoch,
            weights,
            status,
            at_ms,
            ..
        } => {
            b.epoch = (*epoch).max(b.epoch);
            b.weights = weights.clone();
            b.status = *status;
            b.since_ms = *at_ms;
        }
        Change::SetBandit {
            settings,
            reset,
            at_ms,
            ..
        } => {
            let s = &mut b.settings;
            if settings.paused.is_some() {
                s.paused = settings.paused;
            }
            if settings.floor_bps.is_some() {
                s.floor_bps = settings.floor_bps;
            }
            if settings.cadence_ms.is_some() {
                s.cadence_ms = settings.cadence_ms;
            }
            if settings.min_users_per_arm.is_some() {
                s.min_users_per_arm = settings.min_users_per_arm;
            }
            if *reset {
                b.weights.clear();
                b.status = Status::Running;
                b.since_ms = *at_ms;
            }
        }
        _ => {}
    }
}

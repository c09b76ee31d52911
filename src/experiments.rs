//! Experiments: exposures, feedback events, per-variation business metrics and results with
//! always-valid statistics ([`stats`]).

pub mod catalog;
pub mod feedback;
pub mod request_id;
pub mod results;
pub mod runtime;
pub mod stats;

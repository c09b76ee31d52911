//! The per-request context: timing, the route taken and what to record when the request ends.
//! A [`Recorder`] records exactly once: explicitly when the answer is complete, or on drop
//! (the client went away) as `cancelled`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::Live;
use crate::metrics::{Outcome, VariationMetrics};
use crate::openai::{ErrorClass, Usage};

/// Which metric handles a request records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A flag's variation (indices into the live config).
    Variation {
        /// Flag index.
        flag: usize,
        /// Variation index.
        variation: usize,
    },
    /// A model that is no flag, sent to the passthrough provider.
    Passthrough,
    /// Rejected before a flag was known.
    Unrouted,
}

/// Records one request's metrics.
#[derive(Debug)]
pub struct Recorder {
    live: Arc<Live>,
    route: Route,
    started: Instant,
    overhead: Duration,
    working_since: Option<Instant>,
    first_token: bool,
    usage: Option<Usage>,
    done: bool,
}

impl Recorder {
    /// Starts timing a request that arrived at `started`; the proxy is working from then on.
    pub fn new(live: Arc<Live>, started: Instant) -> Recorder {
        Recorder {
            live,
            route: Route::Unrouted,
            started,
            overhead: Duration::ZERO,
            working_since: Some(started),
            first_token: false,
            usage: None,
            done: false,
        }
    }

    /// Sets the route once the decision is made.
    pub fn route(&mut self, route: Route) {
        self.route = route;
    }

    fn handles(&self) -> &VariationMetrics {
        let routes = &self.live.routes;
        match self.route {
            Route::Variation { flag, variation } => routes
                .flags
                .get(flag)
                .and_then(|f| f.get(variation))
                .unwrap_or(&routes.unrouted),
            Route::Passthrough => &routes.passthrough,
            Route::Unrouted => &routes.unrouted,
        }
    }

    /// The proxy hands over to the upstream: its own time stops counting.
    pub fn pause(&mut self) {
        if let Some(since) = self.working_since.take() {
            self.overhead += since.elapsed();
        }
    }

    /// The upstream answered: the proxy's own time counts again.
    pub fn resume(&mut self) {
        self.working_since = Some(Instant::now());
    }

    /// Adds proxy time measured elsewhere (per relayed chunk).
    pub fn add_overhead(&mut self, d: Duration) {
        self.overhead += d;
    }

    /// The first chunk of a stream arrived.
    pub fn first_token(&mut self) {
        if !self.first_token {
            self.first_token = true;
            let elapsed = self.started.elapsed();
            self.handles().ttft.observe(elapsed.as_secs_f64());
        }
    }

    /// A stream broke after part of it reached the client.
    pub fn stream_interrupted(&self) {
        self.handles().stream_interrupted.inc();
    }

    /// Usage reported by the provider.
    pub fn usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// The proxy's own time so far.
    pub fn overhead(&self) -> Duration {
        self.overhead + self.working_since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Records the request's end.
    pub fn finish(&mut self, outcome: Outcome, error: Option<ErrorClass>) {
        if self.done {
            return;
        }
        self.done = true;
        self.pause();
        let overhead = self.overhead;
        let usage = self.usage;
        let elapsed = self.started.elapsed();
        let h = self.handles();
        h.outcome(outcome);
        if let Some(class) = error {
            h.error(class);
        }
        if matches!(outcome, Outcome::Success | Outcome::Fallback) {
            h.latency(elapsed);
        }
        if !matches!(self.route, Route::Unrouted) {
            h.overhead.observe(overhead.as_secs_f64());
        }
        if let Some(u) = usage {
            h.tokens_in.inc_by(u.prompt_tokens);
            h.tokens_out.inc_by(u.completion_tokens);
            if let Some((input, output)) = h.price {
                h.cost_usd.inc_by(
                    (u.prompt_tokens as f64 * input + u.completion_tokens as f64 * output) / 1e6,
                );
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Outcome::Cancelled, None);
        }
    }
}

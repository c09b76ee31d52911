//! The online evals' families: judge calls by outcome, and the judge's own tokens and cost
//! (never counted inside a variation's).

use prometheus::{CounterVec, IntCounterVec, Opts, Registry};

/// What became of one sampled answer (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalOutcome {
    /// Judged; the score was stored as a feedback event.
    Scored,
    /// Judged, but this request's score was stored already.
    Duplicate,
    /// The eval's queue was full: not judged.
    DroppedQueue,
    /// The eval's per-minute budget (calls or tokens) was spent: not judged.
    DroppedBudget,
    /// The judge call failed (connect, timeout, error status, invalid answer). Not retried.
    JudgeError,
    /// The judge answered, but no valid score could be read from it.
    Unreadable,
    /// The score could not be stored.
    StoreError,
}

impl EvalOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EvalOutcome::Scored => "scored",
            EvalOutcome::Duplicate => "duplicate",
            EvalOutcome::DroppedQueue => "dropped_queue",
            EvalOutcome::DroppedBudget => "dropped_budget",
            EvalOutcome::JudgeError => "judge_error",
            EvalOutcome::Unreadable => "unreadable",
            EvalOutcome::StoreError => "store_error",
        }
    }
}

/// `switchyard_eval_*`.
#[derive(Debug, Clone)]
pub struct EvalMetrics {
    requests: IntCounterVec,
    tokens: IntCounterVec,
    cost: CounterVec,
}

impl EvalMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<EvalMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_eval_requests_total",
                "Sampled answers per eval by what became of them: scored, duplicate, dropped_queue, dropped_budget, judge_error, unreadable, store_error.",
            ),
            &["eval", "outcome"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "switchyard_eval_tokens_total",
                "Tokens of the judge calls per eval and direction (in, out); never counted in a variation's tokens.",
            ),
            &["eval", "direction"],
        )?;
        let cost = CounterVec::new(
            Opts::new(
                "switchyard_eval_cost_usd_total",
                "Estimated cost of the judge calls per eval (from [prices] of the judge's model).",
            ),
            &["eval"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        Ok(EvalMetrics {
            requests,
            tokens,
            cost,
        })
    }

    /// Counts one sampled answer's outcome.
    pub fn outcome(&self, eval: &str, outcome: EvalOutcome) {
        self.requests
            .with_label_values(&[eval, outcome.as_str()])
            .inc();
    }

    /// Counts a judge call's tokens and their estimated cost.
    pub fn usage(&self, eval: &str, tokens_in: u64, tokens_out: u64, cost_usd: f64) {
        self.tokens
            .with_label_values(&[eval, "in"])
            .inc_by(tokens_in);
        self.tokens
            .with_label_values(&[eval, "out"])
            .inc_by(tokens_out);
        if cost_usd > 0.0 {
            self.cost.with_label_values(&[eval]).inc_by(cost_usd);
        }
    }
}

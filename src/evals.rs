//! Online evals (`[evals.NAME]`): a sample of each flag's answers is scored by a judge model,
//! off the request path, into a business metric (`hallucination` or any declared one).
//!
//! On the request path an answer is only *offered*: whether it is sampled is a hash of the
//! eval's name and the request id (deterministic, no lock), and a sampled answer is pushed on
//! the eval's bounded queue without waiting; a full queue drops it and counts it
//! (`switchyard_eval_requests_total{outcome="dropped_queue"}`). Streams are assembled only when
//! sampled ([`answer::StreamTap`]). Behind the queue, each eval has a concurrency limit and a
//! per-minute budget of judge calls and tokens ([`judge`]). The score is stored as a feedback
//! event attributed to the request's own decision (flag, variation, user), with the event id
//! `eval:<name>:<request_id>`, so results, alerts and gates read it like any feedback and a
//! request is never scored twice.

pub mod answer;
pub mod judge;

use std::sync::{Arc, Mutex, Weak};

use dashmap::DashMap;
use tokio::sync::{mpsc, Semaphore};

use crate::api::Inbound;
use crate::app::{App, Live};
use crate::config::EvalSettings;
use crate::metrics::EvalOutcome;
use crate::proxy::context::{RequestCtx, Route};
use crate::proxy::Target;

/// A request's answer chosen for one or more evals, before the answer is known.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The evals that sampled it.
    pub evals: Vec<Arc<EvalSettings>>,
    /// The decision it is attributed to.
    pub flag: String,
    /// The decided variation.
    pub variation: String,
    /// The bucketing id.
    pub user: String,
    /// `x-request-id`.
    pub request_id: String,
    /// The last user text (the judge's `{question}`).
    pub question: String,
}

/// One answer waiting for one eval's judge.
#[derive(Debug)]
pub struct Job {
    /// The eval, as configured when the request arrived.
    pub eval: Arc<EvalSettings>,
    /// What is judged and who it is attributed to.
    pub pending: Arc<Pending>,
    /// The answer's text.
    pub answer: Arc<str>,
}

/// Whether `request_id` is in `eval`'s sample: FNV-1a of the eval's name and the id, compared
/// with the sample share (the same request is always in or out).
pub fn sampled(eval: &EvalSettings, request_id: &[u8]) -> bool {
    if eval.sample <= 0.0 {
        return false;
    }
    if eval.sample >= 1.0 {
        return true;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in eval.name.as_bytes().iter().chain(&[0u8]).chain(request_id) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix, so close ids do not land close together.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    ((h >> 11) as f64 / (1u64 << 53) as f64) < eval.sample
}

/// The evals that sample this request, if any: a flag's answer to a known user (an answer to
/// a made-up id is not attributable). `question` is read only when one does.
pub fn pick(
    live: &Live,
    target: Option<&Target>,
    request_id: &[u8],
    question: impl FnOnce() -> String,
) -> Option<Pending> {
    let evals = &live.config.evals;
    if evals.is_empty() {
        return None;
    }
    let target = target?;
    let Route::Variation { flag, variation } = target.route else {
        return None;
    };
    let user = target.user.as_ref()?;
    let f = live.config.flags.get(flag)?;
    let chosen: Vec<Arc<EvalSettings>> = evals
        .iter()
        .filter(|e| e.covers(&f.key) && sampled(e, request_id))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return None;
    }
    Some(Pending {
        evals: chosen,
        flag: f.key.clone(),
        variation: f.variations.get(variation)?.key.clone(),
        user: user.clone(),
        request_id: String::from_utf8_lossy(request_id).into_owned(),
        question: question(),
    })
}

/// Phase 7, for a complete answer: offered to the evals that sample this request.
pub fn offer(ctx: &RequestCtx<'_>, req: &dyn Inbound, body: &[u8]) {
    let Some(p) = pick(
        &ctx.live,
        ctx.target.as_ref(),
        ctx.request_id.as_bytes(),
        || req.last_user_text(),
    ) else {
        return;
    };
    if let Some(text) = answer::text_of(req.api().format(), body) {
        ctx.app.evals.submit(ctx.app, p, text);
    }
}

/// Phase 7, for a stream: a tap that assembles its text, when an eval samples this request.
pub fn tap(ctx: &RequestCtx<'_>, req: &dyn Inbound) -> Option<answer::StreamTap> {
    let p = pick(
        &ctx.live,
        ctx.target.as_ref(),
        ctx.request_id.as_bytes(),
        || req.last_user_text(),
    )?;
    Some(answer::StreamTap::new(
        ctx.app.clone(),
        p,
        req.api().format(),
    ))
}

/// Judge calls started and tokens spent in the current minute.
#[derive(Debug, Default)]
pub struct Budget {
    window: Mutex<(u64, u64, u64)>,
}

impl Budget {
    /// Takes one call and `tokens` (an estimate) from this minute's budget, if both are left.
    pub fn admit(&self, eval: &EvalSettings, tokens: u64) -> bool {
        let minute = crate::clock::now_ms() / 60_000;
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        if w.0 != minute {
            *w = (minute, 0, 0);
        }
        if w.1 >= eval.max_calls_per_minute
            || w.2.saturating_add(tokens) > eval.max_tokens_per_minute
        {
            return false;
        }
        w.1 += 1;
        w.2 += tokens;
        true
    }

    /// Corrects this minute's tokens once a call's real usage is known.
    pub fn settle(&self, estimated: u64, actual: u64) {
        let minute = crate::clock::now_ms() / 60_000;
        if let Ok(mut w) = self.window.lock() {
            if w.0 == minute {
                w.2 = w.2.saturating_sub(estimated).saturating_add(actual);
            }
        }
    }
}

/// One eval's queue.
#[derive(Debug)]
struct Lane {
    tx: mpsc::Sender<Job>,
    queue: usize,
    concurrency: usize,
}

/// Every eval's queue and budget, made on the eval's first sampled answer (and remade when a
/// reload changes its queue or concurrency).
#[derive(Debug, Default)]
pub struct Evals {
    lanes: DashMap<Arc<str>, Lane>,
}

impl Evals {
    /// Offers a sampled answer to its evals; never waits.
    pub fn submit(&self, app: &Arc<App>, pending: Pending, answer: String) {
        let pending = Arc::new(pending);
        let answer: Arc<str> = Arc::from(answer);
        for eval in &pending.evals {
            let job = Job {
                eval: eval.clone(),
                pending: pending.clone(),
                answer: answer.clone(),
            };
            let tx = {
                let mut lane = self
                    .lanes
                    .entry(eval.name.clone())
                    .or_insert_with(|| start(app, eval));
                if lane.queue != eval.queue || lane.concurrency != eval.concurrency {
                    *lane = start(app, eval);
                }
                lane.tx.clone()
            };
            if tx.try_send(job).is_err() {
                app.metrics
                    .evals
                    .outcome(&eval.name, EvalOutcome::DroppedQueue);
            }
        }
    }
}

/// Starts an eval's worker: it takes jobs from the queue, at most `concurrency` judge calls at
/// once. It ends when its queue is replaced or the app goes away.
fn start(app: &Arc<App>, eval: &EvalSettings) -> Lane {
    let (tx, mut rx) = mpsc::channel::<Job>(eval.queue);
    let weak: Weak<App> = Arc::downgrade(app);
    let slots = Arc::new(Semaphore::new(eval.concurrency));
    let budget = Arc::new(Budget::default());
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Some(app) = weak.upgrade() else {
                return;
            };
            let budget = budget.clone();
            tokio::spawn(async move {
                judge::run(&app, &job, &budget).await;
                drop(permit);
            });
        }
    });
    Lane {
        tx,
        queue: eval.queue,
        concurrency: eval.concurrency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(sample: f64) -> EvalSettings {
        let config = crate::config::Config::parse(
            r#"
[providers.mock]
kind = "mock"
[prompts]
judge = "Q: {question} A: {answer}"
[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m"
[[flags.f.rules]]
id = "all"
allocation = [{ variation = "a", end = 10000 }]
[evals.g]
flags = "all"
provider = "mock"
model = "judge-1"
prompt = "judge"
"#,
            "t.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = &config.evals[0];
        EvalSettings {
            name: e.name.clone(),
            flags: None,
            sample,
            provider: e.provider.clone(),
            model: e.model.clone(),
            prompt_name: e.prompt_name.clone(),
            prompt: e.prompt.clone(),
            score: e.score.clone(),
            metric: e.metric.clone(),
            queue: 1,
            concurrency: 1,
            max_calls_per_minute: 2,
            max_tokens_per_minute: 100,
            max_tokens: 10,
        }
    }

    #[test]
    fn sampling_is_deterministic_and_near_the_share() {
        let e = eval(0.2);
        let ids: Vec<String> = (0..20_000).map(|i| format!("req_{i:08x}")).collect();
        let n = ids.iter().filter(|id| sampled(&e, id.as_bytes())).count();
        assert!((3_600..=4_400).contains(&n), "{n} of 20000 at 0.2");
        for id in &ids[..100] {
            assert_eq!(sampled(&e, id.as_bytes()), sampled(&e, id.as_bytes()));
        }
        assert!(!sampled(&eval(0.0), b"x"));
        assert!(sampled(&eval(1.0), b"x"));
    }

    #[test]
    fn the_budget_counts_calls_and_tokens_per_minute() {
        let e = eval(1.0);
        let b = Budget::default();
        assert!(b.admit(&e, 40));
        assert!(!b.admit(&e, 70), "tokens over the minute's budget");
        assert!(b.admit(&e, 50));
        assert!(!b.admit(&e, 1), "calls over the minute's budget");
    }
}

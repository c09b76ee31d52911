//! One judge call: the eval's prompt with `{question}` and `{answer}` filled in, sent to the
//! judge's provider as a chat completion (through the same forward path as requests: its
//! timeouts, breaker and bounded retries), the score read from the answer and stored as a
//! feedback event. A failed call is counted and the answer is not judged: it is never queued
//! again.

use bytes::Bytes;
use http::HeaderValue;
use serde_json::{json, Value};

use super::{Budget, Job};
use crate::app::App;
use crate::config::{EvalSettings, ScoreReader};
use crate::metrics::EvalOutcome;
use crate::providers::WireFormat;
use crate::proxy::forward::{self, ForwardCtx, Upstream};
use crate::state::FeedbackRow;

/// The prompt with `{question}` and `{answer}` filled in (in one pass: text inside the
/// question is never read as a placeholder).
pub fn fill(template: &str, question: &str, answer: &str) -> String {
    let mut out = String::with_capacity(template.len() + question.len() + answer.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{question}") {
            out.push_str(question);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{answer}") {
            out.push_str(answer);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The score in the judge's answer text: a JSON field or the first number.
pub fn read_score(reader: &ScoreReader, text: &str) -> Option<Value> {
    match reader {
        ScoreReader::Json(path) => {
            let start = text.find('{')?;
            let end = text.rfind('}')?;
            let v: Value = serde_json::from_str(text.get(start..=end)?).ok()?;
            let mut at = &v;
            for key in path {
                at = at.get(key)?;
            }
            match at {
                Value::Number(_) | Value::Bool(_) => Some(at.clone()),
                Value::String(s) => s.trim().parse::<f64>().ok().map(|x| json!(x)),
                _ => None,
            }
        }
        ScoreReader::Number => {
            let bytes = text.as_bytes();
            let start = bytes.iter().enumerate().position(|(i, b)| {
                b.is_ascii_digit()
                    || (*b == b'-' || *b == b'.')
                        && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
            })?;
            let len = text[start..]
                .char_indices()
                .take_while(|(i, c)| c.is_ascii_digit() || *c == '.' || (*i == 0 && *c == '-'))
                .count();
            text[start..start + len]
                .parse::<f64>()
                .ok()
                .map(|x| json!(x))
        }
    }
}

fn estimate_tokens(eval: &EvalSettings, prompt: &str) -> u64 {
    (prompt.len() as u64).div_ceil(4) + eval.max_tokens
}

/// Judges one answer and stores its score; every outcome is counted.
pub async fn run(app: &App, job: &Job, budget: &Budget) {
    let eval = &job.eval;
    let outcome = judge(app, job, budget).await;
    app.metrics.evals.outcome(&eval.name, outcome);
    if !matches!(outcome, EvalOutcome::Scored | EvalOutcome::Duplicate) {
        tracing::debug!(eval = %eval.name, outcome = outcome.as_str(), "answer not scored");
    }
}

async fn judge(app: &App, job: &Job, budget: &Budget) -> EvalOutcome {
    let eval = &job.eval;
    let p = &job.pending;
    let prompt = fill(&eval.prompt, &p.question, &job.answer);
    let estimated = estimate_tokens(eval, &prompt);
    if !budget.admit(eval, estimated) {
        return EvalOutcome::DroppedBudget;
    }
    let body = json!({
        "model": eval.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": eval.max_tokens,
    });
    let event_id = format!("eval:{}:{}", eval.name, p.request_id);
    let request_id =
        HeaderValue::from_str(&event_id).unwrap_or_else(|_| HeaderValue::from_static("eval"));
    let fwd = ForwardCtx {
        clients: &app.clients,
        resilience: &app.resilience,
        metrics: &app.metrics,
        request_id: &request_id,
    };
    let provider = &eval.provider;
    let answered = forward::forward(
        &fwd,
        provider,
        provider.timeouts,
        Bytes::from(body.to_string()),
        WireFormat::Chat,
        false,
        false,
    )
    .await;
    let (answer, usage) = match answered {
        Ok(Upstream::Complete(body, usage)) => (body, usage),
        Ok(Upstream::Stream { .. }) | Err(_) => {
            budget.settle(estimated, 0);
            return EvalOutcome::JudgeError;
        }
    };
    let (tokens_in, tokens_out) = usage.map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
    budget.settle(estimated, tokens_in + tokens_out);
    let live = app.live.load_full();
    let cost = live.config.prices.get(&eval.model).map_or(0.0, |(i, o)| {
        (tokens_in as f64 * i + tokens_out as f64 * o) / 1e6
    });
    app.metrics
        .evals
        .usage(&eval.name, tokens_in, tokens_out, cost);
    let text = super::answer::text_of(WireFormat::Chat, &answer).unwrap_or_default();
    let Some(def) = live.config.catalog.get(&eval.metric) else {
        return EvalOutcome::Unreadable;
    };
    let Some(value) =
        read_score(&eval.score, &text).and_then(|raw| live.config.catalog.value(def, &raw).ok())
    else {
        return EvalOutcome::Unreadable;
    };
    let row = FeedbackRow {
        event_id,
        flag: p.flag.clone(),
        variation: p.variation.clone(),
        user: p.user.clone(),
        metric: eval.metric.clone(),
        value,
        at_ms: crate::clock::now_ms(),
    };
    match app.store.insert_feedback(std::slice::from_ref(&row)).await {
        Ok(fresh) if fresh.first() == Some(&true) => {
            app.metrics
                .feedback_events
                .with_label_values(&[&row.flag, &row.variation, &row.metric])
                .inc();
            EvalOutcome::Scored
        }
        Ok(_) => EvalOutcome::Duplicate,
        Err(e) => {
            app.metrics.state_error();
            tracing::warn!(error = %e, eval = %eval.name, "eval score not stored");
            EvalOutcome::StoreError
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_filled_once() {
        assert_eq!(
            fill("Q={question} A={answer} {x}", "why {answer}?", "because"),
            "Q=why {answer}? A=because {x}"
        );
    }

    #[test]
    fn scores_are_read() {
        let j = ScoreReader::Json(vec!["score".into()]);
        assert_eq!(read_score(&j, "sure: {\"score\": 0.25}"), Some(json!(0.25)));
        assert_eq!(read_score(&j, "{\"score\": true}"), Some(json!(true)));
        assert_eq!(read_score(&j, "{\"score\": \"1\"}"), Some(json!(1.0)));
        assert_eq!(read_score(&j, "no json"), None);
        assert_eq!(read_score(&j, "{\"other\": 1}"), None);
        let deep = ScoreReader::Json(vec!["v".into(), "s".into()]);
        assert_eq!(read_score(&deep, "{\"v\":{\"s\":0}}"), Some(json!(0)));
        let n = ScoreReader::Number;
        assert_eq!(read_score(&n, "Score: 0.7 of 1"), Some(json!(0.7)));
        assert_eq!(read_score(&n, "-1 bad"), Some(json!(-1.0)));
        assert_eq!(read_score(&n, "none"), None);
    }
}

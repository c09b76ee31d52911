//! `[evals.NAME]`: online evals, answers sampled per flag and scored by a judge model into a
//! business metric (see [`crate::evals`]).

use std::collections::HashSet;

use serde::Deserialize;

use super::*;

/// `[evals.NAME]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEval {
    /// `"all"` or a list of flag keys.
    pub flags: Option<RawEvalFlags>,
    pub sample: Option<f64>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub score: Option<String>,
    pub metric: Option<String>,
    pub queue: Option<i64>,
    pub concurrency: Option<i64>,
    pub max_calls_per_minute: Option<i64>,
    pub max_tokens_per_minute: Option<i64>,
    pub max_tokens: Option<i64>,
}

/// `flags = "all"` or `flags = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEvalFlags {
    /// `"all"`.
    All(String),
    /// Flag keys.
    List(Vec<String>),
}

/// How a score is read from the judge's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoreReader {
    /// `json:FIELD` (dots go deeper: `json:verdict.score`): a number or a boolean in the JSON
    /// object the answer holds (the first `{` … last `}` of it).
    Json(Vec<String>),
    /// `number`: the first number in the answer.
    Number,
}

/// One validated `[evals.NAME]`.
#[derive(Debug)]
pub struct EvalSettings {
    /// The eval's name (the `eval` metric label, part of each event id).
    pub name: Arc<str>,
    /// The flags whose answers are sampled; `None`: every flag.
    pub flags: Option<HashSet<String>>,
    /// The share of answers judged, in [0, 1].
    pub sample: f64,
    /// The judge's provider.
    pub provider: Arc<Provider>,
    /// The judge's model id.
    pub model: String,
    /// The `[prompts]` entry's name.
    pub prompt_name: String,
    /// Its text, with `{question}` and `{answer}` to fill in.
    pub prompt: Arc<str>,
    /// How the score is read.
    pub score: ScoreReader,
    /// The metric the score feeds (built in or under `[metrics]`).
    pub metric: String,
    /// Answers waiting for the judge, at most (more are dropped and counted).
    pub queue: usize,
    /// Judge calls in flight, at most.
    pub concurrency: usize,
    /// Judge calls started per minute, at most (more are dropped and counted).
    pub max_calls_per_minute: u64,
    /// Judge tokens (prompt and answer) per minute, at most.
    pub max_tokens_per_minute: u64,
    /// `max_tokens` of the judge's answer.
    pub max_tokens: u64,
}

impl EvalSettings {
    /// Whether answers of `flag` are judged by this eval.
    pub fn covers(&self, flag: &str) -> bool {
        self.flags.as_ref().is_none_or(|f| f.contains(flag))
    }
}

/// Reads `score = "json:FIELD" | "number"`.
fn score_reader(s: &str) -> Option<ScoreReader> {
    if s == "number" {
        return Some(ScoreReader::Number);
    }
    let path = s.strip_prefix("json:")?;
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(ScoreReader::Json(parts))
}

pub(super) struct EvalContext<'a> {
    pub providers: &'a BTreeMap<String, Arc<Provider>>,
    pub prompts: &'a BTreeMap<String, Arc<str>>,
    pub flag_index: &'a HashMap<String, usize>,
    pub catalog: &'a crate::experiments::catalog::Catalog,
}

impl Validator<'_> {
    pub(super) fn evals(
        &mut self,
        raw: &BTreeMap<String, RawEval>,
        cx: &EvalContext<'_>,
    ) -> Vec<Arc<EvalSettings>> {
        let mut out = Vec::new();
        for (name, e) in raw {
            let path = KeyPath::root().key("evals").key(name);
            if let Some(e) = self.eval(&path, name, e, cx) {
                out.push(Arc::new(e));
            }
        }
        out
    }

    fn eval(
        &mut self,
        path: &KeyPath,
        name: &str,
        e: &RawEval,
        cx: &EvalContext<'_>,
    ) -> Option<EvalSettings> {
        let errors = self.errors.len();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.err(
                path,
                "an eval's name uses letters, digits, '-' and '_' only",
            );
        }
        let flags = match &e.flags {
            None => {
                self.err(
                    &path.key("flags"),
                    "say which flags are judged: a list of flag keys, or \"all\"",
                );
                None
            }
            Some(RawEvalFlags::All(s)) if s == "all" => None,
            Some(RawEvalFlags::All(s)) => {
                self.err(
                    &path.key("flags"),
                    format!("{s:?}: write \"all\" or a list of flag keys"),
                );
                None
            }
            Some(RawEvalFlags::List(list)) => {
                for f in list {
                    if !cx.flag_index.contains_key(f) {
                        self.err(
                            &path.key("flags"),
                            format!("unknown flag {f:?}{}", known(cx.flag_index.keys())),
                        );
                    }
                }
                Some(list.iter().cloned().collect())
            }
        };
        let sample = e.sample.unwrap_or(0.05);
        if !(0.0..=1.0).contains(&sample) {
            self.err(
                &path.key("sample"),
                format!("{sample} is not a share in [0, 1]"),
            );
        }
        let provider = match &e.provider {
            None => {
                self.err(&path.key("provider"), "the judge's provider is required");
                None
            }
            Some(p) => {
                let found = cx.providers.get(p).cloned();
                if found.is_none() {
                    self.err(
                        &path.key("provider"),
                        format!("unknown provider {p:?}{}", known(cx.providers.keys())),
                    );
                }
                found
            }
        };
        let model = e.model.clone().unwrap_or_default();
        if model.trim().is_empty() {
            self.err(&path.key("model"), "the judge's model id is required");
        }
        let prompt = match &e.prompt {
            None => {
                self.err(
                    &path.key("prompt"),
                    "the judge's prompt (a [prompts] entry) is required",
                );
                None
            }
            Some(p) => match cx.prompts.get(p) {
                None => {
                    self.err(
                        &path.key("prompt"),
                        format!("unknown prompt {p:?}{}", known(cx.prompts.keys())),
                    );
                    None
                }
                Some(text) if !text.contains("{answer}") => {
                    self.err(
                        &path.key("prompt"),
                        format!("prompt {p:?} has no {{answer}} to fill in"),
                    );
                    None
                }
                Some(text) => Some(text.clone()),
            },
        };
        let score = match e.score.as_deref() {
            None => ScoreReader::Number,
            Some(s) => score_reader(s).unwrap_or_else(|| {
                self.err(
                    &path.key("score"),
                    format!("{s:?}: write \"json:FIELD\" or \"number\""),
                );
                ScoreReader::Number
            }),
        };
        let metric = e.metric.clone().unwrap_or_else(|| "hallucination".into());
        if cx.catalog.get(&metric).is_none() {
            let names: Vec<String> = cx.catalog.0.keys().cloned().collect();
            self.err(
                &path.key("metric"),
                format!("unknown metric {metric:?}{}", known(names.iter())),
            );
        }
        let queue = self.count(&path.key("queue"), e.queue, 1000, 1..=1_000_000) as usize;
        let concurrency = self.count(&path.key("concurrency"), e.concurrency, 4, 1..=1000) as usize;
        let max_calls_per_minute = self.count(
            &path.key("max_calls_per_minute"),
            e.max_calls_per_minute,
            600,
            1..=10_000_000,
        );
        let max_tokens_per_minute = self.count(
            &path.key("max_tokens_per_minute"),
            e.max_tokens_per_minute,
            1_000_000,
            1..=1_000_000_000,
        );
        let max_tokens = self.count(&path.key("max_tokens"), e.max_tokens, 64, 1..=100_000);
        if self.errors.len() > errors {
            return None;
        }
        Some(EvalSettings {
            name: Arc::from(name),
            flags,
            sample,
            provider: provider?,
            model,
            prompt_name: e.prompt.clone().unwrap_or_default(),
            prompt: prompt?,
            score,
            metric,
            queue,
            concurrency,
            max_calls_per_minute,
            max_tokens_per_minute,
            max_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_readers() {
        assert_eq!(score_reader("number"), Some(ScoreReader::Number));
        assert_eq!(
            score_reader("json:a.b"),
            Some(ScoreReader::Json(vec!["a".into(), "b".into()]))
        );
        assert_eq!(score_reader("json:"), None);
        assert_eq!(score_reader("json:a..b"), None);
        assert_eq!(score_reader("regex:x"), None);
    }
}

//! A small client of Prometheus' HTTP API: one instant query, its vector answer read into
//! [`Sample`]s. Anything else (no answer within the budget, a status other than 200, an
//! answer that is not a `success` vector of numbers) is a [`QueryError`] that says why.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::providers::client::HttpClient;

/// Largest answer read (a query of this project returns a few series per variation).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Characters left as they are in a query parameter (RFC 3986 unreserved).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One series of an instant vector: its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (without `__name__` once aggregated).
    pub labels: BTreeMap<String, String>,
    /// The value; `NaN` answers (e.g. a quantile of no observations) are left out.
    pub value: f64,
}

impl Sample {
    /// A label's value, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Why a query gave no figures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// No connection, or the connection failed.
    #[error("Prometheus at {at} is unreachable: {why}")]
    Unreachable {
        /// Prometheus' base URL.
        at: String,
        /// The transport's error.
        why: String,
    },
    /// No answer within the query timeout.
    #[error("Prometheus at {at} did not answer within {secs} s")]
    Timeout {
        /// Prometheus' base URL.
        at: String,
        /// The budget.
        secs: f64,
    },
    /// An answer that is not a successful instant vector.
    #[error("Prometheus at {at} answered nonsense: {why}")]
    BadAnswer {
        /// Prometheus' base URL.
        at: String,
        /// What was wrong with it.
        why: String,
    },
}

/// Prometheus' HTTP API at one base URL.
#[derive(Clone)]
pub struct Prometheus {
    base: String,
    timeout: Duration,
    client: HttpClient,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Prometheus {
    /// A client of the API at `base` (e.g. `http://prometheus:9090`), each query bounded by
    /// `timeout`.
    pub fn new(base: &Uri, timeout: Duration, client: HttpClient) -> Prometheus {
        Prometheus {
            base: base.to_string().trim_end_matches('/').to_owned(),
            timeout,
            client,
        }
    }

    /// Runs one instant query (`GET /api/v1/query`).
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, QueryError> {
        match tokio::time::timeout(self.timeout, self.query_unbounded(promql)).await {
            Ok(result) => result,
            Err(_) => Err(QueryError::Timeout {
                at: self.base.clone(),
                secs: self.timeout.as_secs_f64(),
            }),
        }
    }

    async fn query_unbounded(&self, promql: &str) -> Result<Vec<Sample>, QueryError> {
        let uri = format!(
            "{}/api/v1/query?query={}",
            self.base,
            utf8_percent_encode(promql, QUERY)
        );
        let bad = |why: String| QueryError::BadAnswer {
            at: self.base.clone(),
            why,
        };
        let req = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| bad(format!("cannot build the request: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| QueryError::Unreachable {
                at: self.base.clone(),
                why: describe(&e),
            })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| QueryError::Unreachable {
                at: self.base.clone(),
                why: format!("the answer was cut: {e}"),
            })?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body)
            .map_err(|_| bad(format!("HTTP {status} with a body that is not JSON")))?;
        parse_vector(&json).map_err(|why| {
            if status.is_success() {
                bad(why)
            } else {
                bad(format!("HTTP {status}: {why}"))
            }
        })
    }
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Reads an instant-query answer: `{"status": "success", "data": {"resultType": "vector",
/// "result": [{"metric": {...}, "value": [ts, "1.5"]}]}}`. A scalar answer is one sample
/// without labels.
pub fn parse_vector(json: &Value) -> Result<Vec<Sample>, String> {
    match json.get("status").and_then(Value::as_str) {
        Some("success") => {}
        Some("error") => {
            let kind = json.get("errorType").and_then(Value::as_str).unwrap_or("");
            let msg = json.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(format!("query refused ({kind}): {msg}"));
        }
        _ => return Err("no \"status\": \"success\"".into()),
    }
    let data = json.get("data").ok_or("no \"data\"")?;
    let kind = data.get("resultType").and_then(Value::as_str);
    let result = data.get("result").ok_or("no \"data.result\"")?;
    let number = |v: &Value| -> Result<f64, String> {
        let s = v
            .get(1)
            .and_then(Value::as_str)
            .ok_or("a value is not [time, \"number\"]")?;
        s.parse::<f64>()
            .map_err(|_| format!("the value {s:?} is not a number"))
    };
    match kind {
        Some("vector") => {
            let items = result.as_array().ok_or("\"data.result\" is not a list")?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let value = number(item.get("value").ok_or("a series has no \"value\"")?)?;
                let labels = item
                    .get("metric")
                    .and_then(Value::as_object)
                    .ok_or("a series has no \"metric\" labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect();
                if !value.is_nan() {
                    out.push(Sample { labels, value });
                }
            }
            Ok(out)
        }
        Some("scalar") => {
            let value = number(result)?;
            Ok(if value.is_nan() {
                Vec::new()
            } else {
                vec![Sample {
                    labels: BTreeMap::new(),
                    value,
                }]
            })
        }
        other => Err(format!(
            "result type {:?}, expected an instant vector",
            other.unwrap_or("none")
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_vector_is_read_and_nan_left_out() {
        let v = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"variation": "a"}, "value": [1.0, "2.5"]},
            {"metric": {"variation": "b"}, "value": [1.0, "NaN"]},
        ]}});
        let s = parse_vector(&v).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label("variation"), "a");
        assert_eq!(s[0].value, 2.5);
    }

    #[test]
    fn nonsense_says_why() {
        for (v, needle) in [
            (
                json!({"status": "error", "errorType": "bad_data", "error": "parse error"}),
                "parse error",
            ),
            (
                json!({"status": "success", "data": {"resultType": "matrix", "result": []}}),
                "matrix",
            ),
            (
                json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]}}),
                "not a number",
            ),
            (json!({"hello": 1}), "status"),
        ] {
            let e = parse_vector(&v).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}

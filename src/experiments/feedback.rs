//! Feedback events: parsing and validation of `POST /v1/feedback` bodies (one event or
//! `{"events": [...]}`), before they are attributed to a decision and stored.

use serde_json::Value;

use super::catalog::Catalog;
use crate::openai::ApiError;

/// The largest batch accepted.
pub const MAX_BATCH: usize = 1000;

/// What an event is attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An `x-request-id` the proxy answered.
    Request(String),
    /// A flag and a user, re-decided deterministically.
    User {
        /// The flag.
        flag: String,
        /// The bucketing id.
        user: String,
    },
}

/// A valid event, not yet attributed.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Idempotency key.
    pub event_id: String,
    /// The metric.
    pub metric: String,
    /// The value, validated for the metric.
    pub value: f64,
    /// What it follows.
    pub target: Target,
}

fn string(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(format!("`{key}` must not be empty")),
        Some(Value::String(s)) if s.len() > 256 => {
            Err(format!("`{key}` is longer than 256 characters"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

/// Validates one event object.
pub fn event(v: &Value, catalog: &Catalog) -> Result<Event, String> {
    let Some(obj) = v.as_object() else {
        return Err("an event must be a JSON object".into());
    };
    for key in obj.keys() {
        if !["event_id", "metric", "value", "request_id", "flag", "user"].contains(&key.as_str()) {
            return Err(format!(
                "unknown field `{key}` (event_id, metric, value, request_id, flag, user)"
            ));
        }
    }
    let event_id =
        string(obj, "event_id")?.ok_or("`event_id` is required (it makes the event idempotent)")?;
    let metric = string(obj, "metric")?.ok_or("`metric` is required")?;
    let def = catalog.get(&metric).ok_or_else(|| {
        let known: Vec<&str> = catalog.0.keys().map(String::as_str).collect();
        format!("unknown metric `{metric}` (known: {})", known.join(", "))
    })?;
    let value = catalog.value(def, obj.get("value").unwrap_or(&Value::Null))?;
    let target = match (
        string(obj, "request_id")?,
        string(obj, "flag")?,
        string(obj, "user")?,
    ) {
        (Some(id), None, None) => Target::Request(id),
        (None, Some(flag), Some(user)) => Target::User { flag, user },
        (Some(_), _, _) => {
            return Err("give either `request_id` or `flag` and `user`, not both".into())
        }
        (None, Some(_), None) => return Err("`user` is required with `flag`".into()),
        (None, None, Some(_)) => return Err("`flag` is required with `user`".into()),
        (None, None, None) => {
            return Err("an event names a `request_id`, or a `flag` and a `user`".into())
        }
    };
    Ok(Event {
        event_id,
        metric,
        value,
        target,
    })
}

/// Parses a body: one event or `{"events": [...]}`. A malformed body is a 400; a bad event
/// inside a batch is reported by index while the others go on.
pub fn batch(body: &[u8], catalog: &Catalog) -> Result<Vec<Result<Event, String>>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("the request body is not valid JSON: {e}")))?;
    let list = match &v {
        Value::Object(obj) if obj.contains_key("events") => match obj.get("events") {
            Some(Value::Array(a)) if obj.len() == 1 => a.iter().collect::<Vec<_>>(),
            Some(Value::Array(_)) => {
                return Err(ApiError::field(
                    "events",
                    "a batch is `{\"events\": [...]}` with nothing else",
                ))
            }
            _ => return Err(ApiError::field("events", "`events` must be an array")),
        },
        Value::Object(_) => vec![&v],
        _ => {
            return Err(ApiError::InvalidJson(
                "the body must be an event object or {\"events\": [...]}".into(),
            ))
        }
    };
    if list.is_empty() {
        return Err(ApiError::field("events", "`events` must not be empty"));
    }
    if list.len() > MAX_BATCH {
        return Err(ApiError::field(
            "events",
            format!("at most {MAX_BATCH} events per batch"),
        ));
    }
    Ok(list.into_iter().map(|e| event(e, catalog)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_bodies() {
        let c = Catalog::default();
        let one = batch(
            br#"{"event_id":"e1","metric":"conversion","value":true,"flag":"f","user":"u"}"#,
            &c,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].as_ref().unwrap().value, 1.0);
        let many = batch(br#"{"events":[{"event_id":"e1","metric":"csat","value":4,"request_id":"r1"},{"event_id":"e2","metric":"csat","value":9,"request_id":"r1"}]}"#, &c).unwrap();
        assert!(many[0].is_ok());
        assert!(many[1].as_ref().unwrap_err().contains("[1, 5]"));
    }

    #[test]
    fn every_kind_of_bad_event_is_explained() {
        let c = Catalog::default();
        for (body, needle) in [
            (
                r#"{"metric":"conversion","value":1,"flag":"f","user":"u"}"#,
                "event_id",
            ),
            (
                r#"{"event_id":"e","metric":"nope","value":1,"flag":"f","user":"u"}"#,
                "unknown metric",
            ),
            (
                r#"{"event_id":"e","metric":"conversion","value":2,"flag":"f","user":"u"}"#,
                "0 or 1",
            ),
            (
                r#"{"event_id":"e","metric":"revenue","value":-3,"flag":"f","user":"u"}"#,
                "values in",
            ),
            (
                r#"{"event_id":"e","metric":"thumbs","value":0,"flag":"f","user":"u"}"#,
                "one of",
            ),
            (
                r#"{"event_id":"e","metric":"revenue","value":"3","flag":"f","user":"u"}"#,
                "must be a number",
            ),
            (
                r#"{"event_id":"e","metric":"revenue","value":3}"#,
                "names a `request_id`",
            ),
            (
                r#"{"event_id":"e","metric":"revenue","value":3,"flag":"f"}"#,
                "`user` is required",
            ),
            (
                r#"{"event_id":"e","metric":"revenue","value":3,"request_id":"r","flag":"f","user":"u"}"#,
                "not both",
            ),
            (
                r#"{"event_id":"e","metric":"revenue","value":3,"request_id":"r","colour":1}"#,
                "unknown field",
            ),
        ] {
            let r = batch(body.as_bytes(), &c).unwrap();
            let err = r[0].as_ref().unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        assert!(batch(b"[1]", &c).is_err());
        assert!(batch(br#"{"events":[]}"#, &c).is_err());
        assert!(batch(b"{", &c).is_err());
    }
}

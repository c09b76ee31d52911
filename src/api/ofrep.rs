//! OpenFeature Remote Evaluation Protocol (OFREP): any OpenFeature SDK with the stock OFREP
//! provider reads flags from the proxy.
//!
//! `POST /ofrep/v1/evaluate/flags/{key}` evaluates one flag, `POST /ofrep/v1/evaluate/flags`
//! all of them, for `{"context": {"targetingKey": …, …attributes}}`. The `targetingKey` is the
//! bucketing id and the decision is the chat path's own (same flag, runtime state and
//! attributes), so an app and its LLM calls see the same variation.
//!
//! A flag's value is its variation's whole configuration as an object; `{flag}.{variable}`
//! reads one variable (`support-assistant.retrieval_profile` is a string, a boolean free
//! variable a boolean), so typed evaluations work too. A variable without a value answers
//! without `value`, which tells the SDK to use the code default.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::app::{App, Live};
use crate::body::{json_response, Body};
use crate::config::AdminToken;
use crate::flags::audience::Attributes;
use crate::flags::{Decision, DecisionReason, Flag};

/// The single-flag path prefix.
const FLAGS_PATH: &str = "/ofrep/v1/evaluate/flags";

/// `[ofrep]`.
#[derive(Debug, Clone, Default)]
pub struct OfrepSettings {
    /// Keys callers present (`Authorization: Bearer …` or `X-API-Key`); none: open.
    pub tokens: Vec<AdminToken>,
    /// Whether an evaluation counts as an exposure in experiment results.
    pub exposures: bool,
}

/// An OFREP error: status, `errorCode`, `errorDetails`.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    details: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, details: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            details: details.into(),
        }
    }

    fn response(self, key: Option<&str>) -> Response<Body> {
        let mut v = json!({"errorCode": self.code, "errorDetails": self.details});
        if let Some(k) = key {
            v["key"] = Value::String(k.to_owned());
        }
        json_response(self.status, &v)
    }
}

/// Routes `/ofrep/…` on the main listener.
pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let key = match path.strip_prefix(FLAGS_PATH) {
        Some("") => None,
        Some(rest) => match rest.strip_prefix('/') {
            Some(k) if !k.is_empty() && !k.contains('/') => match crate::query::decode_segment(k) {
                Ok(k) => Some(k),
                Err(_) => {
                    return Failure::new(
                        StatusCode::BAD_REQUEST,
                        "PARSE_ERROR",
                        "the flag key is not valid percent-encoded UTF-8",
                    )
                    .response(None)
                }
            },
            _ => return not_found(&path),
        },
        None => return not_found(&path),
    };
    if req.method() != Method::POST {
        let mut resp = Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "GENERAL",
            format!("{} is not allowed on {path}: use POST", req.method()),
        )
        .response(None);
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let live = app.live.load_full();
    // A client key (with `[keys]`) is checked as on the chat path; else OFREP's own tokens.
    let grant = match crate::keys::check_ofrep(&app, &live, req.headers()) {
        Ok(g) => g,
        Err(r) => {
            return Failure::new(r.status(), "GENERAL", r.to_string()).response(key.as_deref())
        }
    };
    if grant.is_none() {
        if let Err(f) = authorize(&live.config.ofrep, req.headers()) {
            return f.response(key.as_deref());
        }
    }
    let (parts, body) = req.into_parts();
    let limits = crate::server::linger::BodyLimits::new(
        &live.config.server,
        live.config.server.max_body_bytes,
    );
    let bytes = match crate::server::linger::read_body(body, &parts.headers, limits).await {
        Ok(b) => b,
        Err(e) => {
            let mut resp =
                Failure::new(e.status(), "GENERAL", e.to_string()).response(key.as_deref());
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                crate::server::linger::close_after(&mut resp);
            }
            return resp;
        }
    };
    let mut context = match parse_context(&bytes) {
        Ok(c) => c,
        Err(f) => return f.response(key.as_deref()),
    };
    if let Some(g) = &grant {
        // The key's attributes are the operator's; its name buckets a context without one.
        for (name, value) in g.attributes.iter() {
            context.attributes.insert(name, value.clone());
        }
        context
            .targeting_key
            .get_or_insert_with(|| g.record.name.clone());
        if let Some(k) = &key {
            let flag = live
                .config
                .flag(k)
                .map(|(_, f)| f.key.as_str())
                .or_else(|| {
                    k.rsplit_once('.')
                        .and_then(|(f, _)| live.config.flag(f))
                        .map(|(_, f)| f.key.as_str())
                });
            if flag.is_some_and(|f| !g.record.allows(f)) {
                let r = crate::keys::Refusal::Forbidden {
                    key: g.record.name.clone(),
                    model: k.clone(),
                };
                return Failure::new(r.status(), "GENERAL", r.to_string()).response(Some(k));
            }
        }
    }
    match key {
        Some(key) => match evaluate(&app, &live, &key, &context) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(f) => f.response(Some(&key)),
        },
        None => bulk(&app, &live, &context, &parts.headers, grant.as_deref()),
    }
}

fn not_found(path: &str) -> Response<Body> {
    Failure::new(
        StatusCode::NOT_FOUND,
        "GENERAL",
        format!("no OFREP endpoint at {path} (POST {FLAGS_PATH} or {FLAGS_PATH}/{{key}})"),
    )
    .response(None)
}

/// 401 without a key, 403 with a wrong one; open when `[ofrep] tokens` is empty.
fn authorize(settings: &OfrepSettings, headers: &HeaderMap) -> Result<(), Failure> {
    if settings.tokens.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .or_else(|| headers.get("x-api-key").map(HeaderValue::as_bytes));
    let Some(presented) = presented else {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "GENERAL",
            "a key is required: send Authorization: Bearer <key> or X-API-Key",
        ));
    };
    let mut ok = false;
    // Every key is compared (in constant time), so timing tells nothing about which matched.
    for t in &settings.tokens {
        if let Some(secret) = &t.token {
            ok |= bool::from(secret.header_value().as_bytes().ct_eq(presented));
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            StatusCode::FORBIDDEN,
            "GENERAL",
            "the key is not valid for this proxy",
        ))
    }
}

/// The evaluation context of a request body.
#[derive(Debug)]
struct Context {
    targeting_key: Option<String>,
    attributes: Attributes,
    /// The context as sent, for the bulk ETag.
    raw: Value,
}

fn parse_context(bytes: &Bytes) -> Result<Context, Failure> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let Value::Object(mut body) = body else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            "the body must be a JSON object {\"context\": {…}}",
        ));
    };
    let raw = body.remove("context").unwrap_or(Value::Object(Map::new()));
    let Value::Object(map) = &raw else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "`context` must be an object",
        ));
    };
    let targeting_key = match map.get("targetingKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::String(_)) => None,
        Some(_) => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "INVALID_CONTEXT",
                "`targetingKey` must be a string",
            ))
        }
    };
    let mut attrs = map.clone();
    attrs.remove("targetingKey");
    Ok(Context {
        targeting_key,
        attributes: Attributes::from_json_object(&attrs),
        raw,
    })
}

/// The OpenFeature reason of a decision.
fn reason(flag: &Flag, d: &Decision) -> &'static str {
    if d.reason == DecisionReason::FlagDisabled {
        return "DISABLED";
    }
    if flag.variations.len() == 1 {
        return "STATIC";
    }
    match d.reason {
        DecisionReason::NotBucketed => "DEFAULT",
        DecisionReason::FlagDisabled => "DISABLED",
        DecisionReason::RuleMatch | DecisionReason::EveryoneElse => {
            let rule = d.rule.and_then(|r| flag.rules.get(r));
            let targeted = rule.is_some_and(|r| r.audience.is_some()) || d.bucket.is_none();
            match (rule, targeted) {
                (None, _) => "UNKNOWN",
                (Some(_), true) => "TARGETING_MATCH",
                (Some(_), false) => "SPLIT",
            }
        }
    }
}

/// The flag set's revision: the config file, the datafile, the runtime state.
fn revision(live: &Live) -> String {
    let mut r = live.config.hash.clone();
    if let Some(s) = &live.config.sources_revision {
        r.push_str("+optimizely-");
        r.push_str(s);
    }
    r
}

/// One flag's evaluation: the configuration object, or one variable of it for
/// `{flag}.{variable}`.
fn evaluate(app: &App, live: &Live, key: &str, ctx: &Context) -> Result<Value, Failure> {
    let config = &live.config;
    let (index, flag, variable) = match config.flag(key) {
        Some((i, f)) => (i, f, None),
        None => key
            .rsplit_once('.')
            .and_then(|(f, v)| config.flag(f).map(|(i, f)| (i, f, Some(v))))
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::NOT_FOUND,
                    "FLAG_NOT_FOUND",
                    format!("flag {key:?} was not found"),
                )
            })?,
    };
    let Some(user) = ctx.targeting_key.as_deref() else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
            "the context has no targetingKey: it is the bucketing id every decision needs",
        ));
    };
    let rt = &live.runtime[index];
    let Some(d) = live.decide(index, user, &ctx.attributes) else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            "the flag is gone",
        ));
    };
    let Some(v) = flag.variations.get(d.variation) else {
        return Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "GENERAL",
            "the decision named no variation",
        ));
    };
    let value = match variable {
        None => Some(v.variables.clone()),
        Some(name) => match v.variables.get(name) {
            Some(Value::Null) => None,
            Some(x) => Some(x.clone()),
            None => {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "FLAG_NOT_FOUND",
                    format!("flag {:?} has no variable {name:?}", flag.key),
                ))
            }
        },
    };
    let mut metadata = Map::new();
    metadata.insert("flag".into(), flag.key.clone().into());
    metadata.insert("decision".into(), d.reason.as_str().into());
    if let Some(rule) = d.rule.and_then(|r| flag.rules.get(r)) {
        metadata.insert("rule".into(), rule.id.clone().into());
        if let Some(x) = &rule.datafile {
            metadata.insert("ruleKey".into(), x.key.clone().into());
        }
    }
    if let Some(b) = d.bucket {
        metadata.insert("bucket".into(), b.into());
    }
    metadata.insert("revision".into(), revision(live).into());
    if rt.force_fallback
        || rt
            .forced_variations
            .get(d.variation)
            .copied()
            .unwrap_or(false)
    {
        metadata.insert("forcedFallback".into(), true.into());
    }
    if config.ofrep.exposures && d.reason != DecisionReason::FlagDisabled {
        expose(app, flag, &d, user);
    }
    let mut out = json!({
        "key": key,
        "reason": reason(flag, &d),
        "variant": v.key,
        "metadata": metadata,
    });
    if let Some(value) = value {
        out["value"] = value;
    }
    Ok(out)
}

fn expose(app: &App, flag: &Flag, d: &Decision, user: &str) {
    let exposure = crate::state::Exposure {
        flag: flag.key.clone(),
        variation: flag
            .variations
            .get(d.variation)
            .map(|v| v.key.clone())
            .unwrap_or_default(),
        rule: d.rule.and_then(|r| flag.rules.get(r)).map(|r| r.id.clone()),
        user: user.to_owned(),
        at_ms: crate::clock::now_ms(),
        repeat: false,
    };
    app.experiments.expose(app, exposure);
}

/// Every flag (and each variable with a value, as `{flag}.{variable}`), with an ETag over the
/// answer: it changes with the config, the datafile, the runtime state and the context.
fn bulk(
    app: &App,
    live: &Live,
    ctx: &Context,
    headers: &HeaderMap,
    key: Option<&crate::keys::Loaded>,
) -> Response<Body> {
    if ctx.targeting_key.is_none() {
        return Failure::new(
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
            "the context has no targetingKey: it is the bucketing id every decision needs",
        )
        .response(None);
    }
    let mut flags = Vec::new();
    // A client key sees only the flags it may use.
    for flag in live
        .config
        .flags
        .iter()
        .filter(|f| key.is_none_or(|k| k.record.allows(&f.key)))
    {
        match evaluate(app, live, &flag.key, ctx) {
            Ok(v) => {
                flags.push(v.clone());
                if let Some(Value::Object(vars)) = v.get("value") {
                    for (name, value) in vars {
                        if value.is_null() {
                            continue;
                        }
                        let mut item = v.clone();
                        item["key"] = format!("{}.{name}", flag.key).into();
                        item["value"] = value.clone();
                        flags.push(item);
                    }
                }
            }
            Err(f) => {
                flags.push(json!({"key": flag.key, "errorCode": f.code, "errorDetails": f.details}))
            }
        }
    }
    let body = json!({
        "flags": flags,
        "metadata": {"revision": revision(live), "stateVersion": live.state.version},
    });
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.to_string().hash(&mut hasher);
    ctx.raw.to_string().hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*");
    let mut resp = if matches {
        let mut r = Response::new(crate::body::full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        json_response(StatusCode::OK, &body)
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

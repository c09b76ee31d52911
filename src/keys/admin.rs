//! `/admin/keys…`: create (the secret is in this answer only), list, show, revoke, rotate.
//! Every change is durable in the store, audited with the admin token's name as actor (the
//! entry names the key, never its secret), and in force on this replica before the answer; other
//! replicas follow through the store's notifications.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::record::{self, Budget, KeyRecord};
use super::secret::NewSecret;
use super::store::KeyStoreError;
use crate::admin::api::AdminError;
use crate::app::App;
use crate::state::Change;

type Result<T> = std::result::Result<T, AdminError>;

/// A budget as a string (`"50/month"`) or a number of USD a month.
#[derive(Deserialize)]
#[serde(untagged)]
enum BudgetSpec {
    Text(String),
    Usd(f64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    rpm: Option<f64>,
    #[serde(default)]
    tpm: Option<f64>,
    #[serde(default)]
    budget_usd: Option<BudgetSpec>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, Value>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AdminError::bad("invalid JSON body: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| AdminError::bad(format!("invalid JSON body: {e}")))
}

fn optional<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        Ok(T::default())
    } else {
        parse(body)
    }
}

/// The methods a `/admin/keys…` path takes, if it is one.
pub fn allowed_methods(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["keys"] => "GET, POST",
        ["keys", _] => "GET, DELETE",
        ["keys", _, "rotate"] => "POST",
        _ => return None,
    })
}

/// Routes `/admin/keys…` (`segs` starts with `keys`); `None` for another method or path.
pub async fn dispatch(
    app: &Arc<App>,
    actor: &str,
    method: &Method,
    segs: &[&str],
    body: &[u8],
) -> Option<Result<(StatusCode, Value)>> {
    Some(match (method, segs) {
        (&Method::GET, ["keys"]) => {
            let keys: Vec<Value> = app.keys.all().iter().map(|k| app.keys.json(k)).collect();
            Ok((StatusCode::OK, json!({ "keys": keys })))
        }
        (&Method::POST, ["keys"]) => create(app, actor, body).await,
        (&Method::GET, ["keys", name]) => match app.keys.get(name) {
            Some(k) if k.record.revoked_at_ms.is_some() => Err(AdminError::not_found(format!(
                "key `{name}` was revoked (GET /admin/keys lists it)"
            ))),
            Some(k) => Ok((StatusCode::OK, app.keys.json(&k))),
            None => Err(unknown(name)),
        },
        (&Method::DELETE, ["keys", name]) => revoke(app, actor, name, body).await,
        (&Method::POST, ["keys", name, "rotate"]) => rotate(app, actor, name, body).await,
        _ => return None,
    })
}

fn unknown(name: &str) -> AdminError {
    AdminError::not_found(format!("unknown key `{name}`"))
}

fn spec(body: CreateBody, now: u64) -> Result<(KeyRecord, NewSecret)> {
    record::check_name(&body.name).map_err(AdminError::bad)?;
    let budget = match body.budget_usd {
        None => None,
        Some(BudgetSpec::Text(t)) => Some(Budget::parse(&t).map_err(AdminError::bad)?),
        Some(BudgetSpec::Usd(usd)) => {
            Some(Budget::usd(usd, record::Period::Month).map_err(AdminError::bad)?)
        }
    };
    let expires_at_ms = match body.expires.as_deref() {
        None => None,
        Some(e) => {
            let d = record::parse_duration("expires", e, false).map_err(AdminError::bad)?;
            Some(now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        }
    };
    let per_minute = |what: &str, v: Option<f64>| -> Result<Option<u64>> {
        match v {
            None => Ok(None),
            Some(n) if n.fract() == 0.0 && (1.0..=1e12).contains(&n) => Ok(Some(n as u64)),
            Some(n) => Err(AdminError::bad(format!(
                "{what} {n} must be a whole number from 1 to 1e12"
            ))),
        }
    };
    let (rpm, tpm) = (per_minute("rpm", body.rpm)?, per_minute("tpm", body.tpm)?);
    for (name, v) in &body.attributes {
        if !(v.is_string() || v.is_number() || v.is_boolean()) || name.is_empty() {
            return Err(AdminError::bad(format!(
                "attribute {name:?} must be a string, number or boolean"
            )));
        }
    }
    let mut flags = body.flags;
    flags.retain(|f| !f.trim().is_empty());
    let secret = NewSecret::generate()
        .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e))?;
    Ok((
        KeyRecord {
            name: body.name,
            hash: secret.hash(),
            previous: None,
            flags,
            rpm,
            tpm,
            budget,
            expires_at_ms,
            attributes: body.attributes,
            created_at_ms: now,
            revoked_at_ms: None,
        },
        secret,
    ))
}

/// Audits a key change (never with the secret); a store failure is logged, the change stands.
async fn audit(app: &App, actor: &str, action: &str, detail: Value, reason: Option<&str>) -> Value {
    let note = Change::Note {
        flag: None,
        action: action.into(),
        detail,
    };
    match app.store.apply(&note, actor, reason).await {
        Ok(entry) => serde_json::to_value(entry).unwrap_or(Value::Null),
        Err(e) => {
            tracing::warn!(error = %e, action, "key change not audited: state store unavailable");
            Value::Null
        }
    }
}

async fn create(app: &Arc<App>, actor: &str, body: &[u8]) -> Result<(StatusCode, Value)> {
    let body: CreateBody = parse(body)?;
    let reason = body.reason.clone();
    let now = crate::clock::now_ms();
    let (record, secret) = spec(body, now)?;
    let store = app.keys.key_store()?;
    store.insert(&record).await.map_err(|e| match e {
        KeyStoreError::Exists(_) => {
            AdminError::new(StatusCode::CONFLICT, "key_exists", e.to_string())
        }
        KeyStoreError::State(s) => s.into(),
    })?;
    app.keys.reload().await?;
    let shown = record.to_json(now);
    let entry = audit(app, actor, "key_create", shown, reason.as_deref()).await;
    let mut v = app
        .keys
        .get(&record.name)
        .map_or_else(|| record.to_json(now), |k| app.keys.json(&k));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("key".into(), json!(secret.reveal()));
        obj.insert("audit".into(), entry);
    }
    tracing::info!(actor, key = %record.name, "client key created");
    Ok((StatusCode::CREATED, v))
}

async fn revoke(
    app: &Arc<App>,
    actor: &str,
    name: &str,
    body: &[u8],
) -> Result<(StatusCode, Value)> {
    let body: ReasonBody = optional(body)?;
    if app.keys.get(name).is_none() {
        app.keys.reload().await?;
    }
    let Some(before) = app.keys.get(name) else {
        return Err(unknown(name));
    };
    let now = crate::clock::now_ms();
    let revoked = app.keys.key_store()?.revoke(name, now).await?;
    if !revoked && before.record.revoked_at_ms.is_none() {
        return Err(unknown(name));
    }
    app.keys.reload().await?;
    let after = app.keys.get(name).unwrap_or(before);
    let entry = audit(
        app,
        actor,
        "key_revoke",
        json!({"name": name}),
        body.reason.as_deref(),
    )
    .await;
    let mut v = app.keys.json(&after);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("audit".into(), entry);
    }
    tracing::info!(actor, key = %name, "client key revoked");
    Ok((StatusCode::OK, v))
}

async fn rotate(
    app: &Arc<App>,
    actor: &str,
    name: &str,
    body: &[u8],
) -> Result<(StatusCode, Value)> {
    let body: RotateBody = optional(body)?;
    let grace = match body.grace.as_deref() {
        None => std::time::Duration::ZERO,
        Some(g) => record::parse_duration("grace", g, true).map_err(AdminError::bad)?,
    };
    let now = crate::clock::now_ms();
    let secret = NewSecret::generate()
        .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e))?;
    let until = now.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
    if !app
        .keys
        .key_store()?
        .rotate(name, secret.hash(), until)
        .await?
    {
        return Err(AdminError::not_found(format!("no active key `{name}`")));
    }
    app.keys.reload().await?;
    let entry = audit(
        app,
        actor,
        "key_rotate",
        json!({"name": name, "grace_seconds": grace.as_secs()}),
        body.reason.as_deref(),
    )
    .await;
    let mut v = app
        .keys
        .get(name)
        .map_or(Value::Null, |k| app.keys.json(&k));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("key".into(), json!(secret.reveal()));
        obj.insert("audit".into(), entry);
    }
    tracing::info!(actor, key = %name, grace_seconds = grace.as_secs(), "client key rotated");
    Ok((StatusCode::OK, v))
}

//! Phase 2, identify: the bucketing id (first configured source present wins) and the
//! attributes audiences are evaluated on.

use std::borrow::Cow;

use http::HeaderMap;

use crate::api::Inbound;
use crate::config::{IdSource, IdentitySettings, OnMissing};
use crate::flags::audience::{AttrValue, Attributes};
use crate::openai::ApiError;

/// Who the request is for.
#[derive(Debug)]
pub struct Identity<'a> {
    /// The id hashed into buckets.
    pub bucketing_id: Cow<'a, str>,
    /// Attributes from headers and `metadata`.
    pub attributes: Attributes,
    /// Whether the id was made up for this request (no source had one): such users are not
    /// counted in experiments.
    pub random: bool,
}

fn header_str<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Finds the bucketing id and attributes of a request of any client API.
pub fn identify<'a>(
    settings: &IdentitySettings,
    headers: &'a HeaderMap,
    req: &'a dyn Inbound,
) -> Result<Identity<'a>, ApiError> {
    let mut bucketing_id: Option<Cow<'a, str>> = None;
    for source in &settings.sources {
        let found: Option<Cow<'a, str>> = match source {
            IdSource::Header(name) => header_str(headers, name).map(Cow::Borrowed),
            IdSource::Body(field) => req.body_string(field),
            IdSource::Metadata(key) => req
                .metadata()
                .and_then(|m| m.get(key))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .map(Cow::Owned),
        };
        if let Some(id) = found.filter(|s| !s.is_empty()) {
            bucketing_id = Some(id);
            break;
        }
    }
    let random = bucketing_id.is_none();
    let bucketing_id = match (bucketing_id, settings.on_missing) {
        (Some(id), _) => id,
        (None, OnMissing::Random) => Cow::Owned(format!("anon-{:016x}", fastrand::u64(..))),
        (None, OnMissing::Reject) => {
            let sources: Vec<String> = settings.sources.iter().map(|s| s.to_string()).collect();
            return Err(ApiError::MissingIdentity {
                sources: sources.join(", "),
            });
        }
    };
    Ok(Identity {
        bucketing_id,
        attributes: attributes(settings, headers, req.metadata()),
        random,
    })
}

/// Attributes from `x-switchyard-attr-*` headers, then `metadata` (which wins on a clash).
pub fn attributes(
    settings: &IdentitySettings,
    headers: &HeaderMap,
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Attributes {
    let mut attrs = Attributes::new();
    let prefix = settings.attribute_header_prefix.as_str();
    if !prefix.is_empty() {
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix(prefix) {
                if let Ok(text) = value.to_str() {
                    attrs.insert(key, AttrValue::String(text.trim().to_owned()));
                }
            }
        }
    }
    if settings.attributes_from_metadata {
        if let Some(m) = metadata {
            for (k, v) in Attributes::from_json_object(m).iter() {
                attrs.insert(k, v.clone());
            }
        }
    }
    attrs
}

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
    /// Where the id came from (`header:NAME`, `body:user`, `metadata:KEY`, `random`): the
    /// `x-switchyard-identity` response header.
    pub source: http::HeaderValue,
}

/// Response header saying where the bucketing id came from.
pub const IDENTITY_HEADER: &str = "x-switchyard-identity";

/// Refuses a bucketing id longer than `identity.max_id_bytes`.
pub fn check_id(settings: &IdentitySettings, id: &str, from: &str) -> Result<(), ApiError> {
    if id.len() > settings.max_id_bytes {
        return Err(ApiError::LimitExceeded {
            limit: "max_id_bytes",
            what: format!("the bucketing id (from {from}) is {} bytes: it", id.len()),
            max: settings.max_id_bytes,
            param: Some(if from == "body:user" {
                "user"
            } else {
                "bucketing_id"
            }),
        });
    }
    Ok(())
}

/// Refuses attributes beyond `identity.max_attributes`, `max_attribute_name_bytes` or
/// `max_attribute_value_bytes`.
pub fn check_attributes(settings: &IdentitySettings, attrs: &Attributes) -> Result<(), ApiError> {
    if attrs.len() > settings.max_attributes {
        return Err(ApiError::LimitExceeded {
            limit: "max_attributes",
            what: format!("the request carries {} attributes: it", attrs.len()),
            max: settings.max_attributes,
            param: Some("metadata"),
        });
    }
    for (name, value) in attrs.iter() {
        if name.len() > settings.max_attribute_name_bytes {
            return Err(ApiError::LimitExceeded {
                limit: "max_attribute_name_bytes",
                what: format!("an attribute name is {} bytes: it", name.len()),
                max: settings.max_attribute_name_bytes,
                param: Some("metadata"),
            });
        }
        if let AttrValue::String(v) = value {
            if v.len() > settings.max_attribute_value_bytes {
                return Err(ApiError::LimitExceeded {
                    limit: "max_attribute_value_bytes",
                    what: format!("the value of attribute `{name}` is {} bytes: it", v.len()),
                    max: settings.max_attribute_value_bytes,
                    param: Some("metadata"),
                });
            }
        }
    }
    Ok(())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Finds the bucketing id and attributes of a request of any client API; without an id from
/// any source, the client key's name (`key`) when the request came with one.
pub fn identify<'a>(
    settings: &IdentitySettings,
    headers: &'a HeaderMap,
    req: &'a dyn Inbound,
    key_name: Option<&'a str>,
) -> Result<Identity<'a>, ApiError> {
    let mut bucketing_id: Option<Cow<'a, str>> = None;
    let mut source_label = http::HeaderValue::from_static("random");
    for (i, source) in settings.sources.iter().enumerate() {
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
            if let Some(label) = settings.source_labels.get(i) {
                source_label = label.clone();
            }
            check_id(
                settings,
                &id,
                source_label.to_str().unwrap_or("the bucketing id"),
            )?;
            bucketing_id = Some(id);
            break;
        }
    }
    if let (None, Some(name)) = (&bucketing_id, key_name) {
        bucketing_id = Some(Cow::Borrowed(name));
        source_label = http::HeaderValue::from_static("key");
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
        attributes: attributes(settings, headers, req.metadata())?,
        random,
        source: source_label,
    })
}

/// Attributes from `x-switchyard-attr-*` headers, then `metadata` (which wins on a clash),
/// within the configured limits.
pub fn attributes(
    settings: &IdentitySettings,
    headers: &HeaderMap,
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<Attributes, ApiError> {
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
    check_attributes(settings, &attrs)?;
    Ok(attrs)
}

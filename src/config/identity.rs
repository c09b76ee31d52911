//! `[identity]`: where the bucketing id and the attributes come from, and their limits.

use super::*;

/// `[identity]`: where the bucketing id and attributes come from.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Sources of the bucketing id; the first present wins.
    pub sources: Vec<IdSource>,
    /// Each source as the `x-switchyard-identity` value (`header:NAME`, `body:user`…), built
    /// once.
    pub source_labels: Vec<HeaderValue>,
    /// Headers with this (lower-case) prefix become attributes.
    pub attribute_header_prefix: String,
    /// Whether string/number/bool entries of the body's `metadata` become attributes.
    pub attributes_from_metadata: bool,
    /// What happens when no source gives an id.
    pub on_missing: OnMissing,
    /// Longest bucketing id accepted (400 `id_too_long` beyond).
    pub max_id_bytes: usize,
    /// Most attributes on one request (headers and `metadata` together).
    pub max_attributes: usize,
    /// Longest attribute name.
    pub max_attribute_name_bytes: usize,
    /// Longest attribute value (strings; numbers and booleans are short by nature).
    pub max_attribute_value_bytes: usize,
}

/// One source of the bucketing id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// `header:NAME`.
    Header(HeaderName),
    /// `body:FIELD`: a top-level string field such as `user` or `safety_identifier`.
    Body(String),
    /// `metadata:KEY`: a key of the body's `metadata` object.
    Metadata(String),
}

impl fmt::Display for IdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSource::Header(h) => write!(f, "header:{h}"),
            IdSource::Body(b) => write!(f, "body:{b}"),
            IdSource::Metadata(m) => write!(f, "metadata:{m}"),
        }
    }
}

/// What happens to a request without a bucketing id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// A random id for this request only (no stickiness).
    Random,
    /// 400 `missing_user`.
    Reject,
}

impl Validator<'_> {
    pub(super) fn identity(&mut self, raw: &RawConfig) -> IdentitySettings {
        let p = KeyPath::root().key("identity");
        let defaults = [
            "header:x-switchyard-user",
            "body:user",
            "body:safety_identifier",
            "metadata:user_id",
        ];
        let specs: Vec<String> = match &raw.identity.bucketing_id {
            Some(list) => list.clone(),
            None => defaults.iter().map(|s| s.to_string()).collect(),
        };
        let mut sources = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let path = p.key("bucketing_id").index(i);
            let (kind, name) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
            if name.is_empty() {
                self.err(&path, format!("invalid source {spec:?}: write \"header:NAME\", \"body:FIELD\" or \"metadata:KEY\""));
                continue;
            }
            match kind {
                "header" => match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => sources.push(IdSource::Header(h)),
                    Err(_) => self.err(&path, format!("invalid header name {name:?}")),
                },
                "body" => sources.push(IdSource::Body(name.to_owned())),
                "metadata" => sources.push(IdSource::Metadata(name.to_owned())),
                _ => self.err(&path, format!("invalid source {spec:?}: write \"header:NAME\", \"body:FIELD\" or \"metadata:KEY\"")),
            }
        }
        let on_missing = match raw.identity.on_missing.as_deref() {
            None | Some("random") => OnMissing::Random,
            Some("reject") => OnMissing::Reject,
            Some(other) => {
                self.err(
                    &p.key("on_missing"),
                    format!("{other:?} is not one of \"random\", \"reject\""),
                );
                OnMissing::Random
            }
        };
        let source_labels = sources
            .iter()
            .map(|s| {
                HeaderValue::from_str(&s.to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
            })
            .collect();
        IdentitySettings {
            sources,
            source_labels,
            attribute_header_prefix: raw
                .identity
                .attribute_header_prefix
                .clone()
                .unwrap_or_else(|| "x-switchyard-attr-".into())
                .to_ascii_lowercase(),
            attributes_from_metadata: raw.identity.attributes_from_metadata.unwrap_or(true),
            on_missing,
            max_id_bytes: self.count(
                &p.key("max_id_bytes"),
                raw.identity.max_id_bytes,
                256,
                1..=65_536,
            ) as usize,
            max_attributes: self.count(
                &p.key("max_attributes"),
                raw.identity.max_attributes,
                64,
                0..=10_000,
            ) as usize,
            max_attribute_name_bytes: self.count(
                &p.key("max_attribute_name_bytes"),
                raw.identity.max_attribute_name_bytes,
                128,
                1..=65_536,
            ) as usize,
            max_attribute_value_bytes: self.count(
                &p.key("max_attribute_value_bytes"),
                raw.identity.max_attribute_value_bytes,
                1024,
                1..=1_048_576,
            ) as usize,
        }
    }
}

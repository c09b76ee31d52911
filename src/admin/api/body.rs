//! The admin API's request bodies: JSON objects with no unknown members, some of them optional
//! (an empty body reads as the defaults).

use serde::Deserialize;

use super::{AdminError, Result};

pub(super) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    // Serde reads a struct from an array too (`[null, null]`); a body is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AdminError::bad("invalid JSON body: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| AdminError::bad(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnabledBody {
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FallbackBody {
    pub(super) forced: bool,
    #[serde(default)]
    pub(super) variation: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AdvanceBody {
    #[serde(default)]
    pub(super) force: bool,
    #[serde(default)]
    pub(super) rule: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ClearBody {
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleBody {
    #[serde(default)]
    pub(super) rule: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StageBody {
    pub(super) stage: u32,
    #[serde(default)]
    pub(super) rule: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HoldBody {
    pub(super) held: bool,
    #[serde(default)]
    pub(super) rule: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

pub(super) fn optional<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        Ok(T::default())
    } else {
        parse(body)
    }
}

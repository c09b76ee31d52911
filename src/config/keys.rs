//! `[keys]`: client keys (absent: no key is checked, as before).

use super::*;

impl Validator<'_> {
    pub(super) fn keys(&mut self, raw: &RawConfig) -> Option<crate::keys::KeysSettings> {
        let k = raw.keys.as_ref()?;
        let p = KeyPath::root().key("keys");
        Some(crate::keys::KeysSettings {
            required: k.required.unwrap_or(false),
            flush_interval: self.positive_duration(
                &p.key("flush_interval"),
                k.flush_interval.as_deref(),
                Duration::from_secs(1),
            ),
        })
    }
}

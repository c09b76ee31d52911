//! `[sources.optimizely]`: the datafile source's settings, validated.

use super::*;

impl Validator<'_> {
    pub(super) fn optimizely(
        &mut self,
        path: &KeyPath,
        o: &raw::RawOptimizely,
        providers: &BTreeMap<String, Arc<Provider>>,
    ) -> Option<crate::sources::OptimizelySettings> {
        use crate::sources::{DatafileLocation, OptimizelySettings};
        let location = match (&o.datafile_url, &o.datafile_path) {
            (Some(url), None) => {
                let sdk_key = match &o.sdk_key_env {
                    Some(var) => match (self.env)(var).filter(|v| !v.trim().is_empty()) {
                        Some(v) => match HeaderValue::from_str(v.trim()) {
                            Ok(h) => Some(Secret::new(h)),
                            Err(_) => {
                                self.err(&path.key("sdk_key_env"), format!("environment variable {var} holds characters an SDK key cannot have"));
                                None
                            }
                        },
                        None => {
                            self.err(
                                &path.key("sdk_key_env"),
                                format!("environment variable {var} is not set"),
                            );
                            None
                        }
                    },
                    None => None,
                };
                if url.contains("{sdk_key}") && o.sdk_key_env.is_none() {
                    self.err(&path.key("sdk_key_env"), "datafile_url has {sdk_key}: name the environment variable holding it in sdk_key_env");
                }
                let probe = url.replace("{sdk_key}", "key");
                match probe.parse::<Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http" | "https"))
                            && u.host().is_some() => {}
                    _ => self.err(
                        &path.key("datafile_url"),
                        format!("{url:?} is not an http(s) URL"),
                    ),
                }
                DatafileLocation::Url {
                    template: url.clone(),
                    sdk_key,
                }
            }
            (None, Some(p)) => DatafileLocation::Path(p.into()),
            _ => {
                self.err(path, "give exactly one of datafile_url or datafile_path");
                return None;
            }
        };
        let access_token = match &o.access_token_env {
            Some(var) => {
                match (self.env)(var).filter(|v| !v.trim().is_empty()) {
                    Some(v) => match HeaderValue::from_str(&format!("Bearer {}", v.trim())) {
                        Ok(h) => Some(Secret::new(h)),
                        Err(_) => {
                            self.err(&path.key("access_token_env"), format!("environment variable {var} holds characters a token cannot have"));
                            None
                        }
                    },
                    None => {
                        self.err(
                            &path.key("access_token_env"),
                            format!("environment variable {var} is not set"),
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let poll_interval = self.duration(
            &path.key("poll_interval"),
            o.poll_interval.as_deref(),
            Duration::from_secs(300),
        );
        if poll_interval < Duration::from_millis(100) {
            self.err(
                &path.key("poll_interval"),
                "poll_interval must be at least 100ms",
            );
        }
        if let Some(p) = &o.provider {
            if !providers.contains_key(p) {
                self.err(
                    &path.key("provider"),
                    format!("unknown provider {p:?}{}", known(providers.keys())),
                );
            }
        }
        if let Some(url) = &o.events_url {
            match url.parse::<Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => self.err(
                    &path.key("events_url"),
                    format!("{url:?} is not an http(s) URL"),
                ),
            }
        }
        Some(OptimizelySettings {
            location,
            access_token,
            poll_interval,
            default_provider: o.provider.clone(),
            events_url: o.events_url.clone(),
        })
    }
}

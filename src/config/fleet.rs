//! `[fleet]` and the `source` of gates and alerts: where fleet-wide figures come from.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use super::raw::RawConfig;
use super::{AlertRule, FigureSource, FleetSettings, KeyPath, Validator};
use crate::flags::Flag;

/// The default budget of one Prometheus query.
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Validator<'_> {
    /// `[state] url`, or the URL in the environment variable `url_env` names (so a fleet's
    /// database password stays out of the file).
    pub(super) fn state_url(&mut self, raw: &RawConfig) -> String {
        let file = raw
            .state
            .url
            .clone()
            .unwrap_or_else(|| "sqlite:switchyard-state.db".into());
        let Some(var) = raw.state.url_env.as_deref() else {
            return file;
        };
        match (self.env)(var).filter(|v| !v.trim().is_empty()) {
            Some(url) => url.trim().to_owned(),
            None if raw.state.url.is_some() => file,
            None => {
                self.err(
                    &KeyPath::root().key("state").key("url_env"),
                    format!("environment variable {var} is not set (and no `url` to fall back on)"),
                );
                file
            }
        }
    }

    /// A gate's or an alert's `source` (default `local`).
    pub(super) fn source(&mut self, path: &KeyPath, value: Option<&str>) -> FigureSource {
        match value {
            None | Some("local") => FigureSource::Local,
            Some("prometheus") => FigureSource::Prometheus,
            Some(other) => {
                self.err(
                    path,
                    format!("unknown source {other:?} (\"local\" or \"prometheus\")"),
                );
                FigureSource::Local
            }
        }
    }

    /// `[fleet]`, checked against the gates and alerts that read Prometheus.
    pub(super) fn fleet(
        &mut self,
        raw: &RawConfig,
        flags: &[Arc<Flag>],
        alerts: &[AlertRule],
    ) -> FleetSettings {
        let p = KeyPath::root().key("fleet");
        let prometheus_url = raw.fleet.prometheus_url.as_deref().and_then(|u| {
            match u.trim_end_matches('/').parse::<Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http") | Some("https"))
                        && uri.host().is_some()
                        && uri.query().is_none() =>
                {
                    Some(uri)
                }
                _ => {
                    self.err(
                        &p.key("prometheus_url"),
                        format!("invalid URL {u:?} (write e.g. \"http://prometheus:9090\")"),
                    );
                    None
                }
            }
        });
        let query_timeout = self.duration(
            &p.key("query_timeout"),
            raw.fleet.query_timeout.as_deref(),
            DEFAULT_QUERY_TIMEOUT,
        );
        if query_timeout.is_zero() {
            self.err(&p.key("query_timeout"), "must be more than 0s");
        }
        if raw.fleet.prometheus_url.is_none() {
            let need = "source = \"prometheus\" needs [fleet] prometheus_url";
            for flag in flags {
                for (i, rule) in flag.rules.iter().enumerate() {
                    let reads = rule
                        .rollout
                        .as_ref()
                        .is_some_and(|ro| ro.gate.source == FigureSource::Prometheus);
                    if reads {
                        let path = KeyPath::root()
                            .key("flags")
                            .key(&flag.key)
                            .key("rules")
                            .index(i)
                            .key("rollout")
                            .key("gate")
                            .key("source");
                        self.err(&path, need);
                    }
                }
            }
            for (i, a) in raw.alerts.iter().enumerate() {
                if a.source.as_deref() == Some("prometheus") {
                    self.err(&KeyPath::root().key("alerts").index(i).key("source"), need);
                }
            }
        }
        for (i, a) in raw.alerts.iter().enumerate() {
            let reads = alerts
                .iter()
                .any(|r| r.name == a.name && r.source == FigureSource::Prometheus);
            if reads && crate::fleet::queries::alert_metric_kind(&a.metric).is_none() {
                self.err(
                    &KeyPath::root().key("alerts").index(i).key("metric"),
                    format!("metric {:?} cannot be read from Prometheus", a.metric),
                );
            }
        }
        FleetSettings {
            prometheus_url,
            query_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::config::{Config, FigureSource};

    const FLAG: &str = r#"
[providers.mock]
kind = "mock"
[flags.f]
off_variation = "a"
stable_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m"
[flags.f.variations.b]
provider = "mock"
model_id = "m"
[[flags.f.rules]]
id = "ramp"
rollout = { variation = "b", stages = [10, 100], gate = { source = "prometheus", window = "2m" } }
[[flags.f.rules]]
id = "rest"
allocation = [{ variation = "a", end = 10000 }]
[[alerts]]
name = "e"
flag = "f"
metric = "error_rate"
source = "prometheus"
above = { critical = 0.1 }
"#;

    fn parse(src: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Config::parse_with_env(src, "t.toml", &lookup).map_err(|e| e.to_string())
    }

    #[test]
    fn prometheus_sources_need_the_fleet_url() {
        let e = parse(FLAG, &[]).unwrap_err();
        assert!(e.contains("flags.f.rules[0].rollout.gate.source"), "{e}");
        assert!(e.contains("alerts[0].source"), "{e}");
        let c = parse(
            &format!(
                "[fleet]\nprometheus_url = \"http://prom:9090/\"\nquery_timeout = \"3s\"\n{FLAG}"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.fleet.query_timeout.as_secs(), 3);
        assert_eq!(c.alerts[0].source, FigureSource::Prometheus);
        let gate = &c.flags[0].rules[0].rollout.as_ref().unwrap().gate;
        assert_eq!(gate.source, FigureSource::Prometheus);
        assert_eq!(gate.window.unwrap().as_secs(), 120);
    }

    #[test]
    fn bad_fleet_settings_are_named() {
        for (src, needle) in [
            ("[fleet]\nprometheus_url = \"ftp://x\"\n", "fleet.prometheus_url"),
            ("[fleet]\nquery_timeout = \"0s\"\n", "fleet.query_timeout"),
            ("[[alerts]]\nname = \"x\"\nflag = \"f\"\nmetric = \"requests\"\nsource = \"graphite\"\nabove = { info = 1 }\n", "unknown source"),
        ] {
            let e = parse(src, &[]).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn the_state_url_may_come_from_the_environment() {
        let src = "[state]\nurl_env = \"STATE_URL\"\n";
        let c = parse(src, &[("STATE_URL", "postgres://u:secret@db/x")]).unwrap();
        assert_eq!(c.state_url, "postgres://u:secret@db/x");
        let e = parse(src, &[]).unwrap_err();
        assert!(
            e.contains("state.url_env") && e.contains("STATE_URL"),
            "{e}"
        );
        let c = parse(
            "[state]\nurl = \"sqlite:x.db\"\nurl_env = \"STATE_URL\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.state_url, "sqlite:x.db");
    }
}

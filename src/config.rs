//! `proxy.toml`: parsed into raw serde types (`raw`), then validated into a [`Config`] that
//! cannot hold a dangling reference. Every error names the file, the line and the key. The
//! validator is split by section: `providers`, `flags` (variations, rules, rollouts),
//! `identity`, `alerts`, `experiments`, `admin`, `sources`, `fleet`; this file holds the
//! validated types and the walk over the whole file; the error types live in `error`.

mod admin;
mod agents;
pub use agents::AgentPolicy;
mod alerts;
mod bandit;
mod error;
pub use error::{ConfigError, ConfigErrors};
mod evals;
pub use evals::{EvalSettings, ScoreReader};
mod cache;
mod experiments;
mod flags;
mod fleet;
mod identity;
mod keys;
mod telemetry;
pub use identity::{IdSource, IdentitySettings, OnMissing};
mod locate;
mod providers;
mod raw;
mod sources;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use flags::FlagContext;
pub use locate::KeyPath;
use locate::SourceMap;
use raw::{
    RawCircuit, RawConfig, RawFlag, RawGate, RawProvider, RawResponder, RawRetry, RawRollout,
    RawVariation,
};

use crate::fallback::Responder;
use crate::flags::audience::Condition;
use crate::flags::bucket::BUCKETS;
use crate::flags::{
    FallbackBehavior, Flag, Gate, PromptMode, Range, Rollout, Rule, ToolPolicy, Variation,
};
use crate::providers::mock::MockSettings;
use crate::providers::{
    AnthropicSettings, CircuitPolicy, OpenAiSettings, Provider, ProviderKind, RetryPolicy, Secret,
    Timeouts, WireFormat,
};

/// A validated configuration: what the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or a label for in-memory sources).
    pub origin: String,
    /// A short hex digest of the source text, to tell versions apart.
    pub hash: String,
    /// A digest of every flag (`flags.KEY`) and every other top-level section, to tell what a
    /// reload changed.
    pub section_digests: BTreeMap<String, String>,
    /// `[server]`.
    pub server: ServerSettings,
    /// `[identity]`.
    pub identity: IdentitySettings,
    /// `[passthrough]`: where a `model` that is no flag goes.
    pub passthrough: Option<Arc<Provider>>,
    /// `[providers.*]`, by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Number of prompts in the library.
    pub prompt_count: usize,
    /// Number of audiences.
    pub audience_count: usize,
    /// `[flags.*]`, in key order.
    pub flags: Vec<Arc<Flag>>,
    /// `[state] url`: where runtime state and the audit log live.
    pub state_url: String,
    /// `[admin] tokens`.
    pub admin_tokens: Vec<AdminToken>,
    /// `[[alerts]]`.
    pub alerts: Vec<AlertRule>,
    /// Built-in and `[metrics]` business metrics.
    pub catalog: crate::experiments::catalog::Catalog,
    /// `[prices.MODEL]`: (USD per million input tokens, per million output tokens).
    pub prices: BTreeMap<String, (f64, f64)>,
    /// `[experiments]`: the verdict policy.
    pub experiment_policy: crate::experiments::results::Policy,
    /// `[flags.F.bandit]`: each bandit by flag key.
    pub bandits: BTreeMap<String, Arc<crate::bandit::BanditConfig>>,
    /// `[fleet]`: where fleet-wide figures come from.
    pub fleet: FleetSettings,
    /// `[prompts]`, by name (flags from other sources resolve their prompts here).
    pub prompts: BTreeMap<String, Arc<str>>,
    /// `[tool_policies]`, by name.
    pub tool_policies: BTreeMap<String, Vec<String>>,
    /// The rule-based responder of flags without their own.
    pub default_responder: Arc<Responder>,
    /// `[ofrep]`: the OpenFeature remote evaluation endpoints.
    pub ofrep: crate::api::ofrep::OfrepSettings,
    /// `[sources.optimizely]`: flags from an Optimizely datafile.
    pub optimizely: Option<crate::sources::OptimizelySettings>,
    /// The revision of the flags added from other sources, if any (part of OFREP's ETag).
    pub sources_revision: Option<String>,
    /// `[telemetry]`: what is exposed per variation.
    pub telemetry: crate::metrics::Telemetry,
    /// `[evals.NAME]`: online evals.
    pub evals: Vec<Arc<EvalSettings>>,
    /// `[cache]`: the response cache's backend (read at start).
    pub cache: crate::cache::CacheSettings,
    /// `[export]`: the per-request record sink (read at start).
    pub export: crate::export::ExportSettings,
    /// `[keys]`: client keys; `None` checks none.
    pub keys: Option<crate::keys::KeysSettings>,
    flag_index: HashMap<String, usize>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The OpenAI-compatible listener.
    pub listen: SocketAddr,
    /// Metrics, health and admin.
    pub admin_listen: SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// How often rollout gates are evaluated.
    pub gate_interval: Duration,
    /// How often the config file is checked for changes (zero: never).
    pub reload_check_interval: Duration,
    /// How long a changed file must stay unchanged before the watch applies it.
    pub reload_settle: Duration,
    /// After SIGTERM: how long `/readyz` answers 503 `draining` while the listeners still
    /// accept, so a load balancer takes the replica out before it stops accepting.
    pub drain_delay: Duration,
    /// A request head must arrive within this (from the connection's start, or from the first
    /// byte of a later request on a kept-alive connection).
    pub header_timeout: Duration,
    /// Kept-alive connections idle (no request in flight, nothing arriving) longer are closed.
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// Open connections per listener; beyond it new connections get a 503 and are closed.
    pub max_connections: usize,
    /// After an early answer (413) while the body still arrives: how long the rest is read and
    /// discarded before the connection closes, so the client reads the answer.
    pub linger_timeout: Duration,
    /// The most bytes read and discarded that way.
    pub linger_max_bytes: u64,
}

/// A tiered alert on a per-variation metric (`[[alerts]]`).
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// Unique name; actions are audited as `alert:<name>`.
    pub name: String,
    /// The flag watched.
    pub flag: String,
    /// One variation, or every variation of the flag.
    pub variation: Option<String>,
    /// The per-variation metric (`error_rate`, `fallback_rate`, `p95_latency_seconds`,
    /// `conversion`, `hallucination`, …).
    pub metric: String,
    /// Whether high or low values are bad.
    pub direction: AlertDirection,
    /// Thresholds of the info, warning and critical tiers.
    pub tiers: [Option<f64>; 3],
    /// Compare the variation's value divided by the control's (the flag's stable variation).
    pub relative_to_control: bool,
    /// The window the metric is measured over.
    pub window: Duration,
    /// Samples needed in the window before the alert may fire.
    pub min_samples: u64,
    /// Actions per tier (info, warning, critical); notify is implied for every tier.
    pub actions: [Vec<AlertAction>; 3],
    /// Webhooks notified on every change of level.
    pub webhooks: Vec<Uri>,
    /// Where the figures come from: this process's counters or the fleet's, from Prometheus.
    pub source: FigureSource,
}

/// Where a gate or an alert reads its figures (`source = "local" | "prometheus"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FigureSource {
    /// This process's own counters (the default).
    #[default]
    Local,
    /// The fleet's, aggregated across replicas by Prometheus (`[fleet] prometheus_url`).
    Prometheus,
}

impl FigureSource {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            FigureSource::Local => "local",
            FigureSource::Prometheus => "prometheus",
        }
    }
}

/// `[fleet]`.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Prometheus' base URL (`http://host:port`, optionally with a path prefix).
    pub prometheus_url: Option<Uri>,
    /// Budget for one query.
    pub query_timeout: Duration,
}

/// Which side of the thresholds is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertDirection {
    /// Values above the thresholds are bad.
    Above,
    /// Values below the thresholds are bad.
    Below,
}

/// What an alert tier does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAction {
    /// Log, webhook, gauge (always done).
    Notify,
    /// Freeze the flag's rollouts.
    HoldRollout,
    /// Flip the flag's kill switch.
    Kill,
}

/// A named admin bearer token; the name is the audit actor.
#[derive(Debug, Clone)]
pub struct AdminToken {
    /// The actor name.
    pub name: String,
    /// The token, or `None` when its source was not set (the token is then disabled).
    pub token: Option<Secret>,
    /// Where it was to come from, for messages.
    pub source: String,
    /// An agent token's policy: it then works only on `/mcp`.
    pub policy: Option<Arc<AgentPolicy>>,
}

/// Where environment variables come from (tests pass their own).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                origin: origin.clone(),
                line: None,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        let config = Config::parse(&src, &origin)?;
        // A file that serves nothing is a mistake (an empty or truncated file, a wrong path in
        // a deploy): refuse it rather than answer every request 404.
        if config.flags.is_empty() && config.passthrough.is_none() && config.optimizely.is_none() {
            return Err(ConfigErrors(vec![ConfigError {
                origin,
                line: None,
                key: String::new(),
                message: "the configuration defines no flag, no [passthrough] and no flag source: \
                          every request would be answered 404 (an empty or truncated file?)"
                    .into(),
            }]));
        }
        Ok(config)
    }

    /// Validates a configuration held in memory, reading keys from the process environment.
    pub fn parse(src: &str, origin: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with_env(src, origin, &process_env)
    }

    /// Validates a configuration with an explicit environment.
    pub fn parse_with_env(
        src: &str,
        origin: &str,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigErrors> {
        let map = SourceMap::new(src);
        // Every unknown key is reported, not only the first: each one found is blanked out
        // (its line, or its whole table) and the file parsed again.
        let mut errors = Vec::new();
        let mut text = std::borrow::Cow::Borrowed(src);
        let raw: RawConfig = loop {
            match toml::from_str::<RawConfig>(&text) {
                Ok(raw) => break raw,
                Err(e) => {
                    let here = SourceMap::new(&text);
                    let (line, key) = match e.span() {
                        Some(span) => (
                            Some(here.line_of(span.start)),
                            here.path_at(span.start).to_string(),
                        ),
                        None => (None, String::new()),
                    };
                    let unknown = e.message().starts_with("unknown field");
                    if !unknown && !errors.is_empty() {
                        // Most likely an artefact of a blanked key: report what is certain.
                        return Err(ConfigErrors(errors));
                    }
                    errors.push(ConfigError {
                        origin: origin.to_owned(),
                        line,
                        key,
                        message: e.message().trim().to_owned(),
                    });
                    match e.span() {
                        Some(span) if unknown && errors.len() < 100 => {
                            text = std::borrow::Cow::Owned(blank_out(&text, span.start));
                        }
                        _ => return Err(ConfigErrors(errors)),
                    }
                }
            }
        };
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        let mut v = Validator {
            origin,
            map: &map,
            env,
            errors: Vec::new(),
        };
        let config = v.config(raw, src);
        errors.extend(v.errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Adds flags from another source (`origin`, e.g. a datafile) after those of the file; a
    /// key the config already defines is an error.
    pub fn add_flags(
        &mut self,
        flags: Vec<Arc<Flag>>,
        origin: &str,
        revision: &str,
    ) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        for f in &flags {
            if self.flag_index.contains_key(&f.key) {
                errors.push(ConfigError {
                    origin: origin.to_owned(),
                    line: None,
                    key: format!("flags.{}", f.key),
                    message: format!(
                        "flag {:?} is defined both in {} and in {origin}: a key must come from one place",
                        f.key, self.origin
                    ),
                });
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        for f in flags {
            self.flag_index.insert(f.key.clone(), self.flags.len());
            self.flags.push(f);
        }
        self.sources_revision = Some(revision.to_owned());
        Ok(())
    }

    /// The flag a client names in `model`.
    pub fn flag(&self, key: &str) -> Option<(usize, &Arc<Flag>)> {
        let i = *self.flag_index.get(key)?;
        self.flags.get(i).map(|f| (i, f))
    }
}

struct Validator<'a> {
    origin: &'a str,
    map: &'a SourceMap<'a>,
    env: EnvLookup<'a>,
    errors: Vec<ConfigError>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (write e.g. \"30s\", \"250ms\")"))
}

/// `text` with the line holding `offset` emptied, or, when it is a table header, the whole
/// table (up to the next header); line numbers stay the same.
fn blank_out(text: &str, offset: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut blanking_table = false;
    for line in text.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        let is_header = line.trim_start().starts_with('[');
        let hit = (start..pos).contains(&offset);
        if hit && is_header {
            blanking_table = true;
        } else if blanking_table && is_header {
            blanking_table = false;
        }
        if hit || blanking_table {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Digests of each flag and each other top-level section of `src` (already parsed once).
fn section_digests(src: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(table) = src.parse::<toml::Table>() else {
        return out;
    };
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("flags", toml::Value::Table(flags)) => {
                for (flag, v) in flags {
                    out.insert(format!("flags.{flag}"), short_hash(&format!("{v:?}")));
                }
            }
            _ => {
                out.insert(key.clone(), short_hash(&format!("{value:?}")));
            }
        }
    }
    out
}

fn short_hash(src: &str) -> String {
    // FNV-1a: a version tag, not a security property.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in src.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Validator<'_> {
    fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: self.origin.to_owned(),
            line: self.map.line_of_path(path),
            key: path.to_string(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &KeyPath, value: Option<&str>, default: Duration) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(m)) => {
                self.err(path, m);
                default
            }
        }
    }

    fn positive_duration(
        &mut self,
        path: &KeyPath,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d.is_zero() {
            self.err(path, "must be more than zero");
            return default;
        }
        d
    }

    fn count(
        &mut self,
        path: &KeyPath,
        value: Option<i64>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> u64 {
        match value {
            None => default,
            Some(n) if n >= 0 && range.contains(&(n as u64)) => n as u64,
            Some(n) => {
                self.err(
                    path,
                    format!(
                        "{n} is out of range ({} ..= {})",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    fn addr(&mut self, path: &KeyPath, value: Option<&str>, default: &str) -> SocketAddr {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
        match value.unwrap_or(default).parse() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "invalid socket address {:?} (write e.g. \"127.0.0.1:8080\")",
                        value.unwrap_or(default)
                    ),
                );
                fallback
            }
        }
    }

    fn config(&mut self, raw: RawConfig, src: &str) -> Config {
        let root = KeyPath::root();
        let s = root.key("server");
        let server = ServerSettings {
            listen: self.addr(
                &s.key("listen"),
                raw.server.listen.as_deref(),
                "127.0.0.1:8080",
            ),
            admin_listen: self.addr(
                &s.key("admin_listen"),
                raw.server.admin_listen.as_deref(),
                "127.0.0.1:9090",
            ),
            max_body_bytes: match raw.server.max_body_bytes {
                None => 4 * 1024 * 1024,
                Some(n) if (1..=1 << 30).contains(&n) => n as usize,
                Some(n) => {
                    self.err(
                        &s.key("max_body_bytes"),
                        format!("{n} is out of range (1 ..= 1073741824)"),
                    );
                    4 * 1024 * 1024
                }
            },
            drain_timeout: self.duration(
                &s.key("drain_timeout"),
                raw.server.drain_timeout.as_deref(),
                Duration::from_secs(30),
            ),
            gate_interval: self.duration(
                &s.key("gate_interval"),
                raw.server.gate_interval.as_deref(),
                Duration::from_secs(5),
            ),
            reload_check_interval: self.duration(
                &s.key("reload_check_interval"),
                raw.server.reload_check_interval.as_deref(),
                Duration::from_secs(2),
            ),
            reload_settle: self.duration(
                &s.key("reload_settle"),
                raw.server.reload_settle.as_deref(),
                Duration::from_secs(1),
            ),
            drain_delay: self.duration(
                &s.key("drain_delay"),
                raw.server.drain_delay.as_deref(),
                Duration::from_secs(5),
            ),
            header_timeout: self.positive_duration(
                &s.key("header_timeout"),
                raw.server.header_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            idle_timeout: self.positive_duration(
                &s.key("idle_timeout"),
                raw.server.idle_timeout.as_deref(),
                Duration::from_secs(75),
            ),
            body_timeout: self.positive_duration(
                &s.key("body_timeout"),
                raw.server.body_timeout.as_deref(),
                Duration::from_secs(30),
            ),
            max_connections: self.count(
                &s.key("max_connections"),
                raw.server.max_connections,
                10_000,
                1..=10_000_000,
            ) as usize,
            linger_timeout: self.duration(
                &s.key("linger_timeout"),
                raw.server.linger_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            linger_max_bytes: self.count(
                &s.key("linger_max_bytes"),
                raw.server.linger_max_bytes,
                64 * 1024 * 1024,
                0..=1 << 40,
            ),
        };
        let identity = self.identity(&raw);
        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            if let Some(p) = self.provider(&root.key("providers").key(name), name, p) {
                providers.insert(name.clone(), Arc::new(p));
            }
        }
        let passthrough = raw.passthrough.as_ref().and_then(|p| {
            let found = providers.get(&p.provider).cloned();
            if found.is_none() && !raw.providers.contains_key(&p.provider) {
                self.err(
                    &root.key("passthrough").key("provider"),
                    format!(
                        "unknown provider {:?}{}",
                        p.provider,
                        known(raw.providers.keys())
                    ),
                );
            }
            found
        });
        let prompts: BTreeMap<String, Arc<str>> = raw
            .prompts
            .iter()
            .map(|(k, v)| (k.clone(), Arc::from(v.as_str())))
            .collect();
        for (name, list) in &raw.tool_policies {
            if name == "all" || name == "none" {
                self.err(
                    &root.key("tool_policies").key(name),
                    format!("{name:?} is built in and cannot be redefined"),
                );
            }
            if list.iter().any(|t| t.is_empty()) {
                self.err(
                    &root.key("tool_policies").key(name),
                    "tool names must not be empty",
                );
            }
        }
        let mut audiences = BTreeMap::new();
        for (name, a) in &raw.audiences {
            match Condition::from_json(&a.conditions) {
                Ok(c) => {
                    audiences.insert(name.clone(), Arc::new(c));
                }
                Err(m) => self.err(&root.key("audiences").key(name).key("conditions"), m),
            }
        }
        let default_responder =
            Arc::new(self.responder(&root.key("fallback"), raw.fallback.as_ref(), None));
        let ctx = FlagContext {
            default_responder: &default_responder,
            raw: &raw,
            providers: &providers,
            prompts: &prompts,
            audiences: &audiences,
        };
        let mut flags = Vec::new();
        let mut flag_index = HashMap::new();
        for (key, f) in &raw.flags {
            if let Some(flag) = self.flag(&ctx, key, f) {
                flag_index.insert(key.clone(), flags.len());
                flags.push(Arc::new(flag));
            }
        }
        let alerts = self.alerts(&raw, &flag_index);
        let catalog = self.catalog(&raw);
        let evals = self.evals(
            &raw.evals,
            &evals::EvalContext {
                providers: &providers,
                prompts: &prompts,
                flag_index: &flag_index,
                catalog: &catalog,
            },
        );
        let mut prices = BTreeMap::new();
        for (model, p) in &raw.prices {
            if !(p.input_per_million >= 0.0
                && p.output_per_million >= 0.0
                && p.input_per_million.is_finite()
                && p.output_per_million.is_finite())
            {
                self.err(
                    &root.key("prices").key(model),
                    "prices must be finite and not negative",
                );
            }
            prices.insert(model.clone(), (p.input_per_million, p.output_per_million));
        }
        let experiment_policy = self.experiment_policy(&raw);
        let bandits = self.bandits(&raw, &flags, &catalog);
        let admin_tokens = self.admin(&raw);
        let fleet = self.fleet(&raw, &flags, &alerts);
        let telemetry = self.telemetry(&raw, &flags, &alerts);
        let state_url = self.state_url(&raw);
        let ofrep = crate::api::ofrep::OfrepSettings {
            tokens: self.tokens(&root.key("ofrep"), &raw.ofrep.tokens),
            exposures: raw.ofrep.exposures.unwrap_or(false),
        };
        let keys = self.keys(&raw);
        let optimizely =
            raw.sources.optimizely.as_ref().and_then(|o| {
                self.optimizely(&root.key("sources").key("optimizely"), o, &providers)
            });
        let cache = self.cache(&raw.cache);
        let export = self.export(&raw.export);
        Config {
            cache,
            export,
            origin: self.origin.to_owned(),
            hash: short_hash(src),
            section_digests: section_digests(src),
            server,
            identity,
            passthrough,
            providers,
            prompt_count: prompts.len(),
            audience_count: audiences.len(),
            flags,
            flag_index,
            state_url,
            admin_tokens,
            alerts,
            catalog,
            prices,
            experiment_policy,
            bandits,
            fleet,
            prompts,
            tool_policies: raw.tool_policies.clone(),
            default_responder,
            ofrep,
            optimizely,
            sources_revision: None,
            telemetry,
            evals,
            keys,
        }
    }
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if list.is_empty() {
        " (none are defined)".into()
    } else {
        format!(" (known: {})", list.join(", "))
    }
}

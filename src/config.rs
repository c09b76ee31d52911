//! `proxy.toml`: parsed into raw serde types ([`raw`]), then validated into a [`Config`] that
//! cannot hold a dangling reference. Every error names the file, the line and the key.

mod fleet;
mod locate;
mod raw;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

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
}

/// `[identity]`: where the bucketing id and attributes come from.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Sources of the bucketing id; the first present wins.
    pub sources: Vec<IdSource>,
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

/// One validation error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub origin: String,
    /// The 1-based line, when it could be found.
    pub line: Option<usize>,
    /// The key path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// Every error found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

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
        let admin_tokens = self.admin(&raw);
        let fleet = self.fleet(&raw, &flags, &alerts);
        let state_url = self.state_url(&raw);
        let ofrep = crate::api::ofrep::OfrepSettings {
            tokens: self.tokens(&root.key("ofrep"), &raw.ofrep.tokens),
            exposures: raw.ofrep.exposures.unwrap_or(false),
        };
        let optimizely =
            raw.sources.optimizely.as_ref().and_then(|o| {
                self.optimizely(&root.key("sources").key("optimizely"), o, &providers)
            });
        Config {
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
            fleet,
            prompts,
            tool_policies: raw.tool_policies.clone(),
            default_responder,
            ofrep,
            optimizely,
            sources_revision: None,
        }
    }

    fn optimizely(
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

    fn identity(&mut self, raw: &RawConfig) -> IdentitySettings {
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
        IdentitySettings {
            sources,
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

    fn provider(&mut self, path: &KeyPath, name: &str, p: &RawProvider) -> Option<Provider> {
        let total = self.duration(
            &path.key("timeout"),
            p.timeout.as_deref(),
            Duration::from_secs(120),
        );
        let timeouts = Timeouts {
            connect: self.duration(
                &path.key("connect_timeout"),
                p.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            first_byte: self.duration(
                &path.key("first_byte_timeout"),
                p.first_byte_timeout.as_deref(),
                total,
            ),
            idle: self.duration(&path.key("idle_timeout"), p.idle_timeout.as_deref(), total),
            total,
        };
        let retry = self.retry(&path.key("retry"), p.retry.as_ref());
        let circuit = self.circuit(&path.key("circuit"), p.circuit.as_ref());
        let mock_only = [
            ("latency", p.latency.is_some()),
            ("stream_chunks", p.stream_chunks.is_some()),
            ("chunk_interval", p.chunk_interval.is_some()),
        ];
        let kind = match p.kind.as_str() {
            "mock" => {
                for (key, set) in [
                    ("base_url", p.base_url.is_some()),
                    ("api_key_env", p.api_key_env.is_some()),
                    ("default_max_tokens", p.default_max_tokens.is_some()),
                    ("api_version", p.api_version.is_some()),
                ] {
                    if set {
                        self.err(&path.key(key), "not used by the mock provider");
                    }
                }
                let stream_chunks = match p.stream_chunks {
                    None => 4,
                    Some(n) if (1..=10_000).contains(&n) => n as u32,
                    Some(n) => {
                        self.err(
                            &path.key("stream_chunks"),
                            format!("{n} is out of range (1 ..= 10000)"),
                        );
                        4
                    }
                };
                ProviderKind::Mock(MockSettings {
                    latency: self.duration(
                        &path.key("latency"),
                        p.latency.as_deref(),
                        Duration::ZERO,
                    ),
                    chunk_interval: self.duration(
                        &path.key("chunk_interval"),
                        p.chunk_interval.as_deref(),
                        Duration::ZERO,
                    ),
                    stream_chunks,
                })
            }
            "openai" | "anthropic" => {
                for (key, set) in mock_only {
                    if set {
                        self.err(&path.key(key), "only the mock provider takes this key");
                    }
                }
                if p.kind == "openai" {
                    for (key, set) in [
                        ("default_max_tokens", p.default_max_tokens.is_some()),
                        ("api_version", p.api_version.is_some()),
                    ] {
                        if set {
                            self.err(&path.key(key), "only the anthropic provider takes this key");
                        }
                    }
                    ProviderKind::OpenAi(self.openai(path, p)?)
                } else {
                    ProviderKind::Anthropic(self.anthropic(path, p)?)
                }
            }
            other => {
                self.err(&path.key("kind"), format!("unknown provider kind {other:?} (one of \"openai\", \"anthropic\", \"mock\")"));
                return None;
            }
        };
        let http2_prior_knowledge = p.http2_prior_knowledge.unwrap_or(false);
        if http2_prior_knowledge {
            let key = path.key("http2_prior_knowledge");
            if matches!(kind, ProviderKind::Mock(_)) {
                self.err(&key, "not used by the mock provider");
            } else if p
                .base_url
                .as_deref()
                .is_none_or(|u| !u.to_ascii_lowercase().starts_with("http://"))
            {
                self.err(
                    &key,
                    "only for plain-text http:// providers (over https:// HTTP/2 is negotiated by ALPN)",
                );
            }
        }
        let apis = self.apis(&path.key("apis"), &kind, p.apis.as_deref());
        Some(Provider {
            name: name.to_owned(),
            kind,
            timeouts,
            retry,
            circuit,
            http2_prior_knowledge,
            apis,
        })
    }

    /// `apis`: the wire formats a provider accepts as they are. Defaults: chat and embeddings
    /// for OpenAI-compatible endpoints and the mock, messages for Anthropic.
    fn apis(
        &mut self,
        path: &KeyPath,
        kind: &ProviderKind,
        raw: Option<&[String]>,
    ) -> Vec<WireFormat> {
        let possible: &[WireFormat] = match kind {
            ProviderKind::Mock(_) => &[WireFormat::Chat, WireFormat::Embeddings],
            ProviderKind::OpenAi(_) => &[
                WireFormat::Chat,
                WireFormat::Responses,
                WireFormat::Embeddings,
            ],
            ProviderKind::Anthropic(_) => &[WireFormat::Messages],
        };
        let Some(raw) = raw else {
            return match kind {
                ProviderKind::Anthropic(_) => vec![WireFormat::Messages],
                _ => vec![WireFormat::Chat, WireFormat::Embeddings],
            };
        };
        let mut apis = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            match WireFormat::parse(name) {
                Some(f) if possible.contains(&f) => {
                    if !apis.contains(&f) {
                        apis.push(f);
                    }
                }
                Some(f) => self.err(
                    &path.index(i),
                    format!(
                        "a {} provider cannot accept {:?} (it accepts {})",
                        kind.as_str(),
                        f.as_str(),
                        possible.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ),
                None => self.err(
                    &path.index(i),
                    format!("unknown API {name:?} (one of \"chat\", \"responses\", \"messages\", \"embeddings\")"),
                ),
            }
        }
        apis
    }

    fn retry(&mut self, path: &KeyPath, r: Option<&RawRetry>) -> RetryPolicy {
        let default = RawRetry::default();
        let r = r.unwrap_or(&default);
        let retries = match r.attempts {
            None => 2,
            Some(n) if (1..=10).contains(&n) => (n - 1) as u32,
            Some(n) => {
                self.err(
                    &path.key("attempts"),
                    format!("{n} is out of range (1 ..= 10 attempts in all)"),
                );
                2
            }
        };
        let budget = match r.budget {
            None => 0.2,
            Some(b) if (0.0..=1.0).contains(&b) => b,
            Some(b) => {
                self.err(
                    &path.key("budget"),
                    format!("{b} is out of range (0 ..= 1)"),
                );
                0.2
            }
        };
        RetryPolicy {
            retries,
            backoff: self.duration(
                &path.key("backoff"),
                r.backoff.as_deref(),
                Duration::from_millis(100),
            ),
            max_backoff: self.duration(
                &path.key("max_backoff"),
                r.max_backoff.as_deref(),
                Duration::from_secs(2),
            ),
            retry_after_cap: self.duration(
                &path.key("retry_after_cap"),
                r.retry_after_cap.as_deref(),
                Duration::from_secs(5),
            ),
            budget,
        }
    }

    fn circuit(&mut self, path: &KeyPath, c: Option<&RawCircuit>) -> CircuitPolicy {
        let default = RawCircuit::default();
        let c = c.unwrap_or(&default);
        let error_rate = match c.error_rate {
            None => 0.5,
            Some(r) if r > 0.0 && r <= 1.0 => r,
            Some(r) => {
                self.err(
                    &path.key("error_rate"),
                    format!("{r} is out of range (0 < rate <= 1)"),
                );
                0.5
            }
        };
        let min_requests = match c.min_requests {
            None => 20,
            Some(n) if (1..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    &path.key("min_requests"),
                    format!("{n} is out of range (1 ..= 1000000)"),
                );
                20
            }
        };
        CircuitPolicy {
            enabled: c.enabled.unwrap_or(true),
            error_rate,
            min_requests,
            window: self.duration(
                &path.key("window"),
                c.window.as_deref(),
                Duration::from_secs(30),
            ),
            cooldown: self.duration(
                &path.key("cooldown"),
                c.cooldown.as_deref(),
                Duration::from_secs(10),
            ),
        }
    }

    fn url(
        &mut self,
        path: &KeyPath,
        base: &str,
        suffix: &str,
        query: &BTreeMap<String, String>,
    ) -> Option<Uri> {
        let base = base.trim_end_matches('/');
        let mut url = format!("{base}{suffix}");
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={v}"));
        }
        match url.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() =>
            {
                Some(u)
            }
            _ => {
                self.err(
                    &path.key("base_url"),
                    format!("invalid URL {base:?}: write an http:// or https:// URL"),
                );
                None
            }
        }
    }

    fn secret(&mut self, path: &KeyPath, var: &str, prefix: &str) -> Option<Secret> {
        match (self.env)(var) {
            None => {
                self.err(
                    &path.key("api_key_env"),
                    format!("the environment variable {var} is not set"),
                );
                None
            }
            Some(key) => match HeaderValue::from_str(&format!("{prefix}{}", key.trim())) {
                Ok(v) => Some(Secret::new(v)),
                Err(_) => {
                    // Never echo the value: it is a secret.
                    self.err(
                        &path.key("api_key_env"),
                        format!("the value of {var} is not a valid header value"),
                    );
                    None
                }
            },
        }
    }

    fn extra_headers(&mut self, path: &KeyPath, p: &RawProvider) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        for (k, v) in &p.headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => self.err(&path.key("headers").key(k), "invalid header name or value"),
            }
        }
        headers
    }

    fn openai(&mut self, path: &KeyPath, p: &RawProvider) -> Option<OpenAiSettings> {
        let Some(base) = p.base_url.as_deref() else {
            self.err(path, "an \"openai\" provider needs base_url");
            return None;
        };
        let chat_url = self.url(path, base, "/chat/completions", &p.query);
        let auth_header = match HeaderName::from_bytes(
            p.auth_header
                .as_deref()
                .unwrap_or("authorization")
                .as_bytes(),
        ) {
            Ok(h) => Some(h),
            Err(_) => {
                self.err(&path.key("auth_header"), "invalid header name");
                None
            }
        };
        let auth = match (&p.api_key_env, auth_header) {
            (Some(var), Some(h)) => {
                let prefix = if h == http::header::AUTHORIZATION {
                    "Bearer "
                } else {
                    ""
                };
                self.secret(path, var, prefix).map(|s| (h, s))
            }
            _ => None,
        };
        let headers = self.extra_headers(path, p);
        let responses_url = self.url(path, base, "/responses", &p.query);
        let embeddings_url = self.url(path, base, "/embeddings", &p.query);
        Some(OpenAiSettings {
            chat_url: chat_url?,
            responses_url: responses_url?,
            embeddings_url: embeddings_url?,
            base_url: base.trim_end_matches('/').to_owned(),
            query: p
                .query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
            auth,
            headers,
        })
    }

    fn anthropic(&mut self, path: &KeyPath, p: &RawProvider) -> Option<AnthropicSettings> {
        if p.auth_header.is_some() {
            self.err(
                &path.key("auth_header"),
                "the anthropic provider always sends x-api-key",
            );
        }
        let base = p
            .base_url
            .as_deref()
            .unwrap_or("https://api.anthropic.com/v1");
        let messages_url = self.url(path, base, "/messages", &p.query);
        let api_key = p
            .api_key_env
            .as_deref()
            .and_then(|var| self.secret(path, var, ""));
        let version = HeaderValue::from_str(p.api_version.as_deref().unwrap_or("2023-06-01"))
            .ok()
            .or_else(|| {
                self.err(&path.key("api_version"), "invalid header value");
                None
            });
        let default_max_tokens = match p.default_max_tokens {
            None => 1024,
            Some(n) if (1..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                self.err(
                    &path.key("default_max_tokens"),
                    format!("{n} is out of range (1 ..= 1000000)"),
                );
                1024
            }
        };
        let headers = self.extra_headers(path, p);
        let count_tokens_url = self.url(path, base, "/messages/count_tokens", &p.query);
        Some(AnthropicSettings {
            messages_url: messages_url?,
            count_tokens_url: count_tokens_url?,
            api_key,
            version: version?,
            default_max_tokens,
            headers,
        })
    }

    fn flag(&mut self, ctx: &FlagContext<'_>, key: &str, f: &RawFlag) -> Option<Flag> {
        let path = KeyPath::root().key("flags").key(key);
        let errors_before = self.errors.len();
        if f.variations.is_empty() {
            self.err(
                &path,
                "a flag needs at least one variation under [flags.KEY.variations.NAME]",
            );
            return None;
        }
        let keys: Vec<&String> = f.variations.keys().collect();
        let index_of = |name: &str| keys.iter().position(|k| k.as_str() == name);
        let mut variations = Vec::new();
        for (vkey, v) in &f.variations {
            if let Some(var) =
                self.variation(ctx, &path.key("variations").key(vkey), vkey, v, &index_of)
            {
                variations.push(var);
            }
        }
        let off_variation = match f.off_variation.as_deref() {
            Some(name) => index_of(name).unwrap_or_else(|| {
                self.err(
                    &path.key("off_variation"),
                    format!("unknown variation {name:?}{}", known(keys.iter().copied())),
                );
                0
            }),
            None => {
                self.err(
                    &path,
                    "off_variation is required: the variation served while the flag is off",
                );
                0
            }
        };
        let stable_variation = match f.stable_variation.as_deref() {
            Some(name) => index_of(name).unwrap_or_else(|| {
                self.err(
                    &path.key("stable_variation"),
                    format!("unknown variation {name:?}{}", known(keys.iter().copied())),
                );
                0
            }),
            None => off_variation,
        };
        let system_prompt_mode = match f.system_prompt_mode.as_deref() {
            None | Some("replace") => PromptMode::Replace,
            Some("insert") => PromptMode::Insert,
            Some(other) => {
                self.err(
                    &path.key("system_prompt_mode"),
                    format!("{other:?} is not one of \"replace\", \"insert\""),
                );
                PromptMode::Replace
            }
        };
        let rules = self.rules(ctx, &path, f, &index_of);
        let responder = match &f.fallback {
            None => ctx.default_responder.clone(),
            Some(r) => Arc::new(self.responder(
                &path.key("fallback"),
                Some(r),
                Some(ctx.default_responder),
            )),
        };
        if self.errors.len() > errors_before {
            return None;
        }
        self.fallback_chains(&path, &variations, stable_variation);
        if self.errors.len() > errors_before {
            return None;
        }
        let experiment_rule = match &f.experiment_rule {
            Some(id) => {
                let found = rules.iter().position(|r| &r.id == id);
                if found.is_none() {
                    self.err(&path.key("experiment_rule"), format!("unknown rule {id:?}"));
                }
                found
            }
            None => rules.iter().position(|r| {
                let mut vs: Vec<usize> = r.allocation.iter().filter_map(|a| a.variation).collect();
                vs.sort_unstable();
                vs.dedup();
                r.audience.is_none() && vs.len() >= 2
            }),
        };
        Some(Flag {
            experiment_rule,
            key: key.to_owned(),
            description: f.description.clone(),
            enabled: f.enabled.unwrap_or(true),
            off_variation,
            stable_variation,
            system_prompt_mode,
            force_fallback: f.force_fallback.unwrap_or(false),
            responder,
            variations,
            rules,
            bucketing_id_attribute: None,
        })
    }

    fn rules(
        &mut self,
        ctx: &FlagContext<'_>,
        path: &KeyPath,
        f: &RawFlag,
        index_of: &dyn Fn(&str) -> Option<usize>,
    ) -> Vec<Rule> {
        if f.rules.is_empty() {
            self.err(path, "a flag needs rules, the last one being \"everyone else\" (no audience): add [[flags.KEY.rules]]");
            return Vec::new();
        }
        let mut rules = Vec::new();
        let mut seen = Vec::new();
        for (i, r) in f.rules.iter().enumerate() {
            let rp = path.key("rules").index(i);
            if r.id.is_empty() {
                self.err(
                    &rp.key("id"),
                    "a rule id must not be empty (it salts the hash)",
                );
            } else if seen.contains(&r.id) {
                self.err(&rp.key("id"), format!("duplicate rule id {:?}", r.id));
            }
            seen.push(r.id.clone());
            let audience = match &r.audience {
                None => None,
                Some(name) => match ctx.audiences.get(name) {
                    Some(c) => Some((name.clone(), c.clone())),
                    None => {
                        if !ctx.raw.audiences.contains_key(name) {
                            self.err(
                                &rp.key("audience"),
                                format!(
                                    "unknown audience {name:?}{}",
                                    known(ctx.raw.audiences.keys())
                                ),
                            );
                        }
                        None
                    }
                },
            };
            if i + 1 == f.rules.len() && r.audience.is_some() {
                self.err(&rp.key("audience"), "the last rule is \"everyone else\" and must not have an audience: add a final rule without one");
            }
            let rollout = r
                .rollout
                .as_ref()
                .and_then(|ro| self.rollout(&rp.key("rollout"), ro, index_of));
            if r.rollout.is_some() && !r.allocation.is_empty() {
                self.err(
                    &rp.key("rollout"),
                    "a rule has either an allocation or a rollout, not both",
                );
            }
            if r.allocation.is_empty() && r.rollout.is_none() {
                self.err(
                    &rp.key("allocation"),
                    "an allocation needs at least one range (or give the rule a rollout)",
                );
            }
            let mut allocation = Vec::new();
            let mut prev: i64 = 0;
            for (j, range) in r.allocation.iter().enumerate() {
                let ap = rp.key("allocation").index(j);
                if !(0..=i64::from(BUCKETS)).contains(&range.end) {
                    self.err(
                        &ap.key("end"),
                        format!("{} is out of range (0 ..= 10000)", range.end),
                    );
                    continue;
                }
                if range.end < prev {
                    self.err(
                        &ap.key("end"),
                        format!(
                            "ranges must be in increasing order: end {} comes after end {prev}",
                            range.end
                        ),
                    );
                }
                prev = range.end;
                let variation = match range.variation.as_deref() {
                    None | Some("") => None,
                    Some(name) => match index_of(name) {
                        Some(v) => Some(v),
                        None => {
                            self.err(&ap.key("variation"), format!("unknown variation {name:?}"));
                            None
                        }
                    },
                };
                allocation.push(Range {
                    variation,
                    end: range.end as u32,
                });
            }
            rules.push(Rule {
                id: r.id.clone(),
                audience,
                allocation,
                rollout,
                datafile: None,
            });
        }
        rules
    }

    fn rollout(
        &mut self,
        path: &KeyPath,
        r: &RawRollout,
        index_of: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Rollout> {
        let variation = match index_of(&r.variation) {
            Some(v) => v,
            None => {
                self.err(
                    &path.key("variation"),
                    format!("unknown variation {:?}", r.variation),
                );
                return None;
            }
        };
        if r.stages.is_empty() {
            self.err(
                &path.key("stages"),
                "a rollout needs at least one stage (percent of traffic)",
            );
            return None;
        }
        let mut stages = Vec::new();
        let mut prev = -1.0;
        for (i, pct) in r.stages.iter().enumerate() {
            if !(0.0..=100.0).contains(pct) {
                self.err(
                    &path.key("stages").index(i),
                    format!("{pct} is out of range (0 ..= 100 percent)"),
                );
                return None;
            }
            if *pct <= prev {
                self.err(
                    &path.key("stages").index(i),
                    "stages must grow: each one larger than the one before",
                );
                return None;
            }
            prev = *pct;
            stages.push((pct * 100.0).round() as u32);
        }
        let initial_stage = match r.initial_stage {
            None => 0,
            Some(n) if n >= 0 && (n as usize) < stages.len() => n as u32,
            Some(n) => {
                self.err(
                    &path.key("initial_stage"),
                    format!("{n} is not a stage index (0 ..= {})", stages.len() - 1),
                );
                0
            }
        };
        let g = r.gate.as_ref();
        let gp = path.key("gate");
        let default = RawGate::default();
        let g = g.unwrap_or(&default);
        let rate = |v: &mut Self, key: &str, x: Option<f64>| -> Option<f64> {
            match x {
                Some(x) if !(0.0..=1.0).contains(&x) => {
                    v.err(&gp.key(key), format!("{x} is out of range (0 ..= 1)"));
                    None
                }
                other => other,
            }
        };
        let count = |v: &mut Self, key: &str, x: Option<i64>, default: u64| -> u64 {
            match x {
                None => default,
                Some(n) if n >= 0 => n as u64,
                Some(n) => {
                    v.err(&gp.key(key), format!("{n} must not be negative"));
                    default
                }
            }
        };
        let gate = Gate {
            min_requests: count(self, "min_requests", g.min_requests, 100),
            hold: self.duration(&gp.key("hold"), g.hold.as_deref(), Duration::from_secs(600)),
            max_error_rate: rate(self, "max_error_rate", g.max_error_rate),
            max_fallback_rate: rate(self, "max_fallback_rate", g.max_fallback_rate),
            max_p95_seconds: g.max_p95_seconds,
            max_p95_ratio: g.max_p95_ratio,
            rollback_error_rate: rate(self, "rollback_error_rate", g.rollback_error_rate),
            rollback_fallback_rate: rate(self, "rollback_fallback_rate", g.rollback_fallback_rate),
            rollback_min_requests: count(
                self,
                "rollback_min_requests",
                g.rollback_min_requests,
                20,
            ),
            source: self.source(&gp.key("source"), g.source.as_deref()),
            window: g
                .window
                .as_deref()
                .map(|w| self.duration(&gp.key("window"), Some(w), Duration::ZERO)),
        };
        for (key, v) in [
            ("max_p95_seconds", gate.max_p95_seconds),
            ("max_p95_ratio", gate.max_p95_ratio),
        ] {
            if v.is_some_and(|x| !(x > 0.0 && x.is_finite())) {
                self.err(&gp.key(key), "must be a positive number");
            }
        }
        Some(Rollout {
            variation,
            stages,
            initial_stage,
            auto_advance: r.auto_advance.unwrap_or(false),
            gate,
        })
    }

    fn variation(
        &mut self,
        ctx: &FlagContext<'_>,
        path: &KeyPath,
        key: &str,
        v: &RawVariation,
        index_of: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Variation> {
        let provider = match ctx.providers.get(&v.provider) {
            Some(p) => Some(p.clone()),
            None => {
                if !ctx.raw.providers.contains_key(&v.provider) {
                    self.err(
                        &path.key("provider"),
                        format!(
                            "unknown provider {:?}{}",
                            v.provider,
                            known(ctx.raw.providers.keys())
                        ),
                    );
                }
                None
            }
        };
        if v.model_id.trim().is_empty() {
            self.err(&path.key("model_id"), "model_id must not be empty");
        }
        let system_prompt = match &v.system_prompt_variant {
            None => None,
            Some(name) => match ctx.prompts.get(name) {
                Some(text) => Some((name.clone(), text.clone())),
                None => {
                    self.err(
                        &path.key("system_prompt_variant"),
                        format!("unknown prompt {name:?}{}", known(ctx.prompts.keys())),
                    );
                    None
                }
            },
        };
        if let Some(t) = v.temperature {
            if !(0.0..=2.0).contains(&t) {
                self.err(
                    &path.key("temperature"),
                    format!("{t} is out of range (0 ..= 2)"),
                );
            }
        }
        let token_budget = match v.token_budget {
            None => None,
            Some(n) if (1..=10_000_000).contains(&n) => Some(n as u32),
            Some(n) => {
                self.err(
                    &path.key("token_budget"),
                    format!("{n} is out of range (1 ..= 10000000)"),
                );
                None
            }
        };
        let tool_policy = match v.tool_policy.as_deref() {
            None | Some("all") => ToolPolicy::All,
            Some("none") => ToolPolicy::None,
            Some(name) => match ctx.raw.tool_policies.get(name) {
                Some(tools) => ToolPolicy::Allow {
                    name: name.to_owned(),
                    tools: tools.clone(),
                },
                None => {
                    self.err(
                        &path.key("tool_policy"),
                        format!(
                            "unknown tool policy {name:?} (\"all\", \"none\"{})",
                            ctx.raw
                                .tool_policies
                                .keys()
                                .map(|k| format!(", {k:?}"))
                                .collect::<String>()
                        ),
                    );
                    ToolPolicy::All
                }
            },
        };
        let fallback_behavior = match v.fallback_behavior.as_deref() {
            None | Some("error") => FallbackBehavior::Error,
            Some("rule-based") => FallbackBehavior::RuleBased,
            Some("stable") => FallbackBehavior::Stable,
            Some(other) => match other.strip_prefix("variation:") {
                Some(target) => match index_of(target) {
                    Some(i) if target != key => FallbackBehavior::Variation(i),
                    Some(_) => {
                        self.err(
                            &path.key("fallback_behavior"),
                            "a variation cannot fall back to itself",
                        );
                        FallbackBehavior::Error
                    }
                    None => {
                        self.err(
                            &path.key("fallback_behavior"),
                            format!("unknown variation {target:?}"),
                        );
                        FallbackBehavior::Error
                    }
                },
                None => {
                    self.err(&path.key("fallback_behavior"), format!("{other:?} is not one of \"rule-based\", \"stable\", \"variation:<key>\", \"error\""));
                    FallbackBehavior::Error
                }
            },
        };
        for reserved in [
            "provider",
            "model_id",
            "system_prompt_variant",
            "temperature",
            "token_budget",
            "tool_policy",
            "retrieval_profile",
            "fallback_behavior",
        ] {
            if v.variables.contains_key(reserved) {
                self.err(&path.key("variables").key(reserved), "this name is a built-in variable of the variation; set it on the variation itself");
            }
        }
        let mut variables = serde_json::Map::new();
        variables.insert("provider".into(), v.provider.clone().into());
        variables.insert("model_id".into(), v.model_id.clone().into());
        variables.insert(
            "system_prompt_variant".into(),
            v.system_prompt_variant.clone().into(),
        );
        variables.insert("temperature".into(), v.temperature.into());
        variables.insert("token_budget".into(), v.token_budget.into());
        variables.insert("tool_policy".into(), tool_policy.name().into());
        variables.insert(
            "fallback_behavior".into(),
            v.fallback_behavior
                .clone()
                .unwrap_or_else(|| "error".into())
                .into(),
        );
        variables.insert(
            "retrieval_profile".into(),
            v.retrieval_profile.clone().into(),
        );
        for (k, val) in &v.variables {
            variables.insert(k.clone(), val.clone());
        }
        let provider = provider?;
        let base = provider.timeouts;
        let timeouts = Timeouts {
            connect: base.connect,
            first_byte: self.duration(
                &path.key("first_byte_timeout"),
                v.first_byte_timeout.as_deref(),
                base.first_byte,
            ),
            idle: self.duration(
                &path.key("idle_timeout"),
                v.idle_timeout.as_deref(),
                base.idle,
            ),
            total: self.duration(&path.key("timeout"), v.timeout.as_deref(), base.total),
        };
        Some(Variation {
            key: key.to_owned(),
            force_fallback: v.force_fallback.unwrap_or(false),
            timeouts,
            provider,
            model_id: v.model_id.clone(),
            system_prompt,
            temperature: v.temperature,
            token_budget,
            tool_policy,
            fallback_behavior,
            retrieval_profile: v.retrieval_profile.clone(),
            variables: serde_json::Value::Object(variables),
        })
    }

    fn responder(
        &mut self,
        path: &KeyPath,
        r: Option<&RawResponder>,
        base: Option<&Arc<Responder>>,
    ) -> Responder {
        let mut rules = Vec::new();
        if let Some(r) = r {
            for (i, rule) in r.rules.iter().enumerate() {
                match regex::RegexBuilder::new(&rule.pattern)
                    .size_limit(1 << 20)
                    .build()
                {
                    Ok(re) => rules.push((re, rule.reply.clone())),
                    Err(e) => self.err(
                        &path.key("rules").index(i).key("pattern"),
                        format!("invalid regex: {e}"),
                    ),
                }
            }
        }
        let default_reply = r
            .and_then(|r| r.default_reply.clone())
            .or_else(|| base.map(|b| b.reply("").to_owned()))
            .unwrap_or_else(|| crate::fallback::DEFAULT_REPLY.to_owned());
        Responder::new(rules, default_reply)
    }

    /// Fallback chains must end (rule-based or error) without visiting a variation twice.
    fn fallback_chains(&mut self, path: &KeyPath, variations: &[Variation], stable: usize) {
        for (start, v) in variations.iter().enumerate() {
            let mut seen = vec![start];
            let mut current = &v.fallback_behavior;
            loop {
                let next = match current {
                    FallbackBehavior::Stable => stable,
                    FallbackBehavior::Variation(i) => *i,
                    FallbackBehavior::RuleBased | FallbackBehavior::Error => break,
                };
                if seen.contains(&next) {
                    seen.push(next);
                    let chain: Vec<&str> = seen
                        .iter()
                        .filter_map(|i| variations.get(*i))
                        .map(|v| v.key.as_str())
                        .collect();
                    self.err(
                        &path.key("variations").key(&v.key).key("fallback_behavior"),
                        format!("the fallback chain loops: {} (end it with \"rule-based\" or \"error\")", chain.join(" -> ")),
                    );
                    break;
                }
                seen.push(next);
                match variations.get(next) {
                    Some(n) => current = &n.fallback_behavior,
                    None => break,
                }
            }
        }
    }

    fn alerts(&mut self, raw: &RawConfig, flags: &HashMap<String, usize>) -> Vec<AlertRule> {
        let mut out = Vec::new();
        let mut names = Vec::new();
        for (i, a) in raw.alerts.iter().enumerate() {
            let path = KeyPath::root().key("alerts").index(i);
            let before = self.errors.len();
            if a.name.trim().is_empty() {
                self.err(&path.key("name"), "an alert needs a name");
            } else if names.contains(&a.name) {
                self.err(
                    &path.key("name"),
                    format!("duplicate alert name {:?}", a.name),
                );
            }
            names.push(a.name.clone());
            let flag_known = flags.contains_key(&a.flag) || raw.flags.contains_key(&a.flag);
            if !flag_known {
                self.err(&path.key("flag"), format!("unknown flag {:?}", a.flag));
            }
            if let (Some(v), Some(f)) = (&a.variation, raw.flags.get(&a.flag)) {
                if !f.variations.contains_key(v) {
                    self.err(
                        &path.key("variation"),
                        format!("unknown variation {v:?} of flag {:?}", a.flag),
                    );
                }
            }
            if a.metric.trim().is_empty() {
                self.err(&path.key("metric"), "an alert needs a metric");
            }
            let (direction, tiers_raw, tiers_key) = match (&a.above, &a.below) {
                (Some(t), None) => (AlertDirection::Above, Some(t), "above"),
                (None, Some(t)) => (AlertDirection::Below, Some(t), "below"),
                _ => {
                    self.err(&path, "an alert needs exactly one of `above` or `below`");
                    (AlertDirection::Above, None, "above")
                }
            };
            let tiers = tiers_raw.map_or([None; 3], |t| [t.info, t.warning, t.critical]);
            if tiers_raw.is_some() && tiers.iter().all(Option::is_none) {
                self.err(
                    &path.key(tiers_key),
                    "give at least one of info, warning, critical",
                );
            }
            // Tiers must be ordered: above → info ≤ warning ≤ critical; below → the reverse.
            let set: Vec<f64> = tiers.iter().flatten().copied().collect();
            let ordered = set.windows(2).all(|w| match direction {
                AlertDirection::Above => w[0] <= w[1],
                AlertDirection::Below => w[0] >= w[1],
            });
            if !ordered || set.iter().any(|x| !x.is_finite()) {
                self.err(&path.key(tiers_key), "thresholds must be finite and ordered info → warning → critical (increasing for `above`, decreasing for `below`)");
            }
            let window = self.duration(
                &path.key("window"),
                a.window.as_deref(),
                Duration::from_secs(300),
            );
            let min_samples = match a.min_samples {
                None => 100,
                Some(n) if n >= 0 => n as u64,
                Some(n) => {
                    self.err(
                        &path.key("min_samples"),
                        format!("{n} must not be negative"),
                    );
                    100
                }
            };
            let mut actions: [Vec<AlertAction>; 3] = Default::default();
            for (tier, list) in &a.actions {
                let Some(t) = ["info", "warning", "critical"]
                    .iter()
                    .position(|x| x == tier)
                else {
                    self.err(
                        &path.key("actions").key(tier),
                        "tiers are info, warning and critical",
                    );
                    continue;
                };
                for action in list {
                    match action.as_str() {
                        "notify" => actions[t].push(AlertAction::Notify),
                        "hold_rollout" => actions[t].push(AlertAction::HoldRollout),
                        "kill" => actions[t].push(AlertAction::Kill),
                        other => self.err(
                            &path.key("actions").key(tier),
                            format!("unknown action {other:?} (notify, hold_rollout, kill)"),
                        ),
                    }
                }
            }
            let mut webhooks = Vec::new();
            for (j, w) in a.webhooks.iter().enumerate() {
                match w.parse::<Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http") | Some("https"))
                            && u.host().is_some() =>
                    {
                        webhooks.push(u)
                    }
                    _ => self.err(&path.key("webhooks").index(j), format!("invalid URL {w:?}")),
                }
            }
            let source = self.source(&path.key("source"), a.source.as_deref());
            if self.errors.len() == before {
                out.push(AlertRule {
                    name: a.name.clone(),
                    flag: a.flag.clone(),
                    variation: a.variation.clone(),
                    metric: a.metric.clone(),
                    direction,
                    tiers,
                    relative_to_control: a.relative_to_control.unwrap_or(false),
                    window,
                    min_samples,
                    actions,
                    webhooks,
                    source,
                });
            }
        }
        out
    }

    fn catalog(&mut self, raw: &RawConfig) -> crate::experiments::catalog::Catalog {
        use crate::experiments::catalog::{Catalog, MetricDef, PerUser};
        let mut catalog = Catalog::default();
        for (name, m) in &raw.metrics {
            let path = KeyPath::root().key("metrics").key(name);
            if catalog.get(name).is_some() {
                self.err(&path, "this metric is built in");
                continue;
            }
            let binary = match m.kind.as_str() {
                "binary" => true,
                "numeric" => false,
                other => {
                    self.err(
                        &path.key("kind"),
                        format!("{other:?} is not one of \"binary\", \"numeric\""),
                    );
                    continue;
                }
            };
            let per_user = match m.per_user.as_deref() {
                None if binary => PerUser::Max,
                None => PerUser::Mean,
                Some("max") => PerUser::Max,
                Some("sum") => PerUser::Sum,
                Some("mean") => PerUser::Mean,
                Some(other) => {
                    self.err(
                        &path.key("per_user"),
                        format!("{other:?} is not one of \"max\", \"sum\", \"mean\""),
                    );
                    continue;
                }
            };
            let (min, max) = if binary {
                (0.0, 1.0)
            } else {
                (m.min.unwrap_or(f64::MIN), m.max.unwrap_or(f64::MAX))
            };
            if min > max {
                self.err(&path, "min is larger than max");
            }
            catalog.0.insert(
                name.clone(),
                MetricDef {
                    name: name.clone(),
                    binary,
                    min,
                    max,
                    allowed: None,
                    per_user,
                    higher_is_better: m.higher_is_better.unwrap_or(true),
                },
            );
        }
        catalog
    }

    fn experiment_policy(&mut self, raw: &RawConfig) -> crate::experiments::results::Policy {
        let mut p = crate::experiments::results::Policy::default();
        let path = KeyPath::root().key("experiments");
        let e = &raw.experiments;
        if let Some(a) = e.alpha {
            if a > 0.0 && a < 1.0 {
                p.alpha = a;
            } else {
                self.err(
                    &path.key("alpha"),
                    format!("{a} is out of range (0 < alpha < 1)"),
                );
            }
        }
        if let Some(r) = e.relative_effect {
            if r > 0.0 && r.is_finite() {
                p.relative_effect = r;
            } else {
                self.err(&path.key("relative_effect"), "must be a positive number");
            }
        }
        for (key, v, slot) in [
            ("min_users", e.min_users, &mut p.min_users),
            ("min_events", e.min_events, &mut p.min_events),
        ] {
            match v {
                Some(n) if n >= 0 => *slot = n as u64,
                Some(n) => self.err(&path.key(key), format!("{n} must not be negative")),
                None => {}
            }
        }
        p
    }

    fn admin(&mut self, raw: &RawConfig) -> Vec<AdminToken> {
        let tokens = self.tokens(&KeyPath::root().key("admin"), &raw.admin.tokens);
        if let Some(url) = &raw.state.url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                self.err(
                    &KeyPath::root().key("state").key("url"),
                    "write \"sqlite:PATH\" or \"postgres://…\"",
                );
            }
        }
        tokens
    }

    /// Named bearer tokens of a section (`[admin]`, `[ofrep]`).
    fn tokens(&mut self, section: &KeyPath, list: &[raw::RawAdminToken]) -> Vec<AdminToken> {
        let mut tokens = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let path = section.key("tokens").index(i);
            if t.name.trim().is_empty() {
                self.err(&path.key("name"), "a token needs a name (the audit actor)");
            }
            let (value, source) = match (&t.token_env, &t.token_file) {
                (Some(var), None) => ((self.env)(var), format!("environment variable {var}")),
                (None, Some(file)) => (std::fs::read_to_string(file).ok(), format!("file {file}")),
                _ => {
                    self.err(
                        &path,
                        "a token needs exactly one of token_env or token_file",
                    );
                    continue;
                }
            };
            let token = value
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .and_then(|v| HeaderValue::from_str(&v).ok())
                .map(Secret::new);
            tokens.push(AdminToken {
                name: t.name.clone(),
                token,
                source,
            });
        }
        tokens
    }
}

struct FlagContext<'a> {
    default_responder: &'a Arc<Responder>,
    raw: &'a RawConfig,
    providers: &'a BTreeMap<String, Arc<Provider>>,
    prompts: &'a BTreeMap<String, Arc<str>>,
    audiences: &'a BTreeMap<String, Arc<Condition>>,
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if list.is_empty() {
        " (none are defined)".into()
    } else {
        format!(" (known: {})", list.join(", "))
    }
}

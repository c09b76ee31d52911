//! The state every request shares: the live configuration and runtime overrides (swapped
//! atomically as one [`Live`]), the state store, metrics, upstream clients, and resilience
//! state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use http::HeaderValue;
use serde_json::{json, Value};

use crate::config::{Config, ConfigErrors};
use crate::metrics::{Metrics, RouteMetrics, VariationTotals};
use crate::providers::client::Clients;
use crate::resilience::Resilience;
use crate::runtime::FlagRuntime;
use crate::state::{AuditEntry, Change, RuntimeState, StateError, Store};

/// A configuration with the runtime overrides in force and everything derived from them that
/// requests need: effective flag views, metric handles, response header values.
#[derive(Debug)]
pub struct Live {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The runtime overrides this view was built from.
    pub state: Arc<RuntimeState>,
    /// Each flag's effective view (config + overrides), by flag index.
    pub runtime: Vec<FlagRuntime>,
    /// Metric handles per flag and variation.
    pub routes: RouteMetrics,
    /// Header values per flag: the flag key, each variation key, each rule id.
    pub headers: Vec<FlagHeaders>,
    /// `switchyard_requests_without_id_total{flag}`, by flag index.
    pub without_id: Vec<prometheus::IntCounter>,
    /// Each bandit flag's ranges in force, and the sticky users.
    pub bandits: crate::bandit::LiveBandits,
}

/// Pre-built `x-switchyard-*` header values of one flag.
#[derive(Debug)]
pub struct FlagHeaders {
    /// `x-switchyard-flag`.
    pub flag: HeaderValue,
    /// `x-switchyard-variation`, by variation index.
    pub variations: Vec<HeaderValue>,
    /// `x-switchyard-rule`, by rule index.
    pub rules: Vec<HeaderValue>,
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("_invalid"))
}

impl Live {
    /// Resolves what requests need from `config` under `state`.
    pub fn new(
        config: Arc<Config>,
        state: Arc<RuntimeState>,
        metrics: &Arc<Metrics>,
    ) -> Result<Live, prometheus::Error> {
        let routes = metrics.routes(&config)?;
        let headers = config
            .flags
            .iter()
            .map(|f| FlagHeaders {
                flag: header_value(&f.key),
                variations: f.variations.iter().map(|v| header_value(&v.key)).collect(),
                rules: f.rules.iter().map(|r| header_value(&r.id)).collect(),
            })
            .collect();
        let runtime = FlagRuntime::all(&config.flags, &state);
        metrics.flag_states(&config, &runtime);
        let without_id = config
            .flags
            .iter()
            .map(|f| metrics.without_id(&f.key))
            .collect::<Result<Vec<_>, _>>()?;
        let bandits = crate::bandit::LiveBandits::new(&config, &state, Default::default());
        Ok(Live {
            bandits,
            config,
            state,
            runtime,
            routes,
            headers,
            without_id,
        })
    }
}

impl Live {
    /// The effective decision for `user` on flag `index`: the config's rules under the runtime
    /// overrides in force (kill switch, rollout stages). The one place a decision is made for
    /// requests, `/v1/decide`, OFREP and feedback re-decided by user. `None`: no such flag.
    pub fn decide(
        &self,
        index: usize,
        user: &str,
        attributes: &crate::flags::audience::Attributes,
    ) -> Option<crate::flags::Decision> {
        let flag = self.config.flags.get(index)?;
        let rt = self.runtime.get(index)?;
        let d = flag.decide_at(rt.enabled, Some(&rt.stages), user, attributes);
        Some(self.bandits.decide(index, flag, user, d))
    }
}

/// Counters of a rollout's variation when its current stage began.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// The counters then.
    pub totals: VariationTotals,
    /// When (unix ms) this process first saw the stage.
    pub since_ms: u64,
}

/// Shared by every connection.
pub struct App {
    /// The configuration and overrides in force.
    pub live: ArcSwap<Live>,
    /// Runtime state and the audit log.
    pub store: Store,
    /// Every metric family.
    pub metrics: Arc<Metrics>,
    /// Upstream connection pools.
    pub clients: Clients,
    /// Circuit breakers and retry budgets per provider.
    pub resilience: Resilience,
    /// Which variation answered each Responses id (`previous_response_id` continues there).
    pub responses: Arc<crate::api::responses::Affinity>,
    /// Tiered alerts: what the last pass saw, and the notifier.
    pub alerts: crate::alerts::Engine,
    /// Exposures, request ids, feedback.
    pub experiments: crate::experiments::runtime::Experiments,
    /// The file the config came from (reloads read it again).
    pub config_path: Option<PathBuf>,
    /// The last reload failure, for the admin API.
    pub last_reload_error: Mutex<Option<String>>,
    /// The last hour of each variation's figures, for the console.
    pub history: crate::console::history::History,
    /// When (unix ms) the running configuration was loaded.
    config_loaded_ms: AtomicU64,
    /// This replica in its fleet: leadership, fleet-wide figures.
    pub fleet: crate::fleet::Fleet,
    /// Flags from other sources (an Optimizely datafile) and how their last poll went.
    pub sources: crate::sources::Sources,
    /// Online evals: each eval's queue and budget.
    pub evals: crate::evals::Evals,
    /// Open MCP sessions.
    pub mcp: crate::mcp::Sessions,
    /// The response cache (its backend is read from the config at start).
    pub cache: crate::cache::ResponseCache,
    /// Where per-request export records go (`[export]`, read at start).
    pub export: crate::export::Sink,
    /// Client keys, their limits and spend.
    pub keys: crate::keys::Keys,
    baselines: DashMap<(String, String), (u32, Baseline)>,
    swap: tokio::sync::Mutex<()>,
    draining: AtomicBool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the shared state for `config`, with the state store already open.
    pub fn new(
        config: Config,
        store: Store,
        state: RuntimeState,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<App>, prometheus::Error> {
        let metrics = Arc::new(Metrics::new()?);
        let sources = crate::sources::Sources::default();
        sources.set_base(&config);
        let live = Live::new(Arc::new(config), Arc::new(state), &metrics)?;
        let clients = Clients::default();
        let alerts = crate::alerts::Engine::new(&clients, &metrics);
        let cache = crate::cache::ResponseCache::new(&live.config.cache, metrics.clone());
        let export = crate::export::Sink::new(&live.config.export, metrics.export.clone());
        Ok(Arc::new(App {
            cache,
            export,
            live: ArcSwap::from_pointee(live),
            store,
            metrics,
            clients,
            alerts,
            responses: Arc::default(),
            resilience: Resilience::default(),
            experiments: Default::default(),
            config_path,
            last_reload_error: Mutex::new(None),
            history: Default::default(),
            config_loaded_ms: AtomicU64::new(crate::clock::now_ms()),
            fleet: crate::fleet::Fleet::default(),
            sources,
            evals: Default::default(),
            mcp: Default::default(),
            keys: Default::default(),
            baselines: DashMap::new(),
            swap: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
        }))
    }

    /// Swaps in a view built from `config` (or the current one) and `state` (or the current).
    async fn rebuild(
        &self,
        config: Option<Arc<Config>>,
        state: Option<RuntimeState>,
    ) -> Result<(), prometheus::Error> {
        let _guard = self.swap.lock().await;
        let current = self.live.load_full();
        let config = config.unwrap_or_else(|| current.config.clone());
        let state = match state {
            // Never go back to an older state (a slow load racing a newer one).
            Some(s)
                if s.version >= current.state.version || !Arc::ptr_eq(&config, &current.config) =>
            {
                Arc::new(s)
            }
            Some(_) => current.state.clone(),
            None => current.state.clone(),
        };
        let mut live = Live::new(config, state, &self.metrics)?;
        live.bandits.sticky = current.bandits.sticky.clone();
        self.live.store(Arc::new(live));
        Ok(())
    }

    /// Swaps in a config built outside a reload (the file's config with a new datafile's
    /// flags), keeping the runtime state.
    pub async fn swap_config(&self, config: Config) -> Result<(), prometheus::Error> {
        self.rebuild(Some(Arc::new(config)), None).await
    }

    /// Applies an operator's change: durable and audited in the store first, then in force
    /// here. Other replicas pick it up from the store's notifications.
    pub async fn change(
        &self,
        change: &Change,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<AuditEntry, StateError> {
        let entry = self
            .store
            .apply(change, actor, reason)
            .await
            .inspect_err(|_| self.metrics.state_error())?;
        self.resync().await;
        tracing::info!(
            actor,
            action = change.action(),
            flag = change.flag().unwrap_or("-"),
            "state changed"
        );
        Ok(entry)
    }

    /// Reloads the runtime state from the store (after a notification or periodically).
    pub async fn resync(&self) {
        match self.store.load().await {
            Ok(state) => {
                if let Err(e) = self.rebuild(None, Some(state)).await {
                    tracing::error!(error = %e, "cannot rebuild the live view");
                }
            }
            Err(e) => {
                self.metrics.state_error();
                tracing::warn!(error = %e, "state store unavailable: serving on the last known state");
            }
        }
    }

    /// Reads the config file again; swaps it in if valid. Requests in flight finish on the
    /// config they started with (they hold their own `Arc<Live>`).
    pub async fn reload(&self, actor: &str) -> Result<Value, ConfigErrors> {
        let Some(path) = &self.config_path else {
            return Err(ConfigErrors(vec![crate::config::ConfigError {
                origin: "(in-memory)".into(),
                line: None,
                key: String::new(),
                message: "this proxy was not started from a file".into(),
            }]));
        };
        let old = self.live.load().config.clone();
        let _sources = self.sources.lock().await;
        let loaded = Config::load(path)
            .and_then(|c| self.sources.merge(c))
            .and_then(|c| keeps_admin_access(&old, c));
        match loaded {
            Ok(config) => {
                let hash = config.hash.clone();
                let changed = hash != old.hash;
                let summary = reload_summary(&old, &config);
                if changed {
                    if let Err(e) = self.rebuild(Some(Arc::new(config)), None).await {
                        tracing::error!(error = %e, "cannot rebuild after reload");
                    }
                    self.config_loaded_ms
                        .store(crate::clock::now_ms(), Ordering::SeqCst);
                    let mut detail = json!({"from": old.hash, "to": hash});
                    merge(&mut detail, &summary);
                    let note = Change::Note {
                        flag: None,
                        action: "reload".into(),
                        detail,
                    };
                    if let Err(e) = self.store.apply(&note, actor, None).await {
                        tracing::warn!(error = %e, "reload not audited: state store unavailable");
                    }
                    tracing::info!(actor, from = %old.hash, to = %hash, summary = %summary, "configuration reloaded");
                }
                self.metrics.reload(true);
                if let Ok(mut last) = self.last_reload_error.lock() {
                    *last = None;
                }
                let mut answer = json!({"reloaded": true, "changed": changed, "hash": hash});
                merge(&mut answer, &summary);
                Ok(answer)
            }
            Err(errors) => {
                self.metrics.reload(false);
                tracing::error!(errors = %errors, "configuration reload refused: the old configuration keeps serving");
                if let Ok(mut last) = self.last_reload_error.lock() {
                    *last = Some(errors.to_string());
                }
                let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                let note = Change::Note {
                    flag: None,
                    action: "reload_refused".into(),
                    detail: json!({"serving": old.hash, "errors": list}),
                };
                if let Err(e) = self.store.apply(&note, actor, None).await {
                    tracing::warn!(error = %e, "refused reload not audited: state store unavailable");
                }
                Err(errors)
            }
        }
    }

    /// The counters of a rollout's variation when `stage` began (first seen by this process).
    pub fn stage_baseline(
        &self,
        flag: &str,
        rule: &str,
        stage: u32,
        now: VariationTotals,
    ) -> Baseline {
        let key = (flag.to_owned(), rule.to_owned());
        let fresh = Baseline {
            totals: now,
            since_ms: crate::clock::now_ms(),
        };
        let mut entry = self.baselines.entry(key).or_insert((stage, fresh));
        if entry.0 != stage {
            *entry = (stage, fresh);
        }
        entry.1
    }

    /// Business metrics of a flag from feedback events over the last `window`: per
    /// (variation, metric), the mean per user and the number of users it is over.
    pub async fn business_values(
        &self,
        flag: &str,
        window: std::time::Duration,
    ) -> Result<std::collections::HashMap<(String, String), (f64, u64)>, StateError> {
        crate::experiments::runtime::business_values(self, flag, window).await
    }

    /// The Prometheus exposition, with gauges that are read on demand refreshed first.
    pub fn render_metrics(&self) -> Vec<u8> {
        for (provider, state) in self.resilience.states(std::time::Instant::now()) {
            self.metrics.circuit_state(&provider, state.code());
        }
        self.metrics.render()
    }

    /// When (unix ms) the running configuration was loaded.
    pub fn config_loaded_ms(&self) -> u64 {
        self.config_loaded_ms.load(Ordering::SeqCst)
    }

    /// Marks the proxy as shutting down (`/readyz` turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Refuses a new config that would leave the admin API without a usable token while the
/// running one has one: nobody could undo the reload through the API.
fn keeps_admin_access(old: &Config, new: Config) -> Result<Config, ConfigErrors> {
    let usable = |c: &Config| c.admin_tokens.iter().filter(|t| t.token.is_some()).count();
    if usable(old) > 0 && usable(&new) == 0 {
        return Err(ConfigErrors(vec![crate::config::ConfigError {
            origin: new.origin.clone(),
            line: None,
            key: "admin.tokens".into(),
            message: format!(
                "the new file leaves the admin API without a usable token (the running config has {}): refused, so the admin API can still undo changes; set a token (its variable or file must be present) to reload",
                usable(old)
            ),
        }]));
    }
    Ok(new)
}

/// What a reload changes: flags added, removed and changed, and other sections changed.
pub fn reload_summary(old: &Config, new: &Config) -> Value {
    let flag_keys = |c: &Config| -> std::collections::BTreeSet<String> {
        c.section_digests
            .keys()
            .filter_map(|k| k.strip_prefix("flags.").map(str::to_owned))
            .collect()
    };
    let (before, after) = (flag_keys(old), flag_keys(new));
    let added: Vec<&String> = after.difference(&before).collect();
    let removed: Vec<&String> = before.difference(&after).collect();
    let changed: Vec<&String> = before
        .intersection(&after)
        .filter(|k| {
            let key = format!("flags.{k}");
            old.section_digests.get(&key) != new.section_digests.get(&key)
        })
        .collect();
    let sections: std::collections::BTreeSet<&String> = old
        .section_digests
        .keys()
        .chain(new.section_digests.keys())
        .filter(|k| !k.starts_with("flags."))
        .filter(|k| old.section_digests.get(*k) != new.section_digests.get(*k))
        .collect();
    json!({
        "flags_added": added,
        "flags_removed": removed,
        "flags_changed": changed,
        "sections_changed": sections,
    })
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}

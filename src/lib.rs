//! Switchyard: an OpenAI-compatible reverse proxy that turns feature flags into the control
//! plane for AI features.
//!
//! Apps point their OpenAI base URL at the proxy and send `model = "<flag key>"`. For every
//! chat request Switchyard decides which *variation* (one whole AI configuration: provider,
//! model, system prompt, temperature, token budget, tool policy…) this end user gets, rewrites
//! the request to match, forwards it, relays the answer and measures it per variation.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | `proxy.toml`: raw serde types → validated [`config::Config`]; errors name file, line and key |
//! | [`flags`] | flags, variations, rules and the pure decision; [`flags::bucket`] (MurmurHash3, Optimizely-identical), [`flags::audience`] (typed audiences) |
//! | [`proxy`] | the chat handler, one module per phase: [`proxy::request`] (parse), [`proxy::identify`], [`proxy::decide`], [`proxy::rewrite`], [`proxy::forward`], [`proxy::stream`] (SSE relay), [`proxy::context`] (record) |
//! | [`providers`] | the OpenAI-compatible path, the built-in [`providers::mock`], pooled rustls [`providers::client`] |
//! | [`metrics`] | every Prometheus family, registered once; pre-built per-variation handles; hdrhistogram quantiles |
//! | [`openai`] | OpenAI wire shapes and the one error type, turned into a response in one place |
//! | [`server`] | listeners, routing, graceful shutdown |
//! | [`admin`] | the admin listener: `/metrics`, `/healthz`, `/readyz`, the admin API ([`admin::api`]) and its OpenAPI document |
//! | [`state`] | the durable state store (SQLite, PostgreSQL): runtime overrides, audit log, exposures, feedback |
//! | [`runtime`] | effective flag state: config overlaid with runtime overrides |
//! | [`control`] | loops beside the request path: state sync across replicas, rollout gates, reload on change or SIGHUP |
//! | [`rollout`] | rollout gates (pure) |
//! | [`fallback`] | fallback reasons and the rule-based responder |
//! | [`resilience`] | circuit breakers, retry budgets, backoff |
//! | [`experiments`] | exposures, feedback, results; [`experiments::stats`] (mSPRT, Benjamini–Hochberg, SRM) |
//! | [`alerts`] | tiered alerts evaluated off the request path, webhooks, actions |
//! | [`bandit`] | the guarded bandit: Thompson sampling per epoch, guardrails, SRM, stop rule, sticky users, replayable epoch records |
//! | [`fleet`] | a fleet of replicas: leader election over the state store (only the leader acts), fleet-wide gate and alert figures from Prometheus |
//! | [`console`] | the operators' console: embedded web page and assets, its JSON views, a one-hour history of each variation |
//! | [`ctl`] | `switchyard ctl`: the admin API from a terminal |
//! | [`app`] | state shared by requests: the live config (atomically swappable), metrics, clients |
//! | [`api`] | client APIs beside chat: [`api::ofrep`] (OpenFeature remote evaluation) |
//! | [`evals`] | online evals: sampled answers scored by a judge model off the request path, stored as feedback |
//! | [`mcp`] | the agent interface: an MCP server at `/mcp` over the admin operations, agent tokens' policies |
//! | [`cache`] | the response cache per variation: a phase between rewrite and forward; in-process (moka) or Redis |
//! | [`export`] | exposures, feedback, evals and per-request records for a warehouse: the record sink (rotating JSON Lines files) and the paged reader behind `GET /admin/export` |
//! | [`keys`] | client keys: hashing, limits, spend across the fleet, the request-path check |
//! | [`sources`] | flags from other systems: [`sources::optimizely`] (a polled datafile, decided as Optimizely's SDKs do) |
//!
//! The life of a request is drawn in the README; [`proxy::chat_completions`] reads like it.

// The admin API's OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod admin;
pub mod alerts;
pub mod api;
pub mod app;
pub mod bandit;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod ctl;
pub mod evals;
pub mod experiments;
pub mod export;
pub mod fallback;
pub mod flags;
pub mod fleet;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod openai;
pub mod providers;
pub mod proxy;
pub mod query;
pub mod resilience;
pub mod rollout;
pub mod runtime;
pub mod server;
pub mod sources;
pub mod state;

use std::future::Future;

/// `println!` for the CLI that ignores a closed stdout (`switchyard check | head`): a broken
/// pipe ends the output, never in a panic.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub use config::Config;
pub use server::Listeners;

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound or served.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The metric registry refused a family (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The state store could not be opened or read.
    #[error("{0}")]
    State(#[from] state::StateError),
}

/// Serves `config` on `listeners` until `shutdown` resolves, then drains requests in flight
/// (up to `server.drain_timeout`) and returns.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with(listeners, config, None, shutdown).await
}

/// Like [`run`], with the file the config came from so it can be reloaded (on change, on
/// SIGHUP, and through `POST /admin/reload`).
pub async fn run_with(
    listeners: Listeners,
    config: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    for t in &config.admin_tokens {
        if t.token.is_none() {
            tracing::warn!(token = %t.name, source = %t.source, "admin token disabled: its source is not set");
        }
    }
    let store = state::Store::open(&config.state_url).await?;
    let state = store.load().await?;
    // Where the state lives (a SQLite path only: a PostgreSQL URL may carry a password).
    let location = config
        .state_url
        .strip_prefix("sqlite:")
        .unwrap_or("(shared store)");
    tracing::info!(
        store = store.kind(),
        location,
        version = state.version,
        "runtime state loaded (start clean with `serve --fresh`)"
    );
    let (state_url, flush) = (
        config.state_url.clone(),
        config
            .keys
            .as_ref()
            .map_or(std::time::Duration::from_secs(1), |k| k.flush_interval),
    );
    let app = app::App::new(config, store, state, config_path)?;
    app.keys
        .start(&state_url, app.metrics.keys.clone(), flush)
        .await?;
    server::run_app(listeners, app, shutdown).await?;
    Ok(())
}

//! The state every request shares: the live configuration (swapped atomically), metrics,
//! upstream clients.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::providers::client::Clients;
use crate::resilience::Resilience;

/// A configuration with everything derived from it that requests need: metric handles and
/// response header values, resolved once per load.
#[derive(Debug)]
pub struct Live {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Metric handles per flag and variation.
    pub routes: RouteMetrics,
    /// Header values per flag: the flag key, each variation key, each rule id.
    pub headers: Vec<FlagHeaders>,
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
    /// Resolves what requests need from `config`.
    pub fn new(config: Arc<Config>, metrics: &Metrics) -> Result<Live, prometheus::Error> {
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
        Ok(Live {
            config,
            routes,
            headers,
        })
    }
}

/// Shared by every connection.
#[derive(Debug)]
pub struct App {
    /// The configuration in force.
    pub live: ArcSwap<Live>,
    /// Every metric family.
    pub metrics: Arc<Metrics>,
    /// Upstream connection pools.
    pub clients: Clients,
    /// Circuit breakers and retry budgets per provider.
    pub resilience: Resilience,
    draining: AtomicBool,
}

impl App {
    /// Builds the shared state for `config`.
    pub fn new(config: Config) -> Result<Arc<App>, prometheus::Error> {
        let metrics = Arc::new(Metrics::new()?);
        let live = Live::new(Arc::new(config), &metrics)?;
        Ok(Arc::new(App {
            live: ArcSwap::from_pointee(live),
            metrics,
            clients: Clients::default(),
            resilience: Resilience::default(),
            draining: AtomicBool::new(false),
        }))
    }

    /// Marks the proxy as shutting down (`/readyz` turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The Prometheus exposition, with gauges that are read on demand refreshed first.
    pub fn render_metrics(&self) -> Vec<u8> {
        for (provider, state) in self.resilience.states(std::time::Instant::now()) {
            self.metrics.circuit_state(&provider, state.code());
        }
        self.metrics.render()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

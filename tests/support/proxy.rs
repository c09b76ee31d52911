//! Starts the real proxy in-process on 127.0.0.1:0 for a test, with a given `proxy.toml` text.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use switchyard::{Config, Listeners};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running proxy; dropping it shuts it down.
pub struct TestProxy {
    /// The OpenAI-compatible listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), switchyard::StartError>>>,
}

impl TestProxy {
    /// Validates `toml` and serves it; panics (test code) on an invalid config.
    pub async fn start(toml: &str) -> TestProxy {
        let config = Config::parse(toml, "test.toml")
            .unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
        TestProxy::start_config(config).await
    }

    /// Serves the config file at `path` (so `POST /admin/reload` reads it again).
    pub async fn start_file(path: &std::path::Path) -> TestProxy {
        let config = Config::load(path).unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
        TestProxy::serve(config, Some(path.to_path_buf())).await
    }

    /// Serves a validated config.
    pub async fn start_config(config: Config) -> TestProxy {
        TestProxy::serve(config, None).await
    }

    async fn serve(mut config: Config, path: Option<std::path::PathBuf>) -> TestProxy {
        // Tests run side by side: never share the default state file of the working directory.
        if config.state_url == "sqlite:switchyard-state.db" {
            config.state_url = "sqlite::memory:".into();
        }
        // Tests stop proxies often: no drain delay unless a test sets one (any value but the
        // default 5 s).
        if config.server.drain_delay == Duration::from_secs(5) {
            config.server.drain_delay = Duration::ZERO;
        }
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .expect("bind");
        let addr = listeners.main.local_addr().unwrap();
        let admin_addr = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(switchyard::run_with(listeners, config, path, async move {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            admin_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://127.0.0.1:ADMIN_PORT`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// Asks the proxy to shut down and waits (up to `within`) for it to return.
    pub async fn shutdown(mut self, within: Duration) -> bool {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => matches!(tokio::time::timeout(within, task).await, Ok(Ok(Ok(())))),
            None => true,
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal config with one provider at `base_url` (kind openai) and one 50/50 flag `f`.
pub fn basic_config(base_url: &str) -> String {
    format!(
        r#"
[providers.up]
kind = "openai"
base_url = "{base_url}"
timeout = "5s"

[prompts]
p1 = "SYSTEM PROMPT ONE"

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "up"
model_id = "model-a"
system_prompt_variant = "p1"
temperature = 0.3
token_budget = 100
[flags.f.variations.b]
provider = "up"
model_id = "model-b"
temperature = 0.9
[[flags.f.rules]]
id = "split"
allocation = [{{ variation = "a", end = 5000 }}, {{ variation = "b", end = 10000 }}]
"#
    )
}

//! A proxy served in-process from a `proxy.toml` in a fresh directory (so it can reload the
//! file and be restarted on the same SQLite state), with an `ops` admin token.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{self, Resp};

/// A fresh directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// `<tmp>/switchyard-<tag>-<pid>-<nanos>`.
    pub fn new(tag: &str) -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("switchyard-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running proxy and the file it serves.
pub struct Served {
    /// The API listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The `proxy.toml` path.
    pub path: PathBuf,
    /// The `ops` token's value.
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), switchyard::StartError>>>,
}

/// The `[admin]` and `[state]` sections for a proxy in `dir` whose token is in `token_var`.
pub fn header(dir: &Path, token_var: &str) -> String {
    format!(
        "[admin]\ntokens = [{{ name = \"ops\", token_env = \"{token_var}\" }}]\n\n[state]\nurl = \"sqlite:{}\"\n",
        dir.join("state.db").display()
    )
}

/// Sets a fresh token for `tag` and returns (variable, value).
pub fn token(tag: &str) -> (String, String) {
    let var = format!(
        "SWITCHYARD_SERVED_{}_{}",
        tag.to_uppercase().replace('-', "_"),
        std::process::id()
    );
    let value = format!("tok-{tag}-secret");
    std::env::set_var(&var, &value);
    (var, value)
}

impl Served {
    /// Serves the file at `path` (already written).
    pub async fn start(path: &Path, token: &str) -> Served {
        let config = switchyard::Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let listeners = switchyard::Listeners::bind(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
        .expect("bind");
        let addr = listeners.main.local_addr().expect("addr");
        let admin_addr = listeners.admin.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(switchyard::run_with(
            listeners,
            config,
            Some(path.to_owned()),
            async move {
                let _ = rx.await;
            },
        ));
        Served {
            addr,
            admin_addr,
            path: path.to_owned(),
            token: token.to_owned(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the proxy and waits for it to return.
    pub async fn stop(mut self, within: Duration) -> bool {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => matches!(tokio::time::timeout(within, t).await, Ok(Ok(Ok(())))),
            None => true,
        }
    }

    /// Sends the shutdown signal without waiting; returns the task to await.
    pub fn signal_stop(&mut self) -> Option<JoinHandle<Result<(), switchyard::StartError>>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take()
    }

    /// An admin API request with the `ops` token (lower-case scheme on purpose).
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("bearer {}", self.token);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        client::request(
            method,
            &format!("http://{}{path}", self.admin_addr),
            body,
            &[("authorization", &auth)],
        )
        .await
    }

    /// The newest audit entries.
    pub async fn audit(&self, limit: usize) -> Vec<Value> {
        let r = self
            .admin(Method::GET, &format!("/admin/audit?limit={limit}"), None)
            .await;
        r.json()["entries"].as_array().cloned().unwrap_or_default()
    }

    /// A chat request for `flag` as `user`.
    pub async fn chat(&self, flag: &str, user: &str) -> Resp {
        let body = serde_json::json!({"model": flag, "user": user, "messages": [{"role": "user", "content": "hello"}]});
        client::post_json(
            &format!("http://{}/v1/chat/completions", self.addr),
            &body.to_string(),
            &[],
        )
        .await
    }

    /// The ids `/v1/models` lists.
    pub async fn models(&self) -> Vec<String> {
        let r = client::get(&format!("http://{}/v1/models", self.addr)).await;
        r.json()["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `check` until it gives a value, up to `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

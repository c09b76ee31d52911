//! Processes and helpers of the fleet test (tests/fleet_prometheus.rs): a database of its own,
//! `switchyard serve` replicas, a Prometheus on a free port, traffic, polling.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
pub const STARTUP: Duration = Duration::from_secs(30);
pub const TOKEN: &str = "fleet-test-token";

pub fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

pub fn pg_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `url` with its database replaced by `db` (query kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let host_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &head[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

pub fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("run psql (PostgreSQL's client must be installed)");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A database of this run's own, dropped at the end.
pub struct Database {
    admin_url: String,
    name: String,
    pub url: String,
}

impl Database {
    pub fn create() -> Database {
        let admin_url = pg_url();
        let name = format!(
            "switchyard_fleet_{}_{:x}",
            std::process::id(),
            nanos() & 0xffff_ffff
        );
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin_url, &name);
        Database {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin_url.as_str(),
                "-X",
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdin(Stdio::null())
            .output();
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-fleet-prom-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

pub struct Replica {
    pub name: String,
    pub child: Child,
    pub url: String,
    pub admin_url: String,
    pub dir: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    pub fn start(root: &Path, name: &str, config: &str) -> Replica {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("proxy.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--config",
                "proxy.toml",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .current_dir(&dir)
            .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
            .env("SWITCHYARD_REPLICA", name)
            .env("RUST_LOG", "switchyard=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn switchyard serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut url, mut admin_url) = (None, None);
        let deadline = Instant::now() + STARTUP;
        while url.is_none() || admin_url.is_none() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("switchyard listening on ") {
                        url = Some(u.to_owned());
                    } else if let Some(u) = line.strip_prefix("switchyard admin listening on ") {
                        admin_url = Some(u.to_owned());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "replica {name} did not announce its listeners; stderr:\n{}",
                        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                    );
                }
            }
        }
        Replica {
            name: name.to_owned(),
            child,
            url: url.unwrap(),
            admin_url: admin_url.unwrap(),
            dir,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn admin_addr(&self) -> String {
        self.admin_url.trim_start_matches("http://").to_owned()
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> client::Resp {
        let auth = format!("Bearer {TOKEN}");
        client::request(
            method,
            &format!("{}{path}", self.admin_url),
            body.map(|b| b.to_string()).unwrap_or_default(),
            &[("authorization", &auth)],
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self.admin(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
        r.json()
    }

    pub async fn readyz(&self) -> Value {
        client::get(&format!("{}/readyz", self.admin_url))
            .await
            .json()
    }

    pub async fn metrics(&self) -> String {
        client::get(&format!("{}/metrics", self.admin_url))
            .await
            .text()
    }

    pub async fn ready(&self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let r = self.admin(Method::GET, "/admin/flags", None).await;
            if r.status == StatusCode::OK {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Prometheus, started on a free port with a 1 s scrape of every replica.
pub struct Prometheus {
    child: Child,
    pub url: String,
}

impl Prometheus {
    pub fn start(dir: &Path, port: u16, targets: &[String]) -> Prometheus {
        let rules =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/switchyard.rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [{targets}]\n",
            rules = rules.display(),
            targets = targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package 'prometheus'; the test command installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs an instant query; the raw `data.result` list (NaN values included).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url,
            percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC)
        );
        let r = client::get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{promql}: {}", r.text());
        let v = r.json();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// Sends `n` chat requests for `flag`, round-robin across `urls`, each from a new user.
pub async fn traffic(urls: &[String], flag: &str, n: usize, seq: &AtomicU64) {
    let http = client::Http::new();
    for i in 0..n {
        let user = format!("user-{}", seq.fetch_add(1, Ordering::SeqCst));
        let body = json!({"model": flag, "user": user, "messages": [{"role": "user", "content": "hello"}]});
        let url = &urls[i % urls.len()];
        let _ = http
            .post_json(
                &format!("{url}/v1/chat/completions"),
                &body.to_string(),
                &[],
            )
            .await;
    }
}

/// Keeps sending traffic for `flag` until dropped.
pub struct Background {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    pub fn start(urls: Vec<String>, flag: &'static str, seq: Arc<AtomicU64>) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                traffic(&urls, flag, 6, &seq).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Background { stop, task }
    }

    pub async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

/// Polls `check` every 100 ms until it returns `Some`, up to `within`.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn audit(r: &Replica, flag: &str) -> Vec<Value> {
    r.get(&format!("/admin/audit?flag={flag}&limit=200")).await["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The leader as every replica sees it: (index of the replica whose `/readyz` says it leads,
/// the name all agree on), once exactly one leads and all agree.
/// The sum of family `name`'s series whose labels include every pair of `labels` (`None`:
/// no such series).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (family, set) = match series.split_once('{') {
            Some((f, rest)) => (f, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if family != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            let want = format!("\"{v}\"");
            set.split(',')
                .any(|pair| pair.split_once('=') == Some((k, want.as_str())))
        };
        if labels.iter().all(|(k, v)| has(k, v)) {
            if let Ok(x) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += x;
            }
        }
    }
    found
}

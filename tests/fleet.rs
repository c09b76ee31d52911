//! A fleet: several `switchyard serve` processes (the real binary) sharing one PostgreSQL
//! state store. A kill switch flipped through one replica reaches the others within a second;
//! PostgreSQL unreachable at start stops the start with a clear error; PostgreSQL lost at
//! runtime refuses admin writes (503 `state_unavailable`) while chat requests keep being
//! served on the last known state, and writes work again once it is back.
//!
//! The server comes from `SWITCHYARD_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Tests run in parallel, each on state of its
//! own: the propagation test on a schema of its own in that database (the store's
//! `?schema=NAME`, so notifications of other schemas on the shared channel must be ignored),
//! the outage test on a database of its own, so an outage can be staged for its replicas
//! alone: `ALTER DATABASE … ALLOW_CONNECTIONS false` refuses new connections and
//! `pg_terminate_backend` cuts the open ones, which is what replicas see when the database
//! goes away. `psql` does the setup; both are dropped at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const STARTUP: Duration = Duration::from_secs(30);
const FLAG: &str = "support-assistant";

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn base_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `url` with its database replaced by `db` (query kept).
fn with_database(url: &str, db: &str) -> String {
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

/// Runs `sql` with psql against `url`; panics with psql's message on failure.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            url,
            "-v",
            "ON_ERROR_STOP=1",
            "-X",
            "-q",
            "-A",
            "-t",
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run psql (PostgreSQL's client must be installed)");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn unique_name(tag: &str) -> String {
    format!(
        "switchyard_{tag}_{}_{:x}",
        std::process::id(),
        nanos() & 0xffff_ffff
    )
}

/// A schema of this test's own in the shared database (`?schema=NAME`), dropped at the end.
struct Schema {
    admin_url: String,
    name: String,
    url: String,
}

impl Schema {
    fn new(tag: &str) -> Schema {
        let admin_url = base_url();
        let name = unique_name(tag);
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}schema={name}");
        Schema {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin_url.as_str(),
                "-X",
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .stdin(Stdio::null())
            .output();
    }
}

/// A database of this test's own, dropped (with its connections) at the end.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    fn create(tag: &str) -> Database {
        let admin_url = base_url();
        let name = unique_name(tag);
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin_url, &name);
        Database {
            admin_url,
            name,
            url,
        }
    }

    /// New connections refused, open ones cut: the database is gone for its clients.
    fn go_away(&self) {
        psql(
            &self.admin_url,
            &format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name),
        );
        psql(
            &self.admin_url,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ),
        );
    }

    fn come_back(&self) {
        psql(
            &self.admin_url,
            &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name),
        );
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

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-fleet-{tag}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the shipped `proxy.toml` with its state in `state_url` into `dir`.
fn write_config(dir: &Path, state_url: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml"))
        .expect("read proxy.toml");
    let line = "url = \"sqlite:switchyard-state.db\"";
    assert!(shipped.contains(line), "proxy.toml's [state] url changed");
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        shipped.replace(line, &format!("url = \"{state_url}\"")),
    )
    .expect("write proxy.toml");
    path
}

/// One replica: a `switchyard serve` process; killed on drop.
struct Replica {
    child: Child,
    url: String,
    admin_url: String,
    token: String,
    stderr: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `switchyard serve` on `dir/proxy.toml`; returns the process and its stderr file
/// before it has announced anything.
fn spawn(dir: &Path, name: &str, token: &str) -> (Child, mpsc::Receiver<String>, PathBuf) {
    let stderr_path = dir.join(format!("{name}.stderr.log"));
    let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
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
        .current_dir(dir)
        .env("SWITCHYARD_ADMIN_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn switchyard serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx, stderr_path)
}

impl Replica {
    fn start(dir: &Path, name: &str) -> Replica {
        let token = format!("fleet-token-{name}");
        let (mut child, rx, stderr) = spawn(dir, name, &token);
        let (mut url, mut admin_url) = (None, None);
        let deadline = Instant::now() + STARTUP;
        // Ready once both listeners are announced and the admin API answers (the state store
        // is opened after the listeners are bound).
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
                    let _ = child.wait();
                    panic!(
                        "replica {name} did not announce its listeners; stderr:\n{}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
            }
        }
        Replica {
            child,
            url: url.unwrap(),
            admin_url: admin_url.unwrap(),
            token,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> client::Resp {
        let auth = format!("Bearer {}", self.token);
        client::request(
            method,
            &format!("{}{path}", self.admin_url),
            body.map(|b| b.to_string()).unwrap_or_default(),
            &[("authorization", &auth)],
        )
        .await
    }

    /// Polls (every 50 ms, up to `within`) until the admin API answers 200.
    async fn ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("replica exited ({status}); stderr:\n{}", self.stderr());
            }
            let r = self.admin(Method::GET, "/admin/flags", None).await;
            if r.status == StatusCode::OK {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica not ready: {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn enabled(&self) -> Value {
        let r = self
            .admin(Method::GET, &format!("/admin/flags/{FLAG}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["enabled"].clone()
    }

    async fn set_enabled(&self, on: bool, reason: &str) -> client::Resp {
        self.admin(
            Method::PUT,
            &format!("/admin/flags/{FLAG}/enabled"),
            Some(json!({"enabled": on, "reason": reason})),
        )
        .await
    }

    async fn chat(&self, user: &str) -> client::Resp {
        let body = json!({"model": FLAG, "user": user, "messages": [{"role": "user", "content": "hello"}]});
        client::post_json(
            &format!("{}/v1/chat/completions", self.url),
            &body.to_string(),
            &[],
        )
        .await
    }
}

/// How long until `replica` shows the flag `enabled == want` (polled every 20 ms, up to
/// `within`).
async fn observed(replica: &Replica, want: bool, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if replica.enabled().await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the replica did not see enabled = {want} within {within:?}; its stderr:\n{}",
            replica.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_reaches_every_replica_within_a_second() {
    let db = Schema::new("propagate");
    let dir = TempDir::new("propagate");
    write_config(&dir.0, &db.url);
    let mut a = Replica::start(&dir.0, "a");
    let mut b = Replica::start(&dir.0, "b");
    a.ready(Duration::from_secs(15)).await;
    b.ready(Duration::from_secs(15)).await;
    assert_eq!(b.enabled().await, true);
    let r = b.chat("user-1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-switchyard-fallback"), None);

    // Off through A: B follows within a second, for the admin view and for chat.
    let r = a.set_enabled(false, "incident via a").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The promise is "within a second" on a release build; the bound is generous so that a
    // debug build on a loaded 2-core machine does not flake. The figure is printed.
    let took = observed(&b, false, Duration::from_secs(10)).await;
    eprintln!("kill switch reached the other replica in {took:?}");
    let r = b.chat("user-1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header("x-switchyard-fallback").as_deref(),
        Some("kill_switch")
    );
    let flag = b
        .admin(Method::GET, &format!("/admin/flags/{FLAG}"), None)
        .await
        .json();
    assert_eq!(flag["enabled_source"], "runtime");

    // And back on through B: A follows.
    let r = b.set_enabled(true, "resolved via b").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    observed(&a, true, Duration::from_secs(10)).await;
    let r = a.chat("user-1").await;
    assert_eq!(r.header("x-switchyard-fallback"), None);

    // One audit log for the fleet: both replicas list both changes, newest first.
    for replica in [&a, &b] {
        let audit = replica
            .admin(Method::GET, &format!("/admin/audit?flag={FLAG}"), None)
            .await
            .json();
        let reasons: Vec<&str> = audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["reason"].as_str())
            .collect();
        assert_eq!(reasons, ["resolved via b", "incident via a"], "{audit}");
    }
}

#[tokio::test]
async fn postgres_unreachable_at_start_stops_the_start_with_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let dir = TempDir::new("unreachable");
    write_config(&dir.0, &url);
    let mut pair: Vec<(Child, PathBuf)> = ["a", "b"]
        .iter()
        .map(|name| {
            let (child, _rx, stderr) = spawn(&dir.0, name, "t");
            (child, stderr)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (child, stderr) in &mut pair {
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "a replica with an unreachable state store kept running; stderr:\n{}",
                    std::fs::read_to_string(&*stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success(), "exited with {status}");
        let text = std::fs::read_to_string(&*stderr).unwrap_or_default();
        assert!(text.contains("state store"), "unclear error:\n{text}");
        assert!(
            text.contains(&port.to_string()) || text.contains("connect"),
            "the error does not say what could not be reached:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_at_runtime_refuses_writes_and_keeps_serving() {
    let db = Database::create("outage");
    let dir = TempDir::new("outage");
    write_config(&dir.0, &db.url);
    let mut a = Replica::start(&dir.0, "a");
    let mut b = Replica::start(&dir.0, "b");
    a.ready(Duration::from_secs(15)).await;
    b.ready(Duration::from_secs(15)).await;
    let r = a.set_enabled(false, "before the outage").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    observed(&b, false, Duration::from_secs(10)).await;

    db.go_away();

    // Writes are refused, OpenAI-shaped, and nothing changes.
    let r = a.set_enabled(true, "during the outage").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "state_unavailable", "{v}");
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    let r = b
        .admin(
            Method::PUT,
            "/admin/flags/summarizer/rollout/hold",
            Some(json!({"held": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    // Serving goes on, on the last known state (the kill switch stays off), for a while.
    let until = Instant::now() + Duration::from_secs(2);
    let mut served = 0;
    while Instant::now() < until {
        for replica in [&a, &b] {
            let r = replica.chat(&format!("user-{served}")).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(
                r.header("x-switchyard-fallback").as_deref(),
                Some("kill_switch")
            );
            served += 1;
        }
        assert_eq!(a.enabled().await, false);
    }
    let metrics = client::get(&format!("{}/metrics", a.admin_url))
        .await
        .text();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_state_store_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "state store errors not counted:\n{metrics}");

    db.come_back();

    // Writes work again (once the replica reconnects), and reach the other replica.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = a.set_enabled(true, "after the outage").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "writes still refused after the database came back: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The periodic resync bounds this even if B's notification channel is still reconnecting.
    let took = observed(&b, true, Duration::from_secs(7)).await;
    eprintln!("after the outage, the change reached the other replica in {took:?}");
    let r = b.chat("user-1").await;
    assert_eq!(r.header("x-switchyard-fallback"), None);
    let audit = b
        .admin(Method::GET, &format!("/admin/audit?flag={FLAG}"), None)
        .await
        .json();
    let reasons: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["after the outage", "before the outage"],
        "{audit}"
    );
}

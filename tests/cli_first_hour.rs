//! The command line as a newcomer meets it: `check` lists every error (unknown keys included),
//! logs carry no colour codes unless stderr is a terminal and come as JSON with
//! `--log-format json`, and `serve --fresh` / `--state` start from a clean state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn tempdir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!(
        "switchyard-cli-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn check_lists_every_error_unknown_keys_included() {
    let dir = tempdir("check");
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        r#"[server]
listn = "127.0.0.1:8080"
max_body_bytes = -5

[servr]
a = 1

[providers.mock]
kind = "mock"
latncy = "1ms"

[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m"
temprature = 0.3
[[flags.f.rules]]
id = "r"
allocation = [{ variation = "a", end = 10000 }]
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |line: usize, key: &str| format!("{}:{line}: {key}", path.display());
    for expected in [
        at(2, "server.listn: unknown field"),
        at(3, "server.max_body_bytes: -5 is out of range"),
        at(5, "servr: unknown field"),
        at(10, "providers.mock.latncy: unknown field"),
        at(17, "flags.f.variations.a.temprature: unknown field"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
    assert!(stderr.contains("5 error(s)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `serve` child on ports chosen by the system, stderr into `log`.
struct Serve {
    child: Child,
    addr: String,
    admin: String,
}

impl Serve {
    fn start(config: &Path, log: &Path, extra: &[&str], token: &str) -> Serve {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(config)
            .args(extra)
            .env("SWITCHYARD_ADMIN_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = String::new();
        let mut admin = String::new();
        while addr.is_empty() || admin.is_empty() {
            let line = lines
                .next()
                .expect("serve announces its listeners")
                .unwrap();
            if let Some(a) = line.strip_prefix("switchyard listening on ") {
                addr = a.to_owned();
            } else if let Some(a) = line.strip_prefix("switchyard admin listening on ") {
                admin = a.to_owned();
            }
        }
        // Ready: /readyz answers 200.
        let host = admin.trim_start_matches("http://").to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            use std::io::{Read, Write};
            let ready = std::net::TcpStream::connect(&host).ok().and_then(|mut s| {
                s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                out.starts_with("HTTP/1.1 200").then_some(())
            });
            if ready.is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Serve { child, addr, admin }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("serve did not stop after SIGTERM");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "[server]\ndrain_delay = \"0s\"\n[admin]\ntokens = [{ name = \"ops\", token_env = \"SWITCHYARD_ADMIN_TOKEN\" }]\n[providers.mock]\nkind = \"mock\"\n[flags.f]\noff_variation = \"a\"\n[flags.f.variations.a]\nprovider = \"mock\"\nmodel_id = \"m\"\n[[flags.f.rules]]\nid = \"r\"\nallocation = [{ variation = \"a\", end = 10000 }]\n",
    )
    .unwrap();
    path
}

#[test]
fn logs_have_no_colour_codes_in_a_file_and_are_json_on_request() {
    let dir = tempdir("logs");
    let cfg = config(&dir);
    let state = format!("--state=sqlite:{}", dir.join("s.db").display());
    let text_log = dir.join("text.log");
    Serve::start(&cfg, &text_log, &[&state], "t").stop();
    let text = std::fs::read_to_string(&text_log).unwrap();
    assert!(text.contains("runtime state loaded"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );

    let json_log = dir.join("json.log");
    Serve::start(&cfg, &json_log, &[&state, "--log-format", "json"], "t").stop();
    let lines = std::fs::read_to_string(&json_log).unwrap();
    let mut n = 0;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{v}");
        n += 1;
    }
    assert!(n >= 2, "{lines}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn serve_fresh_starts_from_a_clean_state() {
    let dir = tempdir("fresh");
    let cfg = config(&dir);
    let state = format!("--state=sqlite:{}", dir.join("state.db").display());
    let log = dir.join("serve.log");
    let token = "fresh-token";
    let kill_switch = |s: &Serve| {
        let url = format!("{}/admin/flags/f", s.admin);
        async move {
            let r = client::request(
                Method::GET,
                &url,
                "",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.json()["enabled"].clone()
        }
    };
    let s = Serve::start(&cfg, &log, &[&state], token);
    let r = client::request(
        Method::PUT,
        &format!("{}/admin/flags/f/enabled", s.admin),
        json!({"enabled": false}).to_string(),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let _ = &s.addr;
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    // The override is kept across a restart …
    let s = Serve::start(&cfg, &log, &[&state], token);
    assert_eq!(kill_switch(&s).await, json!(false));
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    // … until the proxy starts fresh.
    let s = Serve::start(&cfg, &log, &[&state, "--fresh"], token);
    assert_eq!(kill_switch(&s).await, json!(true));
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    // --fresh refuses to wipe a shared store.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--fresh",
            "--state",
            "postgres://u@127.0.0.1:1/db",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--fresh only removes a SQLite state file")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let dir = tempdir("sighup");
    let cfg = config(&dir);
    // No file watch: only the signal can bring the change in.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[server]\n", "[server]\nreload_check_interval = \"0s\"\n");
    std::fs::write(&cfg, &text).unwrap();
    let state = format!("--state=sqlite:{}", dir.join("s.db").display());
    let s = Serve::start(&cfg, &dir.join("serve.log"), &[&state], "t");
    let models = || {
        let url = format!("{}/v1/models", s.addr);
        async move {
            client::get(&url).await.json()["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(models().await, ["f"]);
    let added = text.replace("[flags.f]", "[flags.g]\noff_variation = \"a\"\n[flags.g.variations.a]\nprovider = \"mock\"\nmodel_id = \"m\"\n[[flags.g.rules]]\nid = \"r\"\nallocation = [{ variation = \"a\", end = 10000 }]\n[flags.f]");
    std::fs::write(&cfg, added).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let started = std::time::Instant::now();
    while models().await != ["f", "g"] {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "SIGHUP did not reload the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_stdout_ends_the_output_without_a_panic() {
    // `switchyard check | head -1`: the reader goes away after the first line.
    let mut child = Command::new(BIN)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

#[tokio::test]
async fn memory_stays_flat_over_a_flood_of_oversized_ids() {
    let dir = tempdir("flood");
    let cfg = config(&dir);
    let state = format!("--state=sqlite:{}", dir.join("s.db").display());
    let s = Serve::start(&cfg, &dir.join("serve.log"), &[&state], "t");
    let http = client::Http::new();
    let url = format!("{}/v1/chat/completions", s.addr);
    let body = |user: &str| {
        json!({"model": "f", "user": user, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };
    for i in 0..100 {
        let r = http.post_json(&url, &body(&format!("warm-{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let before = rss_mb(s.child.id());
    // 120 requests whose `user` is 1 MB (the report that found this saw 300 of them take the
    // process from 15 MB to 376 MB).
    let big = "x".repeat(1 << 20);
    for i in 0..120 {
        let r = http.post_json(&url, &body(&format!("{big}{i}")), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let after = rss_mb(s.child.id());
    eprintln!("RSS before {before:.1} MB, after 120 oversized ids {after:.1} MB");
    assert!(
        after < before + 48.0,
        "RSS grew from {before:.1} to {after:.1} MB"
    );
    let state_size = std::fs::metadata(dir.join("s.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        state_size < 8 << 20,
        "the state file grew to {state_size} bytes"
    );
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

//! `switchyard ctl` against the real binary: a `switchyard serve` process on the shipped
//! `proxy.toml` (ports 0, working directory a fresh temporary directory so its SQLite state
//! file lands there), operated by `switchyard ctl …` processes through
//! `SWITCHYARD_ADMIN_URL` / `SWITCHYARD_ADMIN_TOKEN`. Checks the readable output, `--json`,
//! the exit codes, and that an acknowledged change survives `kill -9`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const STARTUP: Duration = Duration::from_secs(30);

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "switchyard-ctl-{tag}-{}-{nanos}",
            std::process::id()
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

/// A `switchyard serve` process; killed on drop.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` of the OpenAI-compatible listener.
    url: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    admin_url: String,
    stderr: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Serves `dir/proxy.toml` from `dir`, with `token` as the `ops` admin token.
    fn start(dir: &Path, token: &str) -> Server {
        let stderr_path = dir.join(format!(
            "stderr-{}.log",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
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
            .env_remove("SWITCHYARD_ADMIN_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn switchyard serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        // Keeps reading so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut url, mut admin_url) = (None, None);
        while url.is_none() || admin_url.is_none() {
            match rx.recv_timeout(STARTUP) {
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
                        "switchyard serve did not announce its listeners; stderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
        }
        Server {
            child,
            url: url.unwrap(),
            admin_url: admin_url.unwrap(),
            stderr: stderr_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// A running proxy on a copy of the shipped `proxy.toml`, in a directory of its own.
struct Fixture {
    server: Server,
    token: String,
    dir: TempDir,
}

impl Fixture {
    fn start(tag: &str) -> Fixture {
        let dir = TempDir::new(tag);
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
        std::fs::copy(&shipped, dir.0.join("proxy.toml")).expect("copy proxy.toml");
        let token = format!("ctl-token-{tag}");
        let server = Server::start(&dir.0, &token);
        Fixture { server, token, dir }
    }

    /// `switchyard ctl ARGS` with this proxy's admin URL and token.
    fn ctl(&self, args: &[&str]) -> Ctl {
        ctl(&self.server.admin_url, Some(&self.token), args)
    }

    /// `ctl ARGS --json`, which must succeed and print JSON.
    fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        out.ok(&all.join(" "));
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("ctl {all:?} --json is not JSON ({e}):\n{}", out.stdout))
    }
}

/// What one `ctl` run printed, and its exit code.
#[derive(Debug)]
struct Ctl {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn ok(&self, what: &str) -> &Ctl {
        assert_eq!(
            self.code, 0,
            "ctl {what} exited {}:\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    fn says(&self, needle: &str) -> &Ctl {
        assert!(
            self.stdout.contains(needle),
            "{needle:?} not in stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

fn ctl(admin_url: &str, token: Option<&str>, args: &[&str]) -> Ctl {
    let mut cmd = Command::new(BIN);
    cmd.arg("ctl")
        .args(args)
        .env("SWITCHYARD_ADMIN_URL", admin_url)
        .stdin(Stdio::null());
    match token {
        Some(t) => cmd.env("SWITCHYARD_ADMIN_TOKEN", t),
        None => cmd.env_remove("SWITCHYARD_ADMIN_TOKEN"),
    };
    let out = cmd.output().expect("run switchyard ctl");
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn chat(url: &str, flag: &str, user: &str) -> client::Resp {
    let body =
        json!({"model": flag, "user": user, "messages": [{"role": "user", "content": "hello"}]});
    client::post_json(
        &format!("{url}/v1/chat/completions"),
        &body.to_string(),
        &[],
    )
    .await
}

#[test]
fn ctl_shows_and_changes_flags() {
    let fx = Fixture::start("flags");

    fx.ctl(&["flags"])
        .ok("flags")
        .says("support-assistant  ON")
        .says("summarizer  ON")
        .says("gpt-4o")
        .says("rollout rollout-next of next: stage 2/4");
    let flags = fx.ctl_json(&["flags"]);
    let keys: Vec<&str> = flags["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f["flag"].as_str())
        .collect();
    assert_eq!(keys, ["kb-embeddings", "summarizer", "support-assistant"]);

    fx.ctl(&["flag", "support-assistant"])
        .ok("flag")
        .says("enabled: true from config")
        .says("control")
        .says("treatment")
        .says("claude-3-5-sonnet");
    let flag = fx.ctl_json(&["flag", "support-assistant"]);
    assert_eq!(flag["enabled"], true);

    // Kill switch off and on, with a reason.
    fx.ctl(&["disable", "support-assistant", "--reason", "incident 42"])
        .ok("disable")
        .says("OFF (kill switch)")
        .says("enabled: false from runtime")
        .says("set_enabled by ops");
    assert_eq!(
        fx.ctl_json(&["flag", "support-assistant"])["enabled"],
        false
    );
    fx.ctl(&["enable", "support-assistant"])
        .ok("enable")
        .says("support-assistant  ON");

    // Forced fallback for one variation, then lifted.
    fx.ctl(&["fallback", "support-assistant", "--variation", "treatment"])
        .ok("fallback")
        .says("[forced fallback]");
    let flag = fx.ctl_json(&["flag", "support-assistant"]);
    let forced: Vec<(&str, bool)> = flag["variations"]
        .as_array()
        .expect("variations")
        .iter()
        .map(|v| {
            (
                v["variation"].as_str().unwrap_or("?"),
                v["forced_fallback"] == true,
            )
        })
        .collect();
    assert_eq!(forced, [("control", false), ("treatment", true)]);
    let out = fx.ctl(&[
        "fallback",
        "support-assistant",
        "--variation",
        "treatment",
        "--off",
    ]);
    out.ok("fallback --off");
    assert!(!out.stdout.contains("[forced fallback]"), "{}", out.stdout);
    fx.ctl(&["fallback", "support-assistant"])
        .ok("fallback (whole flag)")
        .says("rule-based answers FORCED");
    fx.ctl(&["fallback", "support-assistant", "--off"])
        .ok("fallback --off (whole flag)");

    // The audit log, newest first, filtered and limited.
    fx.ctl(&["audit", "--flag", "support-assistant", "--limit", "10"])
        .ok("audit")
        .says("set_enabled")
        .says("incident 42")
        .says("set_forced_fallback");
    let audit = fx.ctl_json(&["audit", "--flag", "support-assistant", "--limit", "3"]);
    let entries = audit["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    let ids: Vec<i64> = entries.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert!(entries.iter().all(|e| e["actor"] == "ops"));
    let all = fx.ctl_json(&["audit", "--limit", "100"]);
    assert_eq!(all["entries"].as_array().map(Vec::len), Some(6));
    fx.ctl(&["audit", "--flag", "summarizer"])
        .ok("audit (empty)")
        .says("(no entries)");

    // An unknown flag is an API refusal.
    let out = fx.ctl(&["disable", "no-such-flag"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404"), "{out:?}");
    assert!(out.stderr.contains("no-such-flag"), "{out:?}");
}

#[test]
fn ctl_drives_a_rollout_through_its_gate() {
    let fx = Fixture::start("rollout");

    fx.ctl(&["rollout", "summarizer"])
        .ok("rollout")
        .says("stage 2/4 = 10")
        .says("gate not met")
        .says("requests in this stage");
    let ro = fx.ctl_json(&["rollout", "summarizer"]);
    assert_eq!(ro["rollouts"][0]["stage"], 2);

    // The gate is not met: refused, with the reasons, exit 1; nothing changes.
    let out = fx.ctl(&["advance", "summarizer"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("- 0 requests in this stage, the gate needs 100"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("holds it 600s"), "{}", out.stderr);
    assert_eq!(
        fx.ctl_json(&["rollout", "summarizer"])["rollouts"][0]["stage"],
        2
    );

    // Forced: audited as such.
    fx.ctl(&[
        "advance",
        "summarizer",
        "--force",
        "--reason",
        "checked by hand",
    ])
    .ok("advance --force")
    .says("stage 3/4")
    .says("set_rollout_stage by ops");
    let last = fx.ctl_json(&["audit", "--flag", "summarizer", "--limit", "1"]);
    let reason = last["entries"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("forced"), "{reason}");
    assert!(reason.contains("checked by hand"), "{reason}");

    fx.ctl(&["rollback", "summarizer"])
        .ok("rollback")
        .says("stage 2/4");
    fx.ctl(&["stage", "summarizer", "4"])
        .ok("stage 4")
        .says("stage 4/4 = 100");
    let out = fx.ctl(&["stage", "summarizer", "5"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("400"), "{}", out.stderr);
    let out = fx.ctl(&["advance", "summarizer", "--force"]);
    assert_eq!(out.code, 1, "advance past the last stage: {out:?}");

    fx.ctl(&["hold", "summarizer"]).ok("hold").says("[held]");
    assert_eq!(
        fx.ctl_json(&["rollout", "summarizer"])["rollouts"][0]["held"],
        true
    );
    let out = fx.ctl(&["hold", "summarizer", "--release"]);
    out.ok("hold --release");
    assert!(!out.stdout.contains("[held]"), "{}", out.stdout);

    fx.ctl(&["stage", "summarizer", "0"]).ok("stage 0");
    let out = fx.ctl(&["rollback", "summarizer"]);
    assert_eq!(out.code, 1, "rollback at stage 0: {out:?}");
    assert!(out.stderr.contains("409"), "{}", out.stderr);

    // A flag without a rollout.
    let out = fx.ctl(&["rollout", "support-assistant"]);
    assert_eq!(out.code, 1, "{out:?}");
}

#[test]
fn ctl_reload_reports_the_new_config_or_its_errors() {
    let fx = Fixture::start("reload");
    fx.ctl(&["reload"]).ok("reload").says("reloaded: unchanged");
    let path = fx.dir.0.join("proxy.toml");
    let good = std::fs::read_to_string(&path).expect("read proxy.toml");
    std::fs::write(
        &path,
        good.replace("latency = \"15ms\"", "latency = \"10ms\""),
    )
    .unwrap();
    let v = fx.ctl_json(&["reload"]);
    assert_eq!(v["changed"], true);
    let bad = good.replace("temperature = 0.3", "temperature = \"warm\"");
    let line = bad
        .lines()
        .position(|l| l.contains("\"warm\""))
        .expect("the bad line")
        + 1;
    std::fs::write(&path, &bad).unwrap();
    let out = fx.ctl(&["reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("422"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("proxy.toml:{line}")),
        "no file:line in {}",
        out.stderr
    );
    assert!(out.stderr.contains("temperature"), "{}", out.stderr);
    // Still serving.
    fx.ctl(&["flags"]).ok("flags after a rejected reload");
}

#[test]
fn ctl_exit_codes() {
    // Nothing listens: 3.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = ctl(&format!("http://127.0.0.1:{port}"), Some("t"), &["flags"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);

    let fx = Fixture::start("codes");
    // No token: 1, with a hint.
    let out = ctl(&fx.server.admin_url, None, &["flags"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert!(
        out.stderr.contains("SWITCHYARD_ADMIN_TOKEN"),
        "no hint: {}",
        out.stderr
    );
    // A wrong token: 1, with a hint too.
    let out = ctl(
        &fx.server.admin_url,
        Some("not-the-token"),
        &["disable", "summarizer"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert!(
        out.stderr.contains("SWITCHYARD_ADMIN_TOKEN"),
        "a wrong token gets no hint: {}",
        out.stderr
    );
    assert_eq!(fx.ctl_json(&["flag", "summarizer"])["enabled"], true);
    // Usage errors are 2.
    let out = fx.ctl(&["stage", "summarizer", "not-a-number"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test]
async fn a_kill_switch_survives_kill_9() {
    let mut fx = Fixture::start("durable");
    let r = chat(&fx.server.url, "support-assistant", "user-7").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-fallback"), None);

    fx.ctl(&[
        "disable",
        "support-assistant",
        "--reason",
        "before the crash",
    ])
    .ok("disable")
    .says("OFF (kill switch)");
    // SIGKILL right after the acknowledgement: no graceful shutdown, no flush.
    fx.server.child.kill().expect("kill -9");
    fx.server.child.wait().expect("wait");

    fx.server = Server::start(&fx.dir.0, &fx.token);
    fx.ctl(&["flag", "support-assistant"])
        .ok("flag after restart")
        .says("OFF (kill switch)")
        .says("enabled: false from runtime");
    let r = chat(&fx.server.url, "support-assistant", "user-7").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-switchyard-fallback").as_deref(),
        Some("kill_switch"),
        "after the restart the flag is on again; server stderr:\n{}",
        fx.server.stderr()
    );
    assert_eq!(
        r.header("x-switchyard-variation").as_deref(),
        Some("control")
    );
    let audit = fx.ctl_json(&["audit", "--flag", "support-assistant"]);
    assert_eq!(audit["entries"][0]["reason"], "before the crash", "{audit}");
    assert!(
        fx.dir.0.join("switchyard-state.db").exists(),
        "the SQLite file is not in the working directory"
    );
}

#[tokio::test]
async fn an_acknowledged_feedback_event_survives_kill_9() {
    let mut fx = Fixture::start("feedback");
    // A user of the A/B rule, exposed, then converting (by flag and user: re-decided).
    let r = chat(&fx.server.url, "support-assistant", "user-42").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let variation = r.header("x-switchyard-variation").unwrap();
    // Exposures are written off the request path: wait until this one is stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let results = fx.ctl_json(&["results", "support-assistant", "--metric", "conversion"]);
        if results["srm"]["observed"][variation.as_str()].as_u64() == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exposure not stored: {results}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let event = serde_json::json!({"event_id": "conv-42", "metric": "conversion", "value": true, "flag": "support-assistant", "user": "user-42"});
    let ack = client::post_json(
        &format!("{}/v1/feedback", fx.server.url),
        &event.to_string(),
        &[],
    )
    .await;
    assert_eq!(ack.status, 200, "{}", ack.text());
    assert_eq!(ack.json()["accepted"], 1);
    // SIGKILL right after the acknowledgement.
    fx.server.child.kill().expect("kill -9");
    fx.server.child.wait().expect("wait");

    fx.server = Server::start(&fx.dir.0, &fx.token);
    // The event is counted after the restart: a duplicate now, and in the results.
    let again = client::post_json(
        &format!("{}/v1/feedback", fx.server.url),
        &event.to_string(),
        &[],
    )
    .await;
    assert_eq!(again.json()["duplicates"], 1, "{}", again.text());
    let results = fx.ctl_json(&["results", "support-assistant", "--metric", "conversion"]);
    let rows = results["variations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let control_value = results["variations"][0]["control_value"].as_f64();
    let counted = rows.iter().any(|r| {
        r["variation"] == variation.as_str() && r["value"].as_f64().is_some_and(|v| v > 0.0)
    }) || (variation == "control" && control_value.is_some_and(|v| v > 0.0));
    assert!(
        counted,
        "the conversion of {variation} is not in the results after the restart: {results}"
    );
}

/// The shipped `proxy.toml` runs a bandit on `support-assistant`: its state is served over
/// HTTP, an epoch run now is recorded (held: too few users), replayed by `ctl`, and the
/// bandit's alert is listed at `ok`.
#[tokio::test]
async fn the_shipped_bandit_is_live() {
    let fx = Fixture::start("bandit");
    let auth = format!("Bearer {}", fx.token);
    let admin = |method: hyper::Method, path: &str, body: Value| {
        let url = format!("{}{path}", fx.server.admin_url);
        let auth = auth.clone();
        async move {
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            client::request(
                method,
                &url,
                body,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
            )
            .await
        }
    };
    let path = "/admin/flags/support-assistant/bandit";

    let r = admin(hyper::Method::GET, path, Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["rule"], "ab-2026-11", "{v}");
    assert_eq!(v["control"], "control", "{v}");
    assert_eq!(v["metric"], "task_completed", "{v}");
    assert_eq!(v["algorithm"], "thompson_beta_bernoulli", "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["epoch"], 0, "{v}");
    assert_eq!(
        v["weights"],
        json!({"control": 5000, "treatment": 5000}),
        "{v}"
    );
    assert_eq!(v["settings"]["floor"], 0.05, "{v}");
    assert_eq!(v["settings"]["cadence"], "15m", "{v}");
    assert_eq!(v["settings"]["min_users_per_arm"], 100, "{v}");
    assert_eq!(
        v["settings"]["stop"],
        json!({"p_best": 0.95, "then": "hold"}),
        "{v}"
    );
    let guards: Vec<&str> = v["settings"]["guardrails"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["metric"].as_str())
        .collect();
    assert_eq!(
        guards,
        ["error_rate", "hallucination", "p95_latency_seconds"],
        "{v}"
    );

    // A few users, then an epoch now: recorded, held for too few users, weights unchanged.
    for i in 0..6 {
        let r = chat(&fx.server.url, "support-assistant", &format!("bandit-{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = admin(
        hyper::Method::POST,
        &format!("{path}/epoch"),
        json!({"reason": "first look"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["epoch"], 1, "{e}");
    assert_eq!(e["why"], "too_few_users", "{e}");
    assert_eq!(e["status_after"], "running", "{e}");
    assert_eq!(
        e["weights_after"],
        json!({"control": 5000, "treatment": 5000}),
        "{e}"
    );
    let v = admin(hyper::Method::GET, path, Value::Null).await.json();
    assert_eq!(v["epoch"], 1, "{v}");
    assert_eq!(v["epochs"].as_array().map(Vec::len), Some(1), "{v}");
    fx.ctl(&["bandit", "replay", "support-assistant", "1"])
        .ok("bandit replay");

    let alerts = admin(hyper::Method::GET, "/admin/alerts", Value::Null)
        .await
        .json();
    let entry = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alert"] == "bandit:support-assistant")
        .cloned()
        .unwrap_or_else(|| panic!("no bandit alert: {alerts}"));
    assert_eq!(entry["level"], "ok", "{entry}");
    assert_eq!(entry["variation"], "control", "{entry}");
}

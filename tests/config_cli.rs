//! The `switchyard` binary: `check`, `decide` and `serve`, run as a user would run them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-config-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SWITCHYARD_LOG")
        .output()
        .expect("run the switchyard binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn check(path: &Path) -> Output {
    run(&["check", "--config", path.to_str().unwrap()])
}

/// `decide --json` on `config`; the parsed object.
fn decide_json(config: &str, flag: &str, user: &str, attrs: &[&str]) -> Value {
    let mut args = vec![
        "decide", "--config", config, "--flag", flag, "--user", user, "--json",
    ];
    for a in attrs {
        args.push("--attr");
        args.push(a);
    }
    let out = run(&args);
    assert!(out.status.success(), "decide failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| {
        panic!(
            "decide --json is not one JSON value ({e}): {}",
            stdout(&out)
        )
    })
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
        + 1
}

/// A valid configuration: one mock provider, one prompt, a tool policy, an audience, and a
/// flag with an audience rule and an "everyone else" split written over several lines.
const BASE: &str = r#"# a test configuration
[server]
listen = "127.0.0.1:8080"
drain_timeout = "30s"

[providers.m]
kind = "mock"

[prompts]
p1 = "You are helpful."

[tool_policies]
search-only = ["web_search"]

[audiences.team]
conditions = ["or", { attribute = "team", match = "exact", value = "ai" }]

[flags.f]
off_variation = "a"

[flags.f.variations.a]
provider = "m"
model_id = "model-a"
system_prompt_variant = "p1"
temperature = 0.3
tool_policy = "search-only"

[flags.f.variations.b]
provider = "m"
model_id = "model-b"

[[flags.f.rules]]
id = "team-first"
audience = "team"
allocation = [{ variation = "b", end = 10000 }]

[[flags.f.rules]]
id = "split"
allocation = [
  { variation = "a", end = 5000 },
  { variation = "b", end = 10000 },
]
"#;

/// `BASE` with `old` (which must occur) replaced by `new`.
fn mutate(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "{old:?} not in BASE");
    BASE.replacen(old, new, 1)
}

/// One expected error: the key path and a substring of the line it must point at.
struct Expect<'a> {
    key: &'a str,
    line_marker: &'a str,
}

/// Checks `config` is rejected by `check`, with `file:line: key` for every expectation.
fn assert_rejected(dir: &TempDir, name: &str, config: &str, expected: &[Expect<'_>]) -> String {
    let path = dir.write(&format!("{name}.toml"), config);
    let out = check(&path);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "{name}: accepted an invalid config\nstdout: {}",
        stdout(&out)
    );
    for e in expected {
        let line = line_of(config, e.line_marker);
        let want = format!("{}:{line}: {}", path.display(), e.key);
        assert!(
            err.contains(&want),
            "{name}: expected {want:?} in the errors:\n{err}"
        );
    }
    err
}

// ---------------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_accepts_the_shipped_config_and_summarises_it() {
    let out = run(&["check", "--config", SHIPPED]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("support-assistant"), "{text}");
    assert!(text.contains("summarizer"), "{text}");
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn check_accepts_the_test_base_config() {
    let dir = TempDir::new();
    let out = check(&dir.write("base.toml", BASE));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_unknown_top_level_key_is_rejected_with_file_line_and_key() {
    let dir = TempDir::new();
    let top = format!("# first line\ncolour = \"red\"\n{BASE}");
    let err = assert_rejected(
        &dir,
        "unknown-top",
        &top,
        &[Expect {
            key: "colour",
            line_marker: "colour = ",
        }],
    );
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn unknown_nested_keys_are_rejected_with_file_line_and_key_path() {
    let dir = TempDir::new();
    let cases = [
        (
            "unknown-in-variation",
            mutate(
                "model_id = \"model-a\"\n",
                "model_id = \"model-a\"\ncolour = \"red\"\n",
            ),
            "flags.f.variations.a.colour",
            "colour = ",
        ),
        (
            "unknown-in-server",
            mutate(
                "drain_timeout = \"30s\"\n",
                "drain_timeout = \"30s\"\nlisten_twice = true\n",
            ),
            "server.listen_twice",
            "listen_twice",
        ),
        (
            "unknown-in-rule",
            mutate("id = \"split\"\n", "id = \"split\"\nweight = 3\n"),
            "flags.f.rules[1].weight",
            "weight = 3",
        ),
        (
            "unknown-in-allocation",
            mutate(
                "{ variation = \"a\", end = 5000 }",
                "{ variation = \"a\", end = 5000, colour = 1 }",
            ),
            "flags.f.rules[1].allocation[0].colour",
            "colour = 1",
        ),
    ];
    // Every case is tried before failing, so one run shows them all.
    let mut failures = Vec::new();
    for (name, config, key, marker) in &cases {
        let path = dir.write(&format!("{name}.toml"), config);
        let out = check(&path);
        let err = stderr(&out);
        let want = format!("{}:{}: {key}", path.display(), line_of(config, marker));
        if out.status.success() || !err.contains(&want) {
            failures.push(format!("{name}: expected {want:?} in:\n{err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dangling_references_are_rejected_with_file_line_and_key() {
    let dir = TempDir::new();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "missing-provider",
            mutate(
                "provider = \"m\"\nmodel_id = \"model-b\"",
                "provider = \"nope\"\nmodel_id = \"model-b\"",
            ),
            "flags.f.variations.b.provider",
            "provider = \"nope\"",
        ),
        (
            "missing-prompt",
            mutate(
                "system_prompt_variant = \"p1\"",
                "system_prompt_variant = \"p9\"",
            ),
            "flags.f.variations.a.system_prompt_variant",
            "\"p9\"",
        ),
        (
            "missing-tool-policy",
            mutate(
                "tool_policy = \"search-only\"",
                "tool_policy = \"browse-only\"",
            ),
            "flags.f.variations.a.tool_policy",
            "browse-only",
        ),
        (
            "unknown-audience",
            mutate("audience = \"team\"", "audience = \"nobody\""),
            "flags.f.rules[0].audience",
            "\"nobody\"",
        ),
        (
            "off-variation",
            mutate("off_variation = \"a\"", "off_variation = \"zzz\""),
            "flags.f.off_variation",
            "\"zzz\"",
        ),
    ];
    for (name, config, key, marker) in &cases {
        assert_rejected(
            &dir,
            name,
            config,
            &[Expect {
                key,
                line_marker: marker,
            }],
        );
    }
}

#[test]
fn bad_values_are_rejected_with_file_line_and_key() {
    let dir = TempDir::new();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unordered-ends",
            mutate(
                "  { variation = \"a\", end = 5000 },\n  { variation = \"b\", end = 10000 },",
                "  { variation = \"a\", end = 6000 },\n  { variation = \"b\", end = 5000 },\n  { variation = \"a\", end = 10000 },",
            ),
            "flags.f.rules[1].allocation[1].end",
            "end = 5000",
        ),
        (
            "h2c-on-mock",
            mutate("kind = \"mock\"\n", "kind = \"mock\"\nhttp2_prior_knowledge = true\n"),
            "providers.m.http2_prior_knowledge",
            "http2_prior_knowledge",
        ),
        (
            "h2c-over-https",
            mutate(
                "[prompts]\n",
                "[providers.o]\nkind = \"openai\"\nbase_url = \"https://api.example.com/v1\"\nhttp2_prior_knowledge = true\n\n[prompts]\n",
            ),
            "providers.o.http2_prior_knowledge",
            "http2_prior_knowledge",
        ),
        (
            "end-too-large",
            mutate("{ variation = \"b\", end = 10000 },\n]", "{ variation = \"b\", end = 10001 },\n]"),
            "flags.f.rules[1].allocation[1].end",
            "end = 10001",
        ),
        (
            "temperature-high",
            mutate("temperature = 0.3", "temperature = 2.5"),
            "flags.f.variations.a.temperature",
            "temperature = 2.5",
        ),
        (
            "temperature-negative",
            mutate("temperature = 0.3", "temperature = -0.1"),
            "flags.f.variations.a.temperature",
            "temperature = -0.1",
        ),
        (
            "bad-duration",
            mutate("drain_timeout = \"30s\"", "drain_timeout = \"soon\""),
            "server.drain_timeout",
            "\"soon\"",
        ),
        (
            "unknown-match-type",
            mutate("match = \"exact\"", "match = \"fuzzy\""),
            "audiences.team.conditions",
            "fuzzy",
        ),
    ];
    for (name, config, key, marker) in &cases {
        let err = assert_rejected(
            &dir,
            name,
            config,
            &[Expect {
                key,
                line_marker: marker,
            }],
        );
        if *name == "unknown-match-type" {
            assert!(
                err.contains("fuzzy"),
                "the message names the match type: {err}"
            );
        }
    }
}

#[test]
fn rule_structure_errors_are_rejected_with_file_line_and_key() {
    let dir = TempDir::new();
    let rules_start = BASE.find("[[flags.f.rules]]").unwrap();
    let no_rules = BASE[..rules_start].to_owned();
    assert_rejected(
        &dir,
        "no-rules",
        &no_rules,
        &[Expect {
            key: "flags.f",
            line_marker: "[flags.f]",
        }],
    );
    let last_with_audience = mutate(
        "id = \"split\"\n",
        "id = \"split\"\naudience = \"team\" # last\n",
    );
    assert_rejected(
        &dir,
        "last-rule-audience",
        &last_with_audience,
        &[Expect {
            key: "flags.f.rules[1].audience",
            line_marker: "# last",
        }],
    );
    assert_rejected(
        &dir,
        "duplicate-rule-id",
        &mutate("id = \"split\"", "id = \"team-first\" # again"),
        &[Expect {
            key: "flags.f.rules[1].id",
            line_marker: "# again",
        }],
    );
}

#[test]
fn an_unset_api_key_env_is_rejected_with_file_line_and_key() {
    let dir = TempDir::new();
    let var = format!("SWITCHYARD_TEST_UNSET_{}", std::process::id());
    let config = format!(
        "{BASE}\n[providers.o]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"{var}\"\n"
    );
    let path = dir.write("unset-env.toml", &config);
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove(&var)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let want = format!(
        "{}:{}: providers.o.api_key_env",
        path.display(),
        line_of(&config, "api_key_env")
    );
    assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    assert!(err.contains(&var), "the message names the variable: {err}");

    // Set, it passes.
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env(&var, "sk-test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("sk-test"));
}

#[test]
fn several_errors_in_one_file_are_all_reported() {
    let dir = TempDir::new();
    let config = BASE
        .replacen("temperature = 0.3", "temperature = 2.5", 1)
        .replacen(
            "provider = \"m\"\nmodel_id = \"model-b\"",
            "provider = \"nope\"\nmodel_id = \"model-b\"",
            1,
        )
        .replacen("drain_timeout = \"30s\"", "drain_timeout = \"soon\"", 1)
        .replacen(
            "{ variation = \"b\", end = 10000 },\n]",
            "{ variation = \"b\", end = 10001 },\n]",
            1,
        );
    let err = assert_rejected(
        &dir,
        "several",
        &config,
        &[
            Expect {
                key: "server.drain_timeout",
                line_marker: "\"soon\"",
            },
            Expect {
                key: "flags.f.variations.a.temperature",
                line_marker: "temperature = 2.5",
            },
            Expect {
                key: "flags.f.variations.b.provider",
                line_marker: "provider = \"nope\"",
            },
            Expect {
                key: "flags.f.rules[1].allocation[1].end",
                line_marker: "end = 10001",
            },
        ],
    );
    assert!(err.contains("4 error"), "a count of the errors: {err}");
}

#[test]
fn a_missing_file_is_reported() {
    let dir = TempDir::new();
    let path = dir.0.join("does-not-exist.toml");
    let out = check(&path);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does-not-exist.toml"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// decide
// ---------------------------------------------------------------------------------------------

#[test]
fn decide_prints_one_json_object_or_readable_lines() {
    let out = run(&[
        "decide",
        "--config",
        SHIPPED,
        "--flag",
        "support-assistant",
        "--user",
        "u-123",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not exactly one JSON value ({e}): {text}"));
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    };
    assert_eq!(
        keys,
        ["bucket", "flag", "reason", "rule", "variables", "variation"]
    );
    assert_eq!(v["flag"], "support-assistant");
    assert!(
        v["variation"] == "control" || v["variation"] == "treatment",
        "{v}"
    );
    assert!(v["bucket"].as_u64().is_some_and(|b| b < 10_000), "{v}");
    assert!(v["variables"].is_object());

    let out = run(&[
        "decide",
        "--config",
        SHIPPED,
        "--flag",
        "support-assistant",
        "--user",
        "u-123",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for (label, value) in [
        ("variation", v["variation"].as_str().unwrap().to_owned()),
        ("rule", v["rule"].as_str().unwrap().to_owned()),
        ("bucket", v["bucket"].to_string()),
        ("reason", v["reason"].as_str().unwrap().to_owned()),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in:\n{text}"));
        assert!(
            line.contains(&value),
            "{label} line {line:?} should show {value}"
        );
    }
}

#[test]
fn decide_with_an_attribute_lands_in_the_internal_team_rule() {
    let v = decide_json(
        SHIPPED,
        "support-assistant",
        "u-123",
        &["email=x@acme.example"],
    );
    assert_eq!(v["rule"], "internal-first", "{v}");
    assert_eq!(v["variation"], "treatment", "{v}");
    assert_eq!(v["reason"], "rule_match", "{v}");
    // Without the attribute the same user is decided by a later rule.
    let v = decide_json(SHIPPED, "support-assistant", "u-123", &[]);
    assert_ne!(v["rule"], "internal-first", "{v}");
}

#[test]
fn decide_rejects_an_unknown_flag_and_a_malformed_attr() {
    let out = run(&[
        "decide",
        "--config",
        SHIPPED,
        "--flag",
        "no-such-flag",
        "--user",
        "u-1",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no-such-flag"), "{err}");
    assert!(err.contains("unknown flag"), "{err}");
    assert!(stdout(&out).trim().is_empty(), "{}", stdout(&out));

    let out = run(&[
        "decide",
        "--config",
        SHIPPED,
        "--flag",
        "support-assistant",
        "--user",
        "u-1",
        "--attr",
        "emailonly",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("emailonly"), "{err}");
    assert!(err.contains("KEY=VALUE"), "{err}");
}

#[test]
fn readme_users_land_in_different_variations() {
    let one = decide_json(SHIPPED, "support-assistant", "u-1", &[]);
    let other = decide_json(SHIPPED, "support-assistant", "u-123", &[]);
    assert_ne!(
        one["variation"], other["variation"],
        "the README walk-through shows u-1 and u-123 in different variations"
    );
}

// ---------------------------------------------------------------------------------------------
// serve: the CLI, /v1/decide and a real chat request agree
// ---------------------------------------------------------------------------------------------

/// A served binary, killed if the test ends early.
struct Served {
    child: Child,
    main: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve(config: &str) -> Served {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("SWITCHYARD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start switchyard serve");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut main = None;
    let mut admin = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while main.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not print its addresses");
            }
        };
        if let Some(a) = line.strip_prefix("switchyard listening on http://") {
            main = Some(a.trim().parse().unwrap());
        } else if let Some(a) = line.strip_prefix("switchyard admin listening on http://") {
            admin = Some(a.trim().parse().unwrap());
        }
    }
    Served {
        child,
        main: main.unwrap(),
        admin: admin.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_decide_http_decide_and_chat_headers_agree_and_sigterm_exits_cleanly() {
    let mut served = serve(SHIPPED);
    let base = format!("http://{}", served.main);
    let http = client::Http::new();

    let health = http.get(&format!("http://{}/healthz", served.admin)).await;
    assert_eq!(health.status, 200);

    for n in 0..50 {
        let user = format!("agree-{n}");
        let cli = tokio::task::spawn_blocking({
            let user = user.clone();
            move || decide_json(SHIPPED, "support-assistant", &user, &[])
        })
        .await
        .unwrap();
        let http_decide = http
            .get(&format!(
                "{base}/v1/decide?flag=support-assistant&user={user}"
            ))
            .await;
        assert_eq!(http_decide.status, 200, "{}", http_decide.text());
        assert_eq!(http_decide.json(), cli, "CLI and /v1/decide for {user}");
        let body = json!({
            "model": "support-assistant",
            "user": user,
            "messages": [{"role": "user", "content": "Where is my order?"}],
        })
        .to_string();
        let chat = http
            .post_json(&format!("{base}/v1/chat/completions"), &body, &[])
            .await;
        assert_eq!(chat.status, 200, "{}", chat.text());
        assert_eq!(
            chat.header("x-switchyard-variation").as_deref(),
            cli["variation"].as_str(),
            "chat header and CLI for {user}"
        );
        assert_eq!(
            chat.header("x-switchyard-rule").as_deref(),
            cli["rule"].as_str()
        );
        assert_eq!(
            chat.json()["model"],
            cli["variables"]["model_id"],
            "the mock echoes the variation's model"
        );
    }

    // SIGTERM: a clean exit, promptly.
    let pid = served.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    // The default drain_delay (5 s) keeps the listeners open first; a generous bound beyond it.
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit within 40 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

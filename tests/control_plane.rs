//! The control plane through its real interfaces: the admin API on the admin listener (bearer
//! tokens, kill switch, forced fallback, rollouts and their gates, audit log, reload), checked
//! from the outside: what chat clients get on the main listener, what `/metrics` says, what
//! the audit log kept.
//!
//! Every proxy here runs in-process on `127.0.0.1:0` with its own SQLite state file in a
//! fresh temporary directory and its own admin token variables, so tests run in parallel
//! without sharing anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/http.rs"]
mod client;
#[path = "support/faults.rs"]
mod faults;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use client::{Http, Resp};
use faults::{Fault, FaultServer};
use proxy::TestProxy;

const CHAT: &str = "/v1/chat/completions";
const FALLBACK_HEADER: &str = "x-switchyard-fallback";
const VARIATION_HEADER: &str = "x-switchyard-variation";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-cp-{tag}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One named admin token, set in a variable of its own before the config is parsed.
struct Token {
    name: &'static str,
    var: String,
    value: String,
}

impl Token {
    fn new(test: &str, name: &'static str) -> Token {
        let var = format!(
            "SWITCHYARD_CP_{}_{}",
            test.to_uppercase().replace('-', "_"),
            name.to_uppercase()
        );
        let value = format!("tok-{test}-{name}-{:x}", nanos());
        std::env::set_var(&var, &value);
        Token { name, var, value }
    }

    fn toml(&self) -> String {
        format!(
            "{{ name = \"{}\", token_env = \"{}\" }}",
            self.name, self.var
        )
    }
}

/// The `[admin]` section for `tokens`.
fn admin_section(tokens: &[&Token]) -> String {
    let list: Vec<String> = tokens.iter().map(|t| t.toml()).collect();
    format!("[admin]\ntokens = [{}]\n", list.join(", "))
}

/// The built-in offline provider and a recognisable rule-based responder.
const MOCK: &str = r#"
[fallback]
default_reply = "RULE-BASED-DEFAULT"

[providers.mock]
kind = "mock"
latency = "1ms"
"#;

/// Flag `f`: variations `a` (off, stable) and `b` on the mock provider, split 50/50.
const FLAG_F: &str = r#"
[flags.f]
off_variation = "a"
stable_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "model-a"
[flags.f.variations.b]
provider = "mock"
model_id = "model-b"
[[flags.f.rules]]
id = "split"
allocation = [{ variation = "a", end = 5000 }, { variation = "b", end = 10000 }]
"#;

/// A flag named `key` whose users all get `b` while it is on (`a` is the off variation).
fn all_b_flag(key: &str) -> String {
    format!(
        r#"
[flags.{key}]
off_variation = "a"
stable_variation = "a"
[flags.{key}.variations.a]
provider = "mock"
model_id = "{key}-model-a"
[flags.{key}.variations.b]
provider = "mock"
model_id = "{key}-model-b"
[[flags.{key}.rules]]
id = "everyone"
allocation = [{{ variation = "b", end = 10000 }}]
"#
    )
}

/// A proxy under test with its state directory and its `ops` token.
struct Cp {
    proxy: TestProxy,
    ops: Token,
    _dir: TempDir,
}

impl Cp {
    /// Serves `body` (everything but `[admin]` and `[state]`) with an `ops` token plus
    /// `extra` tokens, on a fresh SQLite state file.
    async fn start(test: &str, body: &str, extra: &[&Token]) -> Cp {
        let ops = Token::new(test, "ops");
        let mut tokens = vec![&ops];
        tokens.extend_from_slice(extra);
        let src = format!("{}\n{body}", admin_section(&tokens));
        let mut config = switchyard::Config::parse(&src, "test.toml")
            .unwrap_or_else(|e| panic!("invalid test config:\n{e}\n---\n{src}"));
        let dir = TempDir::new(test);
        config.state_url = format!("sqlite:{}", dir.path().join("state.db").display());
        let proxy = TestProxy::start_config(config).await;
        Cp {
            proxy,
            ops,
            _dir: dir,
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        admin_request(
            self.proxy.admin_addr,
            Some(&self.ops.value),
            method,
            path,
            body,
        )
        .await
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.admin(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
        r.json()
    }

    /// A change that must be accepted.
    async fn change(&self, method: Method, path: &str, body: Value) -> Value {
        let r = self.admin(method.clone(), path, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}: {}", r.text());
        r.json()
    }

    async fn chat(&self, flag: &str, user: &str) -> Resp {
        chat(self.proxy.addr, flag, user).await
    }

    async fn decide(&self, flag: &str, user: &str) -> Value {
        decide(self.proxy.addr, flag, user).await
    }

    async fn metrics(&self) -> String {
        client::get(&self.proxy.admin_url("/metrics")).await.text()
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let v = self.get(&format!("/admin/audit?{query}")).await;
        v["entries"].as_array().expect("entries").clone()
    }

    async fn rollout(&self, flag: &str) -> Value {
        let v = self.get(&format!("/admin/flags/{flag}/rollout")).await;
        v["rollouts"][0].clone()
    }
}

async fn admin_request(
    admin: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    client::request(method, &format!("http://{admin}{path}"), body, &headers).await
}

async fn chat(addr: SocketAddr, flag: &str, user: &str) -> Resp {
    let body = json!({"model": flag, "user": user, "messages": [{"role": "user", "content": "hello there"}]});
    client::post_json(&format!("http://{addr}{CHAT}"), &body.to_string(), &[]).await
}

async fn decide(addr: SocketAddr, flag: &str, user: &str) -> Value {
    let r = client::get(&format!("http://{addr}/v1/decide?flag={flag}&user={user}")).await;
    assert_eq!(r.status, StatusCode::OK, "decide: {}", r.text());
    r.json()
}

/// The value of the sample of `name` carrying every label in `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_part, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let have: Vec<&str> = label_part.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
}

/// The body is an OpenAI-shaped error with this status.
fn assert_openai_error(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
    let v = r.json();
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no error.message in {v}"
    );
    assert!(e["type"].is_string(), "{what}: no error.type in {v}");
    assert!(
        e.as_object()
            .is_some_and(|o| o.contains_key("param") && o.contains_key("code")),
        "{what}: error.param / error.code missing in {v}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: content-type {:?}",
        r.header("content-type")
    );
    v
}

/// Polls `check` every 50 ms until it gives a value; fails the test after `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
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

/// The first `n` users (`{prefix}0`, `{prefix}1`, …) whose decision satisfies `want`.
async fn users_where(
    addr: SocketAddr,
    flag: &str,
    prefix: &str,
    n: usize,
    want: impl Fn(&Value) -> bool,
) -> Vec<String> {
    let mut found = Vec::new();
    for i in 0..5000 {
        let user = format!("{prefix}{i}");
        if want(&decide(addr, flag, &user).await) {
            found.push(user);
            if found.len() == n {
                return found;
            }
        }
    }
    panic!("fewer than {n} users of 5000 matched on flag {flag}");
}

// ---------------------------------------------------------------------------------------------
// 1. Authentication, actors, the OpenAPI document
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_api_requires_a_valid_token_and_audits_its_name() {
    let ci = Token::new("auth", "ci");
    let unset = Token::new("auth", "nobody");
    std::env::remove_var(&unset.var);
    let cp = Cp::start("auth", &format!("{MOCK}{FLAG_F}"), &[&ci, &unset]).await;
    let admin = cp.proxy.admin_addr;

    let refused: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("wrong token", Some("Bearer not-the-token".into())),
        ("another test's token", Some("Bearer tok-other".into())),
        ("basic scheme", Some(format!("Basic {}", cp.ops.value))),
        ("scheme without token", Some("Bearer".into())),
        ("empty token", Some("Bearer ".into())),
        (
            "token with a suffix",
            Some(format!("Bearer {}x", cp.ops.value)),
        ),
        (
            "token prefix only",
            Some(format!("Bearer {}", &cp.ops.value[..8])),
        ),
        ("no scheme", Some(cp.ops.value.clone())),
    ];
    for (what, header) in &refused {
        for (method, path, body) in [
            (Method::GET, "/admin/flags", None),
            (
                Method::PUT,
                "/admin/flags/f/enabled",
                Some(json!({"enabled": false})),
            ),
        ] {
            let mut headers = Vec::new();
            if let Some(h) = header {
                headers.push(("authorization", h.as_str()));
            }
            let body = body.map(|b: Value| b.to_string()).unwrap_or_default();
            let r = client::request(
                method.clone(),
                &format!("http://{admin}{path}"),
                body,
                &headers,
            )
            .await;
            let v = assert_openai_error(&r, 401, &format!("{what} on {method} {path}"));
            assert_eq!(v["error"]["code"], "invalid_api_key", "{what}: {v}");
            assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
        }
    }
    // None of the refused requests changed anything or reached the audit log.
    let flag = cp.get("/admin/flags/f").await;
    assert_eq!(flag["enabled"], true);
    assert!(cp.audit("limit=100").await.is_empty());

    // Valid tokens: each change is audited with the token's name.
    let r = admin_request(
        admin,
        Some(&cp.ops.value),
        Method::GET,
        "/admin/flags",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["flags"].as_array().is_some_and(|f| f.len() == 1));
    let r = admin_request(
        admin,
        Some(&ci.value),
        Method::PUT,
        "/admin/flags/f/enabled",
        Some(json!({"enabled": false, "reason": "from ci"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["audit"]["actor"], "ci");
    let v = cp
        .change(
            Method::PUT,
            "/admin/flags/f/enabled",
            json!({"enabled": true, "reason": "from ops"}),
        )
        .await;
    assert_eq!(v["audit"]["actor"], "ops");
    let entries = cp.audit("flag=f").await;
    let actors: Vec<&str> = entries.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert_eq!(actors, ["ops", "ci"], "newest first: {entries:?}");
    assert_eq!(entries[0]["reason"], "from ops");
    assert_eq!(entries[1]["reason"], "from ci");

    // The token whose variable was unset at start is disabled: not even an empty bearer
    // matches it, nor a value the variable gets later.
    std::env::set_var(&unset.var, "set-after-the-start");
    for presented in ["Bearer ", "Bearer set-after-the-start"] {
        let r = client::request(
            Method::GET,
            &format!("http://{admin}/admin/flags"),
            "",
            &[("authorization", presented)],
        )
        .await;
        assert_openai_error(&r, 401, &format!("the disabled token ({presented:?})"));
    }
}

#[tokio::test]
async fn the_openapi_document_is_served_and_lists_the_admin_api() {
    let cp = Cp::start("openapi", &format!("{MOCK}{FLAG_F}"), &[]).await;
    let r = client::get(&cp.proxy.admin_url("/admin/openapi.json")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let expected: &[(&str, &[&str])] = &[
        ("/admin/flags", &["get"]),
        ("/admin/flags/{flag}", &["get"]),
        ("/admin/flags/{flag}/enabled", &["put"]),
        ("/admin/flags/{flag}/fallback", &["put"]),
        ("/admin/flags/{flag}/rollout", &["get", "put"]),
        ("/admin/flags/{flag}/rollout/advance", &["post"]),
        ("/admin/flags/{flag}/rollout/rollback", &["post"]),
        ("/admin/flags/{flag}/rollout/hold", &["put"]),
        ("/admin/audit", &["get"]),
        ("/admin/reload", &["post"]),
    ];
    for (path, methods) in expected {
        let ops = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not in the document"));
        for m in *methods {
            let op = &ops[*m];
            assert!(op.is_object(), "{m} {path} is not in the document");
            assert!(
                op["responses"]["200"].is_object(),
                "{m} {path} documents no 200"
            );
            assert!(
                op["responses"]["401"].is_object(),
                "{m} {path} documents no 401"
            );
        }
    }
    // Every $ref points at something the document defines.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", &piece[..piece.find('"').expect("a closing quote")]);
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref #{pointer}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Kill switch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_kill_switch_serves_the_off_variation_and_is_audited() {
    let cp = Cp::start("kill", &format!("{MOCK}{}", all_b_flag("k")), &[]).await;
    let metrics = cp.metrics().await;
    assert_eq!(
        metric(&metrics, "switchyard_flag_enabled", &[("flag", "k")]),
        Some(1.0)
    );
    let r = cp.chat("k", "user-1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("b"));
    assert_eq!(r.header(FALLBACK_HEADER), None);

    let v = cp
        .change(
            Method::PUT,
            "/admin/flags/k/enabled",
            json!({"enabled": false, "reason": "incident"}),
        )
        .await;
    assert_eq!(v["flag"]["enabled"], false);
    assert_eq!(v["audit"]["action"], "set_enabled");

    // In force as soon as it is acknowledged, for every user.
    for i in 0..20 {
        let r = cp.chat("k", &format!("user-{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("a"));
        assert_eq!(r.header(FALLBACK_HEADER).as_deref(), Some("kill_switch"));
        assert_eq!(r.json()["model"], "k-model-a");
    }
    let d = cp.decide("k", "user-1").await;
    assert_eq!(d["variation"], "a");
    assert_eq!(d["reason"], "flag_disabled");
    let flag = cp.get("/admin/flags/k").await;
    assert_eq!(flag["enabled"], false);
    assert_eq!(flag["enabled_source"], "runtime");
    assert_eq!(flag["config_enabled"], true);
    let metrics = cp.metrics().await;
    assert_eq!(
        metric(&metrics, "switchyard_flag_enabled", &[("flag", "k")]),
        Some(0.0)
    );

    cp.change(
        Method::PUT,
        "/admin/flags/k/enabled",
        json!({"enabled": true, "reason": "resolved"}),
    )
    .await;
    let r = cp.chat("k", "user-1").await;
    assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("b"));
    assert_eq!(r.header(FALLBACK_HEADER), None);
    let flag = cp.get("/admin/flags/k").await;
    assert_eq!(flag["enabled"], true);
    let metrics = cp.metrics().await;
    assert_eq!(
        metric(&metrics, "switchyard_flag_enabled", &[("flag", "k")]),
        Some(1.0)
    );

    let entries = cp.audit("flag=k&limit=10").await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (newest, oldest) = (&entries[0], &entries[1]);
    assert!(newest["id"].as_i64() > oldest["id"].as_i64());
    for (e, reason, before, after) in [
        (oldest, "incident", true, false),
        (newest, "resolved", false, true),
    ] {
        assert_eq!(e["action"], "set_enabled");
        assert_eq!(e["actor"], "ops");
        assert_eq!(e["flag"], "k");
        assert_eq!(e["reason"], reason);
        assert!(e["at"].as_str().is_some_and(|a| !a.is_empty()), "{e}");
        assert_eq!(e["after"]["enabled"], after, "{e}");
        // Before the first change there is no override: null (the config's value applies).
        let was = &e["before"]["enabled"];
        assert!(
            *was == json!(before) || (before && was.is_null()),
            "before: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Forced fallback
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forced_fallback_for_a_flag_or_one_variation() {
    let cp = Cp::start("forced", &format!("{MOCK}{FLAG_F}"), &[]).await;
    let addr = cp.proxy.addr;
    let a_users = users_where(addr, "f", "fa-", 5, |d| d["variation"] == "a").await;
    let b_users = users_where(addr, "f", "fb-", 5, |d| d["variation"] == "b").await;
    let forced = |m: &str, v: &str| {
        metric(
            m,
            "switchyard_forced_fallback",
            &[("flag", "f"), ("variation", v)],
        )
    };

    // The whole flag.
    let v = cp
        .change(
            Method::PUT,
            "/admin/flags/f/fallback",
            json!({"forced": true, "reason": "provider outage"}),
        )
        .await;
    assert_eq!(v["flag"]["force_fallback"], true);
    for user in a_users.iter().chain(&b_users) {
        let r = cp.chat("f", user).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header(FALLBACK_HEADER).as_deref(), Some("forced"));
        let body = r.json();
        assert_eq!(body["model"], "rule-based");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "RULE-BASED-DEFAULT"
        );
    }
    let m = cp.metrics().await;
    assert_eq!(forced(&m, "_all"), Some(1.0));
    cp.change(
        Method::PUT,
        "/admin/flags/f/fallback",
        json!({"forced": false}),
    )
    .await;
    for user in a_users.iter().chain(&b_users) {
        let r = cp.chat("f", user).await;
        assert_eq!(r.header(FALLBACK_HEADER), None);
        assert_ne!(r.json()["model"], "rule-based");
    }
    assert_eq!(forced(&cp.metrics().await, "_all"), Some(0.0));

    // One variation: only its users get rule-based answers.
    let v = cp
        .change(
            Method::PUT,
            "/admin/flags/f/fallback",
            json!({"forced": true, "variation": "b", "reason": "b misbehaves"}),
        )
        .await;
    assert_eq!(v["flag"]["force_fallback"], false);
    let vars = v["flag"]["variations"].as_array().unwrap();
    let forced_of = |key: &str| {
        vars.iter()
            .find(|x| x["variation"] == key)
            .map(|x| x["forced_fallback"].clone())
    };
    assert_eq!(forced_of("b"), Some(json!(true)));
    assert_eq!(forced_of("a"), Some(json!(false)));
    for user in &b_users {
        let r = cp.chat("f", user).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("b"));
        assert_eq!(r.header(FALLBACK_HEADER).as_deref(), Some("forced"));
        assert_eq!(r.json()["model"], "rule-based");
    }
    for user in &a_users {
        let r = cp.chat("f", user).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("a"));
        assert_eq!(r.header(FALLBACK_HEADER), None);
        assert_eq!(r.json()["model"], "model-a");
    }
    let m = cp.metrics().await;
    assert_eq!(forced(&m, "b"), Some(1.0));
    assert_eq!(forced(&m, "a"), Some(0.0));
    assert_eq!(forced(&m, "_all"), Some(0.0));

    cp.change(
        Method::PUT,
        "/admin/flags/f/fallback",
        json!({"forced": false, "variation": "b"}),
    )
    .await;
    for user in &b_users {
        let r = cp.chat("f", user).await;
        assert_eq!(r.header(FALLBACK_HEADER), None);
        assert_eq!(r.json()["model"], "model-b");
    }
    assert_eq!(forced(&cp.metrics().await, "b"), Some(0.0));

    let entries = cp.audit("flag=f").await;
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|e| e["action"] == "set_forced_fallback"));
    assert_eq!(entries[1]["reason"], "b misbehaves");
}

// ---------------------------------------------------------------------------------------------
// 4. Rollouts driven by an operator
// ---------------------------------------------------------------------------------------------

/// Flag `r`: `next` rolled out over `current` through 1, 5, 10, 25, 100 %.
fn rollout_flag(gate: &str, auto_advance: bool) -> String {
    format!(
        r#"
[flags.r]
off_variation = "current"
stable_variation = "current"
[flags.r.variations.current]
provider = "mock"
model_id = "model-current"
[flags.r.variations.next]
provider = "mock"
model_id = "model-next"
[[flags.r.rules]]
id = "ramp"
rollout = {{ variation = "next", stages = [1, 5, 10, 25, 100], initial_stage = 0, auto_advance = {auto_advance}, gate = {gate} }}
[[flags.r.rules]]
id = "everyone-else"
allocation = [{{ variation = "current", end = 10000 }}]
"#
    )
}

async fn in_rollout(cp: &Cp, users: &[String]) -> BTreeSet<String> {
    let mut inside = BTreeSet::new();
    for u in users {
        let d = cp.decide("r", u).await;
        if d["variation"] == "next" {
            assert_eq!(d["rule"], "ramp", "{d}");
            inside.insert(u.clone());
        }
    }
    inside
}

#[tokio::test]
async fn rollouts_advance_only_through_their_gate_and_keep_users_in() {
    let body = format!(
        "{MOCK}{}",
        rollout_flag(r#"{ min_requests = 100, hold = "10m" }"#, false)
    );
    let cp = Cp::start("rollout", &body, &[]).await;

    let ro = cp.rollout("r").await;
    assert_eq!(ro["rule"], "ramp");
    assert_eq!(ro["variation"], "next");
    assert_eq!(ro["stage"], 0);
    assert_eq!(ro["percent"].as_f64(), Some(1.0));
    assert_eq!(ro["stages"], json!([1.0, 5.0, 10.0, 25.0, 100.0]));
    assert_eq!(ro["held"], false);
    assert_eq!(ro["gate_met"], false);

    // The gate is not met: 409 with the reasons, and nothing changes.
    let r = cp
        .admin(Method::POST, "/admin/flags/r/rollout/advance", None)
        .await;
    let v = assert_openai_error(&r, 409, "advance without the gate");
    assert_eq!(v["error"]["code"], "gate_not_met");
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("requests") && r.contains("100")),
        "min_requests reason missing: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("600s")),
        "hold reason missing: {reasons:?}"
    );
    let r = cp
        .admin(
            Method::POST,
            "/admin/flags/r/rollout/advance",
            Some(json!({"force": false})),
        )
        .await;
    assert_openai_error(&r, 409, "advance with force false");
    assert_eq!(cp.rollout("r").await["stage"], 0);
    assert!(cp.audit("flag=r").await.is_empty());

    // Forced past the gate: audited as forced.
    let v = cp
        .change(
            Method::POST,
            "/admin/flags/r/rollout/advance",
            json!({"force": true, "reason": "hotfix verified by hand"}),
        )
        .await;
    assert_eq!(v["rollout"]["stage"], 1);
    assert_eq!(v["rollout"]["percent"].as_f64(), Some(5.0));
    let reason = v["audit"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("forced"), "{reason}");
    assert!(reason.contains("hotfix verified by hand"), "{reason}");
    assert_eq!(v["audit"]["action"], "set_rollout_stage");

    // Set a stage directly; unknown stages are refused.
    let v = cp
        .change(Method::PUT, "/admin/flags/r/rollout", json!({"stage": 3}))
        .await;
    assert_eq!(v["rollout"]["stage"], 3);
    assert_eq!(v["rollout"]["percent"].as_f64(), Some(25.0));
    for stage in [5, 99, 4_294_967_295u64] {
        let r = cp
            .admin(
                Method::PUT,
                "/admin/flags/r/rollout",
                Some(json!({"stage": stage})),
            )
            .await;
        assert_openai_error(&r, 400, &format!("stage {stage}"));
    }
    for bad in [json!({"stage": -1}), json!({"stage": "2"}), json!({})] {
        let r = cp
            .admin(Method::PUT, "/admin/flags/r/rollout", Some(bad.clone()))
            .await;
        assert_openai_error(&r, 400, &format!("body {bad}"));
    }
    assert_eq!(cp.rollout("r").await["stage"], 3);
    let metrics = cp.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "switchyard_rollout_stage",
            &[("flag", "r"), ("rule", "ramp")]
        ),
        Some(3.0)
    );

    // Rollback goes back one stage; at the first stage it is refused.
    let v = cp
        .change(
            Method::POST,
            "/admin/flags/r/rollout/rollback",
            json!({"reason": "latency"}),
        )
        .await;
    assert_eq!(v["rollout"]["stage"], 2);
    cp.change(Method::PUT, "/admin/flags/r/rollout", json!({"stage": 0}))
        .await;
    let r = cp
        .admin(Method::POST, "/admin/flags/r/rollout/rollback", None)
        .await;
    let v = assert_openai_error(&r, 409, "rollback at stage 0");
    assert_eq!(v["error"]["code"], "at_first_stage");
    assert_eq!(cp.rollout("r").await["stage"], 0);

    // Growing a stage keeps every user already in.
    let users: Vec<String> = (0..300).map(|i| format!("ramp-user-{i}")).collect();
    let mut before = in_rollout(&cp, &users).await;
    for stage in 1..=4u32 {
        cp.change(
            Method::PUT,
            "/admin/flags/r/rollout",
            json!({"stage": stage}),
        )
        .await;
        let now = in_rollout(&cp, &users).await;
        let lost: Vec<&String> = before.difference(&now).collect();
        assert!(
            lost.is_empty(),
            "stage {stage} dropped users who were in: {lost:?}"
        );
        assert!(now.len() >= before.len());
        before = now;
    }
    assert_eq!(before.len(), 300, "at 100 % every user is in");
    // Chat requests follow the same decisions.
    for u in users.iter().take(5) {
        let r = cp.chat("r", u).await;
        assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("next"));
        assert_eq!(r.json()["model"], "model-next");
    }
    // At the last stage, advancing is refused.
    let r = cp
        .admin(
            Method::POST,
            "/admin/flags/r/rollout/advance",
            Some(json!({"force": true})),
        )
        .await;
    assert_openai_error(&r, 409, "advance at the last stage");

    // Hold and release.
    let v = cp
        .change(
            Method::PUT,
            "/admin/flags/r/rollout/hold",
            json!({"held": true, "reason": "freeze for the weekend"}),
        )
        .await;
    assert_eq!(v["rollout"]["held"], true);
    assert_eq!(v["audit"]["action"], "set_rollout_held");
    assert_eq!(cp.rollout("r").await["held"], true);
    let v = cp
        .change(
            Method::PUT,
            "/admin/flags/r/rollout/hold",
            json!({"held": false}),
        )
        .await;
    assert_eq!(v["rollout"]["held"], false);

    // A flag without a rollout has none to show or move.
    let cp2 = Cp::start("rollout-none", &format!("{MOCK}{FLAG_F}"), &[]).await;
    for (method, path, body) in [
        (Method::GET, "/admin/flags/f/rollout", None),
        (Method::POST, "/admin/flags/f/rollout/advance", None),
        (
            Method::PUT,
            "/admin/flags/f/rollout",
            Some(json!({"stage": 1})),
        ),
    ] {
        let r = cp2.admin(method.clone(), path, body).await;
        assert_openai_error(&r, 404, &format!("{method} {path}"));
    }
}

/// The metric's help says `by="operator"` counts rollbacks through the admin API.
#[tokio::test]
async fn an_operator_rollback_is_counted() {
    let body = format!(
        "{MOCK}{}",
        rollout_flag(r#"{ min_requests = 100, hold = "10m" }"#, false)
    );
    let cp = Cp::start("op-rollback", &body, &[]).await;
    cp.change(Method::PUT, "/admin/flags/r/rollout", json!({"stage": 2}))
        .await;
    cp.change(Method::POST, "/admin/flags/r/rollout/rollback", json!({}))
        .await;
    let metrics = cp.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "switchyard_rollout_rollbacks_total",
            &[("flag", "r"), ("rule", "ramp"), ("by", "operator")]
        ),
        Some(1.0),
        "operator rollback not counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("rollbacks"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Gates driven by measured figures
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_advance_on_health_and_roll_back_on_errors() {
    let next_up = FaultServer::start(Fault::Ok).await;
    let body = format!(
        r#"
[server]
gate_interval = "100ms"
{MOCK}
[providers.switchable]
kind = "openai"
base_url = "{}"
timeout = "5s"
retry = {{ attempts = 1 }}
circuit = {{ enabled = false }}

[flags.g]
off_variation = "stable"
stable_variation = "stable"
[flags.g.variations.stable]
provider = "mock"
model_id = "model-stable"
[flags.g.variations.next]
provider = "switchable"
model_id = "model-next"
fallback_behavior = "error"
[[flags.g.rules]]
id = "ramp"
rollout = {{ variation = "next", stages = [20, 50, 100], auto_advance = true, gate = {{ min_requests = 5, hold = "0s", max_error_rate = 0.5, rollback_error_rate = 0.5, rollback_min_requests = 5 }} }}
[[flags.g.rules]]
id = "everyone-else"
allocation = [{{ variation = "stable", end = 10000 }}]
"#,
        next_up.base_url()
    );
    let cp = Cp::start("gates", &body, &[]).await;
    let c = &cp;
    let rollbacks = |m: &str| {
        metric(
            m,
            "switchyard_rollout_rollbacks_total",
            &[("flag", "g"), ("rule", "ramp"), ("by", "gate")],
        )
        .unwrap_or(0.0)
    };

    // Users inside the rollout at its first stage (20 %); they stay in as it grows.
    let inside = users_where(cp.proxy.addr, "g", "g-", 6, |d| d["variation"] == "next").await;
    assert_eq!(cp.rollout("g").await["stage"], 0);

    // Healthy traffic meets the gate: the stage advances by itself.
    for u in &inside {
        let r = cp.chat("g", u).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("next"));
    }
    let ro = eventually(
        Duration::from_secs(5),
        "automatic advance",
        move || async move {
            let ro = c.rollout("g").await;
            (ro["stage"] == 1).then_some(ro)
        },
    )
    .await;
    assert_eq!(ro["held"], false);
    // No traffic since: the next stage's gate is not met, so it stays there.
    assert_eq!(ro["figures"]["requests"], 0, "{ro}");
    let advance = cp.audit("flag=g&limit=1").await.remove(0);
    assert_eq!(advance["actor"], "gate");
    assert_eq!(advance["action"], "set_rollout_stage");
    assert!(
        advance["reason"]
            .as_str()
            .is_some_and(|r| r.contains("advance")),
        "{advance}"
    );

    // The rolled-out variation's provider starts failing: the gate rolls back and holds.
    next_up.set_default(Fault::status(500));
    for u in &inside {
        let r = cp.chat("g", u).await;
        assert!(r.status.is_server_error(), "{} {}", r.status, r.text());
        assert_eq!(r.header(VARIATION_HEADER).as_deref(), Some("next"));
    }
    let ro = eventually(
        Duration::from_secs(5),
        "automatic rollback",
        move || async move {
            let ro = c.rollout("g").await;
            (ro["stage"] == 0 && ro["held"] == true).then_some(ro)
        },
    )
    .await;
    assert_eq!(ro["percent"].as_f64(), Some(20.0));
    let entries = cp.audit("flag=g&limit=10").await;
    let by_gate: Vec<&Value> = entries.iter().filter(|e| e["actor"] == "gate").collect();
    let back = by_gate
        .iter()
        .find(|e| {
            e["action"] == "set_rollout_stage"
                && e["reason"].as_str().is_some_and(|r| r.contains("rollback"))
        })
        .unwrap_or_else(|| panic!("no rollback by the gate in {entries:?}"));
    let reason = back["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("error rate"), "{reason}");
    assert!(
        by_gate.iter().any(|e| e["action"] == "set_rollout_held"),
        "the hold is not audited: {entries:?}"
    );
    let metrics = cp.metrics().await;
    assert_eq!(rollbacks(&metrics), 1.0);
    assert_eq!(
        metric(
            &metrics,
            "switchyard_rollout_stage",
            &[("flag", "g"), ("rule", "ramp")]
        ),
        Some(0.0)
    );

    // Held: it neither moves nor rolls back again over several gate intervals, even though
    // its users still fail.
    for u in &inside {
        cp.chat("g", u).await;
    }
    let watch_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < watch_until {
        let ro = cp.rollout("g").await;
        assert_eq!(ro["stage"], 0, "{ro}");
        assert_eq!(ro["held"], true, "{ro}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rollbacks(&cp.metrics().await), 1.0);
}

// ---------------------------------------------------------------------------------------------
// 6. Reload
// ---------------------------------------------------------------------------------------------

/// A proxy started from a file (so it can reload it).
struct FileProxy {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    path: PathBuf,
    token: Token,
    stop: Option<oneshot::Sender<()>>,
    _task: JoinHandle<Result<(), switchyard::StartError>>,
    _dir: TempDir,
}

impl Drop for FileProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl FileProxy {
    /// Serves `proxy.toml` in a fresh directory, made of the `[admin]`, `[state]` and
    /// `[server]` sections plus `body`.
    async fn start(test: &str, server: &str, body: &str) -> FileProxy {
        let dir = TempDir::new(test);
        let token = Token::new(test, "ops");
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text_for(dir.path(), &token, server, body))
            .expect("write proxy.toml");
        let config = switchyard::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let listeners = switchyard::Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .expect("bind");
        let addr = listeners.main.local_addr().unwrap();
        let admin_addr = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(switchyard::run_with(
            listeners,
            config,
            Some(path.clone()),
            async move {
                let _ = rx.await;
            },
        ));
        FileProxy {
            addr,
            admin_addr,
            path,
            token,
            stop: Some(tx),
            _task: task,
            _dir: dir,
        }
    }

    /// Rewrites the file in place (write to a sibling, then rename: never half-written).
    fn rewrite(&self, text: &str) {
        let tmp = self.path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.path).expect("rename");
    }

    fn text(&self, server: &str, body: &str) -> String {
        let dir = self.path.parent().expect("a directory");
        text_for(dir, &self.token, server, body)
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        admin_request(self.admin_addr, Some(&self.token.value), method, path, body).await
    }

    async fn models(&self) -> Vec<String> {
        let r = client::get(&format!("http://{}/v1/models", self.addr)).await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect()
    }

    async fn metrics(&self) -> String {
        client::get(&format!("http://{}/metrics", self.admin_addr))
            .await
            .text()
    }
}

fn text_for(dir: &Path, token: &Token, server: &str, body: &str) -> String {
    format!(
        "[server]\n{server}\n\n{}\n[state]\nurl = \"sqlite:{}\"\n{body}",
        admin_section(&[token]),
        dir.join("state.db").display()
    )
}

#[tokio::test]
async fn reload_swaps_a_valid_file_and_rejects_an_invalid_one() {
    let server = r#"reload_check_interval = "0s""#;
    let v1 = format!("{MOCK}{FLAG_F}");
    let fp = FileProxy::start("reload", server, &v1).await;
    assert_eq!(fp.models().await, ["f"]);

    // Unchanged file: accepted, nothing to do.
    let r = fp.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["changed"], false);

    // A valid change is in force once acknowledged, and audited.
    let v2 = format!("{MOCK}{FLAG_F}{}", all_b_flag("extra"));
    fp.rewrite(&fp.text(server, &v2));
    let r = fp.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["reloaded"], true);
    assert_eq!(v["changed"], true);
    let hash_v2 = v["hash"].as_str().expect("hash").to_owned();
    assert_eq!(fp.models().await, ["extra", "f"]);
    let r = chat(fp.addr, "extra", "u1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["model"], "extra-model-b");
    let audit = fp
        .admin(Method::GET, "/admin/audit?limit=5", None)
        .await
        .json();
    let last = &audit["entries"][0];
    assert_eq!(last["action"], "reload", "{audit}");
    assert_eq!(last["actor"], "ops");

    // An unknown key: 422 naming file, line and key; the old config keeps serving.
    let bad_key = v2.replace(
        "model_id = \"model-b\"",
        "model_id = \"model-b\"\ntemprature = 0.5",
    );
    let text = fp.text(server, &bad_key);
    let line = text
        .lines()
        .position(|l| l.starts_with("temprature"))
        .expect("the bad line")
        + 1;
    fp.rewrite(&text);
    let r = fp.admin(Method::POST, "/admin/reload", None).await;
    let v = assert_openai_error(&r, 422, "reload of a file with an unknown key");
    assert_eq!(v["error"]["code"], "invalid_config");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let where_ = format!("{}:{line}", fp.path.display());
    assert!(
        errors[0].starts_with(&where_),
        "{errors:?} should start with {where_}"
    );
    assert!(errors[0].contains("temprature"), "{errors:?}");
    assert_eq!(fp.models().await, ["extra", "f"]);
    assert_eq!(chat(fp.addr, "extra", "u1").await.status, StatusCode::OK);
    // /readyz (no token) says ready and why not fully, never the file or its errors.
    let readyz = client::get(&format!("http://{}/readyz", fp.admin_addr)).await;
    assert_eq!(readyz.status, StatusCode::OK);
    let shown = readyz.text();
    assert!(
        !shown.contains(&fp.path.display().to_string()) && !shown.contains("temprature"),
        "/readyz shows details: {shown}"
    );
    assert_eq!(readyz.json()["status"], "ready");
    assert!(readyz.json()["reason"].is_string(), "{shown}");
    let ready = fp.admin(Method::GET, "/admin/status", None).await.json();
    assert_eq!(ready["config"], hash_v2.as_str(), "{ready}");
    assert!(
        ready["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("temprature")),
        "{ready}"
    );
    let m = fp.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_config_reloads_total",
            &[("result", "rejected")]
        ),
        Some(1.0)
    );

    // Dangling references: every error is listed with its line and key.
    let dangling = v2
        .replace(
            "provider = \"mock\"\nmodel_id = \"model-a\"",
            "provider = \"nope\"\nmodel_id = \"model-a\"",
        )
        .replace(
            "provider = \"mock\"\nmodel_id = \"model-b\"",
            "provider = \"gone\"\nmodel_id = \"model-b\"",
        );
    let text = fp.text(server, &dangling);
    fp.rewrite(&text);
    let r = fp.admin(Method::POST, "/admin/reload", None).await;
    let v = assert_openai_error(&r, 422, "reload of a file with dangling providers");
    let errors: Vec<String> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (key, name) in [
        ("flags.f.variations.a.provider", "nope"),
        ("flags.f.variations.b.provider", "gone"),
    ] {
        let line = text
            .lines()
            .position(|l| l == format!("provider = \"{name}\""))
            .expect("the line")
            + 1;
        let want = format!("{}:{line}: {key}", fp.path.display());
        assert!(
            errors.iter().any(|e| e.starts_with(&want)),
            "{want} not in {errors:?}"
        );
    }
    assert_eq!(fp.models().await, ["extra", "f"]);
    let m = fp.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_config_reloads_total",
            &[("result", "rejected")]
        ),
        Some(2.0)
    );

    // Back to a valid file: accepted, and the error is cleared.
    fp.rewrite(&fp.text(server, &v1));
    let r = fp.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(fp.models().await, ["f"]);
    let ready = fp.admin(Method::GET, "/admin/status", None).await.json();
    assert!(ready["last_reload_error"].is_null(), "{ready}");
}

#[tokio::test]
async fn overrides_survive_a_reload() {
    let server = r#"reload_check_interval = "0s""#;
    let fp = FileProxy::start(
        "reload-keeps",
        server,
        &format!("{MOCK}{}", all_b_flag("k")),
    )
    .await;
    let r = fp
        .admin(
            Method::PUT,
            "/admin/flags/k/enabled",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    fp.rewrite(&fp.text(
        server,
        &format!("{MOCK}{}{}", all_b_flag("k"), all_b_flag("extra")),
    ));
    let r = fp.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.json()["changed"], true);
    let r = chat(fp.addr, "k", "u").await;
    assert_eq!(r.header(FALLBACK_HEADER).as_deref(), Some("kill_switch"));
}

#[tokio::test]
async fn a_changed_file_is_picked_up_by_the_watch() {
    let server = r#"reload_check_interval = "100ms""#;
    let fp = FileProxy::start("watch", server, &format!("{MOCK}{FLAG_F}")).await;
    assert_eq!(fp.models().await, ["f"]);
    fp.rewrite(&fp.text(server, &format!("{MOCK}{FLAG_F}{}", all_b_flag("watched"))));
    let f = &fp;
    eventually(
        Duration::from_secs(5),
        "the watched file's new flag",
        move || async move {
            f.models()
                .await
                .contains(&"watched".to_owned())
                .then_some(())
        },
    )
    .await;
    let r = chat(fp.addr, "watched", "u").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let audit = fp
        .admin(Method::GET, "/admin/audit?limit=5", None)
        .await
        .json();
    assert_eq!(audit["entries"][0]["action"], "reload", "{audit}");
    assert_eq!(audit["entries"][0]["actor"], "file-watch", "{audit}");

    // A broken file is rejected by the watch too; the old config keeps serving.
    fp.rewrite(&fp.text(server, "[flags.oops]\nvariations = 3\n"));
    let f = &fp;
    eventually(
        Duration::from_secs(5),
        "the rejected reload",
        move || async move {
            let ready = f.admin(Method::GET, "/admin/status", None).await.json();
            ready["last_reload_error"].is_string().then_some(())
        },
    )
    .await;
    assert!(fp.models().await.contains(&"watched".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    const REQUESTS: usize = 2000;
    const CLIENTS: usize = 16;
    const REWRITES: usize = 30;
    let server = r#"reload_check_interval = "20ms""#;
    // Two valid versions: the variation's model differs (and so the file's length).
    let one = format!("{MOCK}{}", all_b_flag("k"));
    let two = one.replace("k-model-b", "k-model-b-second-version");
    let fp = Arc::new(FileProxy::start("load", server, &one).await);
    let texts = [fp.text(server, &one), fp.text(server, &two)];

    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let addr = fp.addr;
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let http = Http::new();
            let mut failures = Vec::new();
            let mut models = BTreeSet::new();
            for i in 0..REQUESTS / CLIENTS {
                let body = json!({"model": "k", "user": format!("c{c}-{i}"), "messages": [{"role": "user", "content": "hi"}]});
                let r = http
                    .post_json(&format!("http://{addr}{CHAT}"), &body.to_string(), &[])
                    .await;
                if r.status == StatusCode::OK {
                    models.insert(r.json()["model"].as_str().unwrap_or("?").to_owned());
                } else {
                    failures.push(format!("{} {}", r.status, r.text()));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            (failures, models)
        }));
    }
    // Rewrite the file 30 times while the requests run, paced by their progress; every
    // other rewrite is also reloaded through the endpoint, the rest by the file watch.
    let rewriter = {
        let fp = fp.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut reloaded = 0;
            for i in 0..REWRITES {
                let due = (i + 1) * REQUESTS / (REWRITES + 2);
                let deadline = Instant::now() + Duration::from_secs(60);
                while done.load(Ordering::SeqCst) < due && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                fp.rewrite(&texts[(i + 1) % 2]);
                if i % 2 == 0 {
                    let r = fp.admin(Method::POST, "/admin/reload", None).await;
                    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                    reloaded += 1;
                }
            }
            reloaded
        })
    };
    let mut failures = Vec::new();
    let mut models = BTreeSet::new();
    for c in clients {
        let (f, m) = c.await.expect("a client task panicked");
        failures.extend(f);
        models.extend(m);
    }
    let reloaded = rewriter.await.expect("the rewriter panicked");
    assert_eq!(reloaded, REWRITES / 2);
    assert_eq!(done.load(Ordering::SeqCst), REQUESTS);
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(
        models,
        BTreeSet::from([
            "k-model-b".to_owned(),
            "k-model-b-second-version".to_owned()
        ]),
        "both versions served"
    );
    let m = fp.metrics().await;
    let ok = metric(&m, "switchyard_config_reloads_total", &[("result", "ok")]).unwrap_or(0.0);
    assert!(ok >= (REWRITES / 2) as f64, "only {ok} reloads");
    assert_eq!(
        metric(
            &m,
            "switchyard_config_reloads_total",
            &[("result", "rejected")]
        )
        .unwrap_or(0.0),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input, concurrent operators
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_admin_requests_get_openai_shaped_errors() {
    let cp = Cp::start("bad-input", &format!("{MOCK}{FLAG_F}"), &[]).await;
    let cases: Vec<(Method, &str, Option<String>, u16)> = vec![
        (Method::GET, "/admin/flags/nope", None, 404),
        (
            Method::PUT,
            "/admin/flags/nope/enabled",
            Some(r#"{"enabled": false}"#.into()),
            404,
        ),
        (
            Method::PUT,
            "/admin/flags/f/fallback",
            Some(r#"{"forced": true, "variation": "zzz"}"#.into()),
            404,
        ),
        (Method::GET, "/admin/flags/nope/rollout", None, 404),
        (
            Method::PUT,
            "/admin/flags/f/enabled",
            Some("{\"enabled\": fal".into()),
            400,
        ),
        (
            Method::PUT,
            "/admin/flags/f/enabled",
            Some(String::new()),
            400,
        ),
        (
            Method::PUT,
            "/admin/flags/f/enabled",
            Some("[]".into()),
            400,
        ),
        (
            Method::PUT,
            "/admin/flags/f/enabled",
            Some(r#"{"enabled": "no"}"#.into()),
            400,
        ),
        (
            Method::PUT,
            "/admin/flags/f/enabled",
            Some(r#"{"enabled": false, "reason": 7}"#.into()),
            400,
        ),
        (
            Method::PUT,
            "/admin/flags/f/enabled",
            Some(r#"{"enabled": false, "extra": 1}"#.into()),
            400,
        ),
        (
            Method::PUT,
            "/admin/flags/f/fallback",
            Some(r#"{"forced": 1}"#.into()),
            400,
        ),
        (
            Method::PUT,
            "/admin/flags/f/fallback",
            Some(r#"{"force": true}"#.into()),
            400,
        ),
        (Method::GET, "/admin/audit?limit=0", None, 400),
        (Method::GET, "/admin/audit?limit=abc", None, 400),
        (Method::GET, "/admin/audit?colour=red", None, 400),
        (Method::DELETE, "/admin/flags/f/enabled", None, 405),
        (Method::GET, "/admin/flags/f/enabled", None, 405),
        (Method::POST, "/admin/flags", None, 405),
        (Method::GET, "/admin/reload", None, 405),
        (Method::PUT, "/admin/audit", None, 405),
        (Method::GET, "/admin/nope", None, 404),
        (Method::GET, "/admin/flags/f/enabled/more", None, 404),
        (Method::GET, "/admin", None, 404),
        (
            Method::PUT,
            "/admin/flags/f/enabled",
            Some(format!(
                r#"{{"enabled": false, "reason": "{}"}}"#,
                "x".repeat(70 * 1024)
            )),
            413,
        ),
    ];
    for (method, path, body, status) in cases {
        let r = client::request(
            method.clone(),
            &cp.proxy.admin_url(path),
            body.clone().unwrap_or_default(),
            &[("authorization", &format!("Bearer {}", cp.ops.value))],
        )
        .await;
        assert_openai_error(&r, status, &format!("{method} {path} {body:?}"));
    }
    // Nothing got through.
    assert!(cp.audit("limit=100").await.is_empty());
    let flag = cp.get("/admin/flags/f").await;
    assert_eq!(flag["enabled"], true);
    assert_eq!(flag["force_fallback"], false);
    // Unknown paths outside /admin are 404 too, and the documented GETs refuse other methods.
    let r = client::get(&cp.proxy.admin_url("/nope")).await;
    assert_openai_error(&r, 404, "GET /nope");
    let r = client::request(
        Method::POST,
        &cp.proxy.admin_url("/admin/openapi.json"),
        "",
        &[],
    )
    .await;
    assert_openai_error(&r, 405, "POST /admin/openapi.json");

    // A 405 names the methods the path supports (RFC 9110 requires `Allow`).
    for (method, path, allowed) in [
        (Method::DELETE, "/admin/flags/f/enabled", &["PUT"][..]),
        (Method::POST, "/admin/flags", &["GET"]),
        (Method::GET, "/admin/reload", &["POST"]),
        (Method::DELETE, "/admin/flags/f/rollout", &["GET", "PUT"]),
        (Method::POST, "/admin/openapi.json", &["GET"]),
        (Method::POST, "/metrics", &["GET"]),
    ] {
        let r = client::request(
            method.clone(),
            &cp.proxy.admin_url(path),
            "",
            &[("authorization", &format!("Bearer {}", cp.ops.value))],
        )
        .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without an Allow header"));
        let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for m in allowed {
            assert!(listed.contains(m), "{method} {path}: Allow: {allow}");
        }
        assert!(
            !listed.contains(&method.as_str()),
            "{method} {path}: Allow: {allow}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_from_two_operators_are_all_audited_in_order() {
    let ci = Token::new("concurrent", "ci");
    let body = format!("{MOCK}{}{}", all_b_flag("f1"), all_b_flag("f2"));
    let cp = Arc::new(Cp::start("concurrent", &body, &[&ci]).await);
    let ci_value = ci.value.clone();

    /// One write: which flag, which field, the value, who.
    #[derive(Clone, Debug)]
    struct Write {
        flag: &'static str,
        enabled: Option<bool>,
        forced: Option<bool>,
        actor: &'static str,
    }
    let writes: Vec<Write> = (0..40)
        .map(|i| Write {
            flag: if i % 2 == 0 { "f1" } else { "f2" },
            enabled: ((i / 2) % 2 == 0).then_some(i % 3 != 0),
            forced: ((i / 2) % 2 == 1).then_some(i % 5 < 3),
            actor: if (i / 4) % 2 == 0 { "ops" } else { "ci" },
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, w) in writes.iter().cloned().enumerate() {
        let cp = cp.clone();
        let token = if w.actor == "ops" {
            cp.ops.value.clone()
        } else {
            ci_value.clone()
        };
        tasks.push(tokio::spawn(async move {
            let reason = format!("w{i}");
            let (path, body) = match (w.enabled, w.forced) {
                (Some(e), _) => (
                    format!("/admin/flags/{}/enabled", w.flag),
                    json!({"enabled": e, "reason": reason}),
                ),
                (_, Some(f)) => (
                    format!("/admin/flags/{}/fallback", w.flag),
                    json!({"forced": f, "reason": reason}),
                ),
                _ => unreachable!(),
            };
            let r = admin_request(
                cp.proxy.admin_addr,
                Some(&token),
                Method::PUT,
                &path,
                Some(body),
            )
            .await;
            (r.status, r.text())
        }));
    }
    for t in tasks {
        let (status, text) = t.await.expect("a writer panicked");
        assert_eq!(status, StatusCode::OK, "{text}");
    }

    for flag in ["f1", "f2"] {
        // All of this flag's writes are audited, each with its writer's name.
        let entries = cp.audit(&format!("flag={flag}&limit=1000")).await;
        assert_eq!(entries.len(), 20, "{flag}: {entries:?}");
        let mut seen = BTreeMap::new();
        for e in &entries {
            let i: usize = e["reason"]
                .as_str()
                .and_then(|r| r.strip_prefix('w'))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected entry {e}"));
            assert_eq!(writes[i].flag, flag);
            assert_eq!(e["actor"], writes[i].actor, "{e}");
            seen.insert(i, e.clone());
        }
        assert_eq!(seen.len(), 20, "duplicate entries for {flag}");
        // Newest first, and ids strictly decreasing.
        let ids: Vec<i64> = entries.iter().filter_map(|e| e["id"].as_i64()).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
        // Each change saw the one before it: no lost update.
        for pair in entries.windows(2) {
            let (newer, older) = (&pair[0], &pair[1]);
            assert_eq!(
                newer["before"], older["after"],
                "entry {} did not start from entry {}",
                newer["id"], older["id"]
            );
        }
        // The state is the last write of each field, in the log's order.
        let last_of = |field: &str| -> usize {
            entries
                .iter()
                .map(|e| e["reason"].as_str().unwrap()[1..].parse::<usize>().unwrap())
                .find(|i| match field {
                    "enabled" => writes[*i].enabled.is_some(),
                    _ => writes[*i].forced.is_some(),
                })
                .expect("a write of the field")
        };
        let state = cp.get(&format!("/admin/flags/{flag}")).await;
        assert_eq!(
            state["enabled"],
            json!(writes[last_of("enabled")].enabled.unwrap()),
            "{flag}: {state}"
        );
        assert_eq!(
            state["force_fallback"],
            json!(writes[last_of("forced")].forced.unwrap()),
            "{flag}: {state}"
        );
        let m = cp.metrics().await;
        let gauge = metric(&m, "switchyard_flag_enabled", &[("flag", flag)]);
        assert_eq!(
            gauge,
            Some(if state["enabled"] == true { 1.0 } else { 0.0 })
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. The state store
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unwritable_state_store_stops_the_start_with_a_clear_error() {
    let ops = Token::new("store-down", "ops");
    let src = format!(
        "{}\n[state]\nurl = \"sqlite:/proc/switchyard-nope/state.db\"\n{MOCK}{FLAG_F}",
        admin_section(&[&ops])
    );
    let config = switchyard::Config::parse(&src, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let listeners = switchyard::Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("bind");
    let (_tx, rx) = oneshot::channel::<()>();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        switchyard::run(listeners, config, async move {
            let _ = rx.await;
        }),
    )
    .await
    .expect("the proxy served on a state store it cannot write instead of refusing to start");
    let err = ended.expect_err("the proxy started on a state store it cannot write");
    let msg = err.to_string();
    assert!(matches!(err, switchyard::StartError::State(_)), "{err:?}");
    assert!(
        msg.contains("/proc/switchyard-nope"),
        "unclear error: {msg}"
    );
}

#[tokio::test]
async fn flag_keys_are_percent_decoded_in_admin_paths() {
    // A flag key is any TOML key; clients (and `switchyard ctl`) percent-encode it in a path.
    let body = format!("{MOCK}{}", all_b_flag("\"assistant v2\"")).replace(
        "model_id = \"\"assistant v2\"-model",
        "model_id = \"assistant-v2-model",
    );
    let cp = Cp::start("encoded", &body, &[]).await;
    let r = cp.chat("assistant v2", "u").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cp
        .admin(Method::GET, "/admin/flags/assistant%20v2", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["flag"], "assistant v2");
    let r = cp
        .admin(
            Method::PUT,
            "/admin/flags/assistant%20v2/enabled",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cp.chat("assistant v2", "u").await;
    assert_eq!(r.header(FALLBACK_HEADER).as_deref(), Some("kill_switch"));
}

#[tokio::test]
async fn admin_bodies_must_be_json_objects() {
    let body = format!(
        "{MOCK}{}",
        rollout_flag(r#"{ min_requests = 0, hold = "0s" }"#, false)
    );
    let cp = Cp::start("objects-only", &body, &[]).await;
    cp.change(Method::PUT, "/admin/flags/r/rollout", json!({"stage": 2}))
        .await;
    // serde reads a struct from an array; the API takes objects only, so nothing changes.
    for (method, path) in [
        (Method::POST, "/admin/flags/r/rollout/rollback"),
        (Method::POST, "/admin/flags/r/rollout/advance"),
        (Method::PUT, "/admin/flags/r/enabled"),
    ] {
        let r = cp
            .admin(method.clone(), path, Some(json!([null, null])))
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {path}: {}",
            r.text()
        );
        assert!(r.text().contains("JSON object"), "{}", r.text());
    }
    assert_eq!(cp.rollout("r").await["stage"], 2);
    assert_eq!(cp.get("/admin/flags/r").await["enabled"], true);
}

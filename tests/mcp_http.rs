//! The MCP endpoint over real HTTP: authentication, JSON-RPC errors (parse error, invalid
//! request, unknown method, unknown tool), sessions and version negotiation, and agent tokens
//! (refused on the admin API; a call outside policy refused and audited).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/bandit_flag.rs"]
mod bandit_flag;
#[path = "support/http.rs"]
mod client;
#[path = "support/mcp.rs"]
mod mcp;
#[path = "support/proxy.rs"]
mod proxy;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

const ADMIN: &str = "mcp-http-test-admin";
const AGENT: &str = "mcp-http-test-agent";
const TUNER: &str = "mcp-http-test-tuner";

fn config() -> String {
    r#"
[admin]
tokens = [{ name = "ops", token_env = "MCP_HTTP_ADMIN" },
          { name = "loop-agent", token_env = "MCP_HTTP_AGENT", policy = { allow = ["read", "rollout"], max_stage_changes_per_hour = 1, kill_switch = false } },
          { name = "tuner", token_env = "MCP_HTTP_TUNER", policy = { allow = ["bandit", "bandit.get"], bandit_floor_min = 0.05 } }]

[providers.mock]
kind = "mock"
latency = "0ms"

[flags.f]
off_variation = "a"
stable_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m-a"
[flags.f.variations.b]
provider = "mock"
model_id = "m-b"
[[flags.f.rules]]
id = "ramp"
rollout = { variation = "b", stages = [10, 50, 100], initial_stage = 0, auto_advance = false, gate = { min_requests = 0, hold = "0s" } }
[[flags.f.rules]]
id = "everyone-else"
allocation = [{ variation = "a", end = 10000 }]

"#
    .to_owned()
        + &bandit_flag::assist(
            "metric = \"conversion\"\ncadence = \"1h\"\nmin_users_per_arm = 50\nfloor = 0.05",
        )
}

async fn start() -> proxy::TestProxy {
    std::env::set_var("MCP_HTTP_ADMIN", ADMIN);
    std::env::set_var("MCP_HTTP_AGENT", AGENT);
    std::env::set_var("MCP_HTTP_TUNER", TUNER);
    proxy::TestProxy::start(&config()).await
}

async fn post(
    p: &proxy::TestProxy,
    token: Option<&str>,
    session: Option<&str>,
    body: &str,
) -> client::Resp {
    mcp::post(&p.admin_url("/mcp"), token, session, body).await
}

async fn initialize(p: &proxy::TestProxy, token: &str, version: &str) -> mcp::Session {
    mcp::Session::initialize(&p.admin_url("/mcp"), token, version).await
}

/// `GET path` on the admin API with the admin token; the JSON answer.
async fn admin_get(p: &proxy::TestProxy, path: &str) -> Value {
    let auth = format!("Bearer {ADMIN}");
    client::request(
        Method::GET,
        &p.admin_url(path),
        Bytes::new(),
        &[("authorization", &auth)],
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_rpc_gets_the_right_errors() {
    let p = start().await;
    // No token, a wrong token: 401.
    let r = post(&p, None, None, "{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    assert_eq!(post(&p, Some("nope"), None, "{}").await.status, 401);
    // Not JSON: -32700.
    let r = post(&p, Some(AGENT), None, "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);
    assert_eq!(r.json()["id"], Value::Null);
    // JSON but not a request: -32600.
    for body in [
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
        "3",
    ] {
        let r = post(&p, Some(AGENT), None, body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["code"], -32600, "{body}");
    }
    // An unknown method: -32601, with the request's id.
    let r = post(
        &p,
        Some(AGENT),
        None,
        r#"{"jsonrpc":"2.0","id":"x1","method":"server/discover","params":{}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["error"]["code"], -32601);
    assert_eq!(r.json()["id"], "x1");
    // Version negotiation: a known version is kept, an unknown one gets the newest.
    let init = initialize(&p, AGENT, "2025-03-26").await.init;
    assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
    assert_eq!(init["result"]["serverInfo"]["name"], "switchyard");
    let session = initialize(&p, AGENT, "1999-01-01").await;
    let init = &session.init;
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    // Sessions: required after initialize, bound to their token.
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    assert_eq!(post(&p, Some(AGENT), None, list).await.status, 400);
    assert_eq!(post(&p, Some(AGENT), Some("0123"), list).await.status, 404);
    assert_eq!(
        post(&p, Some(ADMIN), Some(&session.id), list).await.status,
        404
    );
    let r = post(&p, Some(AGENT), Some(&session.id), list).await;
    assert_eq!(r.status, 200);
    let tools = r.json()["result"]["tools"].as_array().unwrap().clone();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for want in [
        "flags.list",
        "flag.results",
        "rollout.advance",
        "kill_switch",
        "audit.list",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    for t in &tools {
        assert!(
            t["inputSchema"]["required"]
                .as_array()
                .unwrap()
                .contains(&json!("reason")),
            "{t}"
        );
    }
    // A notification: 202, no body.
    let r = post(
        &p,
        Some(AGENT),
        Some(&session.id),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    // An unknown tool: -32602.
    let v = session.call("flags.delete", json!({"reason": "r"})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    // GET: 405 (no server stream); DELETE ends the session.
    let auth = format!("Bearer {AGENT}");
    let r = client::request(
        Method::GET,
        &p.admin_url("/mcp"),
        Bytes::new(),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 405);
    let r = client::request(
        Method::DELETE,
        &p.admin_url("/mcp"),
        Bytes::new(),
        &[("authorization", &auth), ("mcp-session-id", &session.id)],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        post(&p, Some(AGENT), Some(&session.id), list).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens_act_only_within_policy_and_only_on_mcp() {
    let p = start().await;
    // The agent's token is not an admin token.
    let r = client::request(
        Method::GET,
        &p.admin_url("/admin/flags"),
        Bytes::new(),
        &[("authorization", &format!("Bearer {AGENT}"))],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let session = initialize(&p, AGENT, "2025-06-18").await;
    // A read, answered with the admin API's own JSON.
    let v = session
        .call(
            "rollout.get",
            json!({"flag": "f", "reason": "checking the ramp"}),
        )
        .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert_eq!(v["result"]["structuredContent"]["rollouts"][0]["stage"], 0);
    // No reason: refused.
    let v = session.call("flags.list", json!({})).await;
    assert!(mcp::refusal(&v).contains("reason"), "{v}");
    // The kill switch is forbidden.
    let v = session
        .call(
            "kill_switch",
            json!({"flag": "f", "enabled": false, "reason": "panic"}),
        )
        .await;
    assert!(mcp::refusal(&v).contains("forbids the kill switch"), "{v}");
    // One stage change an hour: the first advances, the second is refused.
    let v = session
        .call(
            "rollout.advance",
            json!({"flag": "f", "reason": "gate met"}),
        )
        .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert_eq!(v["result"]["structuredContent"]["rollout"]["stage"], 1);
    let v = session
        .call("rollout.advance", json!({"flag": "f", "reason": "again"}))
        .await;
    assert!(mcp::refusal(&v).contains("per hour"), "{v}");
    // The flag is still on and at stage 1.
    let flag = admin_get(&p, "/admin/flags/f").await;
    assert_eq!(flag["enabled"], true);
    assert_eq!(flag["rollouts"][0]["stage"], 1);
    // The audit log has every call, as agent:loop-agent with its reason.
    let audit = admin_get(&p, "/admin/audit?actor=agent%3Aloop-agent&limit=50").await;
    let entries: Vec<(String, Option<String>)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let actions: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "agent_read",
            "agent_refused",
            "agent_refused",
            "set_rollout_stage",
            "agent_refused"
        ],
        "{audit}"
    );
    assert_eq!(entries[0].1.as_deref(), Some("checking the ramp"));
    assert_eq!(entries[3].1.as_deref(), Some("gate met"));
    assert_eq!(entries[4].1.as_deref(), Some("again"));
    // A plain admin token may use /mcp too, with every tool.
    let s2 = initialize(&p, ADMIN, "2025-06-18").await;
    let v = s2
        .call(
            "kill_switch",
            json!({"flag": "f", "enabled": false, "reason": "drill"}),
        )
        .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
}

#[test]
fn policies_are_validated() {
    std::env::set_var("MCP_HTTP_AGENT", AGENT);
    let bad = config().replace(
        r#"allow = ["read", "rollout"]"#,
        r#"allow = ["read", "everything"]"#,
    );
    let err = switchyard::Config::parse(&bad, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin.tokens[1].policy.allow[1]") && err.contains("unknown tool or group"),
        "{err}"
    );
    let c = switchyard::Config::parse(&config(), "t.toml").unwrap();
    let policy = c.admin_tokens[1].policy.as_ref().unwrap();
    assert!(policy.allows("rollout.advance") && policy.allows("flag.results"));
    assert!(!policy.allows("kill_switch") && !policy.allows("fallback.force"));
    assert!(c.admin_tokens[0].policy.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandit_floor_never_goes_below_the_policy() {
    let p = start().await;
    let session = initialize(&p, TUNER, "2025-06-18").await;
    let v = session
        .call(
            "bandit.set",
            json!({"flag": "assist", "floor": 0.01, "reason": "explore less"}),
        )
        .await;
    assert!(mcp::refusal(&v).contains("floor at 0.05 or above"), "{v}");
    // Within the policy: the bandit's own admin operation, audited as the agent.
    let v = session
        .call(
            "bandit.set",
            json!({"flag": "assist", "floor": 0.1, "reason": "explore more"}),
        )
        .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    let v = session
        .call("bandit.get", json!({"flag": "assist", "reason": "look"}))
        .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert!(v["result"]["structuredContent"].is_object(), "{v}");
    // Other reads are not in this token's policy.
    let v = session.call("flags.list", json!({"reason": "look"})).await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    let audit = admin_get(&p, "/admin/audit?actor=agent%3Atuner").await;
    let entries: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(entries.len(), 4, "{audit}");
    assert_eq!(
        entries[0],
        ("agent_refused".to_owned(), "explore less".to_owned())
    );
    assert!(
        entries[1].0.contains("bandit") && entries[1].1 == "explore more",
        "{audit}"
    );
    assert_eq!(entries[2], ("agent_read".to_owned(), "look".to_owned()));
    assert_eq!(entries[3].0, "agent_refused");
}

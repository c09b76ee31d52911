//! An MCP client over real HTTP: JSON-RPC posts to the admin listener's `/mcp` with a bearer
//! token, `initialize` (which opens a session) and `tools/call` within it.
//!
//! It sends its requests with `support/http.rs`, which the test includes beside it:
//!
//! ```ignore
//! #[path = "support/http.rs"]
//! mod client;
//! #[path = "support/mcp.rs"]
//! mod mcp;
//!
//! let s = mcp::Session::initialize(&p.admin_url("/mcp"), token, "2025-06-18").await;
//! let v = s.call("flags.list", json!({"reason": "a look"})).await;
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use super::client;

/// Posts one JSON-RPC `body` to `url`, with a token and a session id when given.
pub async fn post(
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: &str,
) -> client::Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    client::request(Method::POST, url, Bytes::from(body.to_owned()), &headers).await
}

/// An MCP session: the token that opened it and the id `initialize` answered with.
pub struct Session {
    url: String,
    token: String,
    /// The `mcp-session-id`.
    pub id: String,
    /// The answer to `initialize`.
    pub init: Value,
}

impl Session {
    /// Opens a session at `url` with `token`, asking for protocol `version`.
    pub async fn initialize(url: &str, token: &str, version: &str) -> Session {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}});
        let r = post(url, Some(token), None, &body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.header("mcp-session-id").expect("a session id");
        Session {
            url: url.to_owned(),
            token: token.to_owned(),
            id,
            init: r.json(),
        }
    }

    /// Calls `tool` with `args`; the JSON-RPC answer.
    pub async fn call(&self, tool: &str, args: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": tool, "arguments": args}});
        let r = post(
            &self.url,
            Some(&self.token),
            Some(&self.id),
            &body.to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

/// The text of a tool call's refusal, asserting that the call was refused (`isError`).
pub fn refusal(v: &Value) -> &str {
    assert_eq!(v["result"]["isError"], true, "{v}");
    v["result"]["content"][0]["text"].as_str().unwrap()
}

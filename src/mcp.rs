//! The agent interface: an MCP server (Model Context Protocol, streamable HTTP transport) at
//! `/mcp` on the admin listener. Its tools ([`tools`]) are the admin operations, run through
//! the admin API's own code ([`crate::admin::api`]); agent tokens' policies ([`policy`]) say
//! which tools a token may call and within which limits.
//!
//! The transport: every JSON-RPC message is a `POST /mcp` answered with one JSON body
//! (`application/json`; the transport allows that instead of an SSE stream); notifications and
//! responses get `202 Accepted`. `initialize` negotiates the protocol version and opens a
//! session (`Mcp-Session-Id`, bound to the token that opened it); every later request names
//! it. `GET /mcp` is `405` (the server sends nothing unprompted), `DELETE /mcp` ends a session.
//! Every request carries an admin token (`Authorization: Bearer …`): `401` without one.

pub mod policy;
pub mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::app::App;
use crate::body::{full, json_response, Body};
use crate::config::AgentPolicy;

/// Protocol versions this server speaks through the `initialize` handshake, newest first.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol version header clients send after `initialize`.
pub const VERSION_HEADER: &str = "mcp-protocol-version";
/// Open sessions, at most (the least recently used goes first).
const MAX_SESSIONS: usize = 1024;
/// Largest JSON-RPC message.
const MAX_BODY: usize = 256 * 1024;

/// JSON-RPC error codes.
pub mod code {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters (an unknown tool among them).
    pub const INVALID_PARAMS: i64 = -32602;
}

/// Who calls: the token's name and its policy (`None`: a plain admin token, every tool).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its policy.
    pub policy: Option<Arc<AgentPolicy>>,
}

impl Caller {
    /// The audit actor: `agent:<name>`.
    pub fn actor(&self) -> String {
        format!("agent:{}", self.name)
    }
}

#[derive(Debug)]
struct Session {
    token: String,
    used: u64,
}

/// Open MCP sessions, and the lock that keeps an agent's stage-change limit exact.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    clock: std::sync::atomic::AtomicU64,
    /// Held while a stage-changing call checks its limit and acts.
    pub(crate) stage_changes: tokio::sync::Mutex<()>,
}

impl Sessions {
    fn tick(&self) -> u64 {
        self.clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn open(&self, token: &str) -> String {
        let id = format!("{:032x}", fastrand::u128(..));
        let used = self.tick();
        if let Ok(mut open) = self.open.lock() {
            if open.len() >= MAX_SESSIONS {
                if let Some(oldest) = open
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(k, _)| k.clone())
                {
                    open.remove(&oldest);
                }
            }
            open.insert(
                id.clone(),
                Session {
                    token: token.to_owned(),
                    used,
                },
            );
        }
        id
    }

    /// Whether `id` is a session opened by `token` (and marks it used).
    fn check(&self, id: &str, token: &str) -> bool {
        let used = self.tick();
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        match open.get_mut(id) {
            Some(s) if s.token == token => {
                s.used = used;
                true
            }
            _ => false,
        }
    }

    fn close(&self, id: &str, token: &str) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        if open.get(id).is_some_and(|s| s.token == token) {
            open.remove(id);
            return true;
        }
        false
    }
}

/// A JSON-RPC error response.
fn rpc_error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn rpc_result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn answer(status: StatusCode, v: &Value) -> Response<Body> {
    json_response(status, v)
}

fn accepted() -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Serves `/mcp` for an authenticated caller.
pub async fn handle(app: &Arc<App>, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    match *req.method() {
        Method::POST => {}
        Method::DELETE => {
            let closed = header_str(req.headers(), SESSION_HEADER)
                .is_some_and(|id| app.mcp.close(id, &caller.name));
            let mut resp = Response::new(full(""));
            *resp.status_mut() = if closed {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::NOT_FOUND
            };
            return resp;
        }
        _ => {
            let mut resp = answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &rpc_error(
                    Value::Null,
                    code::INVALID_REQUEST,
                    "this server sends no stream of its own: POST JSON-RPC messages to /mcp",
                ),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            return resp;
        }
    }
    let limits = {
        let live = app.live.load();
        crate::server::linger::BodyLimits::new(&live.config.server, MAX_BODY)
    };
    let (parts, body) = req.into_parts();
    let body = match crate::server::linger::read_body(body, &parts.headers, limits).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                &rpc_error(Value::Null, code::PARSE_ERROR, format!("parse error: {e}")),
            )
        }
    };
    let Some(obj) = msg.as_object() else {
        let why = if msg.is_array() {
            "batches are not supported: send one JSON-RPC message per request"
        } else {
            "a JSON-RPC message is a JSON object"
        };
        return answer(
            StatusCode::BAD_REQUEST,
            &rpc_error(Value::Null, code::INVALID_REQUEST, why),
        );
    };
    let id = obj.get("id").cloned();
    let error_id = id.clone().unwrap_or(Value::Null);
    let bad = move |why: &str| {
        answer(
            StatusCode::BAD_REQUEST,
            &rpc_error(error_id.clone(), code::INVALID_REQUEST, why),
        )
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return bad("`jsonrpc` must be \"2.0\"");
    }
    if let Some(v) = header_str(&parts.headers, VERSION_HEADER) {
        if !PROTOCOL_VERSIONS.contains(&v) {
            return bad(&format!(
                "unsupported MCP-Protocol-Version {v:?} (supported: {})",
                PROTOCOL_VERSIONS.join(", ")
            ));
        }
    }
    let session = header_str(&parts.headers, SESSION_HEADER);
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        // A response to something the server asked (it asks nothing): accepted and dropped.
        if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) {
            return accepted();
        }
        return bad("`method` must be a string");
    };
    let Some(id) = id else {
        // A notification (`notifications/initialized`, `…/cancelled`): nothing to answer.
        if let Some(s) = session {
            if !app.mcp.check(s, &caller.name) {
                return unknown_session();
            }
        }
        return accepted();
    };
    if !(id.is_string() || id.is_i64() || id.is_u64()) {
        return bad("`id` must be a string or an integer");
    }
    let params = obj.get("params").cloned().unwrap_or(json!({}));
    if !matches!(method, "initialize" | "ping" | "tools/list" | "tools/call") {
        return answer(
            StatusCode::OK,
            &rpc_error(
                id,
                code::METHOD_NOT_FOUND,
                format!("method not found: {method} (initialize, ping, tools/list, tools/call)"),
            ),
        );
    }
    if method == "initialize" {
        return initialize(app, &caller, id, &params);
    }
    match session {
        None => {
            return bad("the Mcp-Session-Id header is required after initialize");
        }
        Some(s) if !app.mcp.check(s, &caller.name) => return unknown_session(),
        Some(_) => {}
    }
    let v = match method {
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(id, tools_list(&caller)),
        _ => match policy::call(app, &caller, &params).await {
            Ok(result) => rpc_result(id, result),
            Err((code, message)) => rpc_error(id, code, message),
        },
    };
    answer(StatusCode::OK, &v)
}

fn unknown_session() -> Response<Body> {
    answer(
        StatusCode::NOT_FOUND,
        &rpc_error(
            Value::Null,
            code::INVALID_REQUEST,
            "unknown or expired session: initialize again",
        ),
    )
}

fn initialize(app: &App, caller: &Caller, id: Value, params: &Value) -> Response<Body> {
    let Some(asked) = params.get("protocolVersion").and_then(Value::as_str) else {
        return answer(
            StatusCode::OK,
            &rpc_error(
                id,
                code::INVALID_PARAMS,
                "initialize needs params.protocolVersion",
            ),
        );
    };
    // The client's version when this server speaks it, else this server's newest.
    let version = PROTOCOL_VERSIONS
        .iter()
        .find(|v| **v == asked)
        .unwrap_or(&PROTOCOL_VERSIONS[0]);
    let session = app.mcp.open(&caller.name);
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "switchyard", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Switchyard's admin operations as tools. Every call needs a `reason` (it goes to the audit log with the actor agent:<token name>). A call outside this token's policy is refused with the reason, and audited as refused.",
    });
    let mut resp = answer(StatusCode::OK, &rpc_result(id, result));
    if let Ok(v) = HeaderValue::from_str(&session) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

fn tools_list(caller: &Caller) -> Value {
    let list: Vec<Value> = tools::TOOLS
        .iter()
        .map(|t| {
            let allowed = caller.policy.as_ref().is_none_or(|p| p.allows(t.name));
            let description = if allowed {
                t.description.to_owned()
            } else {
                format!("{} (not allowed by this token's policy)", t.description)
            };
            json!({
                "name": t.name,
                "description": description,
                "inputSchema": tools::input_schema(t),
                "annotations": {"readOnlyHint": t.read_only, "destructiveHint": t.name == "kill_switch", "openWorldHint": false},
            })
        })
        .collect();
    json!({"tools": list})
}

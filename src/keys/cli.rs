//! `switchyard ctl keys create|list|show|revoke|rotate`: the `/admin/keys` API from a terminal.

use http::Method;
use serde_json::{json, Value};

/// A `ctl keys` action.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum KeysAction {
    /// Create a key; its secret is printed once.
    Create {
        /// The key's name (metric label, audit subject).
        #[arg(long)]
        name: String,
        /// Flags it may call, comma-separated (default: every flag).
        #[arg(long, value_delimiter = ',')]
        flags: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens (in + out) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Budget, `50/month` or `5/day`.
        #[arg(long)]
        budget_usd: Option<String>,
        /// Lifetime, e.g. `90d`.
        #[arg(long)]
        expires: Option<String>,
        /// An attribute audiences see, `key=value` (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attrs: Vec<String>,
    },
    /// Every key, with its spend this period.
    List,
    /// One key.
    Show {
        /// The key's name.
        name: String,
    },
    /// Revoke a key (every replica refuses it within a second).
    Revoke {
        /// The key's name.
        name: String,
    },
    /// A new secret for a key; the old one keeps working for the grace period.
    Rotate {
        /// The key's name.
        name: String,
        /// How long the old secret stays valid, e.g. `1h` (default: not at all).
        #[arg(long)]
        grace: Option<String>,
    },
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl KeysAction {
    /// The admin request: method, path, body.
    pub fn request(&self, reason: &Option<String>) -> (Method, String, Option<Value>) {
        let with_reason = |mut v: Value| {
            if let (Some(r), Some(o)) = (reason, v.as_object_mut()) {
                o.insert("reason".into(), json!(r));
            }
            v
        };
        match self {
            KeysAction::Create {
                name,
                flags,
                rpm,
                tpm,
                budget_usd,
                expires,
                attrs,
            } => {
                let attributes: serde_json::Map<String, Value> = attrs
                    .iter()
                    .map(|a| match a.split_once('=') {
                        Some((k, v)) => (k.trim().to_owned(), json!(v.trim())),
                        None => (a.trim().to_owned(), json!("")),
                    })
                    .collect();
                (
                    Method::POST,
                    "/admin/keys".into(),
                    Some(with_reason(json!({
                        "name": name,
                        "flags": flags,
                        "rpm": rpm,
                        "tpm": tpm,
                        "budget_usd": budget_usd,
                        "expires": expires,
                        "attributes": attributes,
                    }))),
                )
            }
            KeysAction::List => (Method::GET, "/admin/keys".into(), None),
            KeysAction::Show { name } => (Method::GET, format!("/admin/keys/{}", enc(name)), None),
            KeysAction::Revoke { name } => (
                Method::DELETE,
                format!("/admin/keys/{}", enc(name)),
                Some(with_reason(json!({}))),
            ),
            KeysAction::Rotate { name, grace } => (
                Method::POST,
                format!("/admin/keys/{}/rotate", enc(name)),
                Some(with_reason(json!({ "grace": grace }))),
            ),
        }
    }

    /// A readable rendering of the answer.
    pub fn render(&self, v: &Value) -> String {
        match self {
            KeysAction::List => {
                let mut out = format!(
                    "{:<20} {:<8} {:>12} {:>12} {:>8} {:>9}  flags\n",
                    "key", "status", "spend_usd", "budget_usd", "rpm", "tpm"
                );
                for k in v["keys"].as_array().into_iter().flatten() {
                    out.push_str(&line(k));
                }
                out
            }
            KeysAction::Create { .. } | KeysAction::Rotate { .. } => format!(
                "{}\nkey: {}\n(shown once: store it now; the proxy keeps only its hash)\n",
                details(v),
                v["key"].as_str().unwrap_or("?")
            ),
            KeysAction::Show { .. } | KeysAction::Revoke { .. } => details(v),
        }
    }
}

fn opt(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string().trim_matches('"').to_owned()
    }
}

fn line(k: &Value) -> String {
    let flags: Vec<&str> = k["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{:<20} {:<8} {:>12} {:>12} {:>8} {:>9}  {}\n",
        k["name"].as_str().unwrap_or("?"),
        k["status"].as_str().unwrap_or("?"),
        k["spend_usd"]
            .as_f64()
            .map_or("-".into(), |s| format!("{s:.6}")),
        opt(&k["budget_usd"]),
        opt(&k["rpm"]),
        opt(&k["tpm"]),
        if flags.is_empty() {
            "(all)".to_owned()
        } else {
            flags.join(",")
        }
    )
}

fn details(k: &Value) -> String {
    let mut out = String::new();
    for field in [
        "name",
        "status",
        "flags",
        "rpm",
        "tpm",
        "budget_usd",
        "budget_period",
        "spend_usd",
        "spend_period",
        "expires_at",
        "attributes",
        "created_at",
        "revoked_at",
        "previous_valid_until",
    ] {
        out.push_str(&format!("{field:<21} {}\n", opt(&k[field])));
    }
    out
}

//! `switchyard ctl bandit FLAG | show FLAG | replay FLAG EPOCH | set FLAG … | epoch FLAG`:
//! the bandit's admin operations from a terminal. `replay` fetches the stored record and
//! recomputes the epoch here, in this process, from the record alone.

use http::Method;
use serde_json::{json, Value};

use super::record::{replay, replay_json, EpochRecord};

/// A `ctl bandit` action.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum BanditAction {
    /// State, weights and the newest epochs.
    Show {
        /// The flag.
        flag: String,
    },
    /// Recompute one epoch from its record and compare, bit for bit (exit 1 if it differs).
    Replay {
        /// The flag.
        flag: String,
        /// The epoch number.
        epoch: u64,
    },
    /// Change settings (audited runtime overrides).
    Set {
        /// The flag.
        flag: String,
        /// The least share each live arm keeps, e.g. 0.05.
        #[arg(long)]
        floor: Option<f64>,
        /// Time between epochs, e.g. `15m`.
        #[arg(long)]
        cadence: Option<String>,
        /// Users each arm needs before anything moves.
        #[arg(long)]
        min_users_per_arm: Option<u64>,
        /// Pause (`true`) or resume (`false`) the epochs.
        #[arg(long)]
        paused: Option<bool>,
        /// Back to the configured allocation and a running bandit.
        #[arg(long)]
        reset: bool,
    },
    /// Run one epoch now.
    Epoch {
        /// The flag.
        flag: String,
    },
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl BanditAction {
    /// The admin request: method, path, body.
    pub fn request(&self, reason: &Option<String>) -> (Method, String, Option<Value>) {
        let with_reason = |mut v: Value| {
            if let (Some(r), Some(o)) = (reason, v.as_object_mut()) {
                o.insert("reason".into(), json!(r));
            }
            v
        };
        match self {
            BanditAction::Show { flag } => (
                Method::GET,
                format!("/admin/flags/{}/bandit", enc(flag)),
                None,
            ),
            BanditAction::Replay { flag, epoch } => (
                Method::GET,
                format!("/admin/flags/{}/bandit/epochs/{epoch}", enc(flag)),
                None,
            ),
            BanditAction::Set {
                flag,
                floor,
                cadence,
                min_users_per_arm,
                paused,
                reset,
            } => {
                let mut body = serde_json::Map::new();
                if let Some(f) = floor {
                    body.insert("floor".into(), json!(f));
                }
                if let Some(c) = cadence {
                    body.insert("cadence".into(), json!(c));
                }
                if let Some(m) = min_users_per_arm {
                    body.insert("min_users_per_arm".into(), json!(m));
                }
                if let Some(p) = paused {
                    body.insert("paused".into(), json!(p));
                }
                if *reset {
                    body.insert("reset".into(), json!(true));
                }
                (
                    Method::PUT,
                    format!("/admin/flags/{}/bandit", enc(flag)),
                    Some(with_reason(Value::Object(body))),
                )
            }
            BanditAction::Epoch { flag } => (
                Method::POST,
                format!("/admin/flags/{}/bandit/epoch", enc(flag)),
                Some(with_reason(json!({}))),
            ),
        }
    }

    /// For `replay`: the answer replaced by the comparison, and whether it matched.
    pub fn finish(&self, v: Value) -> (Value, bool) {
        match self {
            BanditAction::Replay { .. } => match serde_json::from_value::<EpochRecord>(v) {
                Ok(record) => {
                    let r = replay(&record);
                    (replay_json(&record, &r), r.matches)
                }
                Err(e) => (
                    json!({"error": format!("unreadable epoch record: {e}")}),
                    false,
                ),
            },
            _ => (v, true),
        }
    }

    /// The answer for people.
    pub fn render(&self, v: &Value) -> String {
        match self {
            BanditAction::Replay { .. } => {
                if let Some(e) = v["error"].as_str() {
                    return format!("{e}\n");
                }
                let mut out = format!(
                    "{} epoch {} (seed {}): {}\n",
                    v["flag"].as_str().unwrap_or("?"),
                    v["epoch"],
                    v["seed"].as_str().unwrap_or("?"),
                    if v["matches"] == json!(true) {
                        "replay MATCHES the record bit for bit"
                    } else {
                        "replay DIFFERS from the record"
                    }
                );
                out.push_str(&format!(
                    "  {:<14} {:>12} {:>12} {:>18} {:>9} {:>9}\n",
                    "variation", "P(best)", "recomputed", "bits", "weight", "recomp."
                ));
                for (i, name) in v["variations"].as_array().into_iter().flatten().enumerate() {
                    out.push_str(&format!(
                        "  {:<14} {:>12} {:>12} {:>18} {:>9} {:>9}\n",
                        name.as_str().unwrap_or("?"),
                        v["recorded"]["p_best"][i].to_string(),
                        v["recomputed"]["p_best"][i].to_string(),
                        v["recomputed"]["p_best_bits"][i].as_str().unwrap_or("?"),
                        v["recorded"]["weights_after"][i].to_string(),
                        v["recomputed"]["weights_after"][i].to_string(),
                    ));
                }
                out.push_str(&format!(
                    "  why: {} (recomputed: {})\n",
                    v["recorded"]["why"].as_str().unwrap_or("?"),
                    v["recomputed"]["why"].as_str().unwrap_or("?")
                ));
                if let Some(d) = v["differences"].as_array().filter(|d| !d.is_empty()) {
                    out.push_str(&format!("  differences: {d:?}\n"));
                }
                out
            }
            BanditAction::Epoch { .. } => {
                format!(
                    "epoch {}: {}  weights {}  P(best) {}\n",
                    v["epoch"],
                    v["why"].as_str().unwrap_or("?"),
                    v["weights_after"],
                    v["p_best"]
                )
            }
            _ => {
                let mut out = format!(
                    "{}  bandit on rule {} ({}, metric {})  status: {}  epoch {}{}\n",
                    v["flag"].as_str().unwrap_or("?"),
                    v["rule"].as_str().unwrap_or("?"),
                    v["algorithm"].as_str().unwrap_or("?"),
                    v["metric"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?"),
                    v["epoch"],
                    if v["paused"] == json!(true) {
                        "  PAUSED"
                    } else {
                        ""
                    }
                );
                out.push_str(&format!(
                    "  floor {}  cadence {}  min users/arm {}\n",
                    v["settings"]["floor"],
                    v["settings"]["cadence"].as_str().unwrap_or("?"),
                    v["settings"]["min_users_per_arm"]
                ));
                if let Some(w) = v["weights"].as_object() {
                    for (k, n) in w {
                        out.push_str(&format!(
                            "  {:<14} {:>6.2}%\n",
                            k,
                            n.as_f64().unwrap_or(0.0) / 100.0
                        ));
                    }
                }
                for e in v["epochs"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  epoch {:>4}  {}  {:<14} weights {}\n",
                        e["epoch"].to_string(),
                        e["at"].as_str().unwrap_or("?"),
                        e["why"].as_str().unwrap_or("?"),
                        e["weights_after"]
                    ));
                }
                out
            }
        }
    }
}

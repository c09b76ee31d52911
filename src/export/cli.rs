//! `switchyard ctl export`: every page of `GET /admin/export` in turn, printed as JSON Lines;
//! the cursor to resume from goes to stderr (`next cursor: …`), so a job can continue with
//! `--cursor` where the last run stopped.

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::ctl::Target;

/// `ctl export` arguments.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ExportArgs {
    /// Only this flag's records.
    #[arg(long)]
    pub flag: Option<String>,
    /// From this time on: RFC 3339, unix milliseconds, or a duration back from now (`24h`).
    #[arg(long)]
    pub since: Option<String>,
    /// What to export: exposures, feedback, evals, requests (comma-separated; default
    /// exposures,feedback,requests).
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Output format (only `jsonl`).
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// Resume after this cursor (one kind only).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Records per page.
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs the export; returns the exit code (as `ctl`'s: 1 refused, 2 usage, 3 unreachable).
pub async fn run(target: &Target, args: &ExportArgs) -> i32 {
    if args.format != "jsonl" {
        eprintln!("unknown --format {:?} (only jsonl)", args.format);
        return 2;
    }
    let kinds: Vec<String> = if args.kind.is_empty() {
        vec!["exposures".into(), "feedback".into(), "requests".into()]
    } else {
        args.kind.clone()
    };
    if args.cursor.is_some() && kinds.len() != 1 {
        eprintln!("--cursor resumes one kind: pass --kind too");
        return 2;
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for kind in &kinds {
        let mut cursor = args.cursor.clone();
        loop {
            let mut path = format!("/admin/export?kind={}&limit={}", enc(kind), args.page_size);
            if let Some(f) = &args.flag {
                path.push_str(&format!("&flag={}", enc(f)));
            }
            if let Some(s) = &args.since {
                path.push_str(&format!("&since={}", enc(s)));
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={}", enc(c)));
            }
            let url = format!("{}{}", target.url.trim_end_matches('/'), path);
            let mut req = Request::builder().method(Method::GET).uri(&url);
            if let Some(t) = &target.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let Ok(req) = req.body(Empty::new()) else {
                eprintln!("invalid admin URL {url}");
                return 2;
            };
            let timeout = std::time::Duration::from_secs(60);
            let resp = match tokio::time::timeout(timeout, client.request(req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    eprintln!("cannot reach the admin API at {}: {e}", target.url);
                    return 3;
                }
                Err(_) => {
                    eprintln!("the admin API at {} did not answer within 60 s", target.url);
                    return 3;
                }
            };
            let status = resp.status();
            let next = resp
                .headers()
                .get(super::admin::NEXT_CURSOR_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = match resp.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    eprintln!("reading the answer failed: {e}");
                    return 3;
                }
            };
            if !status.is_success() {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let msg = v["error"]["message"].as_str().unwrap_or("request failed");
                eprintln!("error ({}) exporting {kind}: {msg}", status.as_u16());
                return 1;
            }
            let records = body.iter().filter(|b| **b == b'\n').count();
            {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                if out.write_all(&body).is_err() {
                    // A closed stdout (`| head`) ends the export.
                    return 0;
                }
            }
            cursor = next.or(cursor);
            if records < args.page_size {
                break;
            }
        }
        if let Some(c) = &cursor {
            eprintln!("next cursor ({kind}): {c}");
        }
    }
    0
}

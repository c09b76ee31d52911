//! Start-up time: from the moment the script took its timestamp, just before it exec'd the
//! proxy, to the first connection accepted and to the first chat request answered with 200.
//! The script passes its clock (`date +%s%N`) so the exec itself is inside the figure.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;
use http_body_util::BodyExt;

use crate::client::{chat_body, Conn, Target};

/// Pause between attempts while nothing listens yet.
const RETRY: Duration = Duration::from_micros(200);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn ms_since(since_ns: u128) -> f64 {
    now_ns().saturating_sub(since_ns) as f64 / 1e6
}

/// Polls `target` until a chat request for `model` is answered with 200; prints
/// `result connect_ms=… first_answer_ms=… attempts=…` (milliseconds since `since_ns`).
pub async fn first(
    target: Target,
    model: String,
    since_ns: u128,
    deadline: Duration,
) -> Result<(), String> {
    let end = Instant::now() + deadline;
    let mut connect_ms = None;
    let mut attempts = 0u64;
    let mut last_error = String::new();
    while Instant::now() < end {
        attempts += 1;
        let mut conn = match Conn::open(&target).await {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        connect_ms.get_or_insert_with(|| ms_since(since_ns));
        let body = chat_body(&model, attempts, false);
        match conn.send(&target, Method::POST, body).await {
            Ok(resp) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
                let first_ms = ms_since(since_ns);
                println!(
                    "result connect_ms={:.1} first_answer_ms={first_ms:.1} attempts={attempts}",
                    connect_ms.unwrap_or(first_ms)
                );
                return Ok(());
            }
            Ok(resp) => last_error = format!("status {}", resp.status()),
            Err(e) => last_error = e,
        }
        tokio::time::sleep(RETRY).await;
    }
    Err(format!("no answer within {deadline:?}: {last_error}"))
}

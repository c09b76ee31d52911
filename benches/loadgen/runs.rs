//! The measurements: a closed loop (N connections, each sending its next request as soon as
//! the last is answered), an open loop (requests dispatched at a fixed rate whatever the
//! answers do, latency counted from dispatch so queueing shows), held SSE streams, and the
//! proxy's own overhead histogram read from `/metrics`.
//!
//! Each prints one line `result key=value …`; times are in microseconds unless the key says
//! otherwise. Every loop ends by a deadline, and every request has a timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Method;
use http_body_util::BodyExt;
use memchr::memmem;
use tokio::sync::{mpsc, Mutex, OnceCell};
use tokio::task::JoinSet;

use crate::client::{chat_body, Conn, Proto, Target};

/// Longest a single non-streamed request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections or streams one run may open.
const MAX_CONNS: usize = 50_000;

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at three significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 600_000_000)
}

/// Latencies and counts of one worker, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: histogram(),
            ok: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn print(&self, mode: &str, extra: &str) {
        let h = &self.latency;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        println!(
            "result mode={mode} ok={} errors={} p50_us={} p90_us={} p99_us={} max_us={} mean_us={:.1}{extra}",
            self.ok,
            self.errors,
            q(0.5),
            q(0.9),
            q(0.99),
            if h.is_empty() { 0 } else { h.max() },
            if h.is_empty() { 0.0 } else { h.mean() },
        );
        if let Some(e) = &self.first_error {
            eprintln!("{mode}: {} error(s), the first: {e}", self.errors);
        }
    }
}

/// One non-streamed exchange: send, read the whole answer, check the status.
async fn exchange(conn: &mut Conn, target: &Target, body: Bytes) -> Result<(), String> {
    let work = async {
        let resp = conn.send(target, Method::POST, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if status.is_success() {
            Ok(())
        } else {
            let shown = &bytes[..bytes.len().min(200)];
            Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(shown)
            ))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| "request timed out".to_owned())?
}

/// A connection, opened (again) when needed.
async fn connection<'a>(
    slot: &'a mut Option<Conn>,
    target: &Target,
) -> Result<&'a mut Conn, String> {
    if slot.is_none() {
        *slot = Some(Conn::open(target).await?);
    }
    slot.as_mut().ok_or_else(|| "no connection".to_owned())
}

fn check_conns(n: usize) -> Result<(), String> {
    if n == 0 || n > MAX_CONNS {
        return Err(format!("between 1 and {MAX_CONNS} connections, not {n}"));
    }
    Ok(())
}

/// A closed-loop run.
pub struct ClosedPlan {
    /// Where requests go.
    pub target: Target,
    /// The `model` sent (the flag key through the proxy).
    pub model: String,
    /// Connections, each with one request in flight.
    pub conns: usize,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
    /// Distinct end users, cycled (0: every request a new user).
    pub users: u64,
    /// Flags cycled: `model` becomes `{model}-{n % flags}` (0: `model` itself).
    pub flags: u64,
}

/// The end user of request number `n`: a new one each time, or one of `users` returning.
fn user_of(n: u64, users: u64) -> u64 {
    if users == 0 {
        n
    } else {
        n % users
    }
}

/// `conns` connections send back to back; prints requests/s and latency quantiles of the
/// requests that both started and ended inside the measured window.
pub async fn closed(plan: ClosedPlan) -> Result<(), String> {
    check_conns(plan.conns)?;
    let target = Arc::new(plan.target);
    let model: Arc<str> = plan.model.into();
    let users = Arc::new(AtomicU64::new(0));
    let returning = plan.users;
    let flags = plan.flags;
    let from = Instant::now() + plan.warmup;
    let end = from + plan.duration;
    let mut set = JoinSet::new();
    for _ in 0..plan.conns {
        let (target, model, users) = (target.clone(), model.clone(), users.clone());
        set.spawn(async move {
            let mut tally = Tally::new();
            let mut slot = None;
            while Instant::now() < end {
                let conn = match connection(&mut slot, &target).await {
                    Ok(c) => c,
                    Err(e) => {
                        tally.error(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let n = users.fetch_add(1, Ordering::Relaxed);
                let body = if flags == 0 {
                    chat_body(&model, user_of(n, returning), false)
                } else {
                    chat_body(
                        &format!("{model}-{}", n % flags),
                        user_of(n, returning),
                        false,
                    )
                };
                let t0 = Instant::now();
                let result = exchange(conn, &target, body).await;
                let t1 = Instant::now();
                let counted = t0 >= from && t1 <= end;
                match result {
                    Ok(()) if counted => {
                        tally.ok += 1;
                        let _ = tally.latency.record(micros(t1 - t0));
                    }
                    Ok(()) => {}
                    Err(e) => {
                        slot = None;
                        if counted {
                            tally.error(e);
                        }
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(joined) = set.join_next().await {
        total.merge(joined.map_err(|e| e.to_string())?);
    }
    let rps = total.ok as f64 / plan.duration.as_secs_f64().max(1e-9);
    total.print("closed", &format!(" conns={} rps={rps:.0}", plan.conns));
    Ok(())
}

/// An open-loop run.
pub struct OpenPlan {
    /// Where requests go.
    pub target: Target,
    /// The `model` sent.
    pub model: String,
    /// Connections available to carry the requests.
    pub conns: usize,
    /// Requests per second dispatched.
    pub rate: f64,
    /// How long requests are dispatched.
    pub duration: Duration,
}

/// Requests dispatched at a fixed rate, whether or not earlier ones were answered; latency is
/// counted from dispatch, so a request waiting for a free connection counts its wait.
pub async fn open(plan: OpenPlan) -> Result<(), String> {
    check_conns(plan.conns)?;
    if !(plan.rate > 0.0 && plan.rate <= 200_000.0) {
        return Err("--rate must be in (0, 200000]".into());
    }
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let target = Arc::new(plan.target);
    let model: Arc<str> = plan.model.into();
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let mut set = JoinSet::new();
    for _ in 0..plan.conns {
        let (target, model, rx) = (target.clone(), model.clone(), rx.clone());
        set.spawn(async move {
            let mut tally = Tally::new();
            let mut slot = None;
            loop {
                let job = rx.lock().await.recv().await;
                let Some((user, dispatched)) = job else {
                    break;
                };
                let result = match connection(&mut slot, &target).await {
                    Ok(conn) => exchange(conn, &target, chat_body(&model, user, false)).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        tally.ok += 1;
                        let _ = tally.latency.record(micros(dispatched.elapsed()));
                    }
                    Err(e) => {
                        slot = None;
                        tally.error(e);
                    }
                }
            }
            tally
        });
    }
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        if tx.send((i, Instant::now())).is_err() {
            break;
        }
    }
    drop(tx);
    let dispatched_in = start.elapsed();
    let mut sum = Tally::new();
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(joined)) => sum.merge(joined.map_err(|e| e.to_string())?),
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                sum.error("workers still busy at the deadline".into());
                break;
            }
        }
    }
    let unanswered = total.saturating_sub(sum.ok + sum.errors);
    sum.errors += unanswered;
    let achieved = total as f64 / dispatched_in.as_secs_f64().max(1e-9);
    sum.print(
        "open",
        &format!(
            " conns={} rate={:.0} dispatched={total} achieved_rate={achieved:.0}",
            plan.conns, plan.rate
        ),
    );
    Ok(())
}

/// A run of held SSE streams.
pub struct StreamPlan {
    /// Where requests go.
    pub target: Target,
    /// The `model` sent.
    pub model: String,
    /// Streams opened, each on its own connection.
    pub streams: usize,
    /// Streams opened per second.
    pub ramp: f64,
    /// Content chunks the upstream sends per stream.
    pub chunks: u32,
    /// Time between the upstream's chunks.
    pub interval: Duration,
    /// A stream with a longer silence than this (first token included) has stalled.
    pub stall: Duration,
    /// HTTP/1.1 (a connection per stream) or HTTP/2 (`per_conn` streams per connection).
    pub proto: Proto,
    /// Streams per HTTP/2 connection.
    pub per_conn: usize,
}

/// What one stream saw.
#[derive(Default)]
struct StreamSeen {
    ttft: Option<Duration>,
    max_gap: Duration,
    events: u32,
    done: bool,
    error: Option<String>,
}

/// The connection for stream `i`: its own over HTTP/1.1, a shared one over HTTP/2 (opened by
/// the first stream that needs it).
async fn stream_conn(
    target: &Target,
    proto: Proto,
    shared: Option<&OnceCell<Conn>>,
) -> Result<Conn, String> {
    match shared {
        Some(cell) => cell
            .get_or_try_init(|| Conn::open_with(target, proto))
            .await?
            .share()
            .ok_or_else(|| "only HTTP/2 connections are shared".to_owned()),
        None => Conn::open_with(target, proto).await,
    }
}

async fn one_stream(
    target: &Target,
    conn: Result<Conn, String>,
    body: Bytes,
    stall: Duration,
    open_now: &AtomicUsize,
    peak: &AtomicUsize,
) -> StreamSeen {
    let mut seen = StreamSeen::default();
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            seen.error = Some(e);
            return seen;
        }
    };
    let t0 = Instant::now();
    let sent = tokio::time::timeout(REQUEST_TIMEOUT, conn.send(target, Method::POST, body)).await;
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            seen.error = Some(e);
            return seen;
        }
        Err(_) => {
            seen.error = Some("no answer headers in time".into());
            return seen;
        }
    };
    if !resp.status().is_success() {
        seen.error = Some(format!("status {}", resp.status()));
        return seen;
    }
    let now_open = open_now.fetch_add(1, Ordering::SeqCst) + 1;
    peak.fetch_max(now_open, Ordering::SeqCst);
    let mut body = resp.into_body();
    let mut last = t0;
    // A silence this long ends the stream as failed (it has long since counted as a stall).
    let give_up = stall + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(give_up, body.frame()).await {
            Err(_) => {
                seen.error = Some("silent for too long".into());
                seen.max_gap = seen.max_gap.max(last.elapsed());
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                seen.error = Some(format!("body: {e}"));
                break;
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let now = Instant::now();
                seen.ttft.get_or_insert(now - t0);
                seen.max_gap = seen.max_gap.max(now - last);
                last = now;
                seen.events += memmem::find_iter(&data, b"data:").count() as u32;
                if memmem::find(&data, b"[DONE]").is_some() {
                    seen.done = true;
                }
            }
        }
    }
    open_now.fetch_sub(1, Ordering::SeqCst);
    seen
}

/// `streams` SSE streams opened at `ramp` per second and held to their end; prints time to
/// first token quantiles, failures, stalls and the most streams open at once.
pub async fn streams(plan: StreamPlan) -> Result<(), String> {
    check_conns(plan.streams)?;
    if !(plan.ramp > 0.0 && plan.ramp <= 100_000.0) {
        return Err("--ramp must be in (0, 100000]".into());
    }
    let target = Arc::new(plan.target);
    let open_now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / plan.ramp);
    let per_conn = plan.per_conn.max(1);
    let shared: Vec<Arc<OnceCell<Conn>>> = match plan.proto {
        Proto::H1 => Vec::new(),
        Proto::H2 => (0..plan.streams.div_ceil(per_conn))
            .map(|_| Arc::new(OnceCell::new()))
            .collect(),
    };
    let mut set = JoinSet::new();
    for i in 0..plan.streams {
        let (target, open_now, peak) = (target.clone(), open_now.clone(), peak.clone());
        let cell = shared.get(i / per_conn).cloned();
        let body = chat_body(&plan.model, i as u64, true);
        let due = start + period.mul_f64(i as f64);
        let (stall, proto) = (plan.stall, plan.proto);
        set.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let conn = stream_conn(&target, proto, cell.as_deref()).await;
            one_stream(&target, conn, body, stall, &open_now, &peak).await
        });
    }
    let ramp_time = period.mul_f64(plan.streams as f64);
    let stream_time = plan.interval * (plan.chunks + 1);
    let deadline = tokio::time::Instant::now()
        + ramp_time
        + stream_time
        + plan.stall
        + Duration::from_secs(60);
    let mut ttft = histogram();
    let (mut ok, mut failed, mut stalled, mut bad, mut unfinished) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut max_gap = Duration::ZERO;
    let mut first_error: Option<String> = None;
    let expected_events = plan.chunks + 3; // role, content chunks, stop, [DONE]
    loop {
        let seen = match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(joined)) => joined.map_err(|e| e.to_string())?,
            Ok(None) => break,
            Err(_) => {
                unfinished = set.len() as u64;
                set.abort_all();
                break;
            }
        };
        if let Some(t) = seen.ttft {
            let _ = ttft.record(micros(t));
        }
        max_gap = max_gap.max(seen.max_gap);
        let complete = seen.done && seen.events >= expected_events;
        let stall = seen.max_gap > plan.stall || !matches!(seen.ttft, Some(t) if t <= plan.stall);
        if stall {
            stalled += 1;
        }
        if stall || seen.error.is_some() || !complete {
            bad += 1;
        }
        match (&seen.error, complete) {
            (None, true) => ok += 1,
            (Some(e), _) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
            (None, false) => {
                failed += 1;
                first_error.get_or_insert_with(|| {
                    format!(
                        "incomplete stream: {} event(s), [DONE]: {}",
                        seen.events, seen.done
                    )
                });
            }
        }
    }
    failed += unfinished;
    stalled += unfinished;
    bad += unfinished;
    let q = |p: f64| {
        if ttft.is_empty() {
            0
        } else {
            ttft.value_at_quantile(p)
        }
    };
    println!(
        "result mode=streams proto={} streams={} ok={ok} failed={failed} stalled={stalled} bad={bad} peak_open={} \
         ttft_p50_us={} ttft_p99_us={} ttft_max_us={} max_gap_ms={} seconds={:.1}",
        if plan.proto == Proto::H2 { "h2" } else { "h1" },
        plan.streams,
        peak.load(Ordering::SeqCst),
        q(0.5),
        q(0.99),
        if ttft.is_empty() { 0 } else { ttft.max() },
        max_gap.as_millis(),
        start.elapsed().as_secs_f64(),
    );
    if let Some(e) = first_error {
        eprintln!("streams: {failed} failed, the first: {e}");
    }
    Ok(())
}

/// Reads `switchyard_overhead_seconds` from a `/metrics` page: sum and count over every
/// series, and their mean.
pub async fn overhead(target: Target) -> Result<(), String> {
    let mut conn = Conn::open(&target).await?;
    let work = async {
        let resp = conn.send(&target, Method::GET, Bytes::new()).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("status {status}"))
        }
    };
    let text = tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| "timed out".to_owned())??;
    let text = String::from_utf8_lossy(&text);
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with("switchyard_overhead_seconds_sum") {
            sum += value();
        } else if line.starts_with("switchyard_overhead_seconds_count") {
            count += value();
        }
    }
    let mean_us = if count > 0.0 { sum / count * 1e6 } else { 0.0 };
    println!("result mode=overhead sum_s={sum:.6} count={count:.0} mean_us={mean_us:.1}");
    Ok(())
}

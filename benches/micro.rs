//! Micro-benchmarks of the request path's own work, one group per phase:
//!
//! | group | what one iteration is |
//! |---|---|
//! | `decide` | `Flag::decide` for one user: an audience evaluated, then MurmurHash3 bucketing |
//! | `rewrite` | parse + rewrite of a typical chat body, next to a `serde_json::Value` round trip |
//! | `sse_relay` | one SSE chunk relayed by `SseRelay` (fast path, split frames, usage stripped) |
//! | `record` | one request's metrics recorded by a `Recorder` on a pre-built route |
//!
//! Run with `cargo bench --bench micro` (add a filter such as `-- decide` for one group).
//! Measurement times are short so the whole suite takes well under two minutes; see
//! `docs/performance.md` for the figures and what they mean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use switchyard::api::ClientApi;
use switchyard::app::Live;
use switchyard::body::BodyError;
use switchyard::flags::audience::{AttrValue, Attributes};
use switchyard::metrics::{Metrics, Outcome};
use switchyard::openai::Usage;
use switchyard::providers::{Timeouts, WireFormat};
use switchyard::proxy::context::{Recorder, Route};
use switchyard::proxy::request::ChatRequest;
use switchyard::proxy::rewrite::{rewrite, RewriteOptions};
use switchyard::proxy::stream::{RelayOptions, SseRelay};
use switchyard::Config;

/// A flag shaped like the shipped example: an audience rule first (evaluated for everyone,
/// matched by few), then a 50/50 A/B rule, then "everyone else".
const CONFIG: &str = r#"
[providers.mock]
kind = "mock"
latency = "0ms"

[prompts]
concise-assistant-v2 = "You are a concise support assistant. Answer in at most three sentences."
empathetic-assistant-v1 = "You are a warm, patient support assistant. Acknowledge the customer's problem before answering."

[tool_policies]
search-only = ["web_search", "kb_search"]

[audiences.internal-team]
conditions = ["or", { attribute = "email", match = "substring", value = "@acme.example" },
                    { attribute = "team", match = "exact", value = "ai" }]

[audiences.pro-plan]
conditions = ["and", { attribute = "plan", match = "exact", value = "pro" },
                     ["not", { attribute = "country", match = "exact", value = "DE" }]]

[flags.support-assistant]
off_variation = "control"
stable_variation = "control"

[flags.support-assistant.variations.control]
provider = "mock"
model_id = "gpt-4o"
system_prompt_variant = "concise-assistant-v2"
temperature = 0.3
token_budget = 1200
tool_policy = "search-only"
fallback_behavior = "rule-based"

[flags.support-assistant.variations.treatment]
provider = "mock"
model_id = "claude-3-5-sonnet"
system_prompt_variant = "empathetic-assistant-v1"
temperature = 0.7
token_budget = 800
tool_policy = "none"
fallback_behavior = "stable"

[[flags.support-assistant.rules]]
id = "internal-first"
audience = "internal-team"
allocation = [{ variation = "treatment", end = 10000 }]

[[flags.support-assistant.rules]]
id = "pro-2026-11"
audience = "pro-plan"
allocation = [{ variation = "control", end = 5000 }, { variation = "treatment", end = 10000 }]

[[flags.support-assistant.rules]]
id = "everyone-else"
allocation = [{ variation = "control", end = 10000 }]
"#;

/// A typical chat body: a system prompt, a short conversation, two tools, sampling settings
/// and metadata (about 1.4 KB).
const CHAT_BODY: &str = r#"{
  "model": "support-assistant",
  "messages": [
    {"role": "system", "content": "You are the helpful support assistant of Acme Cloud. Be precise and cite the documentation when you can."},
    {"role": "user", "content": "Hi, my deployment to eu-west-2 has been stuck in 'pending' for twenty minutes. What can I check?"},
    {"role": "assistant", "content": "Sorry to hear that. Could you tell me the deployment id and whether the build step finished?"},
    {"role": "user", "content": "The id is dep_8f3a2c91, and yes, the build finished at 10:42 UTC. The logs show 'waiting for capacity' repeatedly after that. Is there an outage, and should I retry in another region?"}
  ],
  "tools": [
    {"type": "function", "function": {"name": "kb_search", "description": "Search the knowledge base", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
    {"type": "function", "function": {"name": "open_ticket", "description": "Open a support ticket", "parameters": {"type": "object", "properties": {"summary": {"type": "string"}, "priority": {"type": "string", "enum": ["low", "normal", "high"]}}, "required": ["summary"]}}}
  ],
  "tool_choice": "auto",
  "temperature": 1.0,
  "max_tokens": 2000,
  "top_p": 0.95,
  "user": "user-4711",
  "metadata": {"plan": "pro", "country": "FR", "session": "s-2f9c"}
}"#;

/// An ordinary content chunk, as OpenAI streams them.
const CONTENT_EVENT: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" capacity\"},\"finish_reason\":null}]}\n\n";

/// The usage chunk a provider sends when asked for usage the client did not want: the relay
/// drops it (no choices) after reading the token counts.
const USAGE_EVENT: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":182,\"completion_tokens\":64,\"total_tokens\":246}}\n\n";

fn config() -> Config {
    match Config::parse(CONFIG, "bench.toml") {
        Ok(c) => c,
        Err(e) => panic!("the benchmark config is invalid:\n{e}"),
    }
}

fn short<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(50);
    g
}

fn bench_decide(c: &mut Criterion) {
    let config = config();
    let (_, flag) = config.flag("support-assistant").unwrap();
    // Distinct ids so every iteration hashes a different key (no branch-predictor replay).
    let ids: Vec<String> = (0..4096).map(|i| format!("user-{i:08}")).collect();
    let mut no_match = Attributes::new();
    no_match.insert("email", AttrValue::from("someone@example.com"));
    no_match.insert("plan", AttrValue::from("pro"));
    no_match.insert("country", AttrValue::from("FR"));
    let mut internal = Attributes::new();
    internal.insert("email", AttrValue::from("dev@acme.example"));

    let mut g = short(c, "decide");
    g.throughput(Throughput::Elements(1));
    // Audience 1 fails, audience 2 matches, the user is bucketed in the A/B rule.
    let mut i = 0usize;
    g.bench_function("two_audiences_then_bucket", |b| {
        b.iter(|| {
            i = (i + 1) & (ids.len() - 1);
            black_box(flag.decide(true, black_box(&ids[i]), black_box(&no_match)))
        })
    });
    // The first audience matches: one evaluation, one hash.
    let mut i = 0usize;
    g.bench_function("first_audience_matches", |b| {
        b.iter(|| {
            i = (i + 1) & (ids.len() - 1);
            black_box(flag.decide(true, black_box(&ids[i]), black_box(&internal)))
        })
    });
    // The hash alone, for scale.
    let mut i = 0usize;
    g.bench_function("bucket_only", |b| {
        b.iter(|| {
            i = (i + 1) & (ids.len() - 1);
            black_box(switchyard::flags::bucket::bucket(
                black_box(&ids[i]),
                "pro-2026-11",
            ))
        })
    });
    g.finish();
}

fn bench_rewrite(c: &mut Criterion) {
    let config = config();
    let (_, flag) = config.flag("support-assistant").unwrap();
    let variation = &flag.variations[flag.variation_index("control").unwrap()];
    let opts = RewriteOptions {
        prompt_mode: flag.system_prompt_mode,
        force_stream_usage: true,
    };
    let body = Bytes::from_static(CHAT_BODY.as_bytes());
    // Sanity: the body parses and the rewrite changes it.
    let req = ChatRequest::parse(&body).unwrap();
    assert_ne!(rewrite(&req, variation, opts), body.as_ref());

    let mut g = short(c, "rewrite");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_and_rewrite", |b| {
        b.iter(|| {
            let req = ChatRequest::parse(black_box(&body)).unwrap();
            black_box(rewrite(&req, variation, opts))
        })
    });
    g.bench_function("parse_only", |b| {
        b.iter(|| black_box(ChatRequest::parse(black_box(&body)).unwrap().messages.len()))
    });
    // Baseline: the naive way, a full DOM parse and re-serialisation of the same body.
    g.bench_function("baseline_serde_json_value_roundtrip", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&body)).unwrap();
            black_box(serde_json::to_vec(&v).unwrap())
        })
    });
    g.finish();
}

/// A waker that does nothing: the bodies below are always ready.
struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

/// An upstream body that yields the same frames, in order, forever.
struct Frames {
    frames: Vec<Bytes>,
    next: usize,
}

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = self.frames[self.next].clone();
        self.next = (self.next + 1) % self.frames.len();
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

fn live() -> Arc<Live> {
    let metrics = Arc::new(Metrics::new().unwrap());
    Arc::new(Live::new(Arc::new(config()), Arc::default(), &metrics).unwrap())
}

fn routed(live: &Arc<Live>) -> Recorder {
    let mut r = Recorder::new(live.clone(), ClientApi::Chat, Instant::now());
    r.route(Route::Variation {
        flag: 0,
        variation: 0,
    });
    r
}

/// A relay over `frames` (the first one handed over as the already-read first chunk); each
/// poll relays what one upstream frame completes. Call inside a Tokio runtime (timers).
fn relay(live: &Arc<Live>, frames: &[&'static str], strip_usage: bool) -> SseRelay {
    let frames: Vec<Bytes> = frames
        .iter()
        .map(|f| Bytes::from_static(f.as_bytes()))
        .collect();
    let first = frames[0].clone();
    let next = 1 % frames.len();
    let rest = Frames { frames, next };
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(60),
        idle: Duration::from_secs(60),
        total: Duration::from_secs(3600),
    };
    let opts = RelayOptions {
        strip_usage,
        outcome: Outcome::Success,
        timeouts,
        deadline: std::time::Instant::now() + timeouts.total,
        format: WireFormat::Chat,
    };
    SseRelay::new(first, BodyExt::boxed(rest), routed(live), opts, None)
}

fn poll_once(relay: &mut SseRelay, cx: &mut Context<'_>) -> usize {
    match Pin::new(relay).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().map_or(0, |d| d.len()),
        _ => 0,
    }
}

fn bench_sse_relay(c: &mut Criterion) {
    let live = live();
    // The relay arms idle and total timers: they need a Tokio time driver.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let waker = Waker::from(Arc::new(NoopWaker));
    let mut cx = Context::from_waker(&waker);

    let mut g = short(c, "sse_relay");
    g.throughput(Throughput::Elements(1));

    // Whole events in one frame, nothing to change: the zero-copy fast path.
    let mut r = relay(&live, &[CONTENT_EVENT], true);
    assert_eq!(poll_once(&mut r, &mut cx), CONTENT_EVENT.len());
    g.bench_function("one_chunk_fast_path", |b| {
        b.iter(|| black_box(poll_once(&mut r, &mut cx)))
    });

    // One event split across two frames: buffered, framed, then relayed.
    let (head, tail) = CONTENT_EVENT.split_at(CONTENT_EVENT.len() / 2);
    let mut r = relay(&live, &[head, tail], true);
    assert_eq!(poll_once(&mut r, &mut cx), CONTENT_EVENT.len());
    g.bench_function("one_chunk_split_in_two_frames", |b| {
        b.iter(|| black_box(poll_once(&mut r, &mut cx)))
    });

    // A content event followed by the usage event the client did not ask for: usage is read
    // and the usage event removed.
    let both: &'static str = Box::leak(format!("{CONTENT_EVENT}{USAGE_EVENT}").into_boxed_str());
    let mut r = relay(&live, &[both], true);
    assert_eq!(poll_once(&mut r, &mut cx), CONTENT_EVENT.len());
    g.bench_function("chunk_plus_usage_stripped", |b| {
        b.iter(|| black_box(poll_once(&mut r, &mut cx)))
    });
    g.finish();
}

fn bench_record(c: &mut Criterion) {
    let live = live();
    let usage = Usage {
        prompt_tokens: 182,
        completion_tokens: 64,
    };
    let mut g = short(c, "record");
    g.throughput(Throughput::Elements(1));
    // A whole request's bookkeeping: start, route, pause/resume around the upstream, usage,
    // finish (counters, latency histogram + rolling hdrhistogram, overhead histogram, tokens).
    g.bench_function("request_success", |b| {
        b.iter(|| {
            let mut r = routed(&live);
            r.pause();
            r.resume();
            r.usage(usage);
            r.finish(Outcome::Success, None);
            black_box(r.overhead())
        })
    });
    // Only the finish, on a recorder built outside the timed section.
    g.bench_function("finish_only", |b| {
        b.iter_batched(
            || routed(&live),
            |mut r| {
                r.finish(Outcome::Success, None);
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The groups, in the order they run (a private module: the generated function needs no docs).
mod suite {
    use super::{bench_decide, bench_record, bench_rewrite, bench_sse_relay};

    criterion::criterion_group!(
        benches,
        bench_decide,
        bench_rewrite,
        bench_sse_relay,
        bench_record
    );
}

criterion_main!(suite::benches);

//! The per-request context ([`RequestCtx`]) that every phase takes: the app, the config in
//! force when the request arrived, the client API, the request id, the decision, and the
//! [`Recorder`], which records exactly once: explicitly when the answer is complete, or on
//! drop (the client went away) as `cancelled`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response};

use crate::api::ClientApi;
use crate::app::{App, Live};
use crate::body::Body;
use crate::metrics::{Outcome, VariationMetrics};
use crate::openai::{ApiError, ErrorClass, Usage};
use crate::proxy::stream::{IdSink, RelayOptions, SseRelay};
use crate::proxy::Target;

/// One request's context, from its arrival to its answer.
pub struct RequestCtx<'a> {
    /// Shared state.
    pub app: &'a Arc<App>,
    /// The config and overrides in force when the request arrived (kept for its whole life,
    /// so a reload never changes a request half-way).
    pub live: Arc<Live>,
    /// The client API it came in.
    pub api: ClientApi,
    /// `x-request-id`.
    pub request_id: HeaderValue,
    /// Where it went, once decided.
    pub target: Option<Target>,
    recorder: Option<Recorder>,
}

impl<'a> RequestCtx<'a> {
    /// A request that arrived at `started`.
    pub fn new(
        app: &'a Arc<App>,
        api: ClientApi,
        request_id: HeaderValue,
        started: Instant,
    ) -> RequestCtx<'a> {
        let live = app.live.load_full();
        let mut recorder = Recorder::new(live.clone(), api, started);
        if app.export.enabled() {
            let id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
            recorder.export = Some(Box::new(crate::export::Draft::new(app.export.clone(), id)));
        }
        RequestCtx {
            app,
            recorder: Some(recorder),
            live,
            api,
            request_id,
            target: None,
        }
    }

    /// The decision is made: metrics go to its variation from now on.
    pub fn set_target(&mut self, target: Target) {
        if let Some(r) = self.recorder.as_mut() {
            r.route(target.route);
            if let (Some(d), Route::Variation { flag, .. }) = (r.export.as_mut(), target.route) {
                let rule = target.decision.and_then(|d| d.rule);
                let f = self.live.config.flags.get(flag);
                d.rule = f.and_then(|f| f.rules.get(rule?)).map(|r| r.id.clone());
            }
        }
        self.target = Some(target);
    }

    /// The client key the request was admitted with: its spend is counted when it ends.
    pub fn set_key(&mut self, key: Option<crate::keys::Grant>) {
        if let Some(r) = self.recorder.as_mut() {
            r.key = key;
        }
    }

    /// The export record's extras: a fallback's reason, and (with `[export]
    /// include_content`) the prompt and a complete answer.
    pub fn export_note(
        &mut self,
        fallback: Option<&'static str>,
        prompt: impl FnOnce() -> String,
        answer: Option<&[u8]>,
    ) {
        let Some(d) = self.recorder.as_mut().and_then(|r| r.export.as_mut()) else {
            return;
        };
        d.fallback = d.fallback.or(fallback);
        if d.wants_content() {
            d.prompt.get_or_insert_with(prompt);
            if let Some(a) = answer {
                d.answer = Some(String::from_utf8_lossy(a).into_owned());
            }
        }
    }

    /// The proxy hands over to the upstream.
    pub fn pause(&mut self) {
        if let Some(r) = self.recorder.as_mut() {
            r.pause();
        }
    }

    /// The upstream answered.
    pub fn resume(&mut self) {
        if let Some(r) = self.recorder.as_mut() {
            r.resume();
        }
    }

    /// Usage of a complete answer.
    pub fn usage(&mut self, usage: Usage) {
        if let Some(r) = self.recorder.as_mut() {
            r.usage(usage);
        }
    }

    /// The answer is complete.
    pub fn finish(&mut self, outcome: Outcome) {
        if let Some(r) = self.recorder.as_mut() {
            r.finish(outcome, None);
        }
    }

    /// The recorder moves into the stream relay, which records when the stream ends.
    pub fn relay(&mut self, first: Bytes, rest: Body, opts: RelayOptions) -> Option<SseRelay> {
        let mut rec = self.recorder.take()?;
        rec.pause();
        let on_id = self.response_sink();
        Some(SseRelay::new(first, rest, rec, opts, on_id))
    }

    /// For a Responses request on a flag: where the answered response's id is remembered, so
    /// `previous_response_id` continues on the same variation.
    fn response_sink(&self) -> Option<IdSink> {
        if self.api != ClientApi::Responses {
            return None;
        }
        let Some(Route::Variation { flag, variation }) = self.target.as_ref().map(|t| t.route)
        else {
            return None;
        };
        let f = self.live.config.flags.get(flag)?;
        let keys: (Arc<str>, Arc<str>) = (
            Arc::from(f.key.as_str()),
            Arc::from(f.variations.get(variation)?.key.as_str()),
        );
        let affinity = self.app.responses.clone();
        Some(Box::new(move |id: &str| {
            affinity.remember(id, &keys.0, &keys.1)
        }))
    }

    /// Remembers the id of a complete Responses answer.
    pub fn remember_response(&self, id: Option<String>) {
        if let (Some(id), Some(sink)) = (id, self.response_sink()) {
            sink(&id);
        }
    }

    /// The request failed: recorded, and rendered in the client API's error shape.
    pub fn fail(&mut self, e: ApiError) -> Response<Body> {
        let class = e.class();
        let outcome = if class.is_client_side() {
            Outcome::ClientError
        } else {
            Outcome::UpstreamError
        };
        tracing::debug!(error = %e, "request failed");
        let mut resp = e.into_response_for(self.api);
        if let Some(t) = &self.target {
            crate::proxy::set_decision_headers(resp.headers_mut(), &self.live, t.route, t.decision);
        }
        if let Some(r) = self.recorder.as_mut() {
            r.finish(outcome, Some(class));
        }
        resp
    }

    /// An answered flag request: its decision headers, and its exposure recorded (off the
    /// request path) for experiment results.
    pub fn answered(&self, mut resp: Response<Body>, served_by: Option<usize>) -> Response<Body> {
        let Some(target) = &self.target else {
            return resp;
        };
        let live = &self.live;
        crate::proxy::set_decision_headers(resp.headers_mut(), live, target.route, target.decision);
        if let Some(v) = target.identity.clone() {
            resp.headers_mut()
                .insert(crate::proxy::identify::IDENTITY_HEADER, v);
        }
        if let (Route::Variation { flag, variation }, Some(user)) = (target.route, &target.user) {
            if let Some(f) = live.config.flags.get(flag) {
                let rule = target
                    .decision
                    .and_then(|d| d.rule)
                    .and_then(|r| f.rules.get(r))
                    .map(|r| r.id.clone());
                let exposure = crate::state::Exposure {
                    flag: f.key.clone(),
                    variation: f
                        .variations
                        .get(variation)
                        .map(|v| v.key.clone())
                        .unwrap_or_default(),
                    rule,
                    user: user.clone(),
                    request_id: String::from_utf8_lossy(self.request_id.as_bytes()).into_owned(),
                    at_ms: crate::clock::now_ms(),
                    repeat: false,
                };
                self.app.experiments.expose(self.app, exposure);
            }
        }
        if let (Some(i), Route::Variation { flag, .. }) = (served_by, target.route) {
            if let Some(v) = live.headers.get(flag).and_then(|h| h.variations.get(i)) {
                resp.headers_mut()
                    .insert(crate::proxy::SERVED_BY_HEADER, v.clone());
            }
        }
        resp
    }
}

/// Which metric handles a request records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A flag's variation (indices into the live config).
    Variation {
        /// Flag index.
        flag: usize,
        /// Variation index.
        variation: usize,
    },
    /// A model that is no flag, sent to the passthrough provider.
    Passthrough,
    /// Rejected before a flag was known.
    Unrouted,
}

/// Records one request's metrics.
#[derive(Debug)]
pub struct Recorder {
    live: Arc<Live>,
    api: ClientApi,
    route: Route,
    started: Instant,
    overhead: Duration,
    working_since: Option<Instant>,
    first_token: bool,
    usage: Option<Usage>,
    done: bool,
    key: Option<crate::keys::Grant>,
    /// The per-request export record, when `[export] dir` is set.
    export: Option<Box<crate::export::Draft>>,
}

impl Recorder {
    /// Starts timing a request that arrived at `started`; the proxy is working from then on.
    pub fn new(live: Arc<Live>, api: ClientApi, started: Instant) -> Recorder {
        Recorder {
            live,
            api,
            route: Route::Unrouted,
            started,
            overhead: Duration::ZERO,
            working_since: Some(started),
            first_token: false,
            usage: None,
            done: false,
            key: None,
            export: None,
        }
    }

    /// Sets the route once the decision is made.
    pub fn route(&mut self, route: Route) {
        self.route = route;
    }

    fn handles(&self) -> &VariationMetrics {
        let routes = &self.live.routes;
        let handles = match self.route {
            Route::Variation { flag, variation } => routes
                .flags
                .get(flag)
                .and_then(|f| f.get(variation))
                .unwrap_or(&routes.unrouted),
            Route::Passthrough => &routes.passthrough,
            Route::Unrouted => &routes.unrouted,
        };
        handles.api(self.api)
    }

    /// The proxy hands over to the upstream: its own time stops counting.
    pub fn pause(&mut self) {
        if let Some(since) = self.working_since.take() {
            self.overhead += since.elapsed();
        }
    }

    /// The upstream answered: the proxy's own time counts again.
    pub fn resume(&mut self) {
        self.working_since = Some(Instant::now());
    }

    /// Adds proxy time measured elsewhere (per relayed chunk).
    pub fn add_overhead(&mut self, d: Duration) {
        self.overhead += d;
    }

    /// The first chunk of a stream arrived.
    pub fn first_token(&mut self) {
        if !self.first_token {
            self.first_token = true;
            let elapsed = self.started.elapsed();
            self.handles().ttft.observe(elapsed.as_secs_f64());
            if let Some(d) = self.export.as_mut() {
                d.ttft = Some(elapsed);
            }
        }
    }

    /// A stream broke after part of it reached the client.
    pub fn stream_interrupted(&self) {
        self.handles().stream_interrupted.inc();
    }

    /// Usage recorded so far.
    pub fn usage_so_far(&self) -> Option<Usage> {
        self.usage
    }

    /// Usage reported by the provider.
    pub fn usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// The proxy's own time so far.
    pub fn overhead(&self) -> Duration {
        self.overhead + self.working_since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Records the request's end.
    pub fn finish(&mut self, outcome: Outcome, error: Option<ErrorClass>) {
        if self.done {
            return;
        }
        self.done = true;
        self.pause();
        let overhead = self.overhead;
        let usage = self.usage;
        let elapsed = self.started.elapsed();
        let h = self.handles();
        h.outcome(outcome);
        if let Some(class) = error {
            h.error(class);
        }
        if matches!(outcome, Outcome::Success | Outcome::Fallback) {
            h.latency(elapsed);
        }
        if !matches!(self.route, Route::Unrouted) {
            h.overhead.observe(overhead.as_secs_f64());
        }
        if let Some(u) = usage {
            h.tokens_in.inc_by(u.prompt_tokens);
            h.tokens_out.inc_by(u.completion_tokens);
            let mut cost = 0.0;
            if let Some((input, output)) = h.price {
                cost = (u.prompt_tokens as f64 * input + u.completion_tokens as f64 * output) / 1e6;
                h.cost_usd.inc_by(cost);
            }
            // The key's spend: the same tokens at the same prices.
            if let Some(k) = &self.key {
                k.used(u.prompt_tokens + u.completion_tokens, cost);
            }
        }
        if let Some(d) = self.export.take() {
            let price = self.handles().price;
            d.finish(crate::export::record::Ending {
                live: &self.live,
                route: self.route,
                api: self.api,
                outcome,
                elapsed,
                usage,
                price,
            });
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Outcome::Cancelled, None);
        }
    }
}

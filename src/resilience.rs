//! Per-provider resilience state: the circuit breaker, the retry budget and backoff. Kept in
//! the shared app state by provider name, so it survives config reloads.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::providers::{CircuitPolicy, RetryPolicy};

/// The breaker's state, as the `switchyard_circuit_state` gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// One probe at a time is let through.
    HalfOpen,
    /// Requests go straight to their fallback.
    Open,
}

impl CircuitState {
    /// 0 closed, 1 half-open, 2 open.
    pub fn code(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// Whether a request may go to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes, normally.
    Allowed,
    /// Yes, as the half-open probe: its outcome closes or reopens the circuit.
    Probe,
    /// No: the circuit is open.
    Rejected,
}

const SLOTS: usize = 10;

#[derive(Debug)]
struct Window {
    slots: [(u32, u32); SLOTS],
    current: usize,
    slot_started: Instant,
    slot_len: Duration,
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            slots: [(0, 0); SLOTS],
            current: 0,
            slot_started: Instant::now(),
            slot_len: (window / SLOTS as u32).max(Duration::from_millis(1)),
        }
    }

    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.slot_started);
        let steps = (elapsed.as_nanos() / self.slot_len.as_nanos()) as usize;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(SLOTS) {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = (0, 0);
        }
        self.slot_started = now;
    }

    fn add(&mut self, now: Instant, ok: bool) {
        self.rotate(now);
        let slot = &mut self.slots[self.current];
        if ok {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    }

    fn totals(&self) -> (u32, u32) {
        self.slots
            .iter()
            .fold((0, 0), |(a, b), (ok, fail)| (a + ok, b + fail))
    }

    fn clear(&mut self) {
        self.slots = [(0, 0); SLOTS];
    }
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// A circuit breaker: opens when the error rate over a rolling window (with a minimum of
/// requests) crosses the threshold; after the cooldown lets one probe through; closes on its
/// success, reopens on its failure.
#[derive(Debug)]
pub struct Breaker {
    policy: CircuitPolicy,
    inner: Mutex<(State, Window)>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: CircuitPolicy) -> Breaker {
        Breaker {
            policy,
            inner: Mutex::new((State::Closed, Window::new(policy.window))),
        }
    }

    /// Asks whether a request may be sent now.
    pub fn admit(&self, now: Instant) -> Admission {
        if !self.policy.enabled {
            return Admission::Allowed;
        }
        let Ok(mut guard) = self.inner.lock() else {
            return Admission::Allowed;
        };
        let state = &mut guard.0;
        match *state {
            State::Closed => Admission::Allowed,
            State::Open { until } if now < until => Admission::Rejected,
            State::Open { .. } => {
                *state = State::HalfOpen { probe_started: now };
                Admission::Probe
            }
            // A probe that never reported (its client went away) does not wedge the breaker.
            State::HalfOpen { probe_started }
                if now.saturating_duration_since(probe_started) > self.policy.cooldown =>
            {
                *state = State::HalfOpen { probe_started: now };
                Admission::Probe
            }
            State::HalfOpen { .. } => Admission::Rejected,
        }
    }

    /// Records an attempt's outcome (`ok` = the provider was healthy).
    pub fn record(&self, now: Instant, admission: Admission, ok: bool) {
        if !self.policy.enabled {
            return;
        }
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let (state, window) = &mut *guard;
        if admission == Admission::Probe {
            if ok {
                *state = State::Closed;
                window.clear();
            } else {
                *state = State::Open {
                    until: now + self.policy.cooldown,
                };
            }
            return;
        }
        window.add(now, ok);
        if let State::Closed = state {
            let (oks, fails) = window.totals();
            let total = oks + fails;
            if total >= self.policy.min_requests
                && f64::from(fails) / f64::from(total) >= self.policy.error_rate
            {
                *state = State::Open {
                    until: now + self.policy.cooldown,
                };
                window.clear();
            }
        }
    }

    /// The current state.
    pub fn state(&self, now: Instant) -> CircuitState {
        let Ok(guard) = self.inner.lock() else {
            return CircuitState::Closed;
        };
        match guard.0 {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

/// Retries allowed per window regardless of traffic, so a quiet provider can still retry.
const BUDGET_FLOOR: f64 = 5.0;

/// A retry budget: retries over the last window may be at most `ratio` × requests + a floor,
/// so an outage is not amplified by retries.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<Window>,
}

impl RetryBudget {
    /// An empty budget over a 10 s window.
    pub fn new() -> RetryBudget {
        RetryBudget {
            inner: Mutex::new(Window::new(Duration::from_secs(10))),
        }
    }

    /// Counts a first attempt.
    pub fn request(&self, now: Instant) {
        if let Ok(mut w) = self.inner.lock() {
            w.add(now, true);
        }
    }

    /// Takes a retry from the budget if there is one left.
    pub fn try_retry(&self, now: Instant, ratio: f64) -> bool {
        let Ok(mut w) = self.inner.lock() else {
            return false;
        };
        w.rotate(now);
        let (requests, retries) = w.totals();
        if f64::from(retries) + 1.0 <= ratio * f64::from(requests) + BUDGET_FLOOR {
            w.add(now, false);
            true
        } else {
            false
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new()
    }
}

/// The wait before retry number `retry` (0-based): a random point between half and all of an
/// exponential ceiling (jitter keeps clients from retrying in lockstep).
pub fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let ceiling = policy
        .backoff
        .saturating_mul(1u32 << retry.min(16))
        .min(policy.max_backoff);
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(if nanos == 0 {
        0
    } else {
        fastrand::u64(nanos / 2..=nanos)
    })
}

/// Breakers and budgets of every provider, by name.
#[derive(Debug, Default)]
pub struct Resilience {
    breakers: DashMap<String, std::sync::Arc<Breaker>>,
    budgets: DashMap<String, std::sync::Arc<RetryBudget>>,
}

impl Resilience {
    /// The breaker of a provider (created with `policy` on first use; a changed policy takes a
    /// fresh breaker).
    pub fn breaker(&self, provider: &str, policy: CircuitPolicy) -> std::sync::Arc<Breaker> {
        if let Some(b) = self.breakers.get(provider) {
            if b.policy == policy {
                return b.clone();
            }
        }
        let b = std::sync::Arc::new(Breaker::new(policy));
        self.breakers.insert(provider.to_owned(), b.clone());
        b
    }

    /// The retry budget of a provider.
    pub fn budget(&self, provider: &str) -> std::sync::Arc<RetryBudget> {
        if let Some(b) = self.budgets.get(provider) {
            return b.clone();
        }
        self.budgets.entry(provider.to_owned()).or_default().clone()
    }

    /// Every breaker's state, for the gauge.
    pub fn states(&self, now: Instant) -> Vec<(String, CircuitState)> {
        self.breakers
            .iter()
            .map(|e| (e.key().clone(), e.value().state(now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            enabled: true,
            error_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(1),
        }
    }

    #[test]
    fn opens_on_error_rate_then_probes_and_closes() {
        let b = Breaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.admit(t0), Admission::Allowed);
            b.record(t0, Admission::Allowed, false);
        }
        // Three failures are below the minimum of four requests.
        assert_eq!(b.state(t0), CircuitState::Closed);
        b.record(t0, Admission::Allowed, true);
        assert_eq!(b.state(t0), CircuitState::Open);
        assert_eq!(b.admit(t0), Admission::Rejected);
        let later = t0 + Duration::from_millis(1100);
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.admit(later), Admission::Rejected, "one probe at a time");
        b.record(later, Admission::Probe, false);
        assert_eq!(b.state(later), CircuitState::Open);
        let again = later + Duration::from_millis(1100);
        assert_eq!(b.admit(again), Admission::Probe);
        b.record(again, Admission::Probe, true);
        assert_eq!(b.state(again), CircuitState::Closed);
        assert_eq!(b.admit(again), Admission::Allowed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(t0, Admission::Allowed, false);
        }
        let later = t0 + Duration::from_secs(11);
        b.record(later, Admission::Allowed, false);
        assert_eq!(b.state(later), CircuitState::Closed);
    }

    #[test]
    fn the_budget_caps_retries_at_a_fraction_of_requests() {
        let budget = RetryBudget::new();
        let t = Instant::now();
        for _ in 0..100 {
            budget.request(t);
        }
        let granted = (0..100).filter(|_| budget.try_retry(t, 0.2)).count();
        assert_eq!(granted, 25, "20 % of 100 requests plus the floor of 5");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            retries: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            retry_after_cap: Duration::from_secs(1),
            budget: 0.2,
        };
        for _ in 0..50 {
            let b0 = backoff(&p, 0);
            assert!(b0 >= Duration::from_millis(50) && b0 <= Duration::from_millis(100));
            let b3 = backoff(&p, 3);
            assert!(b3 >= Duration::from_millis(175) && b3 <= Duration::from_millis(350));
        }
    }
}

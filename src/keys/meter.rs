//! One key's counters: requests and tokens per minute (a sliding window over two fixed
//! minutes, as Cloudflare's rate limiter estimates it) and spend in the key's budget period.
//!
//! Spend is one counter that enforcement and reporting both read: the fleet's total as of this
//! replica's last flush, plus what this replica spent since. A replica's unflushed spend is
//! what it spent within one flush interval (`[keys] flush_interval`, 1 s by default).

use super::record::{KeyRecord, Period};

const MINUTE_MS: u64 = 60_000;

/// Why a request is refused before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Requests per minute.
    Rpm {
        /// The limit.
        limit: u64,
        /// Seconds until a request fits again.
        retry_after: u64,
    },
    /// Tokens per minute.
    Tpm {
        /// The limit.
        limit: u64,
        /// Seconds until a request fits again.
        retry_after: u64,
    },
    /// The period's budget is spent.
    Budget {
        /// The budget, nano-USD.
        limit: i64,
        /// Seconds until the period ends.
        retry_after: u64,
    },
}

/// A key's counters.
#[derive(Debug, Default)]
pub struct Meter {
    minute: u64,
    requests: [u64; 2],
    tokens: [u64; 2],
    /// The period the spend figures are for.
    period: String,
    /// `period` holds for (kind, from, until) in Unix ms: the request path compares two
    /// numbers instead of formatting a date.
    period_span: Option<(Period, u64, u64)>,
    /// The fleet's spend in `period` at the last flush, nano-USD.
    flushed: i64,
    /// Spend handed to a flush that has not completed.
    in_flight: i64,
    /// Spend here since.
    unflushed: i64,
}

impl Meter {
    fn roll(&mut self, now_ms: u64) {
        let minute = now_ms / MINUTE_MS;
        if minute == self.minute {
            return;
        }
        if minute == self.minute + 1 {
            self.requests = [self.requests[1], 0];
            self.tokens = [self.tokens[1], 0];
        } else {
            self.requests = [0, 0];
            self.tokens = [0, 0];
        }
        self.minute = minute;
    }

    fn roll_period(&mut self, period: Period, now_ms: u64) {
        if let Some((kind, from, until)) = self.period_span {
            if kind == period && from <= now_ms && now_ms < until {
                return;
            }
        }
        self.period_span = Some((period, now_ms, period.end_ms(now_ms)));
        let id = period.id(now_ms);
        if id != self.period {
            // A new period starts from nothing (what was unflushed is counted in it).
            self.period = id;
            self.flushed = 0;
        }
    }

    /// The sliding-window estimate of the last minute: the previous minute weighted by how
    /// much of it is still inside the window, plus the current minute.
    fn estimate(counts: [u64; 2], now_ms: u64) -> f64 {
        let into = (now_ms % MINUTE_MS) as f64 / MINUTE_MS as f64;
        counts[0] as f64 * (1.0 - into) + counts[1] as f64
    }

    fn retry_after(counts: [u64; 2], limit: u64, now_ms: u64) -> u64 {
        // Until the estimate falls under the limit: the previous minute's weight decays
        // linearly over the current one; past its end only the current minute counts.
        let left_ms = MINUTE_MS - now_ms % MINUTE_MS;
        let mut ms = left_ms;
        if counts[0] > 0 && (counts[1] as f64) < limit as f64 {
            let need = counts[0] as f64 + counts[1] as f64 - limit as f64 + 1.0;
            let decay_ms = need / counts[0] as f64 * MINUTE_MS as f64;
            ms = (decay_ms.max(0.0) as u64).min(left_ms);
        }
        ms.div_ceil(1000).max(1)
    }

    /// Admits one request of `key` at `now_ms`, or says which limit it is over.
    pub fn admit(&mut self, key: &KeyRecord, now_ms: u64) -> Result<(), Over> {
        self.roll(now_ms);
        if let Some(b) = key.budget {
            self.roll_period(b.period, now_ms);
            if self.spend() >= b.nano_usd {
                let left = b.period.end_ms(now_ms).saturating_sub(now_ms);
                return Err(Over::Budget {
                    limit: b.nano_usd,
                    retry_after: left.div_ceil(1000).max(1),
                });
            }
        }
        if let Some(limit) = key.rpm {
            if Meter::estimate(self.requests, now_ms) + 1.0 > limit as f64 {
                return Err(Over::Rpm {
                    limit,
                    retry_after: Meter::retry_after(self.requests, limit, now_ms),
                });
            }
        }
        if let Some(limit) = key.tpm {
            if Meter::estimate(self.tokens, now_ms) >= limit as f64 {
                return Err(Over::Tpm {
                    limit,
                    retry_after: Meter::retry_after(self.tokens, limit, now_ms),
                });
            }
        }
        self.requests[1] += 1;
        Ok(())
    }

    /// Counts an answered request's tokens and cost.
    pub fn used(&mut self, period: Period, tokens: u64, nano_usd: i64, now_ms: u64) {
        self.roll(now_ms);
        self.roll_period(period, now_ms);
        self.tokens[1] += tokens;
        self.unflushed += nano_usd;
    }

    /// The spend in the current period: the fleet's at the last flush plus this replica's
    /// since.
    pub fn spend(&self) -> i64 {
        self.flushed + self.in_flight + self.unflushed
    }

    /// The spend of `period` as of now (0 when the period has just begun).
    pub fn spend_in(&mut self, period: Period, now_ms: u64) -> i64 {
        self.roll_period(period, now_ms);
        self.spend()
    }

    /// Hands the unflushed spend to a flush: (period, nano-USD).
    pub fn take_unflushed(&mut self, period: Period, now_ms: u64) -> (String, i64) {
        self.roll_period(period, now_ms);
        self.in_flight += self.unflushed;
        self.unflushed = 0;
        (self.period.clone(), self.in_flight)
    }

    /// The flush completed: `total` is the fleet's spend in `period`, this replica's in-flight
    /// spend included.
    pub fn flushed(&mut self, period: &str, total: i64) {
        if period == self.period {
            self.flushed = total;
        }
        self.in_flight = 0;
    }

    /// The flush failed: its spend is unflushed again.
    pub fn flush_failed(&mut self) {
        self.unflushed += self.in_flight;
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::record::Budget;
    use crate::keys::secret::KeyHash;

    fn key(rpm: Option<u64>, tpm: Option<u64>, budget: Option<&str>) -> KeyRecord {
        KeyRecord {
            name: "k".into(),
            hash: KeyHash([0; 32]),
            previous: None,
            flags: vec![],
            rpm,
            tpm,
            budget: budget.and_then(|b| Budget::parse(b).ok()),
            expires_at_ms: None,
            attributes: Default::default(),
            created_at_ms: 0,
            revoked_at_ms: None,
        }
    }

    #[test]
    fn requests_per_minute_slide() {
        let k = key(Some(2), None, None);
        let mut m = Meter::default();
        let t = 1_000 * MINUTE_MS;
        assert!(m.admit(&k, t).is_ok());
        assert!(m.admit(&k, t + 1).is_ok());
        let Err(Over::Rpm { retry_after, .. }) = m.admit(&k, t + 2) else {
            panic!("third request admitted")
        };
        assert!((1..=60).contains(&retry_after));
        // Half a minute into the next one, the previous minute weighs half: 1 + 0 < 2.
        assert!(m.admit(&k, t + MINUTE_MS + MINUTE_MS / 2).is_ok());
        assert!(m.admit(&k, t + 3 * MINUTE_MS).is_ok());
    }

    #[test]
    fn tokens_and_budget() {
        let k = key(None, Some(100), Some("1/day"));
        let mut m = Meter::default();
        let t = 1_000 * MINUTE_MS;
        assert!(m.admit(&k, t).is_ok());
        m.used(Period::Day, 150, 10, t);
        assert!(matches!(m.admit(&k, t + 1), Err(Over::Tpm { .. })));
        m.used(Period::Day, 0, 1_000_000_000, t + 2 * MINUTE_MS);
        let Err(Over::Budget { retry_after, .. }) = m.admit(&k, t + 2 * MINUTE_MS) else {
            panic!("over budget admitted")
        };
        assert!(retry_after <= 86_400);
        let (_, taken) = m.take_unflushed(Period::Day, t + 2 * MINUTE_MS);
        assert_eq!(taken, 1_000_000_010);
        assert_eq!(m.spend(), 1_000_000_010);
        m.flush_failed();
        assert_eq!(m.spend(), 1_000_000_010);
        let (p, _) = m.take_unflushed(Period::Day, t + 2 * MINUTE_MS);
        m.flushed(&p, 1_500_000_000);
        assert_eq!(m.spend(), 1_500_000_000);
        // The next day starts from nothing.
        assert!(m.admit(&k, t + 2 * 86_400_000).is_ok());
    }
}

//! What is stored about a client key (never the key itself), and the operator's spec of a new
//! one: `--flags a,b --rpm 600 --tpm 200000 --budget-usd 50/month --expires 90d`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{json, Value};

use super::secret::KeyHash;

/// USD as stored and counted: billionths of a dollar, so sums are exact.
pub const NANO_PER_USD: f64 = 1e9;

/// A budget as text: an amount above zero with up to 9 decimals, optionally `/day` or
/// `/month` (the admin API's schema carries the same pattern).
pub const BUDGET_PATTERN: &str =
    r"^([1-9][0-9]{0,8}(\.[0-9]{1,9})?|0\.0{0,8}[1-9][0-9]{0,8})(/(day|month))?$";
/// A key's lifetime: a whole number of seconds, minutes, hours or days (`90d`).
pub const EXPIRES_PATTERN: &str = r"^[1-9][0-9]{0,5}[smhd]$";
/// A rotation's grace period (`1h`; `0s` for none).
pub const GRACE_PATTERN: &str = r"^[0-9]{1,6}[smhd]$";
/// A key name.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9.-][A-Za-z0-9._-]{0,63}$";

fn matches(pattern: &str, s: &str) -> bool {
    static CACHE: LazyLock<Vec<(&'static str, Option<regex::Regex>)>> = LazyLock::new(|| {
        [BUDGET_PATTERN, EXPIRES_PATTERN, GRACE_PATTERN, NAME_PATTERN]
            .into_iter()
            .map(|p| (p, regex::Regex::new(p).ok()))
            .collect()
    });
    CACHE
        .iter()
        .find(|(p, _)| *p == pattern)
        .and_then(|(_, re)| re.as_ref())
        .is_some_and(|re| re.is_match(s))
}

/// A key's budget period: spend counts from the period's start (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A calendar day, UTC.
    Day,
    /// A calendar month, UTC.
    Month,
}

impl Period {
    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// Reads `day` / `month`.
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" | "daily" => Some(Period::Day),
            "month" | "monthly" => Some(Period::Month),
            _ => None,
        }
    }

    /// The period containing `ms`: `2026-11` or `2026-11-30`.
    pub fn id(self, ms: u64) -> String {
        let date = crate::clock::format_rfc3339_ms(i64::try_from(ms).unwrap_or(i64::MAX));
        match self {
            Period::Day => date[..10].to_owned(),
            Period::Month => date[..7].to_owned(),
        }
    }

    /// Unix milliseconds at which the period containing `ms` ends.
    pub fn end_ms(self, ms: u64) -> u64 {
        const DAY: u64 = 86_400_000;
        let next_day = (ms / DAY + 1) * DAY;
        match self {
            Period::Day => next_day,
            Period::Month => {
                let month = self.id(ms);
                let mut t = next_day;
                for _ in 0..32 {
                    if self.id(t) != month {
                        break;
                    }
                    t += DAY;
                }
                t
            }
        }
    }
}

/// A spend limit per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The limit, in nano-USD.
    pub nano_usd: i64,
    /// The period it resets with.
    pub period: Period,
}

impl Budget {
    /// Reads `50/month`, `5/day` or `50` (a month).
    pub fn parse(s: &str) -> Result<Budget, String> {
        if !matches(BUDGET_PATTERN, s) {
            return Err(format!(
                "budget {s:?} is not an amount of USD above 0 with an optional period, \
                 such as \"50/month\" or \"5/day\""
            ));
        }
        let (amount, period) = match s.trim().split_once('/') {
            Some((a, p)) => (
                a.trim(),
                Period::parse(p.trim()).ok_or_else(|| {
                    format!("budget period {p:?} is not one of \"day\", \"month\"")
                })?,
            ),
            None => (s.trim(), Period::Month),
        };
        let usd: f64 = amount
            .trim_start_matches('$')
            .parse()
            .map_err(|_| format!("budget {amount:?} is not a number of USD"))?;
        Budget::usd(usd, period)
    }

    /// A budget of `usd` per `period` (above 0, at most 1e9).
    pub fn usd(usd: f64, period: Period) -> Result<Budget, String> {
        if !usd.is_finite() || usd <= 0.0 || usd > 1e9 {
            return Err(format!("budget {usd} must be above 0 and at most 1e9 USD"));
        }
        Ok(Budget {
            nano_usd: (usd * NANO_PER_USD).round() as i64,
            period,
        })
    }

    /// `50/month`.
    pub fn label(&self) -> String {
        format!(
            "{}/{}",
            self.nano_usd as f64 / NANO_PER_USD,
            self.period.as_str()
        )
    }
}

/// One client key as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Its name: the metric label, the audit subject, the bucketing id of last resort.
    pub name: String,
    /// SHA-256 of the current secret.
    pub hash: KeyHash,
    /// SHA-256 of the secret before the last rotation, valid until `previous_until_ms`.
    pub previous: Option<(KeyHash, u64)>,
    /// Flags it may call (empty: every flag).
    pub flags: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (in + out) per minute.
    pub tpm: Option<u64>,
    /// Spend limit.
    pub budget: Option<Budget>,
    /// When it stops working (unix ms).
    pub expires_at_ms: Option<u64>,
    /// Attributes audiences see for its requests (`team`, `plan`…).
    pub attributes: BTreeMap<String, Value>,
    /// When it was created (unix ms).
    pub created_at_ms: u64,
    /// When it was revoked (unix ms), if it was.
    pub revoked_at_ms: Option<u64>,
}

impl KeyRecord {
    /// Whether it may call `flag`.
    pub fn allows(&self, flag: &str) -> bool {
        self.flags.is_empty() || self.flags.iter().any(|f| f == flag)
    }

    /// The period spend is counted in (a month when it has no budget).
    pub fn period(&self) -> Period {
        self.budget.map_or(Period::Month, |b| b.period)
    }

    /// The key as the admin API shows it (no secret, no hash), with `spend_usd` filled in by
    /// the caller.
    pub fn to_json(&self, now_ms: u64) -> Value {
        let at = |ms: u64| crate::clock::format_rfc3339_ms(i64::try_from(ms).unwrap_or(i64::MAX));
        let status = if self.revoked_at_ms.is_some() {
            "revoked"
        } else if self.expires_at_ms.is_some_and(|e| e <= now_ms) {
            "expired"
        } else {
            "active"
        };
        json!({
            "name": self.name,
            "status": status,
            "flags": self.flags,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget_usd": self.budget.map(|b| b.nano_usd as f64 / NANO_PER_USD),
            "budget_period": self.budget.map(|b| b.period.as_str()),
            "expires_at": self.expires_at_ms.map(at),
            "attributes": self.attributes,
            "created_at": at(self.created_at_ms),
            "revoked_at": self.revoked_at_ms.map(at),
            "previous_valid_until": self.previous.map(|(_, until)| at(until)).filter(|_| {
                self.previous.is_some_and(|(_, until)| until > now_ms)
            }),
        })
    }
}

/// Checks a key name: 1–64 letters, digits, `-`, `_`, `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    if matches(NAME_PATTERN, name) {
        Ok(())
    } else {
        Err(format!(
            "key name {name:?} must be 1-64 letters, digits, '-', '_' or '.', not starting with '_'"
        ))
    }
}

/// Reads a lifetime (`90d`) or, with `grace`, a grace period (`1h`, `0s`): a whole number
/// and one of `s`, `m`, `h`, `d`.
pub fn parse_duration(what: &str, s: &str, grace: bool) -> Result<std::time::Duration, String> {
    let pattern = if grace {
        GRACE_PATTERN
    } else {
        EXPIRES_PATTERN
    };
    let bad = || {
        format!(
            "{what} {s:?} is not a duration such as \"90d\", \"1h\" or \"30m\" \
             (a whole number and s, m, h or d)"
        )
    };
    if !matches(pattern, s) {
        return Err(bad());
    }
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        _ => 86_400,
    };
    Ok(std::time::Duration::from_secs(n * secs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn budgets_and_periods() {
        let b = Budget::parse("50/month").unwrap();
        assert_eq!(b.nano_usd, 50_000_000_000);
        assert_eq!(b.period, Period::Month);
        assert_eq!(Budget::parse("0.5/day").unwrap().period, Period::Day);
        assert_eq!(Budget::parse("7").unwrap().period, Period::Month);
        assert!(Budget::parse("-1/day").is_err());
        assert!(Budget::parse("5/week").is_err());
        assert!(Budget::parse("abc").is_err());
        assert!(Budget::parse("0/day").is_err());
        assert_eq!(Budget::parse("0.50").unwrap().nano_usd, 500_000_000);
        assert!(Budget::parse("0.000").is_err());
        assert_eq!(Budget::parse("0.05").unwrap().nano_usd, 50_000_000);
        assert_eq!(
            parse_duration("expires", "90d", false).unwrap().as_secs(),
            90 * 86_400
        );
        assert!(parse_duration("expires", "0s", false).is_err());
        assert!(parse_duration("grace", "0s", true).is_ok());
        assert!(parse_duration("grace", "1 hour", true).is_err());
        // 2026-11-30T12:00:00Z
        let ms = 1_796_040_000_000;
        assert_eq!(Period::Month.id(ms), "2026-11");
        assert_eq!(Period::Day.id(ms), "2026-11-30");
        assert_eq!(Period::Day.id(Period::Day.end_ms(ms)), "2026-12-01");
        assert_eq!(Period::Month.id(Period::Month.end_ms(ms)), "2026-12");
        assert_eq!(Period::Month.end_ms(ms), Period::Day.end_ms(ms));
    }

    #[test]
    fn names() {
        assert!(check_name("mobile-app").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("_none").is_err());
        assert!(check_name("a b").is_err());
    }
}

//! A token bucket: `rate` requests per second sustained, `burst` at once. Used per connection and
//! per user for requests (`transport::connection`, `actors::registry`); and, keyed, a few a minute
//! per key (`PerKeyLimiter`): per address and per username for sign-up, log-in and refresh
//! (`auth`), per user for image uploads (`media`).

use std::time::Instant;

use dashmap::DashMap;

use crate::domain::error::{Code, DomainError};

/// Keys remembered at most: past this, buckets that have refilled (that remember nothing) are
/// dropped.
const MAX_KEYS: usize = 100_000;

/// Per key (`ip:<addr>`, `user:<name>`, ...), a token bucket: `per_minute` in a burst, refilled at
/// `per_minute` a minute. An empty bucket answers RATE_LIMITED with the time until the next one is
/// allowed (HTTP 429 + `Retry-After`).
pub struct PerKeyLimiter {
    per_minute: f64,
    /// What is limited, for the error's message ("attempts", "uploads").
    what: &'static str,
    buckets: DashMap<String, TokenBucket>,
}

impl PerKeyLimiter {
    /// `per_minute` = 0 turns the limit off.
    pub fn new(per_minute: u32, what: &'static str) -> Self {
        Self { per_minute: per_minute as f64, what, buckets: DashMap::new() }
    }

    /// Takes one for `key`, or says how long to wait.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), DomainError> {
        if self.per_minute == 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= MAX_KEYS {
            self.buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let mut bucket = self
            .buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::with_rate(self.per_minute / 60.0, self.per_minute, now));
        bucket.take(now).map_err(|retry_after_ms| DomainError {
            retry_after_ms,
            ..DomainError::new(Code::RateLimited, format!("too many {}; wait before trying again", self.what))
        })
    }
}

pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// Full from now; a rate or burst of 0 counts as 1.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self::with_rate(f64::from(rate_per_sec), f64::from(burst), Instant::now())
    }

    /// Full at `now`, refilling at a fractional rate (a few a minute, say).
    pub fn with_rate(rate_per_sec: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self { rate_per_sec: rate_per_sec.max(f64::MIN_POSITIVE), burst, tokens: burst, refilled_at: now }
    }

    /// Whether the bucket would be full at `now`: it remembers nothing and can be forgotten.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens + elapsed * self.rate_per_sec >= self.burst
    }

    /// Takes a token, or says how many milliseconds until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), u32> {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((((1.0 - self.tokens) / self.rate_per_sec) * 1000.0).ceil() as u32).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn per_key_a_burst_then_one_per_refill_interval() {
        let limiter = PerKeyLimiter::new(6, "attempts");
        let start = Instant::now();
        for _ in 0..6 {
            limiter.take("user:ana", start).unwrap();
        }
        let refused = limiter.take("user:ana", start).unwrap_err();
        assert_eq!(refused.code, Code::RateLimited);
        assert_eq!(refused.retry_after_ms, 10_000, "one every 10 s at 6 a minute");
        limiter.take("user:bob", start).expect("other keys are not affected");
        limiter.take("user:ana", start + Duration::from_secs(10)).expect("refilled one");
        assert!(limiter.take("user:ana", start + Duration::from_secs(11)).is_err());
        assert!(PerKeyLimiter::new(0, "x").take("x", start).is_ok(), "0 = off");
    }

    #[test]
    fn allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| bucket.take(start).is_ok()));
        let wait = bucket.take(start).unwrap_err();
        assert!((1..=100).contains(&wait), "{wait}");
        assert!(bucket.take(start + Duration::from_millis(100)).is_ok());
        assert!(bucket.take(start + Duration::from_millis(100)).is_err());
    }
}

//! How often one IP address or one username may try to sign up, log in or refresh.
//!
//! Each key (`ip:<addr>`, `user:<name>`) has a token bucket: `per_minute` attempts in a burst,
//! refilled at `per_minute` a minute. An empty bucket answers RATE_LIMITED with the time until the
//! next attempt is allowed (HTTP 429 + `Retry-After`), before any password is hashed, so a guesser
//! gets a handful of tries a minute per name and per address whatever they send.
//!
//! The map is bounded: past `MAX_KEYS` entries, buckets that have refilled (that remember nothing)
//! are dropped.

use std::time::Instant;

use dashmap::DashMap;

use crate::domain::error::{Code, DomainError};
use crate::rate_limit::TokenBucket;

const MAX_KEYS: usize = 100_000;

pub struct AttemptLimiter {
    per_minute: f64,
    buckets: DashMap<String, TokenBucket>,
}

impl AttemptLimiter {
    /// `per_minute` = 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute as f64, buckets: DashMap::new() }
    }

    /// Takes one attempt for `key`, or says how long to wait.
    pub fn attempt(&self, key: &str, now: Instant) -> Result<(), DomainError> {
        if self.per_minute == 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= MAX_KEYS {
            self.forget_refilled(now);
        }
        let mut bucket = self
            .buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::with_rate(self.per_minute / 60.0, self.per_minute, now));
        bucket.take(now).map_err(|retry_after_ms| DomainError {
            code: Code::RateLimited,
            message: "too many attempts; wait before trying again".into(),
            retry_after_ms,
        })
    }

    fn forget_refilled(&self, now: Instant) {
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_one_attempt_per_refill_interval() {
        let limiter = AttemptLimiter::new(6);
        let start = Instant::now();
        for _ in 0..6 {
            limiter.attempt("user:ana", start).unwrap();
        }
        let refused = limiter.attempt("user:ana", start).unwrap_err();
        assert_eq!(refused.code, Code::RateLimited);
        assert_eq!(refused.retry_after_ms, 10_000, "one attempt every 10 s at 6 a minute");
        limiter.attempt("user:bob", start).expect("other keys are not affected");
        limiter.attempt("user:ana", start + Duration::from_secs(10)).expect("refilled one");
        assert!(limiter.attempt("user:ana", start + Duration::from_secs(11)).is_err());
        assert!(AttemptLimiter::new(0).attempt("x", start).is_ok(), "0 = off");
    }
}

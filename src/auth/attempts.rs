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

use crate::error::{ApiError, Code};

const MAX_KEYS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct AttemptLimiter {
    per_minute: f64,
    buckets: DashMap<String, Bucket>,
}

impl AttemptLimiter {
    /// `per_minute` = 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute as f64, buckets: DashMap::new() }
    }

    /// Takes one attempt for `key`, or says how long to wait.
    pub fn attempt(&self, key: &str, now: Instant) -> Result<(), ApiError> {
        if self.per_minute == 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= MAX_KEYS {
            self.forget_refilled(now);
        }
        let per_ms = self.per_minute / 60_000.0;
        let mut bucket = self.buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.per_minute, at: now });
        let elapsed_ms = now.saturating_duration_since(bucket.at).as_secs_f64() * 1000.0;
        bucket.tokens = (bucket.tokens + elapsed_ms * per_ms).min(self.per_minute);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - bucket.tokens) / per_ms).ceil() as u32;
        Err(ApiError {
            code: Code::RateLimited,
            message: "too many attempts; wait before trying again".into(),
            retry_after_ms: wait_ms.max(1),
        })
    }

    fn forget_refilled(&self, now: Instant) {
        let full_after_ms = 60_000.0;
        self.buckets.retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() * 1000.0 < full_after_ms);
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

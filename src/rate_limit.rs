//! A token bucket: `rate` requests per second sustained, `burst` at once. Used per connection and
//! per user for requests (`transport::connection`, `actors::registry`) and per address and per
//! username for sign-up, log-in and refresh (`auth::attempts`).

use std::time::Instant;

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

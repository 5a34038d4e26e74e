//! What a provider answered, in the terms the pipeline acts on, and how long to wait before retrying.

use std::time::Duration;

use rand::Rng;

/// The result of one attempt to hand a notification to APNs or FCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// Throttled (429), provider trouble (5xx) or a network failure: try again, after `after` if the
    /// provider said so (Retry-After).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The token is dead (uninstalled app, expired or foreign token): forget it.
    TokenDead {
        reason: String,
    },
    /// The provider refused this notification for good (bad payload, bad topic, bad credentials).
    Rejected {
        reason: String,
    },
}

/// A configured base URL, or a startup error that names the setting.
pub fn base_url(setting: &str, value: &str) -> anyhow::Result<reqwest::Url> {
    reqwest::Url::parse(value).map_err(|e| anyhow::anyhow!("{setting} {value:?} is not a URL: {e}"))
}

/// A `Retry-After` header in seconds. (The HTTP-date form is rare with these providers; it is
/// ignored, and the backoff applies.)
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with jitter: `base * 2^attempt`, capped at `max`, then a random point in its
/// upper half, so that a fleet of retries spreads out instead of arriving together.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(max);
    let half = exp / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for attempt in 0..30 {
            let d = backoff(attempt, base, max);
            let ceiling = base.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {attempt}: {d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }
}

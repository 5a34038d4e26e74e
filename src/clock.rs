//! The time the push pipeline reads: the system's, or one that tests move by hand.
//!
//! Grace windows, retries, leases and mutes are decided in ms since the epoch by the push gate and
//! worker. With `Clock::manual` nothing falls due until the test moves the clock, so a test of a
//! 1.5 s grace window takes no 1.5 s, and "nothing was pushed" is checked at a known instant
//! instead of after a pause long enough to hope.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::now_ms;

#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

struct Manual {
    now_ms: AtomicI64,
    moved: watch::Sender<i64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that starts at the system's time and moves only by `advance`.
    pub fn manual() -> Self {
        let now = now_ms();
        let (moved, _) = watch::channel(now);
        Self { manual: Some(Arc::new(Manual { now_ms: AtomicI64::new(now), moved })) }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => now_ms(),
            Some(manual) => manual.now_ms.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward (a system clock cannot be moved).
    pub fn advance(&self, by: Duration) {
        let manual = self.manual.as_ref().expect("only a manual clock is moved by hand");
        let now = manual.now_ms.fetch_add(by.as_millis() as i64, Ordering::AcqRel) + by.as_millis() as i64;
        manual.moved.send_replace(now);
    }

    /// Waits `how_long` of this clock's time.
    pub async fn sleep(&self, how_long: Duration) {
        let Some(manual) = &self.manual else { return tokio::time::sleep(how_long).await };
        let until = self.now_ms() + how_long.as_millis() as i64;
        let mut moved = manual.moved.subscribe();
        while manual.now_ms.load(Ordering::Acquire) < until {
            if moved.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_told_and_wakes_its_sleepers() {
        let clock = Clock::manual();
        let start = clock.now_ms();
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep(Duration::from_millis(1500)).await }
        });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_millis(1000));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "1 s of 1.5 s");
        clock.advance(Duration::from_millis(500));
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        assert_eq!(clock.now_ms(), start + 1500);
    }
}

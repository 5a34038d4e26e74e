//! Push counters per provider and push latency, rendered after the node's other metrics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Counter;
use crate::domain::Platform;

#[derive(Default)]
pub struct ProviderMetrics {
    /// Entries queued for push (a burst merged into one pending push counts each entry).
    pub queued: Counter,
    pub sent: Counter,
    /// Attempts that failed in a way worth retrying (429, 5xx, network).
    pub retried: Counter,
    /// Pushes given up or refused for good.
    pub failed: Counter,
    /// Pushes not sent because they were no longer needed (delivered, read, online, muted, DND).
    pub dropped: Counter,
    pub tokens_removed: Counter,
}

/// A latency histogram with fixed buckets (seconds), Prometheus style.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (bucket, count) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bucket}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct PushMetrics {
    apns: ProviderMetrics,
    fcm: ProviderMetrics,
    /// From the first queued entry of a push to the provider accepting it (includes the grace window).
    pub latency: Histogram,
}

pub static PUSH_METRICS: PushMetrics =
    PushMetrics { apns: ProviderMetrics::new(), fcm: ProviderMetrics::new(), latency: Histogram::new() };

impl ProviderMetrics {
    const fn new() -> Self {
        Self {
            queued: Counter::new(),
            sent: Counter::new(),
            retried: Counter::new(),
            failed: Counter::new(),
            dropped: Counter::new(),
            tokens_removed: Counter::new(),
        }
    }
}

impl PushMetrics {
    pub fn of(&self, platform: Platform) -> &ProviderMetrics {
        match platform {
            Platform::Ios => &self.apns,
            Platform::Android => &self.fcm,
        }
    }

    pub fn render(&self, out: &mut String) {
        type Field = fn(&ProviderMetrics) -> &Counter;
        let counters: [(&str, &str, Field); 6] = [
            ("queued", "Entries queued for push.", |m| &m.queued),
            ("sent", "Pushes the provider accepted.", |m| &m.sent),
            ("retried", "Push attempts that failed and will be retried (429, 5xx, network).", |m| &m.retried),
            ("failed", "Pushes given up or refused for good.", |m| &m.failed),
            ("dropped", "Pushes not sent: delivered or read in time, user online, muted, do-not-disturb.", |m| {
                &m.dropped
            }),
            ("tokens_removed", "Push tokens removed because the provider reported them dead.", |m| &m.tokens_removed),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP tidings_push_{name}_total {help}");
            let _ = writeln!(out, "# TYPE tidings_push_{name}_total counter");
            for platform in Platform::ALL {
                let value = field(self.of(platform)).get();
                let _ = writeln!(out, "tidings_push_{name}_total{{provider=\"{}\"}} {value}", platform.provider_name());
            }
        }
        let name = "tidings_push_latency_seconds";
        let _ = writeln!(out, "# HELP {name} From a push's first entry to the provider accepting it (grace included).");
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.latency.render(out, name);
    }
}

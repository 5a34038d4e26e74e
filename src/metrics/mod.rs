//! Process-wide counters and gauges, rendered in the Prometheus text format at `/metrics`.
//!
//! Plain atomics: the hot paths pay one relaxed add, nothing else. The push pipeline's counters
//! (`push.rs`) live here too, low in the layers, because both the push worker and the store's push
//! queue count into them.

mod push;

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub use push::PUSH_METRICS;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! metrics {
    ($($name:ident: $kind:ident = $help:literal,)*) => {
        pub struct Metrics { $(pub $name: $kind,)* }

        pub static METRICS: Metrics = Metrics { $($name: $kind(metrics!(@zero $kind)),)* };

        impl Metrics {
            /// The Prometheus text exposition of every metric.
            pub fn render(&self) -> String {
                let mut out = String::with_capacity(4096);
                $(
                    let kind = metrics!(@type $kind);
                    let _ = writeln!(out, "# HELP tidings_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE tidings_{} {}", stringify!($name), kind);
                    let _ = writeln!(out, "tidings_{} {}", stringify!($name), self.$name.get());
                )*
                PUSH_METRICS.render(&mut out);
                out
            }
        }
    };
    (@zero Counter) => { AtomicU64::new(0) };
    (@zero Gauge) => { AtomicI64::new(0) };
    (@type Counter) => { "counter" };
    (@type Gauge) => { "gauge" };
}

metrics! {
    connections_open: Gauge = "WebSocket connections open now.",
    connections_total: Counter = "WebSocket connections accepted.",
    connections_refused_total: Counter = "WebSocket upgrades refused because the node was at its connection cap.",
    users_online: Gauge = "User actors alive (users with at least one connection on this node).",
    rooms_active: Gauge = "Room actors alive.",
    requests_total: Counter = "Client requests received.",
    request_errors_total: Counter = "Client requests answered with an error.",
    messages_committed_total: Counter = "Room entries durably appended.",
    events_delivered_total: Counter = "Stream events written to connections (live and catch-up).",
    events_caught_up_total: Counter = "Stream events sent from the store rather than live.",
    slow_consumers_total: Counter = "Times a connection fell behind and was moved to catch-up or told to resync.",
    connections_fell_behind_total: Counter = "Connections closed with RESYNC_REQUIRED (1008) because their client stopped reading.",
    outbound_queued_bytes: Gauge = "Bytes of stream events queued for connections and not yet handed to their sockets.",
    room_appends_fenced_total: Counter = "Appends refused because another writer had taken the room over (ownership moving).",
    room_fanouts_after_ack_total: Counter = "Messages acknowledged before their fan-out (large rooms on ScyllaDB).",
    feed_fanouts_total: Counter = "Posts fanned out to their authors' followers' home feeds (or marked for merging when read).",
    feed_fanouts_failed_total: Counter = "Post fan-outs that failed (the feed sweep resumes them).",
    media_variants_made_total: Counter = "Image variants made (resized and encoded).",
    media_variants_cached_total: Counter = "Image variants served from the cache.",
    room_fanouts_after_ack_failed_total: Counter = "Fan-outs after the acknowledgement that failed (the room's next claim finishes them).",
    bridge_published_total: Counter = "Messages published to other nodes through Redis.",
    bridge_publish_failures_total: Counter = "Publishes to Redis that failed (receivers catch up from the store).",
    bridge_publish_dropped_total: Counter = "Events not bridged because the publish queue was full (receivers catch up from the store).",
    bridge_received_total: Counter = "Messages received from other nodes through Redis.",
    bridge_rejected_total: Counter = "Bridge messages refused: unsigned, signed with another key, for another channel, or too old.",
    forwarded_rejected_total: Counter = "Forwarded requests refused: unsigned, badly signed, stale or replayed.",
    forwarded_requests_total: Counter = "Room requests forwarded to the room's owning node and answered.",
    ownership_changes_total: Counter = "Cluster membership changes seen (each moves some rooms).",
    store_batches_total: Counter = "Store write batches committed (one fsync each).",
    store_batched_writes_total: Counter = "Store writes committed in those batches.",
    webhooks_sent_total: Counter = "Webhook calls the app's backend answered 2xx.",
    webhooks_retried_total: Counter = "Webhook calls that failed and will be tried again.",
    webhooks_failed_total: Counter = "Webhooks given up after webhooks.max_attempts.",
    webhooks_dropped_total: Counter = "Webhook events not queued (emitted faster than queued, or the queue failed).",
    webhooks_pending: Gauge = "Webhook events waiting to be sent (this node's queue).",
    webhooks_given_up: Gauge = "Webhook events given up and kept in this node's queue.",
}

impl Metrics {
    // Short names for the store's counters, which read better at the call site.
    pub fn store_batch(&self, writes: u64) {
        self.store_batches_total.inc();
        self.store_batched_writes_total.add(writes);
    }
}

//! The tidings load swarm.
//!
//! # Layout
//! - `swarm`: the engine: roster setup, devices as tasks on real WebSocket connections, fixed-rate
//!   senders, churn, and one shard's results.
//! - `scenario`: the shapes of the standard scenarios (direct, fan-out, churn, city bots).
//! - `oracle`: tracks every message to every device that should get it; counts loss, duplicates and
//!   reordering.
//! - `outbox`: a device's unacknowledged sends, resent in order on its next connection.
//! - `stats`: HDR latency histograms that merge across processes.
//! - `report`: the summary table, the JSON line, the PNG plot.
//! - `push_bench`: the push pipeline benchmark against fake APNs and FCM servers.
//! - `media_bench`: uploads, variants made and served, against `vipsthumbnail` on the same images.
//! - `social_bench`: the social scenario (joins, follows with follow-back, stars, posts, likes,
//!   comments at fixed rates) and its oracle: every feed holds every followed post once, in order.
//! - `stall_bench`: clients that stop reading: the server's memory per stalled reader, and that each
//!   is told RESYNC_REQUIRED and closed with 1008 as documented.
//! - `procfs`: a server process's CPU time and memory.
//!
//! Every loop is bounded in count and time, and only loopback targets are accepted.

pub mod media_bench;
pub mod oracle;
pub mod outbox;
pub mod procfs;
pub mod push_bench;
pub mod report;
pub mod scenario;
pub mod social_bench;
pub mod stall_bench;
pub mod stats;
pub mod swarm;

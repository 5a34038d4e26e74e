//! Configuration: one typed struct, loaded once at start from (lowest to highest precedence)
//! built-in defaults, a TOML file, `TIDINGS_<SECTION>_<KEY>` environment variables and command-line
//! flags. Nothing reads the environment afterwards. `tidings.example.toml` documents every key and
//! is checked against this struct by a test.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub push: PushConfig,
    pub apns: ApnsConfig,
    pub fcm: FcmConfig,
    pub cluster: ClusterConfig,
    pub media: MediaConfig,
    pub feed: FeedConfig,
    pub app_tokens: AppTokensConfig,
    pub server_api: ServerApiConfig,
    pub webhooks: WebhooksConfig,
    pub admin: AdminConfig,
}

/// The admin dashboard (`/admin`): off (404) while `username` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub username: String,
    /// At least 12 characters. Prefer `password_file` or the environment to a flag.
    pub password: String,
    pub password_file: PathBuf,
    /// How long a login lasts.
    pub session_hours: u64,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Turn off only to reach the
    /// dashboard over plain HTTP on a trusted network.
    pub secure_cookie: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            session_hours: 8,
            secure_cookie: true,
        }
    }
}

/// Webhooks to the app's backend (`webhooks/`): off while `url` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The HMAC-SHA256 key of `X-Tidings-Signature` (at least 32 bytes; required with `url`).
    pub secret: String,
    pub secret_file: PathBuf,
    /// Which events are sent.
    pub user_online: bool,
    pub user_offline: bool,
    pub room_created: bool,
    /// One call per message: off unless asked for.
    pub message_sent: bool,
    /// How long a call may take before it counts as failed.
    pub timeout_secs: u64,
    /// Calls at once.
    pub concurrency: usize,
    /// Attempts before an event is given up (kept in the queue, counted in /metrics).
    pub max_attempts: u32,
    /// Backoff between attempts: doubling from `retry_base_ms` up to `retry_max_ms`, with jitter;
    /// a `Retry-After` from the backend wins.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: String::new(),
            secret_file: PathBuf::new(),
            user_online: true,
            user_offline: true,
            room_created: true,
            message_sent: false,
            timeout_secs: 5,
            concurrency: 8,
            max_attempts: 15,
            retry_base_ms: 1000,
            retry_max_ms: 600_000,
        }
    }
}

/// The app's own identities (`auth/app_identity.rs`): tokens its backend issues, accepted in place
/// of a tidings login. Off while neither a secret nor a JWKS URL is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppTokensConfig {
    /// The secret of HS256 tokens (at least 32 bytes). Prefer `hs256_secret_file` or the
    /// environment to a command-line flag.
    pub hs256_secret: String,
    /// A file holding that secret (surrounding whitespace ignored).
    pub hs256_secret_file: PathBuf,
    /// Where the keys of RS256 and ES256 tokens are published (a JSON Web Key Set).
    pub jwks_url: String,
    /// How long fetched keys are used before they are fetched again; a token naming an unknown
    /// `kid` fetches them at once (at most every `jwks_min_refetch_secs`).
    pub jwks_cache_secs: u64,
    pub jwks_min_refetch_secs: u64,
    /// When set, a token's `aud` must name it.
    pub audience: String,
    /// When set, a token's `iss` must be it.
    pub issuer: String,
    /// Clock skew allowed between the app's backend and this server, on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for AppTokensConfig {
    fn default() -> Self {
        Self {
            hs256_secret: String::new(),
            hs256_secret_file: PathBuf::new(),
            jwks_url: String::new(),
            jwks_cache_secs: 300,
            jwks_min_refetch_secs: 10,
            audience: String::new(),
            issuer: String::new(),
            leeway_secs: 30,
        }
    }
}

impl AppTokensConfig {
    pub fn enabled(&self) -> bool {
        !self.hs256_secret.is_empty() || !self.hs256_secret_file.as_os_str().is_empty() || !self.jwks_url.is_empty()
    }
}

/// The server API for the app's backend (`transport/server_api.rs`): off (404) while no key is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServerApiConfig {
    /// Keys a backend presents as `Authorization: Bearer <key>`, at least 32 characters each;
    /// several at once while one replaces another. From the environment or a flag: comma-separated.
    pub keys: Vec<String>,
}

/// Home feeds (`actors/feed.rs`) and the activity feed (`services/activity.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// An author with more followers than this is not fanned out on write: their posts are
    /// merged into followers' feeds when read (so a post costs its online followers, not all).
    pub fanout_max_followers: u64,
    /// Activities of one kind about one thing (the likes of a post, new followers) within this
    /// many seconds of the first are one group ("ana and 4 others liked your photo").
    pub activity_window_secs: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self { fanout_max_followers: 100_000, activity_window_secs: 3600 }
    }
}

/// Images: uploads, storage and serving (`media/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The largest upload taken; a bigger one is refused (PAYLOAD_TOO_LARGE) as soon as it passes
    /// this, with nothing more read.
    pub max_upload_bytes: u64,
    /// The most pixels (width x height) an image may have, checked from its header before any
    /// pixel is decoded (a decompression bomb is refused there).
    pub max_pixels: u64,
    /// Stored images are cut in chunks of this many bytes.
    pub chunk_bytes: u32,
    /// Threads for image work (checking uploads, making variants); 0: one per core.
    pub workers: usize,
    /// Image jobs that may wait for a thread; beyond them requests are answered OVERLOADED.
    pub queue: usize,
    /// The widths and heights variants are made at: a request is snapped up to the next one (or
    /// down to the largest), so that the cache cannot be flooded with distinct sizes.
    pub sizes: Vec<u32>,
    /// Where variants are kept once made (empty: `media-cache` under `store.data_dir`).
    pub cache_dir: PathBuf,
    /// The variant cache's size; the least recently used variants go beyond it.
    pub cache_max_bytes: u64,
    /// How long a signed media URL (`GET /v1/media/{id}/url`) works.
    pub signed_url_ttl_secs: u64,
    /// An image no message shows is deleted this long after its last upload.
    pub orphan_ttl_hours: f64,
    /// How often images never sent are looked for.
    pub collect_every_secs: u64,
    /// Uploads per user per minute (a burst of as many, then one every 60/n s); 0: no limit.
    pub uploads_per_minute_per_user: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 << 20,
            max_pixels: 50_000_000,
            chunk_bytes: 256 << 10,
            workers: 0,
            queue: 64,
            sizes: vec![64, 128, 256, 320, 480, 640, 960, 1280, 1920],
            cache_dir: PathBuf::new(),
            cache_max_bytes: 512 << 20,
            signed_url_ttl_secs: 3600,
            orphan_ttl_hours: 24.0,
            collect_every_secs: 600,
            uploads_per_minute_per_user: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for WebSocket, auth and operations endpoints. Port 0 picks a free port.
    pub listen: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// How long a graceful shutdown waits for connections to close before cutting them.
    pub shutdown_timeout_secs: u64,
    /// How long an HTTP request's body may take to arrive (then 408); the headers have 5 s.
    pub body_read_timeout_secs: u64,
    /// Serves `/metrics` (with `/healthz` and `/readyz`) here instead of on the public port.
    /// Empty: on the public port.
    pub metrics_listen: String,
    /// Serves the demo chat page at `/demo`.
    pub demo: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            shutdown_timeout_secs: 10,
            body_read_timeout_secs: 10,
            metrics_listen: String::new(),
            demo: false,
        }
    }
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: survives power loss.
    Full,
    /// fsync at checkpoints only (WAL): survives a crash of the process, not of the machine.
    Normal,
}

/// Rooms this large get their entries acknowledged before the fan-out (ScyllaDB): a send to 10,000
/// members must not wait for 10,000 stream writes. Below it, the fan-out (a few milliseconds)
/// comes first, so an acknowledged message is already in every member's stream.
pub const DEFAULT_FANOUT_AFTER_ACK_FROM: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite`: the embedded database under `data_dir` (one host). `scylla`: a ScyllaDB (or
    /// Cassandra) cluster, for nodes on several hosts that share no file.
    pub backend: StoreBackend,
    /// Where the embedded database and the generated token secret live.
    pub data_dir: PathBuf,
    /// `full`: every acknowledged message survives power loss. `normal`: survives a crash of the
    /// process (kill -9), not of the machine; faster.
    pub synchronous: Synchronous,
    /// Most writes committed together by the single writer (group commit).
    pub max_batch: usize,
    /// How long a write waits on another process holding the database's write lock.
    pub busy_timeout_ms: u64,
    /// SQLite read connections at most (each with its own page cache); reads beyond wait.
    pub sqlite_readers: usize,
    /// ScyllaDB contact points, `host:port`, comma-separated.
    pub scylla_nodes: String,
    /// The keyspace (created and migrated on start).
    pub scylla_keyspace: String,
    /// Copies of every row when the keyspace is created (3 survives one node down at QUORUM).
    pub scylla_replication_factor: u32,
    /// Consistency of every read and write: `quorum`, `local_quorum`, `one`, `all`.
    pub scylla_consistency: String,
    /// On ScyllaDB, a message for at least this many recipients is acknowledged once it is in the
    /// room's log and reaches their streams right after; a smaller one before the acknowledgement.
    pub scylla_fanout_after_ack_from: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sqlite,
            data_dir: PathBuf::from("./data"),
            synchronous: Synchronous::Full,
            max_batch: 1024,
            busy_timeout_ms: 5000,
            sqlite_readers: 8,
            scylla_nodes: "127.0.0.1:9042".into(),
            scylla_keyspace: "tidings".into(),
            scylla_replication_factor: 3,
            scylla_consistency: "quorum".into(),
            scylla_fanout_after_ack_from: DEFAULT_FANOUT_AFTER_ACK_FROM,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sqlite,
    Scylla,
}

impl StoreConfig {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("tidings.db")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret that signs access tokens (HS256), at least 32 bytes. Prefer `token_secret_file` or
    /// the environment to this setting on a command line. Empty (and no file): one is generated on
    /// first start and kept in `<data_dir>/token-secret`. Nodes of a cluster must share it.
    pub token_secret: String,
    /// A file holding the token secret (surrounding whitespace ignored).
    pub token_secret_file: PathBuf,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_days: u64,
    /// Argon2id cost. The defaults are OWASP's recommendation (19 MiB, 2 passes).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub min_password_chars: usize,
    /// Sign-up, log-in and refresh attempts allowed per client IP address a minute (a burst of as
    /// many, then a steady rate); beyond it 429 RATE_LIMITED with Retry-After. 0: no limit.
    pub attempts_per_minute_per_ip: u32,
    /// Log-in attempts allowed per username a minute, from any address. 0: no limit.
    pub attempts_per_minute_per_username: u32,
    /// Password hashes computed at once (each takes `argon2_memory_kib`); others wait up to 2 s,
    /// then get 503 OVERLOADED with Retry-After. 0: one per core.
    pub max_concurrent_hashes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_secret: String::new(),
            token_secret_file: PathBuf::new(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_days: 60,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            min_password_chars: 8,
            attempts_per_minute_per_ip: 60,
            attempts_per_minute_per_username: 10,
            max_concurrent_hashes: 0,
        }
    }
}

/// Who may add a user to a group (`limits.group_adds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupAdds {
    Anyone,
    /// Only people who have sent the user a message (in a room they share).
    Contacts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open WebSocket connections per node; upgrades beyond it get 503 OVERLOADED.
    pub max_connections: usize,
    /// Open WebSocket connections per user (all devices); beyond it 429 RATE_LIMITED. 0: no cap.
    pub max_connections_per_user: usize,
    /// Open WebSocket connections per client address; beyond it 429 RATE_LIMITED. 0 (the default):
    /// no cap, since behind a proxy or a carrier NAT one address is many people.
    pub max_connections_per_address: usize,
    /// Largest WebSocket frame accepted; a larger one closes the connection (1009).
    pub max_frame_bytes: usize,
    /// Largest message text, in bytes (UTF-8).
    pub max_message_bytes: usize,
    pub max_room_name_chars: usize,
    pub max_group_members: usize,
    /// Sustained requests per second per connection, and the burst above it. Every data frame
    /// counts, decodable or not.
    pub requests_per_second: u32,
    pub request_burst: u32,
    /// The same for all of a user's connections together.
    pub user_requests_per_second: u32,
    pub user_request_burst: u32,
    /// Undecodable frames in a row after which the connection is closed (1002). 0: never.
    pub max_consecutive_bad_frames: u32,
    /// Who may put a user into a group: `anyone`, or `contacts` (only people who have sent the
    /// adder a message). Either way, being added by a stranger pushes nothing.
    pub group_adds: GroupAdds,
    /// Requests of one connection awaiting their answer; reading pauses beyond it.
    pub max_in_flight_requests: usize,
    /// Live events queued for one connection; beyond it the connection is a slow consumer.
    pub outbound_queue_events: usize,
    /// The same in bytes (about: texts and a flat allowance per event), for events and catch-up
    /// pages alike. Beyond it the connection catches up from the store at its own pace.
    pub outbound_queue_bytes: usize,
    /// A slow consumer that takes nothing from the store for this long is told to resync.
    pub slow_consumer_grace_secs: u64,
    pub heartbeat_interval_secs: u64,
    /// A connection silent (no frame, no pong) this long is closed.
    pub idle_timeout_secs: u64,
    /// A write to a connection blocked this long (its client stopped reading) ends it:
    /// RESYNC_REQUIRED, then close 1008.
    pub write_timeout_secs: u64,
    /// A room actor with no traffic for this long stops (it reloads from the store on demand).
    pub room_idle_secs: u64,
    /// How often each online user's connected devices are checked against the store (a logout
    /// whose kick was lost still closes its sockets within this).
    pub device_recheck_secs: u64,
    /// Events per store read when a connection catches up; at most two such pages are queued
    /// per connection, so a socket that syncs from 0 and never reads holds two pages, not its stream.
    pub catch_up_page_events: usize,
    pub max_history_page: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_user: 32,
            max_connections_per_address: 0,
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 8 * 1024,
            max_room_name_chars: 128,
            max_group_members: 1024,
            requests_per_second: 50,
            request_burst: 200,
            user_requests_per_second: 100,
            user_request_burst: 400,
            max_consecutive_bad_frames: 8,
            group_adds: GroupAdds::Anyone,
            max_in_flight_requests: 64,
            outbound_queue_events: 512,
            outbound_queue_bytes: 128 * 1024,
            slow_consumer_grace_secs: 30,
            heartbeat_interval_secs: 15,
            idle_timeout_secs: 45,
            write_timeout_secs: 10,
            room_idle_secs: 300,
            device_recheck_secs: 120,
            catch_up_page_events: 256,
            max_history_page: 200,
        }
    }
}

/// Several nodes bridged by Redis (`src/cluster/`). Off while `redis_url` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// e.g. `redis://127.0.0.1:6379`; `redis://user:password@host:port` with AUTH/ACL;
    /// `rediss://` for TLS. Empty: a single node, no Redis. With `redis_cluster`, the seed nodes
    /// of a Redis Cluster, comma-separated.
    pub redis_url: String,
    /// With `rediss://`: the CA certificate (PEM) to trust instead of the public roots.
    pub redis_ca_file: PathBuf,
    /// Redis runs as a Redis Cluster: sharded pub/sub, commands routed by slot.
    pub redis_cluster: bool,
    /// This node's name in the cluster; empty: a random one per start.
    pub node_id: String,
    /// The node-to-node listener (host:port), apart from the public one: forwarded requests are
    /// served only here. Empty: the public listen address's host, on a port of the system's
    /// choosing. Let only the other nodes reach it.
    pub internal_listen: String,
    /// Where other nodes reach this one's internal listener (host:port); empty: the address it
    /// is bound to.
    pub advertise: String,
    /// How often this node renews its membership; it is considered dead after `node_ttl_ms`.
    pub heartbeat_ms: u64,
    pub node_ttl_ms: u64,
    /// Prefix of every Redis key and channel. Give each cluster its own Redis (or an ACL user
    /// limited to its prefix): anyone who can write to a cluster's Redis can disturb it.
    pub key_prefix: String,
    /// Key the nodes authenticate each other's requests with, at least 32 bytes, separate from the
    /// token secret. Empty (and no file): generated into `<data_dir>/node-key`, which suits nodes
    /// sharing one data directory; nodes on several hosts must be given the same key.
    pub node_key: String,
    pub node_key_file: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            redis_ca_file: PathBuf::new(),
            redis_cluster: false,
            node_id: String::new(),
            internal_listen: String::new(),
            advertise: String::new(),
            heartbeat_ms: 1000,
            node_ttl_ms: 5000,
            key_prefix: "tidings".into(),
            node_key: String::new(),
            node_key_file: PathBuf::new(),
        }
    }
}

/// When and how offline users are reached by push (`src/push/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// The app ids (APNs topics, Android package names) devices may register push tokens for.
    /// Empty: any (a warning at start when push is configured).
    pub allowed_app_ids: Vec<String>,
    /// A push waits this long before it is sent; if a device of the user receives the message (or
    /// it is read elsewhere) meanwhile, it is not sent. Messages arriving meanwhile are coalesced
    /// into the same push ("5 new messages").
    pub grace_ms: u64,
    /// Characters of message text shown in a notification.
    pub preview_chars: usize,
    /// Attempts before a push that keeps failing with 429 / 5xx is given up and recorded.
    pub max_attempts: u32,
    /// Exponential backoff between attempts: base, doubled per attempt up to max, with jitter.
    /// A provider's Retry-After wins.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a claimed push stays leased to its sender; a crash mid-send frees it after this.
    pub lease_secs: u64,
    /// Providers discard a notification not delivered within this long (APNs expiration, FCM ttl).
    pub ttl_secs: u64,
    /// Timeout of one request to a provider.
    pub request_timeout_secs: u64,
    /// Failed pushes are kept (with their last error, for inspection) this long.
    pub keep_failed_days: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allowed_app_ids: Vec::new(),
            grace_ms: 3000,
            preview_chars: 120,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 5 * 60 * 1000,
            lease_secs: 120,
            ttl_secs: 24 * 3600,
            request_timeout_secs: 20,
            keep_failed_days: 7,
        }
    }
}

/// Apple Push Notification service with token (.p8) authentication. Disabled while `key_file` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// The .p8 signing key downloaded from the Apple developer account.
    pub key_file: PathBuf,
    /// The key's 10-character Key ID.
    pub key_id: String,
    /// The 10-character Team ID of the developer account.
    pub team_id: String,
    /// Where production and sandbox (development build) tokens are sent.
    pub production_url: String,
    pub sandbox_url: String,
    /// Requests in flight at once (HTTP/2 streams); the server's own stream limit also applies.
    pub concurrency: usize,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            production_url: "https://api.push.apple.com".into(),
            sandbox_url: "https://api.sandbox.push.apple.com".into(),
            concurrency: 100,
        }
    }
}

/// Firebase Cloud Messaging, HTTP v1 API, with a service account. Disabled while
/// `service_account_file` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account key (JSON) of the Firebase project.
    pub service_account_file: PathBuf,
    /// Empty: the key file's `project_id`.
    pub project_id: String,
    pub base_url: String,
    /// Where OAuth2 access tokens come from. Empty: the key file's `token_uri`.
    pub token_url: String,
    pub concurrency: usize,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            service_account_file: PathBuf::new(),
            project_id: String::new(),
            base_url: "https://fcm.googleapis.com".into(),
            token_url: String::new(),
            concurrency: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `tidings=debug,actix=warn`); `RUST_LOG` wins when set.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{origin} sets {key}: {message}")]
    Override { origin: String, key: String, message: String },
}

/// Overrides from the command line, already parsed.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `section.key = value` pairs, in order; later ones win.
    pub values: Vec<(String, String)>,
}

impl Config {
    /// Defaults < `file` < environment (`env` lists `(name, value)`) < `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let base = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str::<Config>(&text)
                    .map_err(|e| ConfigError::File { path: path.into(), message: e.to_string() })?
            }
            None => Config::default(),
        };
        let mut table = toml::Table::try_from(&base).expect("config serialises");
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("TIDINGS_") else { continue };
            if rest == "CONFIG" {
                continue;
            }
            if let Some(key) = key_for_env(&table, rest) {
                set_key(&mut table, &key, &value, &format!("environment variable {name}"))?;
            }
        }
        for (key, value) in &overrides.values {
            set_key(&mut table, key, value, "command line")?;
        }
        table.try_into::<Config>().map_err(|e| ConfigError::Override {
            origin: "overrides".into(),
            key: String::new(),
            message: e.to_string(),
        })
    }
}

/// `SERVER_LISTEN` -> `server.listen`, if that key exists.
fn key_for_env(table: &toml::Table, rest: &str) -> Option<String> {
    let lower = rest.to_ascii_lowercase();
    table.iter().find_map(|(section, values)| {
        let key = lower.strip_prefix(section.as_str())?.strip_prefix('_')?;
        values.as_table()?.contains_key(key).then(|| format!("{section}.{key}"))
    })
}

/// Sets `section.key` from a string, parsed as the type the key already has.
fn set_key(table: &mut toml::Table, key: &str, raw: &str, origin: &str) -> Result<(), ConfigError> {
    let error = |message: String| ConfigError::Override { origin: origin.into(), key: key.into(), message };
    let (section, name) = key.split_once('.').ok_or_else(|| error("expected section.key".into()))?;
    let slot = table
        .get_mut(section)
        .and_then(|s| s.as_table_mut())
        .and_then(|s| s.get_mut(name))
        .ok_or_else(|| error("no such setting".into()))?;
    *slot = match slot {
        toml::Value::String(_) => toml::Value::String(raw.into()),
        toml::Value::Integer(_) => toml::Value::Integer(raw.parse().map_err(|e| error(format!("{e}")))?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.parse().map_err(|e| error(format!("{e}")))?),
        toml::Value::Float(_) => toml::Value::Float(raw.parse().map_err(|e| error(format!("{e}")))?),
        // Lists of strings (keys): comma-separated.
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',').map(str::trim).filter(|v| !v.is_empty()).map(|v| toml::Value::String(v.into())).collect(),
        ),
        _ => return Err(error("cannot be set from a string".into())),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_matches_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("tidings.example.toml");
        let loaded = Config::load(Some(&example), [], &Overrides::default()).unwrap();
        assert_eq!(loaded, Config::default(), "tidings.example.toml should show the defaults");
    }

    #[test]
    fn precedence_is_file_then_env_then_cli() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1\"\n[limits]\nmax_connections = 5\n").unwrap();
        let env = vec![
            ("TIDINGS_SERVER_LISTEN".to_string(), "127.0.0.1:2".to_string()),
            ("TIDINGS_LIMITS_MAX_FRAME_BYTES".to_string(), "99".to_string()),
            ("TIDINGS_STORE_DATA_DIR".to_string(), "/tmp/x".to_string()),
            ("UNRELATED".to_string(), "1".to_string()),
        ];
        let cli = Overrides { values: vec![("server.listen".into(), "127.0.0.1:3".into())] };
        let c = Config::load(Some(&file), env, &cli).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:3");
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.limits.max_frame_bytes, 99);
        assert_eq!(c.store.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_clear_errors() {
        let bad = Overrides { values: vec![("limits.max_connections".into(), "many".into())] };
        let e = Config::load(None, [], &bad).unwrap_err().to_string();
        assert!(e.contains("limits.max_connections"), "{e}");
        let unknown = Overrides { values: vec![("server.nope".into(), "1".into())] };
        assert!(Config::load(None, [], &unknown).unwrap_err().to_string().contains("no such setting"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nlisten_typo = 1\n").unwrap();
        assert!(Config::load(Some(&file), [], &Overrides::default()).unwrap_err().to_string().contains("listen_typo"));
        let bad_enum = Overrides { values: vec![("store.synchronous".into(), "sometimes".into())] };
        assert!(Config::load(None, [], &bad_enum).is_err());
    }
}

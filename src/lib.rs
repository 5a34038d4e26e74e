//! tidings: an actor-based realtime chat and notification server.
//!
//! # Layout
//! - `server`: start-up, the HTTP routes and the ordered graceful shutdown.
//! - `config`: the typed configuration (file < env < flags).
//! - `transport`: the only layer that knows the wire: WebSocket connections (`transport::connection`),
//!   frame decoding and encoding, the HTTP auth and operations endpoints.
//! - `services`: the rules each request follows; the transport routes requests here.
//! - `actors`: one actor per online user (its device connections and their stream positions), one
//!   per active room (orders and persists its entries, fans them out), and the registry that finds them.
//! - `auth`: accounts, passwords, access and refresh tokens.
//! - `cluster`: several nodes bridged by Redis (membership, presence, room ownership, the bridge).
//! - `media`: images: uploads checked and cleaned, stored in chunks, read back.
//! - `admin`: the dashboard at `/admin` (overview, user lookup) for whoever runs the server.
//! - `webhooks`: what happened, POSTed to the app's backend, signed, from a durable queue.
//! - `push`: reaching users with no live session through APNs and FCM, from a durable queue.
//! - `store`: domain-level storage traits and the embedded SQLite backend.
//! - `domain`: ids, rooms, entries and stream events, free of wire and storage concerns.
//! - `metrics`: counters for `/metrics`, in one low module every layer may count into.
//! - `rate_limit`: the token bucket behind every request and attempt limit.
//! - `lifecycle`: background parts started in order and stopped in reverse.
//! - `clock`: the time the push pipeline reads (the system's, or a test's).
//! - `jws`: signed tokens (HS256 access tokens, ES256 APNs provider tokens) with ring.
//! - `secrets`: the token secret and node key, and the private data directory.
//!
//! ARCHITECTURE.md has the bird's-eye view and the invariants.

pub mod actors;
pub mod admin;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod jws;
pub mod lifecycle;
pub mod media;
pub mod metrics;
pub mod push;
pub mod rate_limit;
pub mod secrets;
pub mod server;
pub mod services;
pub mod store;
pub mod transport;
pub mod webhooks;

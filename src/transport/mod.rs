//! The only layer that knows the wire format.
//!
//! - `connection.rs`: one task per WebSocket: reads frames, dispatches requests, writes answers and
//!   events, heartbeats, closes.
//! - `dispatch.rs`: routes each decoded request to the service or actor that answers it.
//! - `decode.rs` / `encode.rs`: protobuf or JSON frames to domain requests, domain answers and
//!   events to frames. `codes.rs`: the one table of wire error codes.
//! - `http.rs`: the WebSocket upgrade, `/v1/auth/*`, `/healthz`, `/readyz`, `/metrics`.
//! - `media_http.rs`: `POST /v1/media` and `GET /v1/media/{mediaId}`.
//! - `server_api.rs`: `/v1/server/*`, the app's backend's calls (with a server API key).
//! - `demo.rs`: `/demo`, a chat page on the TypeScript client (when `server.demo = true`).
//! - `internal.rs`: the cluster's internal listener (signed node-to-node requests).
//! - `websocket.rs`: the WebSocket itself on actix-http's frame codec: whole client messages in,
//!   frames encoded straight into one buffer out, bounded in bytes.
//! - `connection_caps.rs`: open connections counted per user and per client address.

pub mod codes;
pub mod connection;
pub mod connection_caps;
pub mod decode;
pub mod demo;
pub mod dispatch;
pub mod encode;
pub mod http;
pub mod internal;
pub mod media_http;
pub mod server_api;
pub mod websocket;

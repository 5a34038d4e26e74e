//! All integration tests, in one binary (one link on a 2-core machine). Each test starts a real
//! server on 127.0.0.1:0 with its own data directory and talks to it with real WebSocket clients.

mod activity;
mod admin;
mod app_tokens;
mod auth;
mod bad_input;
mod browser;
mod chat;
mod cluster;
mod durability;
mod feeds;
mod flow_control;
mod follows;
mod harness;
mod media;
mod notify;
mod on_scylla;
mod openapi;
mod ops;
mod posts;
mod prerequisites;
mod profiles;
mod push;
mod rooms;
mod scylla_failover;
mod security;
mod server_api;
mod store_conformance;
mod swarm;
mod sync;
mod ts_client;
mod webhooks;

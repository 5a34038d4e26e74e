//! The tidings wire protocol: protobuf messages generated from `proto/tidings/v1/tidings.proto`, with
//! serde implementations that follow the proto3 JSON mapping.
//!
//! Only the transport layer of the server and clients see these types; the server's actors and store
//! speak domain types.

/// Version 1 of the protocol.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/tidings.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/tidings.v1.serde.rs"));
}

pub use v1::{ClientFrame, ServerFrame};

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// Binary WebSocket frames holding protobuf (the default).
    #[default]
    Protobuf,
    /// Text WebSocket frames holding the proto3 JSON mapping.
    Json,
}

impl Encoding {
    /// Parses the `encoding` query parameter of the upgrade URL.
    pub fn from_query_value(value: &str) -> Option<Self> {
        match value {
            "proto" | "protobuf" | "binary" => Some(Self::Protobuf),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// The WebSocket path, the HTTP auth paths and the header that carry the protocol.
pub mod paths {
    /// WebSocket upgrade.
    pub const WEBSOCKET: &str = "/v1/ws";
    pub const SIGN_UP: &str = "/v1/auth/signup";
    pub const LOG_IN: &str = "/v1/auth/login";
    pub const REFRESH: &str = "/v1/auth/refresh";
    pub const LOG_OUT: &str = "/v1/auth/logout";
    /// `POST` uploads an image; `GET {MEDIA}/{mediaId}` reads one.
    pub const MEDIA: &str = "/v1/media";
    /// The server API for the app's backend (its calls are under this prefix).
    pub const SERVER_API: &str = "/v1/server";
}

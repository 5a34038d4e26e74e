//! Webhooks: what happened, POSTed to the app's backend (`[webhooks] url`), signed, retried with
//! backoff from a durable queue.
//!
//! - `mod.rs`: `Webhooks`, the handle the rest of the node emits events through (a no-op when no
//!   URL is set, or for the kinds turned off), and the events.
//! - `queue.rs`: the queue, a SQLite file of this node's (`webhooks.db` in the data directory):
//!   an event is kept until the backend answers 2xx, across restarts, whatever the store backend.
//! - `worker.rs`: moves emitted events into the queue and sends the due ones: `POST` with
//!   `X-Tidings-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`, retries with backoff.
//!
//! An event emitted but not yet queued when the process dies is lost: the queue takes emitted
//! events within milliseconds, and the events describe what is durable elsewhere (a message, a
//! room), so a backend that must not miss one reconciles through the server API.

mod queue;
mod worker;

use serde::Serialize;
use tokio::sync::mpsc;

pub use worker::{WebhookWorker, start};

use crate::config::WebhooksConfig;
use crate::domain::{RoomId, RoomKind, UserId};
use crate::metrics::METRICS;

/// What happened, as the backend receives it (`type` and `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum WebhookEvent {
    /// The user's first connection opened (on any node).
    #[serde(rename = "user.online")]
    UserOnline {
        #[serde(rename = "userId", with = "as_string")]
        user: u64,
    },
    /// The user's last connection closed (on every node).
    #[serde(rename = "user.offline")]
    UserOffline {
        #[serde(rename = "userId", with = "as_string")]
        user: u64,
    },
    #[serde(rename = "room.created")]
    RoomCreated {
        #[serde(rename = "roomId", with = "as_string")]
        room: u64,
        kind: &'static str,
        name: String,
        #[serde(rename = "creatorId", with = "as_string")]
        creator: u64,
        #[serde(rename = "memberIds")]
        members: Vec<String>,
    },
    /// A message was stored (its recipients get it whether or not the backend hears).
    #[serde(rename = "message.sent")]
    MessageSent {
        #[serde(rename = "roomId", with = "as_string")]
        room: u64,
        #[serde(with = "as_string")]
        seq: u64,
        #[serde(rename = "messageId", with = "as_string")]
        message: u64,
        #[serde(rename = "senderId", with = "as_string")]
        sender: u64,
        #[serde(rename = "clientMsgId")]
        client_msg_id: String,
        text: String,
    },
}

/// 64-bit ids as strings, as the protocol's JSON has them.
mod as_string {
    pub fn serialize<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }
}

impl WebhookEvent {
    pub fn user_online(user: UserId) -> Self {
        Self::UserOnline { user: user.0 }
    }

    pub fn user_offline(user: UserId) -> Self {
        Self::UserOffline { user: user.0 }
    }

    pub fn room_created(room: RoomId, kind: RoomKind, name: &str, creator: UserId, members: &[UserId]) -> Self {
        let kind = match kind {
            RoomKind::Direct => "direct",
            RoomKind::Group => "group",
        };
        let members = members.iter().map(|m| m.0.to_string()).collect();
        Self::RoomCreated { room: room.0, kind, name: name.to_owned(), creator: creator.0, members }
    }

    /// The `type` the backend sees, and `[webhooks]` turns on and off.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UserOnline { .. } => "user.online",
            Self::UserOffline { .. } => "user.offline",
            Self::RoomCreated { .. } => "room.created",
            Self::MessageSent { .. } => "message.sent",
        }
    }
}

/// Events waiting to be queued; beyond this they are dropped (counted and logged).
const EMIT_QUEUE: usize = 65_536;

/// Where the node emits events.
pub struct Webhooks {
    sender: Option<mpsc::Sender<(WebhookEvent, i64)>>,
    config: WebhooksConfig,
}

impl Webhooks {
    /// Emits nothing.
    pub fn off() -> Self {
        Self { sender: None, config: WebhooksConfig::default() }
    }

    /// Whether events of this kind are sent.
    pub fn wants(&self, kind: &str) -> bool {
        self.sender.is_some()
            && match kind {
                "user.online" => self.config.user_online,
                "user.offline" => self.config.user_offline,
                "room.created" => self.config.room_created,
                "message.sent" => self.config.message_sent,
                _ => false,
            }
    }

    pub fn emit(&self, event: WebhookEvent) {
        if !self.wants(event.kind()) {
            return;
        }
        let Some(sender) = &self.sender else { return };
        if sender.try_send((event, crate::domain::now_ms())).is_err() {
            METRICS.webhooks_dropped_total.inc();
            tracing::warn!("webhook events arrive faster than they can be queued; one was dropped");
        }
    }
}

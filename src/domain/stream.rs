//! The per-user durable event stream: each user has one ordered sequence of events, numbered by
//! position from 1, shared by all of the user's devices.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{RoomEntry, RoomId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// A room log entry (message, edit, delete, membership change). Shared by every recipient.
    Entry(Arc<RoomEntry>),
    Receipt(Receipt),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// "`user` has received / read everything in `room` up to `up_to_seq`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub room: RoomId,
    pub user: UserId,
    pub kind: ReceiptKind,
    pub up_to_seq: u64,
}

//! Arguments and results of the store traits.

use crate::domain::{DeviceId, ReceiptKind, Role, RoomEntry, RoomId, RoomKind, UserId};

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub user: UserId,
    pub device: DeviceId,
    pub name: String,
    /// SHA-256 of the current refresh token; the token itself is never stored.
    pub refresh_hash: Vec<u8>,
    pub refresh_expires_at_ms: i64,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// Stream positions assigned to each recipient by one write.
pub type Positions = Vec<(UserId, u64)>;

#[derive(Debug, Clone)]
pub struct NewRoom {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub creator: UserId,
    /// Everyone in the room, creator included.
    pub members: Vec<UserId>,
    /// The `Created` entry (seq 1).
    pub entry: RoomEntry,
}

#[derive(Debug, Clone)]
pub enum CreateRoomOutcome {
    Created {
        positions: Positions,
    },
    /// The direct room between these two users exists already.
    DirectExists(RoomId),
}

/// One entry to append, with the seq already chosen by the room's owner (its actor).
#[derive(Debug, Clone)]
pub struct Append {
    pub entry: std::sync::Arc<RoomEntry>,
    /// Whose streams receive the entry.
    pub recipients: Vec<UserId>,
    pub effect: Effect,
}

/// What an entry changes besides the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    AddMembers(Vec<UserId>),
    RemoveMember(UserId),
    Rename(String),
    SetRole(UserId, Role),
    /// Replace the text of `target_seq`, which must be a standing message sent by `editor`.
    Edit {
        target_seq: u64,
        editor: UserId,
        text: String,
        at_ms: i64,
    },
    /// Tombstone `target_seq`, which must be a standing message sent by `by` unless `by_moderator`.
    Delete {
        target_seq: u64,
        by: UserId,
        by_moderator: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Committed {
        positions: Positions,
    },
    /// A message with the same `(sender, client_msg_id)` exists: nothing was written.
    Duplicate {
        seq: u64,
        id: u64,
        sent_at_ms: i64,
    },
    /// The message an edit, delete or reply names does not exist (or is not a standing message).
    TargetNotFound,
    /// An edit of someone else's message, or a delete without the right.
    NotAllowed,
    /// The seq is taken: another owner wrote to this room. The caller must reload the room.
    SeqTaken,
}

#[derive(Debug, Clone)]
pub struct ReceiptWrite {
    pub room: RoomId,
    pub user: UserId,
    pub kind: ReceiptKind,
    pub up_to_seq: u64,
    pub recipients: Vec<UserId>,
}

/// A page request of a room's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest `limit` entries.
    Latest {
        limit: usize,
    },
    Before {
        seq: u64,
        limit: usize,
    },
    After {
        seq: u64,
        limit: usize,
    },
}

//! Rooms, their members and the entries of a room's log.

use serde::{Deserialize, Serialize};

use super::{DomainError, DomainResult, MediaId, RoomId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomKind {
    Direct,
    Group,
}

/// A member's power in a room, ordered: `Member < Admin < Owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    /// Owners and admins manage members and the name.
    pub fn can_manage(self) -> bool {
        self >= Role::Admin
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMeta {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub user: UserId,
    /// Filled by reads that join the users table; empty where not needed.
    pub username: String,
    pub role: Role,
    pub delivered_up_to_seq: u64,
    pub read_up_to_seq: u64,
}

/// What a room actor loads when it starts.
#[derive(Debug, Clone)]
pub struct RoomState {
    pub meta: RoomMeta,
    pub members: Vec<MemberRecord>,
    /// The highest seq used so far; the next entry takes a larger one.
    pub last_seq: u64,
}

/// A room as the room list shows it to one user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomSummary {
    pub meta: RoomMeta,
    pub members: Vec<MemberRecord>,
    pub last_seq: u64,
    pub last_entry: Option<RoomEntry>,
    pub unread_count: u32,
    pub read_up_to_seq: u64,
}

/// One entry of a room's append-only log. Every member sees the same entries in the same `seq` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEntry {
    pub room: RoomId,
    pub seq: u64,
    /// Time-ordered id (see `time_ordered_id`).
    pub id: u64,
    pub sender: UserId,
    pub sent_at_ms: i64,
    pub body: EntryBody,
    /// The entry as the wire encodes it, made by the first connection that writes it and shared
    /// by every other through the `Arc` the entry travels in: a message to a group is encoded once,
    /// not once per member. An entry is never changed once shared (an edit is a new entry).
    #[serde(skip)]
    pub encoded: EncodedOnce,
}

/// A lazily made, shared encoding of a value; never part of its equality.
#[derive(Debug, Clone, Default)]
pub struct EncodedOnce(std::sync::OnceLock<bytes::Bytes>);

impl EncodedOnce {
    pub fn get_or_init(&self, encode: impl FnOnce() -> bytes::Bytes) -> &bytes::Bytes {
        self.0.get_or_init(encode)
    }
}

impl PartialEq for EncodedOnce {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for EncodedOnce {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    Text(TextMessage),
    Edited { target_seq: u64, text: String },
    Deleted { target_seq: u64 },
    Created { kind: RoomKind, name: String, members: Vec<UserId> },
    MembersAdded(Vec<UserId>),
    MemberRemoved(UserId),
    MemberLeft(UserId),
    Renamed(String),
    RoleChanged(UserId, Role),
}

/// A chat message, in its current state: edits replace `text`, a delete leaves a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TextMessage {
    pub text: String,
    /// Empty when the client gave none (then retries are not recognised).
    pub client_msg_id: String,
    pub reply_to_seq: u64,
    pub edited_at_ms: i64,
    pub deleted: bool,
    /// Images sent with the message (`text` is their caption). Absent from what older nodes send.
    #[serde(default)]
    pub media: Vec<MediaId>,
}

impl EntryBody {
    /// Whether this entry counts towards unread counts (messages from others that still stand).
    pub fn is_message(&self) -> bool {
        matches!(self, EntryBody::Text(_))
    }
}

/// A room name as given, trimmed; INVALID_ARGUMENT unless it has 1 to `max_chars` characters.
pub fn room_name(name: &str, max_chars: usize) -> DomainResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > max_chars {
        return Err(DomainError::invalid(format!("a room name has 1 to {max_chars} characters")));
    }
    Ok(name.to_owned())
}

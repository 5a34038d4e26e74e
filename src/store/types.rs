//! Arguments and results of the store traits.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{StoreError, StoreResult};
use crate::domain::{
    DeviceId, MediaInfo, Platform, PostId, PushKind, ReceiptKind, Role, RoomEntry, RoomId, RoomKind, RoomState,
    StreamEvent, UserId,
};

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

/// What recording a notification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedNotification {
    /// Its position in the recipient's stream.
    pub pos: u64,
    pub notification: crate::domain::Notification,
    /// False: one with its key was recorded before (a retry); this is that one, nothing was added.
    pub fresh: bool,
}

/// A device as its user's list shows it (no token hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device: DeviceId,
    pub name: String,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshRotation {
    Rotated,
    /// The device's previous token, already traded: the device is now revoked.
    Reused {
        revoked: Vec<DeviceId>,
    },
    /// Neither the current nor the previous token (or the device is revoked).
    Unknown,
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

/// A room taken over for writing (`RoomStore::claim_room`).
#[derive(Debug, Clone)]
pub struct Claim {
    /// The room as of the claim.
    pub state: RoomState,
    /// The writer's epoch: its appends carry it.
    pub epoch: u64,
    /// Entries a stopped writer had left half fanned out, now in every recipient's stream: deliver
    /// them to live sessions (those who missed them live would otherwise learn of them only from
    /// a later event's gap).
    pub finished: Vec<(Positions, StreamEvent)>,
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
    pub entry: Arc<RoomEntry>,
    /// The writer's epoch (`RoomStore::claim_room`); refused unless it is still the room's.
    pub epoch: u64,
    /// Whose streams receive the entry.
    pub recipients: Vec<UserId>,
    pub effect: Effect,
    /// Recipients to reach by push (they had no live session), queued atomically with the entry.
    pub push: Option<PushFanout>,
    /// For an edit: the edited message's new push preview. Pushes not yet sent that show the old
    /// text show this instead (a delete cancels or shrinks them: see `Effect::Delete`).
    pub revised_preview: Option<String>,
}

/// Push jobs to queue with an append: one per registered device of each user (on an enabled
/// platform), merged into that device's pending job for the room if there is one.
#[derive(Debug, Clone)]
pub struct PushFanout {
    pub users: Vec<UserId>,
    pub kind: PushKind,
    /// A short preview of the entry (message text, or what happened).
    pub preview: String,
    /// When a new job is sent, unless it is cancelled first (the grace window).
    pub due_at_ms: i64,
    pub platforms: Vec<Platform>,
}

/// One device's queued push, claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// Stable for the job's whole life: the idempotency key sent to the provider.
    pub id: u64,
    pub user: UserId,
    pub device: DeviceId,
    pub room: RoomId,
    pub kind: PushKind,
    /// How many entries this job stands for (a burst coalesced into one push).
    pub count: u32,
    /// The newest entry's seq and its position in the user's stream.
    pub last_seq: u64,
    pub last_pos: u64,
    /// The newest entry's sender, and whether the coalesced entries came from several senders.
    pub sender: UserId,
    pub many_senders: bool,
    pub preview: String,
    /// Failed attempts so far.
    pub attempts: u32,
    pub created_at_ms: i64,
    pub platform: Platform,
    pub token: String,
    pub app_id: String,
    pub locale: String,
    pub sandbox: bool,
}

/// Which jobs of the push queue to list (the admin dashboard's push queue page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushJobsListed {
    /// Waiting for their grace window, for a retry, or being sent: the one due first first.
    Queued,
    /// Given up (kept for `push.keep_failed_days`): the newest failure first.
    Failed,
}

/// Where a job of the push queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushJobState {
    /// In its grace window: new messages merge into it, an ack or a receipt cancels it.
    Pending,
    /// A worker leased it: being sent now, or to be tried again at `due_ms`.
    Claimed,
    /// Given up.
    Failed,
}

/// A job of the push queue as an operator sees it: no token, no text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJobSummary {
    pub id: u64,
    pub user: UserId,
    pub device: DeviceId,
    pub room: RoomId,
    pub kind: PushKind,
    pub count: u32,
    pub state: PushJobState,
    pub attempts: u32,
    /// Pending or claimed: when it falls due (a lease's end for one being sent). Failed: when it
    /// failed.
    pub due_ms: i64,
    pub created_at_ms: i64,
    /// The last attempt's error ("" before any failed).
    pub last_error: String,
}

/// A user's preferences as they bear on a push from one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushPreferences {
    /// Pushes from the room are muted until then (0: not muted).
    pub muted_until_ms: i64,
    /// No pushes at all until then (0: off).
    pub dnd_until_ms: i64,
    pub hide_previews: bool,
}

/// What a push needs from the store besides the job, read when it is about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushContext {
    pub room_kind: RoomKind,
    pub room_name: String,
    pub sender_name: String,
    /// The user's unread messages over all rooms: the app icon's badge.
    pub badge: u32,
    /// How far the user has read / received this room.
    pub read_up_to_seq: u64,
    pub delivered_up_to_seq: u64,
    /// How far a device of the user has acknowledged the user's stream (0: never).
    pub stream_delivered_up_to_pos: u64,
    pub muted_until_ms: i64,
    pub dnd_until_ms: i64,
    /// The user wants pushes without sender, room or text.
    pub hide_previews: bool,
    /// The user is still a member of the room.
    pub member: bool,
}

/// How a claimed push job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushJobEnd {
    /// The provider accepted it.
    Sent,
    /// Not needed any more (delivered, read, muted, do-not-disturb, user left the room).
    Dropped,
    /// Try again at `at_ms`.
    Retry { at_ms: i64, error: String },
    /// Given up: recorded with the reason.
    Failed { reason: String },
    /// The provider says the token is dead: forget it (if the device has not registered a new one
    /// since) and every job queued for it.
    TokenDead { token: String, reason: String },
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
    /// The seq is taken: another owner wrote to this room. The caller must reload the room. (A
    /// writer appends seqs in increasing order; a backend may refuse any seq not past the last one
    /// it knows of, as ScyllaDB does, or only one that exists, as SQLite does.)
    SeqTaken,
    /// Another writer has taken the room over since this one claimed it: nothing was written.
    Fenced,
    /// The entry is durable in the room's log and its effect applied, but it reaches its
    /// recipients' streams only after this answer (a large room on a backend that fans out after
    /// the acknowledgement). `fanout` resolves with the positions once it has; if it fails, the
    /// room's next writer finishes it (the store lists the room in `RoomStore::rooms_behind`).
    Logged {
        fanout: LateFanout,
    },
}

/// The part of an append that its store finishes after acknowledging it (`AppendOutcome::Logged`).
#[derive(Clone)]
pub struct LateFanout(Arc<Mutex<Option<oneshot::Receiver<StoreResult<Positions>>>>>);

impl LateFanout {
    /// A fan-out to finish later, and where its store reports the positions.
    pub fn new() -> (oneshot::Sender<StoreResult<Positions>>, Self) {
        let (done, receiver) = oneshot::channel();
        (done, Self(Arc::new(Mutex::new(Some(receiver)))))
    }

    /// The positions the entry got, once it is in every recipient's stream. Only one waiter (of
    /// all clones) gets them; another gets `Unavailable`.
    pub async fn done(self) -> StoreResult<Positions> {
        let receiver = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match receiver {
            Some(receiver) => {
                receiver.await.unwrap_or_else(|_| Err(StoreError::unavailable("the fan-out was dropped")))
            }
            None => Err(StoreError::unavailable("the fan-out is awaited elsewhere")),
        }
    }
}

impl std::fmt::Debug for LateFanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateFanout")
    }
}

impl PartialEq for LateFanout {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LateFanout {}

#[derive(Debug, Clone)]
pub struct ReceiptWrite {
    pub room: RoomId,
    pub user: UserId,
    pub kind: ReceiptKind,
    pub up_to_seq: u64,
    pub recipients: Vec<UserId>,
}

/// A page request of a room's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// An image to store (`MediaStore::put_media`), its bytes cut in chunks of `chunk_bytes` (the last
/// may be shorter).
#[derive(Debug, Clone)]
pub struct NewMedia {
    pub info: MediaInfo,
    pub uploader: UserId,
    pub at_ms: i64,
    pub chunk_bytes: u32,
    pub chunks: Vec<bytes::Bytes>,
}

/// A post's fan-out to its author's followers' home feeds, as far as it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutJob {
    pub post: PostId,
    pub author: UserId,
    /// The last follower done (followers are taken in id order); `None` before the first.
    pub after: Option<UserId>,
    pub started_at_ms: i64,
}

/// A stored image and how its bytes are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    pub info: MediaInfo,
    pub chunk_bytes: u32,
    pub chunks: u32,
    pub created_at_ms: i64,
    /// Readable by anyone logged in (`MediaStore::publish_media`).
    pub public: bool,
}

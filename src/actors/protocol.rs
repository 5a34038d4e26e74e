//! What connections ask of actors and what actors send back: domain types, no wire format.

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::domain::error::DomainError;
use crate::domain::{
    ActivityStatus, ActorKey, Comment, FollowState, MediaId, PostView, ProfileView, ReceiptKind, Role, RoomEntry,
    RoomId, RoomSummary, StreamEvent, UserId,
};
use crate::store::HistoryPage;

/// A request for the actor of one key: what a node hands to the node that owns the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ActorRequest {
    Room { room: RoomId, op: RoomOp },
}

impl ActorRequest {
    pub fn key(&self) -> ActorKey {
        match self {
            ActorRequest::Room { room, .. } => ActorKey::Room(*room),
        }
    }
}

/// A request about one room, handled by that room's actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RoomOp {
    /// A new entry of the room's log: ordered, durable, fanned out to the members.
    Write(RoomWrite),
    /// A page of the log.
    History(HistoryPage),
    /// Signals, never entries of the log: typing is ephemeral, a receipt moves a marker.
    Typing {
        active: bool,
    },
    Receipt {
        kind: ReceiptKind,
        up_to_seq: u64,
    },
}

/// What a member may add to a room's log (one plan per verb: `room/plan.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RoomWrite {
    Send {
        client_msg_id: String,
        text: String,
        reply_to_seq: u64,
        /// Images sent with the text as their caption (absent from requests of older nodes).
        #[serde(default)]
        media: Vec<MediaId>,
    },
    Edit {
        seq: u64,
        text: String,
    },
    Delete {
        seq: u64,
    },
    AddMembers(Vec<UserId>),
    RemoveMember(UserId),
    Leave,
    Rename(String),
    SetRole(UserId, Role),
}

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReplyBody {
    Ok,
    SyncStarted { head_pos: u64, epoch: String },
    Pong { server_time_ms: i64 },
    Room(Box<RoomSummary>),
    Rooms(Vec<RoomSummary>),
    Sent(SentAck),
    History { entries: Vec<RoomEntry>, more: bool },
    Presence(Vec<PresenceInfo>),
    Profile(Box<ProfileView>),
    Profiles(Vec<ProfileView>),
    Follow { user: UserId, state: FollowState },
    Users { profiles: Vec<ProfileView>, next_cursor: String },
    Post(Box<PostView>),
    Posts { posts: Vec<PostView>, next_cursor: String },
    Comment(Box<Comment>),
    Comments { comments: Vec<Comment>, next_cursor: String },
    Activity(ActivityStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentAck {
    pub room: RoomId,
    pub seq: u64,
    pub message_id: u64,
    pub sent_at_ms: i64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub user: UserId,
    pub online: bool,
    pub last_seen_ms: i64,
}

/// The answer to one request, on its way to the connection. It travels boxed: the queue then
/// holds pointers, and tokio allocates a queue's first block of 32 slots with the queue, for
/// every connection, idle or not (88-byte answers made that 2.8 KiB a connection).
pub type BoxedAnswer = Box<Answer>;

#[derive(Debug)]
pub struct Answer {
    pub request_id: u64,
    pub result: Result<ReplyBody, DomainError>,
    /// Held until the connection has taken the answer off its queue: it bounds the requests in
    /// flight per connection, which is what guarantees the answer queue never overflows.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Where the answer to one request goes. Every request gets exactly one answer: dropping a
/// `Replier` without answering sends INTERNAL, so a client is never left waiting.
#[derive(Debug)]
pub struct Replier {
    request_id: u64,
    answers: Option<mpsc::Sender<BoxedAnswer>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Replier {
    pub fn new(request_id: u64, answers: mpsc::Sender<BoxedAnswer>, permit: OwnedSemaphorePermit) -> Self {
        Self { request_id, answers: Some(answers), permit: Some(permit) }
    }

    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    pub fn reply(mut self, result: Result<ReplyBody, DomainError>) {
        self.send(result);
    }

    pub fn ok(self) {
        self.reply(Ok(ReplyBody::Ok));
    }

    pub fn error(self, error: DomainError) {
        self.reply(Err(error));
    }

    fn send(&mut self, result: Result<ReplyBody, DomainError>) {
        if let Some(answers) = self.answers.take() {
            let answer = Box::new(Answer { request_id: self.request_id, result, permit: self.permit.take() });
            // Capacity is reserved by the permit; failing means the connection is gone.
            let _ = answers.try_send(answer);
        }
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if self.answers.is_some() {
            tracing::error!(request_id = self.request_id, "request dropped without an answer");
            self.send(Err(DomainError::internal()));
        }
    }
}

/// What a user actor sends a connection, besides answers.
#[derive(Debug)]
pub enum Outbound {
    /// One live event.
    Event(u64, StreamEvent),
    /// A page of events read from the store while catching up, with the permit that bounds the
    /// pages queued for the connection (released when the page is dropped, written or not).
    Page(Vec<(u64, StreamEvent)>, tokio::sync::OwnedSemaphorePermit),
    Ephemeral(Ephemeral),
    Notice(Notice),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ephemeral {
    Typing { room: RoomId, user: UserId, active: bool },
    Presence(PresenceInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Everything up to `pos` has been sent; live events follow.
    CaughtUp { pos: u64 },
    /// The connection could not keep up; it closes and the client resumes with Sync.
    ResyncRequired { pos: u64 },
    /// The device was logged out; the connection closes.
    LoggedOut,
    /// The connection's access token expired; it closes (the device is still logged in).
    TokenExpired,
    /// The app's backend closed the user's connections (server API); the device is still logged in.
    Disconnected,
}

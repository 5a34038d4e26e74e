//! The per-user durable event stream: each user has one ordered sequence of events, numbered by
//! position from 1, shared by all of the user's devices.
//!
//! One stream carries every kind of event. Positions, sync, acks, catch-up and the bridge treat all
//! kinds alike; what differs per kind is its payload, and where it comes from (`EventRef`: a kind,
//! a source and a reference within that source). A new kind (activity on your posts, a new post
//! from someone you follow, a server notice) is a new `StreamEvent` variant with its `EventRef`,
//! its store row and its wire form, on the same mechanism.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Activity, Notification, Post, PostId, RoomEntry, RoomId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// A room log entry (message, edit, delete, membership change). Shared by every recipient.
    Entry(Arc<RoomEntry>),
    Receipt(Receipt),
    /// Someone the user follows posted: the post, as it is when the event is read (`None` once
    /// deleted).
    Post {
        post: PostId,
        author: UserId,
        details: Option<Arc<Post>>,
    },
    /// Someone did something that concerns the user (followed them, liked or commented on their
    /// post).
    Activity(Arc<Activity>),
    /// The app's backend told the user something (server API `notify`).
    Notification(Arc<Notification>),
}

impl StreamEvent {
    /// The event described as every kind is: what it is, where it comes from, what it refers to.
    pub fn describe(&self) -> EventRef {
        match self {
            StreamEvent::Entry(entry) => EventRef::entry(entry.room, entry.seq),
            StreamEvent::Receipt(receipt) => EventRef::receipt(receipt),
            StreamEvent::Post { post, author, .. } => EventRef::post(*author, *post),
            StreamEvent::Activity(activity) => EventRef::activity(activity.actor, activity.id),
            StreamEvent::Notification(notification) => EventRef::notification(notification.id),
        }
    }
}

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// A room's log.
    Room(RoomId),
    /// A user's doing that is not in a room (a follow, say).
    User(UserId),
    /// A user's feed of posts.
    Feed(UserId),
    /// The server itself (an operator's notice).
    Server,
}

/// The kinds of stream events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A room log entry: the reference is its seq.
    Entry,
    /// A delivered or read receipt: the reference is the seq it goes up to, the actor the reader.
    Delivered,
    Read,
    /// A post by someone the user follows: the source is the author's feed, the reference the
    /// post's id.
    Post,
    /// Activity concerning the user: the source is the user who did it, the reference the
    /// activity's id.
    Activity,
    /// A notification from the app's backend: the source is the server, the reference the
    /// notification's id.
    Notification,
}

/// An event described the same way whatever its kind: what the store keeps of it in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef {
    pub kind: EventKind,
    pub source: Source,
    /// What in the source the event is about (a room's seq, a feed's post id).
    pub reference: u64,
    /// Who did it, when that is not the source itself (the reader of a receipt).
    pub actor: Option<UserId>,
}

impl EventRef {
    pub fn entry(room: RoomId, seq: u64) -> Self {
        Self { kind: EventKind::Entry, source: Source::Room(room), reference: seq, actor: None }
    }

    pub fn post(author: UserId, post: PostId) -> Self {
        Self { kind: EventKind::Post, source: Source::Feed(author), reference: post.0, actor: None }
    }

    pub fn activity(actor: UserId, id: u64) -> Self {
        Self { kind: EventKind::Activity, source: Source::User(actor), reference: id, actor: None }
    }

    pub fn notification(id: u64) -> Self {
        Self { kind: EventKind::Notification, source: Source::Server, reference: id, actor: None }
    }

    pub fn receipt(receipt: &Receipt) -> Self {
        let kind = match receipt.kind {
            ReceiptKind::Delivered => EventKind::Delivered,
            ReceiptKind::Read => EventKind::Read,
        };
        Self { kind, source: Source::Room(receipt.room), reference: receipt.up_to_seq, actor: Some(receipt.user) }
    }
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

//! A decoded client request, grouped by what answers it.

use crate::actors::RoomOp;
use crate::domain::{CommentId, FollowList, MediaId, Platform, PostId, RoomId, UserId};

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// About the connection's own session.
    Session(SessionOp),
    /// About the connection's place in the user's stream: answered by the user's actor.
    Stream(StreamOp),
    /// Creating and listing rooms (`rooms.rs`).
    Rooms(RoomsOp),
    /// About one room: answered by that room's actor, on the node that owns the room.
    Room { room: RoomId, op: RoomOp },
    /// Which of these users are online, of those who share a room with the caller (`presence.rs`).
    Presence { users: Vec<UserId> },
    /// Push tokens and notification preferences (`push_prefs.rs`).
    Push(PushOp),
    /// Profiles and finding users (`profiles.rs`).
    Profiles(ProfilesOp),
    /// Follows and blocks (`follows.rs`).
    Follows(FollowsOp),
    /// Photo posts (`posts.rs`).
    Posts(PostsOp),
    /// The caller's activity: seen, unread, muted (`activity.rs`).
    Activity(ActivityOp),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivityOp {
    /// Seen up to this stream position.
    Seen {
        up_to_pos: u64,
    },
    Status,
    /// No activity pushes until then (0: unmute).
    Mute {
        until_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SessionOp {
    Ping,
    /// A fresh access token for the connection (`session.rs`).
    Reauthenticate {
        access_token: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOp {
    /// Stream from after `after_pos`, a position of stream epoch `epoch` (if the client knows it).
    Sync { after_pos: u64, epoch: Option<String> },
    /// The client stored everything up to `pos`.
    Ack { pos: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoomsOp {
    CreateDirect { peer: UserId },
    CreateGroup { name: String, members: Vec<UserId> },
    List,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PushOp {
    SetToken(PushTarget),
    ClearToken,
    MuteRoom { room: RoomId, until_ms: i64 },
    SetDoNotDisturb { until_ms: i64 },
    SetHidePreviews { hide: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProfilesOp {
    /// Change the caller's own profile.
    Set(ProfileEdit),
    /// Profiles by id and by username.
    Get { users: Vec<UserId>, usernames: Vec<String> },
    /// Users by a prefix of their username or display name; `limit` 0 means the default.
    Search { prefix: String, limit: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum FollowsOp {
    Follow(UserId),
    Unfollow(UserId),
    /// Approve or decline a user's request to follow the caller.
    Answer {
        user: UserId,
        approve: bool,
    },
    RemoveFollower(UserId),
    /// A page of a user's list (`None`: the caller's); `cursor` as the client sent it.
    List {
        user: Option<UserId>,
        list: FollowList,
        cursor: String,
        limit: u32,
    },
    Block(UserId),
    Unblock(UserId),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PostsOp {
    /// A new post; the location as sent (checked by the service).
    Create {
        client_post_id: String,
        media: Vec<MediaId>,
        caption: String,
        location: Option<(f64, f64)>,
    },
    Delete(PostId),
    Get(PostId),
    /// A page of a user's posts; `cursor` as the client sent it.
    List {
        author: UserId,
        cursor: String,
        limit: u32,
    },
    /// A page of the caller's home feed.
    Feed {
        cursor: String,
        limit: u32,
    },
    Like {
        post: PostId,
        on: bool,
    },
    Comment {
        post: PostId,
        client_comment_id: String,
        text: String,
    },
    DeleteComment {
        post: PostId,
        comment: CommentId,
    },
    /// A page of a post's likers, or of its comments.
    Likers {
        post: PostId,
        cursor: String,
        limit: u32,
    },
    Comments {
        post: PostId,
        cursor: String,
        limit: u32,
    },
}

/// A profile change as the client sends it, unchecked: each `Some` replaces its field (an empty
/// string clears it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileEdit {
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar: Option<String>,
    pub birthday: Option<String>,
    pub private: Option<bool>,
}

/// A device's push token as the device sends it (the server adds who and which device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub platform: Platform,
    pub token: String,
    pub app_id: String,
    pub locale: String,
    pub sandbox: bool,
}

//! Domain types shared by actors, the store and push. None of them knows the wire format: the
//! transport converts them to and from the wire at the edge.

mod activity;
pub mod error;
mod follow;
mod ids;
mod media;
mod notification;
mod post;
mod profile;
mod push;
mod room;
mod stream;

pub use activity::{
    ACTIVITY_UNREAD_CAP, Activity, ActivityGroup, ActivityKind, ActivityStatus, GROUP_ACTORS_MAX, NewActivity, describe,
};
pub use error::{Code, DomainError, DomainResult};
pub use follow::{FollowCounts, FollowList, FollowState, ProfileView, cursor_after, parse_cursor};
pub use ids::{
    ActorKey, ConnId, DeviceId, RESERVED_IDS, RoomId, SYSTEM_USER, UserId, new_random_id, now_ms, time_ordered_id,
};
pub use media::{ImageFormat, MediaId, MediaInfo};
pub use notification::{
    NOTIFICATION_KEY_MAX_BYTES, NOTIFICATION_PUSH_ROOM, NewNotification, Notification, NotificationPush,
    check_notification,
};
pub use post::{
    CAPTION_MAX_CHARS, COMMENT_MAX_CHARS, Comment, CommentId, LATEST_LIKERS, LatestReactions, Location,
    POST_MAX_PHOTOS, Post, PostId, PostView, Reactions, comment_cursor_after, media_from_bytes, media_to_bytes,
    parse_comment_cursor, parse_post_cursor, post_cursor_after,
};
pub use profile::{
    BIO_MAX_CHARS, Birthday, DISPLAY_NAME_MAX_CHARS, Profile, ProfileChange, SEARCH_MIN_CHARS, search_key,
    search_key_head, search_keys,
};
pub use push::{ACTIVITY_PUSH_ROOM, Platform, PushKind, PushRegistration};
pub use room::{
    EntryBody, MemberRecord, Role, RoomEntry, RoomKind, RoomMeta, RoomState, RoomSummary, TextMessage, room_name,
};
pub use stream::{EventKind, EventRef, Receipt, ReceiptKind, Source, StreamEvent};

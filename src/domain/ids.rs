//! Newtype ids. Users, devices and rooms get random 63-bit ids (they fit SQLite's signed INTEGER and
//! need no coordination between nodes); message ids are time-ordered.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A user account.
    UserId
);
id_type!(
    /// One logged-in installation of the app; owns one refresh token.
    DeviceId
);
id_type!(
    /// A direct or group room.
    RoomId
);
id_type!(
    /// One WebSocket connection on this node (not stored).
    ConnId
);

impl ConnId {
    /// A process-unique connection id.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Ids below this are never random: some are reserved (`SYSTEM_USER`, `NOTIFICATION_PUSH_ROOM`).
pub const RESERVED_IDS: u64 = 16;

/// The sender of the app's system messages (server API), a member of no room.
pub const SYSTEM_USER: UserId = UserId(1);

/// A random id in `RESERVED_IDS..2^63`.
pub fn new_random_id() -> u64 {
    (rand::random::<u64>() >> 1).max(RESERVED_IDS)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A 63-bit id that sorts by creation time: 42 bits of milliseconds, 21 random bits.
pub fn time_ordered_id(at_ms: i64) -> u64 {
    let millis = (at_ms.max(0) as u64) & ((1 << 42) - 1);
    (millis << 21) | (rand::random::<u64>() & ((1 << 21) - 1))
}

/// What one actor is the single writer of: a room's log (and, with feeds, a user's feed). The
/// registry finds actors by it, and in a cluster each key has one owning node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActorKey {
    Room(RoomId),
    /// An author's feed: the fan-out of their posts.
    Feed(UserId),
}

impl From<RoomId> for ActorKey {
    fn from(room: RoomId) -> Self {
        ActorKey::Room(room)
    }
}

impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorKey::Room(room) => write!(f, "room {room}"),
            ActorKey::Feed(author) => write!(f, "feed {author}"),
        }
    }
}

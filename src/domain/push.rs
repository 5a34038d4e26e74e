//! Push notification targets: a device's token with a provider, and what a notification is about.

use super::{DeviceId, RoomId, UserId};

/// Which provider reaches a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Apple Push Notification service.
    Ios,
    /// Firebase Cloud Messaging (HTTP v1).
    Android,
}

impl Platform {
    pub const ALL: [Platform; 2] = [Platform::Ios, Platform::Android];

    /// The stable number stored with a token.
    pub fn code(self) -> i64 {
        match self {
            Platform::Ios => 1,
            Platform::Android => 2,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code() == code)
    }

    pub fn provider_name(self) -> &'static str {
        match self {
            Platform::Ios => "apns",
            Platform::Android => "fcm",
        }
    }
}

/// A device's push token, as the device registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRegistration {
    pub user: UserId,
    pub device: DeviceId,
    pub platform: Platform,
    pub token: String,
    /// The APNs topic (bundle id) or the Android package name.
    pub app_id: String,
    pub locale: String,
    /// An APNs sandbox token (development build).
    pub sandbox: bool,
}

/// What a queued push tells its device about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// New messages in a room.
    Message,
    /// The user was added to a group.
    AddedToRoom,
    /// Someone followed the user, or liked or commented on their post (queued under
    /// `ACTIVITY_PUSH_ROOM`).
    Activity,
    /// The app's backend notified the user (queued under `NOTIFICATION_PUSH_ROOM`).
    Notification,
}

/// Pushes of activity are queued under this room id, which no room has (room ids are random and
/// never 0): one pending activity push per device takes a burst in, as a room's does. Muting it
/// mutes activity pushes.
pub const ACTIVITY_PUSH_ROOM: RoomId = RoomId(0);

impl PushKind {
    pub fn code(self) -> i64 {
        match self {
            PushKind::Message => 1,
            PushKind::AddedToRoom => 2,
            PushKind::Activity => 3,
            PushKind::Notification => 4,
        }
    }

    /// How a push's data names it (`kind`).
    pub fn name(self) -> &'static str {
        match self {
            PushKind::Message => "message",
            PushKind::AddedToRoom => "added_to_room",
            PushKind::Activity => "activity",
            PushKind::Notification => "notification",
        }
    }

    pub fn from_code(code: i64) -> Self {
        match code {
            2 => PushKind::AddedToRoom,
            3 => PushKind::Activity,
            4 => PushKind::Notification,
            _ => PushKind::Message,
        }
    }
}

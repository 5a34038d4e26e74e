//! Notifications: what the app's backend tells a user (server API `notify`), an event in the
//! user's stream like a message: read, resumed and acknowledged the same way, and pushed only when
//! no device of the user got it within the grace window.
//!
//! A notification is recorded once per recipient and key: the backend's `Idempotency-Key`, so that
//! a retried call notifies no one twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DomainError, DomainResult, RoomId, UserId};

pub const NOTIFICATION_TITLE_MAX_CHARS: usize = 200;
pub const NOTIFICATION_BODY_MAX_CHARS: usize = 2000;
/// The app's data: at most this many pairs, of at most this many bytes in all (a push provider
/// takes 4 KiB for everything).
pub const NOTIFICATION_DATA_MAX_PAIRS: usize = 32;
pub const NOTIFICATION_DATA_MAX_BYTES: usize = 2048;
/// An idempotency key's longest.
pub const NOTIFICATION_KEY_MAX_BYTES: usize = 128;

/// Pushes of notifications are queued under this room id, which no room has (random ids start at
/// `RESERVED_IDS`): one pending notification push per device takes a burst in, as a room's does.
pub const NOTIFICATION_PUSH_ROOM: RoomId = RoomId(1);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Time-ordered, unique within the recipient's notifications.
    pub id: u64,
    pub recipient: UserId,
    pub title: String,
    pub body: String,
    /// The app's own key-value pairs, handed to the app as they came.
    pub data: BTreeMap<String, String>,
    pub at_ms: i64,
}

/// A notification to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub recipient: UserId,
    pub title: String,
    pub body: String,
    pub data: BTreeMap<String, String>,
    pub at_ms: i64,
    /// Recorded once per recipient and key.
    pub dedup_key: String,
}

impl NewNotification {
    pub fn recorded(&self, id: u64) -> Notification {
        Notification {
            id,
            recipient: self.recipient,
            title: self.title.clone(),
            body: self.body.clone(),
            data: self.data.clone(),
            at_ms: self.at_ms,
        }
    }
}

/// Checks what a notification says, naming the field at fault.
pub fn check_notification(title: &str, body: &str, data: &BTreeMap<String, String>) -> DomainResult<()> {
    if title.trim().is_empty() && body.trim().is_empty() {
        return Err(DomainError::invalid_field("body", "a notification needs a title or a body"));
    }
    if title.chars().count() > NOTIFICATION_TITLE_MAX_CHARS {
        let message = format!("the title is over {NOTIFICATION_TITLE_MAX_CHARS} characters");
        return Err(DomainError::invalid_field("title", message));
    }
    if body.chars().count() > NOTIFICATION_BODY_MAX_CHARS {
        let message = format!("the body is over {NOTIFICATION_BODY_MAX_CHARS} characters");
        return Err(DomainError::invalid_field("body", message));
    }
    let bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if data.len() > NOTIFICATION_DATA_MAX_PAIRS || bytes > NOTIFICATION_DATA_MAX_BYTES {
        let message = format!(
            "data is over {NOTIFICATION_DATA_MAX_PAIRS} pairs or {NOTIFICATION_DATA_MAX_BYTES} bytes of keys and values"
        );
        return Err(DomainError::invalid_field("data", message));
    }
    if data.keys().any(|k| k.is_empty()) {
        return Err(DomainError::invalid_field("data", "a data key is empty"));
    }
    Ok(())
}

/// What a notification's push carries, kept with its queued push (the push's preview).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NotificationPush {
    #[serde(rename = "t", default)]
    pub title: String,
    #[serde(rename = "b", default)]
    pub body: String,
    #[serde(rename = "d", default)]
    pub data: BTreeMap<String, String>,
}

impl NotificationPush {
    pub fn of(notification: &Notification) -> Self {
        Self { title: notification.title.clone(), body: notification.body.clone(), data: notification.data.clone() }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("serialises")
    }

    /// A queued push's preview back (empty if it is not one: the push then says "New notification").
    pub fn decode(preview: &str) -> Self {
        serde_json::from_str(preview).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_checked_field_by_field() {
        let none = BTreeMap::new();
        assert!(check_notification("Shipped", "", &none).is_ok());
        assert_eq!(check_notification(" ", "", &none).unwrap_err().field, "body");
        assert_eq!(check_notification(&"t".repeat(201), "b", &none).unwrap_err().field, "title");
        assert_eq!(check_notification("t", &"b".repeat(2001), &none).unwrap_err().field, "body");
        let big: BTreeMap<String, String> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(check_notification("t", "b", &big).unwrap_err().field, "data");
        let empty_key = BTreeMap::from([(String::new(), "v".to_owned())]);
        assert_eq!(check_notification("t", "b", &empty_key).unwrap_err().field, "data");
    }

    #[test]
    fn a_push_preview_round_trips() {
        let push = NotificationPush {
            title: "Order".into(),
            body: "Shipped".into(),
            data: BTreeMap::from([("order".to_owned(), "42".to_owned())]),
        };
        assert_eq!(NotificationPush::decode(&push.encode()), push);
        assert_eq!(NotificationPush::decode("not json"), NotificationPush::default());
    }
}

//! What a push says: built from a queued job and the store's view of the room, the same for both
//! providers (each then puts it in its own payload).

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::domain::{NotificationPush, PushKind, RoomKind};
use crate::store::{PushContext, PushJob};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The job id as a UUID: APNs' `apns-id` and the `push_id` data field. The same on every retry,
    /// so a device (or a provider log) can tell a retried push from a new one.
    pub push_id: String,
    pub title: String,
    pub body: String,
    /// Unread messages over all rooms.
    pub badge: u32,
    pub room_id: u64,
    pub seq: u64,
    /// Notifications of one room replace each other on the device (APNs collapse id, FCM tag).
    pub collapse_id: String,
    /// Notifications of one room are grouped together (APNs thread id).
    pub thread_id: String,
    pub kind: PushKind,
    /// The app's own pairs (notifications from its backend), beside ours in the payload; ours win
    /// a clash (`push_id`, `room_id`, `seq`, `badge`, `kind`, `aps`).
    pub data: BTreeMap<String, String>,
}

impl Notification {
    pub fn new(job: &PushJob, context: &PushContext) -> Self {
        let sender = if context.sender_name.is_empty() { "Someone" } else { context.sender_name.as_str() };
        let group = context.room_kind == RoomKind::Group;
        let (title, body) = match job.kind {
            // The user's lock screen shows no one's name and no text: the app's name and this.
            _ if context.hide_previews => {
                let body = match job.kind {
                    PushKind::AddedToRoom => "You were added to a group".to_owned(),
                    PushKind::Message if job.count <= 1 => "New message".to_owned(),
                    PushKind::Message => format!("{} new messages", job.count),
                    PushKind::Activity if job.count <= 1 => "New activity".to_owned(),
                    PushKind::Activity => format!("{} new activities", job.count),
                    PushKind::Notification if job.count <= 1 => "New notification".to_owned(),
                    PushKind::Notification => format!("{} new notifications", job.count),
                };
                (String::new(), body)
            }
            // What happened as the body: the newest activity, which words its group ("ana and 4
            // others liked your photo"); a burst of several counts them in the title.
            PushKind::Activity if job.count <= 1 => (String::new(), job.preview.clone()),
            PushKind::Activity => (format!("{} new activities", job.count), job.preview.clone()),
            // The newest of a burst, as the app worded it (a burst keeps the newest one's data).
            PushKind::Notification => {
                let newest = NotificationPush::decode(&job.preview);
                let title = match job.count {
                    0 | 1 => newest.title,
                    n if newest.title.is_empty() => format!("{n} new notifications"),
                    n => format!("{} (+{})", newest.title, n - 1),
                };
                (title, newest.body)
            }
            PushKind::AddedToRoom => {
                (context.room_name.clone(), format!("{sender} added you to {}", context.room_name))
            }
            PushKind::Message if job.count <= 1 => {
                let title = if group { format!("{sender} in {}", context.room_name) } else { sender.to_owned() };
                // No preview: its message was deleted while the push waited.
                let body = if job.preview.is_empty() { "New message".to_owned() } else { job.preview.clone() };
                (title, body)
            }
            PushKind::Message => {
                let title = if group { context.room_name.clone() } else { sender.to_owned() };
                let body = if job.many_senders {
                    format!("{} new messages", job.count)
                } else {
                    format!("{} new messages from {sender}", job.count)
                };
                (title, body)
            }
        };
        let thread = match job.kind {
            PushKind::Activity => "activity".to_owned(),
            PushKind::Notification => "notification".to_owned(),
            _ => format!("room-{}", job.room.0),
        };
        Self {
            push_id: uuid_of(job.id),
            title,
            body,
            badge: context.badge,
            room_id: job.room.0,
            seq: job.last_seq,
            collapse_id: thread.clone(),
            thread_id: thread,
            kind: job.kind,
            data: match job.kind {
                PushKind::Notification => NotificationPush::decode(&job.preview).data,
                _ => BTreeMap::new(),
            },
        }
    }

    /// What names the push in both providers' payloads (its id, room, seq and kind, ids as
    /// strings), then the app's own pairs. A pair whose key is one of these, or in `also_ours`
    /// (the provider's own top-level keys), is left out: ours win a clash.
    pub fn serialize_ids_and_app_data<M: SerializeMap>(&self, map: &mut M, also_ours: &[&str]) -> Result<(), M::Error> {
        const IDS: [&str; 4] = ["push_id", "room_id", "seq", "kind"];
        map.serialize_entry(IDS[0], &self.push_id)?;
        map.serialize_entry(IDS[1], &AsText(self.room_id))?;
        map.serialize_entry(IDS[2], &AsText(self.seq))?;
        map.serialize_entry(IDS[3], self.kind.name())?;
        for (key, value) in &self.data {
            if !IDS.contains(&key.as_str()) && !also_ours.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        Ok(())
    }
}

/// A notification's visible part, as both providers spell it.
#[derive(Serialize)]
pub struct TitleAndBody<'a> {
    pub title: &'a str,
    pub body: &'a str,
}

/// A value written as a JSON string through `Display` (ids and counts as strings, as providers'
/// data fields must be), without building a `String` first.
pub struct AsText<T>(pub T);

impl<T: Display> Serialize for AsText<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// A job id as a UUID (version 4 layout, the id in the last 12 hex digits): APNs wants `apns-id`
/// in this form.
pub fn uuid_of(job_id: u64) -> String {
    let high = (job_id >> 48) & 0xfff;
    let low = job_id & 0xffff_ffff_ffff;
    format!("00000000-0000-4000-8{high:03x}-{low:012x}")
}

/// The first `max_chars` characters of a text, with an ellipsis when cut.
pub fn preview(text: &str, max_chars: usize) -> String {
    let mut chars = text.char_indices();
    match chars.nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_cut_on_characters() {
        assert_eq!(preview("hello", 10), "hello");
        assert_eq!(preview("héllo wörld", 5), "héllo…");
        assert_eq!(preview("", 5), "");
    }

    #[test]
    fn push_ids_are_uuids_and_distinct() {
        let a = uuid_of(1);
        assert_eq!(a.len(), 36);
        assert_eq!(a, "00000000-0000-4000-8000-000000000001");
        assert_ne!(uuid_of(1 << 48), uuid_of(0));
    }
}

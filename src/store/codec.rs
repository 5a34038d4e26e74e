//! Domain values to columns and back, the same for every backend: how an entry's body and a stream
//! event are laid out in columns (a column may mean one thing for one kind and another for
//! another: `users` holds a message's image ids), and the codes of roles and room kinds. Each backend reads and
//! writes these columns its own way (`sqlite/codec.rs`, `scylla/`).

use crate::domain::{EntryBody, EventKind, EventRef, MediaId, Role, RoomId, RoomKind, Source, TextMessage, UserId};

/// The columns of an entry, ready to insert.
pub(crate) struct EntryColumns<'a> {
    pub kind: i64,
    pub text: &'a str,
    pub client_msg_id: Option<&'a str>,
    pub target_seq: u64,
    pub users: String,
    pub role: i64,
    pub edited_at_ms: i64,
    pub deleted: bool,
}

pub(crate) fn entry_columns(body: &EntryBody) -> EntryColumns<'_> {
    let mut c = EntryColumns {
        kind: 0,
        text: "",
        client_msg_id: None,
        target_seq: 0,
        users: String::new(),
        role: 0,
        edited_at_ms: 0,
        deleted: false,
    };
    match body {
        EntryBody::Text(m) => {
            c.kind = 1;
            c.text = &m.text;
            // A message names no users: the column holds its images' ids.
            c.users = m.media.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",");
            c.client_msg_id = (!m.client_msg_id.is_empty()).then_some(m.client_msg_id.as_str());
            c.target_seq = m.reply_to_seq;
            c.edited_at_ms = m.edited_at_ms;
            c.deleted = m.deleted;
        }
        EntryBody::Edited { target_seq, text } => {
            c.kind = 2;
            c.target_seq = *target_seq;
            c.text = text;
        }
        EntryBody::Deleted { target_seq } => {
            c.kind = 3;
            c.target_seq = *target_seq;
        }
        EntryBody::Created { kind, name, members } => {
            c.kind = 4;
            c.text = name;
            c.users = join_users(members);
            c.role = room_kind_code(*kind);
        }
        EntryBody::MembersAdded(users) => {
            c.kind = 5;
            c.users = join_users(users);
        }
        EntryBody::MemberRemoved(user) => {
            c.kind = 6;
            c.users = user.0.to_string();
        }
        EntryBody::MemberLeft(user) => {
            c.kind = 7;
            c.users = user.0.to_string();
        }
        EntryBody::Renamed(name) => {
            c.kind = 8;
            c.text = name;
        }
        EntryBody::RoleChanged(user, role) => {
            c.kind = 9;
            c.users = user.0.to_string();
            c.role = role_code(*role);
        }
    }
    c
}

/// The columns of an entry's body, as read back (see `entry_columns`).
pub(crate) struct StoredBody {
    pub kind: i64,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub target_seq: u64,
    pub users: String,
    pub role: i64,
    pub edited_at_ms: i64,
    pub deleted: bool,
}

/// The body back from its columns; `None` for a kind this version does not know.
pub(crate) fn body_from_columns(c: StoredBody) -> Option<EntryBody> {
    let users = if c.kind == 1 { Vec::new() } else { split_users(&c.users) };
    let first_user = users.first().copied().unwrap_or_default();
    Some(match c.kind {
        1 => EntryBody::Text(TextMessage {
            text: c.text,
            client_msg_id: c.client_msg_id.unwrap_or_default(),
            reply_to_seq: c.target_seq,
            edited_at_ms: c.edited_at_ms,
            deleted: c.deleted,
            media: c.users.split(',').filter_map(MediaId::parse).collect(),
        }),
        2 => EntryBody::Edited { target_seq: c.target_seq, text: c.text },
        3 => EntryBody::Deleted { target_seq: c.target_seq },
        4 => EntryBody::Created { kind: room_kind_from(c.role), name: c.text, members: users },
        5 => EntryBody::MembersAdded(users),
        6 => EntryBody::MemberRemoved(first_user),
        7 => EntryBody::MemberLeft(first_user),
        8 => EntryBody::Renamed(c.text),
        9 => EntryBody::RoleChanged(first_user, role_from(c.role)),
        _ => return None,
    })
}

pub(crate) fn join_users(users: &[UserId]) -> String {
    users.iter().map(|u| u.0.to_string()).collect::<Vec<_>>().join(",")
}

pub(crate) fn split_users(text: &str) -> Vec<UserId> {
    text.split(',').filter_map(|s| s.parse().ok()).map(UserId).collect()
}

pub(crate) fn role_code(role: Role) -> i64 {
    match role {
        Role::Member => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }
}

pub(crate) fn role_from(code: i64) -> Role {
    match code {
        3 => Role::Owner,
        2 => Role::Admin,
        _ => Role::Member,
    }
}

pub(crate) fn room_kind_code(kind: RoomKind) -> i64 {
    match kind {
        RoomKind::Direct => 1,
        RoomKind::Group => 2,
    }
}

pub(crate) fn room_kind_from(code: i64) -> RoomKind {
    if code == 1 { RoomKind::Direct } else { RoomKind::Group }
}

/// A stream event's row in `events`, the same columns for every kind: `kind`, the source's id in
/// `room_id` (what the source is follows from the kind: a room, an author's feed, an activity's actor), the
/// reference in `seq`, the actor in `actor_id` (0: none).
pub(crate) struct EventRow {
    pub kind: i64,
    pub source_id: i64,
    pub reference: i64,
    pub actor: i64,
}

pub(crate) fn event_row(event: &EventRef) -> EventRow {
    let kind = match event.kind {
        EventKind::Entry => 0,
        EventKind::Delivered => 1,
        EventKind::Read => 2,
        EventKind::Post => 3,
        EventKind::Activity => 4,
        EventKind::Notification => 5,
    };
    let source_id = match event.source {
        Source::Room(room) => room.0,
        Source::User(user) | Source::Feed(user) => user.0,
        Source::Server => 0,
    };
    EventRow {
        kind,
        source_id: source_id as i64,
        reference: event.reference as i64,
        actor: event.actor.map_or(0, |u| u.0 as i64),
    }
}

/// The event a row describes, back (`None` for a kind this version does not know).
pub(crate) fn event_ref_from(row: &EventRow) -> Option<EventRef> {
    let kind = match row.kind {
        0 => EventKind::Entry,
        1 => EventKind::Delivered,
        2 => EventKind::Read,
        3 => EventKind::Post,
        4 => EventKind::Activity,
        5 => EventKind::Notification,
        _ => return None,
    };
    let actor = (row.actor != 0).then_some(UserId(row.actor as u64));
    let source = match kind {
        EventKind::Post => Source::Feed(UserId(row.source_id as u64)),
        EventKind::Activity => Source::User(UserId(row.source_id as u64)),
        EventKind::Notification => Source::Server,
        _ => Source::Room(RoomId(row.source_id as u64)),
    };
    Some(EventRef { kind, source, reference: row.reference as u64, actor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Receipt, ReceiptKind};

    #[test]
    fn every_kind_of_event_keeps_its_row_layout() {
        let receipt = |kind| Receipt { room: RoomId(7), user: UserId(9), kind, up_to_seq: 4 };
        let events = [
            EventRef::entry(RoomId(7), 3),
            EventRef::receipt(&receipt(ReceiptKind::Delivered)),
            EventRef::receipt(&receipt(ReceiptKind::Read)),
            EventRef::post(UserId(5), crate::domain::PostId(11)),
            EventRef::activity(UserId(6), 12),
        ];
        // The rows databases already hold: kinds 0, 1, 2; source in room_id, reference in seq.
        let rows = [(0, 7, 3, 0), (1, 7, 4, 9), (2, 7, 4, 9), (3, 5, 11, 0), (4, 6, 12, 0)];
        for (event, expected) in events.iter().zip(rows) {
            let row = event_row(event);
            assert_eq!((row.kind, row.source_id, row.reference, row.actor), expected, "{event:?}");
            assert_eq!(event_ref_from(&row).as_ref(), Some(event));
        }
        assert!(event_ref_from(&EventRow { kind: 99, source_id: 1, reference: 1, actor: 0 }).is_none());
    }
}

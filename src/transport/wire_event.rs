//! Stream events back from their wire form: what the cluster bridge carries between nodes is the
//! same `Event` message clients get, encoded once by the node that wrote it.

use std::sync::Arc;

use tidings_proto::v1 as wire;

use super::encode::event_frame;
use crate::domain::{
    EntryBody, Receipt, ReceiptKind, Role, RoomEntry, RoomId, RoomKind, StreamEvent, TextMessage, UserId,
};

/// The wire form of a stream event, without a position (each recipient has its own).
pub fn to_wire(event: &StreamEvent) -> wire::Event {
    match event_frame(0, event).frame {
        Some(wire::server_frame::Frame::Event(event)) => event,
        _ => unreachable!("event_frame builds an event"),
    }
}

/// A stream event from its wire form; `None` if it is not one this node understands.
pub fn from_wire(event: wire::Event) -> Option<StreamEvent> {
    match event.kind? {
        wire::event::Kind::Entry(e) => Some(StreamEvent::Entry(Arc::new(entry(e)?))),
        wire::event::Kind::Receipt(r) => Some(StreamEvent::Receipt(Receipt {
            room: RoomId(r.room_id),
            user: UserId(r.user_id),
            kind: match wire::ReceiptKind::try_from(r.kind).ok()? {
                wire::ReceiptKind::Delivered => ReceiptKind::Delivered,
                wire::ReceiptKind::Read => ReceiptKind::Read,
                wire::ReceiptKind::Unspecified => return None,
            },
            up_to_seq: r.up_to_seq,
        })),
    }
}

fn users(ids: Vec<u64>) -> Vec<UserId> {
    ids.into_iter().map(UserId).collect()
}

fn role(code: i32) -> Option<Role> {
    match wire::Role::try_from(code).ok()? {
        wire::Role::Member => Some(Role::Member),
        wire::Role::Admin => Some(Role::Admin),
        wire::Role::Owner => Some(Role::Owner),
        wire::Role::Unspecified => None,
    }
}

fn entry(e: wire::RoomEntry) -> Option<RoomEntry> {
    use wire::room_entry::Body as B;
    let body = match e.body? {
        B::Text(m) => EntryBody::Text(TextMessage {
            text: m.text,
            client_msg_id: m.client_msg_id,
            reply_to_seq: m.reply_to_seq,
            edited_at_ms: m.edited_at_ms,
            deleted: m.deleted,
        }),
        B::Edited(m) => EntryBody::Edited { target_seq: m.target_seq, text: m.text },
        B::Deleted(m) => EntryBody::Deleted { target_seq: m.target_seq },
        B::Created(c) => EntryBody::Created {
            kind: match wire::RoomKind::try_from(c.kind).ok()? {
                wire::RoomKind::Direct => RoomKind::Direct,
                wire::RoomKind::Group => RoomKind::Group,
                wire::RoomKind::Unspecified => return None,
            },
            name: c.name,
            members: users(c.member_ids),
        },
        B::MembersAdded(a) => EntryBody::MembersAdded(users(a.user_ids)),
        B::MemberRemoved(r) => EntryBody::MemberRemoved(UserId(r.user_id)),
        B::MemberLeft(l) => EntryBody::MemberLeft(UserId(l.user_id)),
        B::Renamed(r) => EntryBody::Renamed(r.name),
        B::RoleChanged(r) => EntryBody::RoleChanged(UserId(r.user_id), role(r.role)?),
    };
    Some(RoomEntry {
        room: RoomId(e.room_id),
        seq: e.seq,
        id: e.id,
        sender: UserId(e.sender_id),
        sent_at_ms: e.sent_at_ms,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_survives_the_round_trip() {
        let entry = |body| {
            StreamEvent::Entry(Arc::new(RoomEntry {
                room: RoomId(7),
                seq: 3,
                id: 99,
                sender: UserId(1),
                sent_at_ms: 1234,
                body,
            }))
        };
        let events = [
            entry(EntryBody::Text(TextMessage {
                text: "hi".into(),
                client_msg_id: "c".into(),
                reply_to_seq: 2,
                edited_at_ms: 5,
                deleted: false,
            })),
            entry(EntryBody::Edited { target_seq: 2, text: "x".into() }),
            entry(EntryBody::Deleted { target_seq: 2 }),
            entry(EntryBody::Created { kind: RoomKind::Group, name: "g".into(), members: vec![UserId(1), UserId(2)] }),
            entry(EntryBody::MembersAdded(vec![UserId(3)])),
            entry(EntryBody::MemberRemoved(UserId(3))),
            entry(EntryBody::MemberLeft(UserId(2))),
            entry(EntryBody::Renamed("h".into())),
            entry(EntryBody::RoleChanged(UserId(2), Role::Admin)),
            StreamEvent::Receipt(Receipt { room: RoomId(7), user: UserId(2), kind: ReceiptKind::Read, up_to_seq: 3 }),
        ];
        for event in events {
            assert_eq!(from_wire(to_wire(&event)), Some(event.clone()));
        }
        assert_eq!(from_wire(wire::Event::default()), None);
    }
}

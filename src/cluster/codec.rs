//! The cluster's own codec: what nodes send each other, in domain terms, never the client-facing
//! protocol. JSON through serde over the domain types, so that a client-protocol change never
//! touches node-to-node traffic and this layer never depends on the transport.
//!
//! Compatibility between node versions (a rolling upgrade): a bridge message of a kind a node does
//! not know, but with a position, makes that user catch up from the store; a forwarded request the
//! owner refuses is handled by the node that got it (the store fences seqs). Nodes of the previous
//! codec (before v2 of the forward path) therefore interoperate, only more slowly.

use serde::{Deserialize, Serialize};

use crate::actors::{ActorRequest, Ephemeral, KickReason, PresenceInfo, ReplyBody};
use crate::domain::{DeviceId, DomainResult, RoomId, StreamEvent, UserId};

/// What one node tells the nodes holding a user's sessions (one Redis channel per user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Envelope {
    /// A durable event at `pos` in the user's stream.
    StreamEvent {
        origin: String,
        pos: u64,
        event: StreamEvent,
    },
    Typing {
        origin: String,
        room: u64,
        user: u64,
        active: bool,
    },
    Presence {
        origin: String,
        user: u64,
        online: bool,
        last_seen_ms: i64,
    },
    /// Close these devices' connections (they logged out, unless `reason` says otherwise: older
    /// nodes send no reason).
    Kick {
        origin: String,
        devices: Vec<u64>,
        #[serde(default)]
        reason: KickReason,
    },
}

/// Enough of an envelope this node cannot decode (a newer node's kind, an older node's event
/// format) to act on it: whether it is ours, and whether it stood for a position in the stream.
#[derive(Debug, Deserialize)]
pub struct Opaque {
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub pos: Option<u64>,
}

impl Envelope {
    pub fn origin(&self) -> &str {
        match self {
            Envelope::StreamEvent { origin, .. }
            | Envelope::Typing { origin, .. }
            | Envelope::Presence { origin, .. }
            | Envelope::Kick { origin, .. } => origin,
        }
    }

    pub fn ephemeral(origin: &str, event: &Ephemeral) -> Self {
        let origin = origin.to_owned();
        match *event {
            Ephemeral::Typing { room, user, active } => Envelope::Typing { origin, room: room.0, user: user.0, active },
            Ephemeral::Presence(p) => {
                Envelope::Presence { origin, user: p.user.0, online: p.online, last_seen_ms: p.last_seen_ms }
            }
        }
    }

    /// The ephemeral event an envelope carries, if it carries one.
    pub fn to_ephemeral(&self) -> Option<Ephemeral> {
        match *self {
            Envelope::Typing { room, user, active, .. } => {
                Some(Ephemeral::Typing { room: RoomId(room), user: UserId(user), active })
            }
            Envelope::Presence { user, online, last_seen_ms, .. } => {
                Some(Ephemeral::Presence(PresenceInfo { user: UserId(user), online, last_seen_ms }))
            }
            _ => None,
        }
    }
}

/// The event encoded once, for every recipient's envelope (`event_envelope`).
pub fn encode_event(event: &StreamEvent) -> String {
    serde_json::to_string(event).expect("stream events serialise")
}

/// `Envelope::StreamEvent` as JSON, written around an event encoded once for all its recipients
/// (`origin_json` is the origin already encoded as a JSON string).
pub fn event_envelope(origin_json: &str, pos: u64, event_json: &str) -> Vec<u8> {
    format!(r#"{{"k":"StreamEvent","origin":{origin_json},"pos":{pos},"event":{event_json}}}"#).into_bytes()
}

/// A request a node hands to the node that owns its key, on behalf of a user's device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedRequest {
    pub user: UserId,
    pub device: DeviceId,
    pub request: ActorRequest,
}

/// The owner's answer, exactly as its room actor gave it.
pub type ForwardedAnswer = DomainResult<ReplyBody>;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("cluster messages serialise")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::actors::{RoomOp, RoomWrite};
    use crate::domain::{EntryBody, Receipt, ReceiptKind, Role, RoomEntry, RoomKind, TextMessage};
    use crate::store::HistoryPage;

    fn entry(body: EntryBody) -> StreamEvent {
        StreamEvent::Entry(Arc::new(RoomEntry {
            room: RoomId(7),
            seq: 3,
            id: 99,
            sender: UserId(1),
            sent_at_ms: 1234,
            body,
            encoded: Default::default(),
        }))
    }

    #[test]
    fn every_stream_event_survives_the_hand_built_envelope() {
        let events = [
            entry(EntryBody::Text(TextMessage {
                text: "hé \"quoted\"".into(),
                client_msg_id: "c".into(),
                reply_to_seq: 2,
                edited_at_ms: 5,
                deleted: false,
                media: vec![crate::domain::MediaId::of(b"a photo")],
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
        let origin = serde_json::to_string("node-\"1\"").unwrap();
        for event in events {
            let payload = event_envelope(&origin, 42, &encode_event(&event));
            let parsed: Envelope = decode(&payload).unwrap();
            assert_eq!(parsed, Envelope::StreamEvent { origin: "node-\"1\"".into(), pos: 42, event });
        }
    }

    #[test]
    fn an_envelope_of_an_unknown_kind_still_tells_its_origin_and_position() {
        let newer = br#"{"k":"FeedPost","origin":"node-2","pos":17,"post":{"id":1}}"#;
        assert!(decode::<Envelope>(newer).is_err());
        let opaque: Opaque = decode(newer).unwrap();
        assert_eq!((opaque.origin.as_str(), opaque.pos), ("node-2", Some(17)));
        // The previous codec's events (the client protocol's JSON) read the same way.
        let older = br#"{"k":"Event","origin":"node-3","pos":5,"event":{"pos":"0","entry":{}}}"#;
        assert_eq!(decode::<Opaque>(older).unwrap().pos, Some(5));
    }

    #[test]
    fn forwarded_requests_and_answers_survive_the_codec() {
        let ops = [
            RoomOp::Write(RoomWrite::Send {
                client_msg_id: "m1".into(),
                text: "hi".into(),
                reply_to_seq: 0,
                media: Vec::new(),
            }),
            RoomOp::History(HistoryPage::Before { seq: 9, limit: 50 }),
            RoomOp::Write(RoomWrite::SetRole(UserId(4), Role::Admin)),
            RoomOp::Receipt { kind: ReceiptKind::Delivered, up_to_seq: 3 },
        ];
        for op in ops {
            let request = ActorRequest::Room { room: RoomId(3), op };
            let request = ForwardedRequest { user: UserId(1), device: DeviceId(2), request };
            assert_eq!(decode::<ForwardedRequest>(&encode(&request)).unwrap(), request);
        }
        let refused: ForwardedAnswer = Err(crate::domain::DomainError::not_a_member());
        let back: ForwardedAnswer = decode(&encode(&refused)).unwrap();
        assert_eq!(back.unwrap_err(), crate::domain::DomainError::not_a_member());
    }
}

//! Domain answers, events and notices to server frames, and frames to WebSocket messages.

use actix_http::ws::OpCode;
use bytes::{Bytes, BytesMut};
use prost::Message;
use tidings_proto::Encoding;
use tidings_proto::v1::{self as wire, ServerFrame, server_frame::Frame};

use super::codes::wire_code;
use super::websocket::put_header;
use crate::actors::{Answer, Ephemeral, Notice, PresenceInfo, ReplyBody};
use crate::domain::error::DomainError;
use crate::domain::{
    Activity, ActivityKind, Comment, EntryBody, FollowState, MemberRecord, Post, PostView, ProfileView, Receipt,
    ReceiptKind, Role, RoomEntry, RoomKind, RoomSummary, StreamEvent,
};

/// Writes `frame` as one WebSocket message onto `dst`: protobuf is encoded straight into the
/// buffer (binary), JSON as text.
pub fn write_frame(encoding: Encoding, frame: &ServerFrame, dst: &mut BytesMut) {
    match encoding {
        Encoding::Protobuf => {
            let len = frame.encoded_len();
            put_header(dst, OpCode::Binary, len);
            frame.encode_raw(dst);
        }
        Encoding::Json => {
            let text = serde_json::to_vec(frame).expect("server frames serialise");
            put_header(dst, OpCode::Text, text.len());
            dst.extend_from_slice(&text);
        }
    }
}

/// Writes a stream event as `write_frame(event_frame(pos, event))` would. In protobuf a room entry
/// (the same for every member of its room) is encoded once, on its first write, and each member's
/// frame is those bytes behind its own position: no copy of the entry's texts and no encoding per
/// member.
pub fn write_event(encoding: Encoding, pos: u64, event: &StreamEvent, dst: &mut BytesMut) {
    match (encoding, event) {
        (Encoding::Protobuf, StreamEvent::Entry(e)) => {
            let body = e.encoded.get_or_init(|| Bytes::from(entry(e).encode_to_vec()));
            write_event_frame_around(pos, EVENT_ENTRY_FIELD, body, dst);
        }
        _ => write_frame(encoding, &event_frame(pos, event), dst),
    }
}

/// `ServerFrame.event` and, inside `Event`, `pos` and `entry` (proto/tidings/v1/tidings.proto).
const SERVER_FRAME_EVENT_FIELD: u32 = 3;
const EVENT_POS_FIELD: u32 = 1;
const EVENT_ENTRY_FIELD: u32 = 10;

/// `ServerFrame { event: Event { pos, <kind_field>: <kind, already encoded> } }`, as prost writes it.
fn write_event_frame_around(pos: u64, kind_field: u32, kind: &[u8], dst: &mut BytesMut) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let pos_len = if pos == 0 { 0 } else { key_len(EVENT_POS_FIELD) + encoded_len_varint(pos) };
    let event_len = pos_len + key_len(kind_field) + encoded_len_varint(kind.len() as u64) + kind.len();
    let frame_len = key_len(SERVER_FRAME_EVENT_FIELD) + encoded_len_varint(event_len as u64) + event_len;
    put_header(dst, OpCode::Binary, frame_len);
    encode_key(SERVER_FRAME_EVENT_FIELD, WireType::LengthDelimited, dst);
    encode_varint(event_len as u64, dst);
    if pos != 0 {
        encode_key(EVENT_POS_FIELD, WireType::Varint, dst);
        encode_varint(pos, dst);
    }
    encode_key(kind_field, WireType::LengthDelimited, dst);
    encode_varint(kind.len() as u64, dst);
    dst.extend_from_slice(kind);
}

pub fn error_frame(request_id: u64, error: &DomainError) -> ServerFrame {
    ServerFrame {
        frame: Some(Frame::Error(wire::Error {
            request_id,
            code: wire_code(error.code) as i32,
            message: error.message.clone(),
            retry_after_ms: error.retry_after_ms,
            field: error.field.clone(),
        })),
    }
}

pub fn answer_frame(answer: &Answer) -> ServerFrame {
    let body = match &answer.result {
        Ok(body) => body,
        Err(e) => return error_frame(answer.request_id, e),
    };
    use wire::reply::Result as R;
    let result = match body {
        ReplyBody::Ok => R::Ok(wire::Success {}),
        ReplyBody::SyncStarted { head_pos, epoch } => {
            R::Sync(wire::SyncStarted { head_pos: *head_pos, epoch: epoch.clone() })
        }
        ReplyBody::Pong { server_time_ms } => R::Pong(wire::Pong { server_time_ms: *server_time_ms }),
        ReplyBody::Room(summary) => R::Room(room(summary)),
        ReplyBody::Rooms(rooms) => R::Rooms(wire::RoomList { rooms: rooms.iter().map(room).collect() }),
        ReplyBody::Sent(ack) => R::Sent(wire::SendAck {
            room_id: ack.room.0,
            seq: ack.seq,
            message_id: ack.message_id,
            sent_at_ms: ack.sent_at_ms,
            duplicate: ack.duplicate,
        }),
        ReplyBody::History { entries, more } => {
            R::History(wire::History { entries: entries.iter().map(entry).collect(), more: *more })
        }
        ReplyBody::Presence(users) => R::Presence(wire::PresenceList { users: users.iter().map(presence).collect() }),
        ReplyBody::Profile(p) => R::Profile(profile(p)),
        ReplyBody::Profiles(list) => R::Profiles(wire::ProfileList { profiles: list.iter().map(profile).collect() }),
        ReplyBody::Follow { user, state } => {
            R::Follow(wire::FollowStatus { user_id: user.0, state: follow_state(*state) as i32 })
        }
        ReplyBody::Users { profiles, next_cursor } => R::Users(wire::UserPage {
            profiles: profiles.iter().map(profile).collect(),
            next_cursor: next_cursor.clone(),
        }),
        ReplyBody::Post(view) => R::Post(post_view(view)),
        ReplyBody::Posts { posts, next_cursor } => {
            R::Posts(wire::PostPage { posts: posts.iter().map(post_view).collect(), next_cursor: next_cursor.clone() })
        }
        ReplyBody::Comment(c) => R::Comment(comment(c)),
        ReplyBody::Activity(status) => {
            R::Activity(wire::ActivityStatus { seen_up_to_pos: status.seen_up_to_pos, unread: status.unread })
        }
        ReplyBody::Comments { comments, next_cursor } => R::Comments(wire::CommentPage {
            comments: comments.iter().map(comment).collect(),
            next_cursor: next_cursor.clone(),
        }),
    };
    ServerFrame { frame: Some(Frame::Reply(wire::Reply { request_id: answer.request_id, result: Some(result) })) }
}

pub fn event_frame(pos: u64, event: &StreamEvent) -> ServerFrame {
    let kind = match event {
        StreamEvent::Entry(e) => wire::event::Kind::Entry(entry(e)),
        StreamEvent::Receipt(r) => wire::event::Kind::Receipt(receipt(r)),
        StreamEvent::Post { post: id, author, details } => wire::event::Kind::Post(wire::PostPublished {
            post_id: id.0,
            author_id: author.0,
            post: details.as_deref().map(post),
        }),
        StreamEvent::Activity(a) => wire::event::Kind::Activity(activity(a)),
        StreamEvent::Notification(n) => wire::event::Kind::Notification(wire::Notification {
            notification_id: n.id,
            title: n.title.clone(),
            body: n.body.clone(),
            data: n.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            at_ms: n.at_ms,
        }),
    };
    ServerFrame { frame: Some(Frame::Event(wire::Event { pos, kind: Some(kind) })) }
}

fn activity(a: &Activity) -> wire::Activity {
    let kind = match a.kind {
        ActivityKind::Followed => wire::ActivityKind::Followed,
        ActivityKind::FollowRequested => wire::ActivityKind::FollowRequested,
        ActivityKind::FollowAccepted => wire::ActivityKind::FollowAccepted,
        ActivityKind::Liked => wire::ActivityKind::Liked,
        ActivityKind::Commented => wire::ActivityKind::Commented,
    };
    wire::Activity {
        activity_id: a.id,
        kind: kind as i32,
        actor_id: a.actor.0,
        post_id: a.post.0,
        comment_id: a.comment.0,
        text: a.text.clone(),
        at_ms: a.at_ms,
        group_id: a.group.id,
        group_count: a.group.count,
        group_actor_ids: a.group.actors.iter().map(|u| u.0).collect(),
    }
}

pub fn ephemeral_frame(event: &Ephemeral) -> ServerFrame {
    let kind = match event {
        Ephemeral::Typing { room, user, active } => {
            wire::ephemeral::Kind::Typing(wire::Typing { room_id: room.0, user_id: user.0, active: *active })
        }
        Ephemeral::Presence(p) => wire::ephemeral::Kind::Presence(presence(p)),
    };
    ServerFrame { frame: Some(Frame::Ephemeral(wire::Ephemeral { kind: Some(kind) })) }
}

pub fn notice_frame(notice: &Notice) -> ServerFrame {
    use wire::NoticeKind as K;
    let (kind, pos, message) = match notice {
        Notice::CaughtUp { pos } => (K::CaughtUp, *pos, "caught up; live events follow"),
        Notice::ResyncRequired { pos } => {
            (K::ResyncRequired, *pos, "this connection fell behind; reconnect and Sync from your last stored position")
        }
        Notice::LoggedOut => (K::LoggedOut, 0, "this device was logged out"),
        Notice::TokenExpired => (K::TokenExpired, 0, "the access token expired; refresh it and reconnect"),
        Notice::Disconnected => (K::Disconnected, 0, "the app's server closed this connection"),
    };
    going(kind, pos, message)
}

pub fn going_away_frame() -> ServerFrame {
    going(wire::NoticeKind::GoingAway, 0, "the server is shutting down; reconnect and Sync")
}

fn going(kind: wire::NoticeKind, pos: u64, message: &str) -> ServerFrame {
    ServerFrame { frame: Some(Frame::Notice(wire::Notice { kind: kind as i32, message: message.into(), pos })) }
}

fn post_view(view: &PostView) -> wire::Post {
    wire::Post {
        likes: view.reactions.likes,
        comments: view.reactions.comments,
        liked_by_me: view.liked_by_me,
        latest_liker_ids: view.latest.iter().flat_map(|l| l.likers.iter().map(|u| u.0)).collect(),
        latest_comment: view.latest.as_ref().and_then(|l| l.comment.as_ref()).map(comment),
        ..post(&view.post)
    }
}

fn comment(c: &Comment) -> wire::Comment {
    wire::Comment {
        comment_id: c.id.0,
        post_id: c.post.0,
        author_id: c.author.0,
        text: c.text.clone(),
        created_at_ms: c.created_at_ms,
    }
}

fn post(p: &Post) -> wire::Post {
    wire::Post {
        post_id: p.id.0,
        author_id: p.author.0,
        media_ids: p.media.iter().map(|m| m.to_string()).collect(),
        caption: p.caption.clone(),
        location: p.location.map(|l| wire::Location { lat: l.lat, lng: l.lng }),
        created_at_ms: p.created_at_ms,
        ..Default::default()
    }
}

fn follow_state(state: FollowState) -> wire::FollowState {
    match state {
        FollowState::None => wire::FollowState::None,
        FollowState::Requested => wire::FollowState::Requested,
        FollowState::Following => wire::FollowState::Following,
    }
}

fn profile(view: &ProfileView) -> wire::Profile {
    let p = &view.profile;
    wire::Profile {
        user_id: p.user.0,
        username: p.username.clone(),
        display_name: p.display_name.clone(),
        bio: p.bio.clone(),
        avatar_media_id: p.avatar.map(|a| a.to_string()).unwrap_or_default(),
        birthday: p.birthday.map(|b| b.to_string()).unwrap_or_default(),
        private: p.private,
        followers: view.counts.followers,
        following: view.counts.following,
        my_follow: follow_state(view.my_follow) as i32,
        follows_me: view.follows_me,
        posts: view.posts,
    }
}

fn presence(p: &PresenceInfo) -> wire::Presence {
    wire::Presence { user_id: p.user.0, online: p.online, last_seen_ms: p.last_seen_ms }
}

fn receipt(r: &Receipt) -> wire::Receipt {
    let kind = match r.kind {
        ReceiptKind::Delivered => wire::ReceiptKind::Delivered,
        ReceiptKind::Read => wire::ReceiptKind::Read,
    };
    wire::Receipt { room_id: r.room.0, user_id: r.user.0, kind: kind as i32, up_to_seq: r.up_to_seq }
}

fn role(r: Role) -> i32 {
    (match r {
        Role::Member => wire::Role::Member,
        Role::Admin => wire::Role::Admin,
        Role::Owner => wire::Role::Owner,
    }) as i32
}

fn room_kind(k: RoomKind) -> i32 {
    (match k {
        RoomKind::Direct => wire::RoomKind::Direct,
        RoomKind::Group => wire::RoomKind::Group,
    }) as i32
}

fn ids(users: &[crate::domain::UserId]) -> Vec<u64> {
    users.iter().map(|u| u.0).collect()
}

pub fn entry(e: &RoomEntry) -> wire::RoomEntry {
    use wire::room_entry::Body as B;
    let body = match &e.body {
        EntryBody::Text(m) => B::Text(wire::TextMessage {
            text: m.text.clone(),
            client_msg_id: m.client_msg_id.clone(),
            reply_to_seq: m.reply_to_seq,
            edited_at_ms: m.edited_at_ms,
            deleted: m.deleted,
            media_ids: m.media.iter().map(|id| id.to_string()).collect(),
        }),
        EntryBody::Edited { target_seq, text } => {
            B::Edited(wire::MessageEdited { target_seq: *target_seq, text: text.clone() })
        }
        EntryBody::Deleted { target_seq } => B::Deleted(wire::MessageDeleted { target_seq: *target_seq }),
        EntryBody::Created { kind, name, members } => {
            B::Created(wire::RoomCreated { kind: room_kind(*kind), name: name.clone(), member_ids: ids(members) })
        }
        EntryBody::MembersAdded(users) => B::MembersAdded(wire::MembersAdded { user_ids: ids(users) }),
        EntryBody::MemberRemoved(u) => B::MemberRemoved(wire::MemberRemoved { user_id: u.0 }),
        EntryBody::MemberLeft(u) => B::MemberLeft(wire::MemberLeft { user_id: u.0 }),
        EntryBody::Renamed(name) => B::Renamed(wire::RoomRenamed { name: name.clone() }),
        EntryBody::RoleChanged(u, r) => B::RoleChanged(wire::RoleChanged { user_id: u.0, role: role(*r) }),
    };
    wire::RoomEntry {
        room_id: e.room.0,
        seq: e.seq,
        id: e.id,
        sender_id: e.sender.0,
        sent_at_ms: e.sent_at_ms,
        body: Some(body),
    }
}

fn member(m: &MemberRecord) -> wire::Member {
    wire::Member {
        user_id: m.user.0,
        username: m.username.clone(),
        role: role(m.role),
        delivered_up_to_seq: m.delivered_up_to_seq,
        read_up_to_seq: m.read_up_to_seq,
    }
}

fn room(s: &RoomSummary) -> wire::Room {
    wire::Room {
        room_id: s.meta.id.0,
        kind: room_kind(s.meta.kind),
        name: s.meta.name.clone(),
        members: s.members.iter().map(member).collect(),
        last_seq: s.last_seq,
        last_entry: s.last_entry.as_ref().map(entry),
        unread_count: s.unread_count,
        read_up_to_seq: s.read_up_to_seq,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{RoomId, TextMessage, UserId};

    fn text_entry(seq: u64, text: &str) -> StreamEvent {
        let message = TextMessage { text: text.into(), client_msg_id: format!("c{seq}"), ..Default::default() };
        StreamEvent::Entry(Arc::new(RoomEntry {
            room: RoomId(7),
            seq,
            id: seq << 20,
            sender: UserId(3),
            sent_at_ms: 1_700_000_000_000,
            body: EntryBody::Text(message),
            encoded: Default::default(),
        }))
    }

    fn written(write: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut dst = BytesMut::new();
        write(&mut dst);
        dst
    }

    #[test]
    fn an_entry_encoded_once_gives_every_member_the_bytes_of_its_own_frame() {
        let long = "é".repeat(5000);
        let renamed = StreamEvent::Entry(Arc::new(RoomEntry {
            room: RoomId(1),
            seq: 9,
            id: 9,
            sender: UserId(1),
            sent_at_ms: 0,
            body: EntryBody::Renamed("new name".into()),
            encoded: Default::default(),
        }));
        for event in [text_entry(1, "hi"), text_entry(2, ""), text_entry(300, &long), renamed] {
            // The same shared entry at several positions: the first write fills the cache.
            for pos in [0, 1, 127, 128, 300_000, u64::MAX] {
                for encoding in [Encoding::Protobuf, Encoding::Json] {
                    let expected = written(|dst| write_frame(encoding, &event_frame(pos, &event), dst));
                    let spliced = written(|dst| write_event(encoding, pos, &event, dst));
                    assert_eq!(spliced, expected, "pos {pos}, {encoding:?}");
                }
            }
        }
    }
}

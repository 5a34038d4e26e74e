//! Client frames to domain requests. Everything a client can get wrong is caught here or in the
//! actors, and answered with a typed error carrying the request id when it could be read.

use prost::Message;
use tidings_proto::Encoding;
use tidings_proto::v1::{
    ClientFrame, FollowList as WireFollowList, HistoryRequest, PushPlatform, ReceiptKind, Role as WireRole,
    SetPushTokenRequest, client_frame::Request as Wire,
};

use crate::actors::{RoomOp, RoomWrite};
use crate::domain::error::{Code, DomainError};
use crate::domain::{
    CommentId, DomainResult, FollowList, MediaId, Platform, PostId, ReceiptKind as DomainReceiptKind, Role, RoomId,
    UserId,
};
use crate::services::{
    ActivityOp, FollowsOp, PostsOp, ProfileEdit, ProfilesOp, PushOp, PushTarget, Request, RoomsOp, SessionOp, StreamOp,
};
use crate::store::HistoryPage;

/// A history page without a limit gets this many entries.
const DEFAULT_HISTORY_PAGE: usize = 50;

/// A request that could not be decoded, with the request id if it could be read (else 0).
pub type Rejected = (u64, DomainError);

/// Decodes one frame's payload in the connection's encoding.
pub fn decode_frame(encoding: Encoding, payload: &[u8]) -> Result<ClientFrame, Rejected> {
    match encoding {
        Encoding::Protobuf => ClientFrame::decode(payload).map_err(|e| {
            (protobuf_request_id(payload), DomainError::new(Code::BadFrame, format!("not a protobuf ClientFrame: {e}")))
        }),
        Encoding::Json => serde_json::from_slice::<ClientFrame>(payload).map_err(|e| {
            (json_request_id(payload), DomainError::new(Code::BadFrame, format!("not a JSON ClientFrame: {e}")))
        }),
    }
}

/// The request id of a frame, without decoding the rest (for one refused before decoding): the
/// first protobuf field when it is `request_id` (encoders write fields in order), or a JSON
/// frame's `requestId`. 0 when there is none to read.
pub fn peek_request_id(encoding: Encoding, payload: &[u8]) -> u64 {
    match encoding {
        Encoding::Protobuf => protobuf_request_id(payload),
        Encoding::Json => json_request_id(payload),
    }
}

/// `request_id` is field 1, a varint: key byte 0x08, then the value.
fn protobuf_request_id(payload: &[u8]) -> u64 {
    let Some((&0x08, rest)) = payload.split_first() else { return 0 };
    let mut value = 0u64;
    for (i, &byte) in rest.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return value;
        }
    }
    0
}

/// The `requestId` of a JSON frame that failed to decode as a whole, if it has a readable one.
/// Only that field is kept; the rest is skipped without being built.
fn json_request_id(payload: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(u64),
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "requestId", alias = "request_id")]
        request_id: Option<Id>,
    }
    match serde_json::from_slice::<Head>(payload) {
        Ok(Head { request_id: Some(Id::Number(n)) }) => n,
        Ok(Head { request_id: Some(Id::Text(s)) }) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn room(id: u64) -> Result<RoomId, DomainError> {
    if id == 0 { Err(DomainError::invalid_field("room_id", "room_id is required")) } else { Ok(RoomId(id)) }
}

fn user(id: u64, field: &str) -> Result<UserId, DomainError> {
    if id == 0 { Err(DomainError::invalid_field(field, format!("{field} is required"))) } else { Ok(UserId(id)) }
}

fn media_ids(ids: &[String]) -> DomainResult<Vec<MediaId>> {
    ids.iter()
        .map(|id| {
            MediaId::parse(id)
                .ok_or_else(|| DomainError::invalid_field("media_ids", format!("media_ids: {id:?} is not a media id")))
        })
        .collect()
}

fn post(id: u64) -> Result<PostId, DomainError> {
    if id == 0 { Err(DomainError::invalid_field("post_id", "post_id is required")) } else { Ok(PostId(id)) }
}

fn users(ids: Vec<u64>, field: &str) -> Result<Vec<UserId>, DomainError> {
    ids.into_iter().map(|id| user(id, field)).collect()
}

fn history_page(h: &HistoryRequest, max: usize) -> Result<HistoryPage, DomainError> {
    let limit = match h.limit as usize {
        0 => DEFAULT_HISTORY_PAGE.min(max),
        n => n.min(max),
    };
    match (h.before_seq, h.after_seq) {
        (None, None) => Ok(HistoryPage::Latest { limit }),
        (Some(before), None) => Ok(HistoryPage::Before { seq: before, limit }),
        (None, Some(after)) => Ok(HistoryPage::After { seq: after, limit }),
        (Some(_), Some(_)) => Err(DomainError::invalid("give before_seq or after_seq, not both")),
    }
}

/// Longest push token accepted (APNs tokens are 64 hex digits, FCM tokens ~160 characters).
const MAX_PUSH_TOKEN_CHARS: usize = 1024;
const MAX_APP_ID_CHARS: usize = 255;
const MAX_LOCALE_CHARS: usize = 35;

fn push_target(r: SetPushTokenRequest) -> Result<PushTarget, DomainError> {
    let platform = match PushPlatform::try_from(r.platform) {
        Ok(PushPlatform::Ios) => Platform::Ios,
        Ok(PushPlatform::Android) => Platform::Android,
        _ => return Err(DomainError::invalid("platform must be PUSH_PLATFORM_IOS or PUSH_PLATFORM_ANDROID")),
    };
    let token = r.token.trim();
    if token.is_empty() || token.chars().count() > MAX_PUSH_TOKEN_CHARS || token.chars().any(char::is_whitespace) {
        return Err(DomainError::invalid(format!(
            "token must be 1 to {MAX_PUSH_TOKEN_CHARS} characters without spaces"
        )));
    }
    // What the providers issue: APNs device tokens are hex (32 bytes today; Apple says the length
    // may grow), FCM registration tokens are long strings of URL-safe characters and ':'.
    match platform {
        Platform::Ios
            if !(64..=MAX_PUSH_TOKEN_CHARS).contains(&token.len())
                || !token.len().is_multiple_of(2)
                || !token.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            return Err(DomainError::invalid("an APNs device token is hexadecimal, at least 64 digits"));
        }
        Platform::Android
            if token.len() < 32
                || !token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':')) =>
        {
            return Err(DomainError::invalid("an FCM registration token is at least 32 of A-Z a-z 0-9 _ - :"));
        }
        _ => {}
    }
    if platform == Platform::Ios && r.app_id.trim().is_empty() {
        return Err(DomainError::invalid("app_id (the APNs topic, your bundle id) is required for iOS"));
    }
    if r.app_id.chars().count() > MAX_APP_ID_CHARS || r.locale.chars().count() > MAX_LOCALE_CHARS {
        return Err(DomainError::invalid(format!(
            "app_id has at most {MAX_APP_ID_CHARS} characters and locale at most {MAX_LOCALE_CHARS}"
        )));
    }
    Ok(PushTarget {
        platform,
        token: token.to_owned(),
        app_id: r.app_id.trim().to_owned(),
        locale: r.locale,
        sandbox: r.sandbox,
    })
}

/// Turns a decoded frame into a domain request.
pub fn to_request(frame: ClientFrame, max_history_page: usize) -> Result<(u64, Request), Rejected> {
    let id = frame.request_id;
    let Some(wire) = frame.request else {
        return Err((id, DomainError::new(Code::UnknownRequest, "the frame carries no request this server knows")));
    };
    let request = convert(wire, max_history_page).map_err(|e| (id, e))?;
    Ok((id, request))
}

fn convert(wire: Wire, max_history_page: usize) -> Result<Request, DomainError> {
    let room_op = |room_id: u64, op: RoomOp| Ok(Request::Room { room: room(room_id)?, op });
    let write = |room_id: u64, write: RoomWrite| room_op(room_id, RoomOp::Write(write));
    match wire {
        Wire::Sync(s) => {
            let epoch = (!s.epoch.is_empty()).then_some(s.epoch);
            Ok(Request::Stream(StreamOp::Sync { after_pos: s.after_pos, epoch }))
        }
        Wire::Ack(a) => Ok(Request::Stream(StreamOp::Ack { pos: a.pos })),
        Wire::Ping(_) => Ok(Request::Session(SessionOp::Ping)),
        Wire::Reauthenticate(r) => Ok(Request::Session(SessionOp::Reauthenticate { access_token: r.access_token })),
        Wire::CreateDirect(c) => Ok(Request::Rooms(RoomsOp::CreateDirect { peer: user(c.peer_id, "peer_id")? })),
        Wire::CreateGroup(c) => {
            Ok(Request::Rooms(RoomsOp::CreateGroup { name: c.name, members: users(c.member_ids, "member_ids")? }))
        }
        Wire::ListRooms(_) => Ok(Request::Rooms(RoomsOp::List)),
        Wire::Presence(p) => Ok(Request::Presence { users: users(p.user_ids, "user_ids")? }),
        Wire::AddMembers(a) => write(a.room_id, RoomWrite::AddMembers(users(a.user_ids, "user_ids")?)),
        Wire::RemoveMember(r) => write(r.room_id, RoomWrite::RemoveMember(user(r.user_id, "user_id")?)),
        Wire::LeaveRoom(l) => write(l.room_id, RoomWrite::Leave),
        Wire::RenameRoom(r) => write(r.room_id, RoomWrite::Rename(r.name)),
        Wire::SetRole(s) => {
            let role = match WireRole::try_from(s.role) {
                Ok(WireRole::Member) => Role::Member,
                Ok(WireRole::Admin) => Role::Admin,
                Ok(WireRole::Owner) => Role::Owner,
                _ => return Err(DomainError::invalid("role must be ROLE_MEMBER or ROLE_ADMIN")),
            };
            write(s.room_id, RoomWrite::SetRole(user(s.user_id, "user_id")?, role))
        }
        // Without a client message id a retry would store the message twice.
        Wire::SendMessage(m) if m.client_msg_id.trim().is_empty() => Err(DomainError::invalid_field(
            "client_msg_id",
            "client_msg_id is required: a fresh id per message makes retries safe",
        )),
        Wire::SendMessage(m) => {
            let media = media_ids(&m.media_ids)?;
            let send =
                RoomWrite::Send { client_msg_id: m.client_msg_id, text: m.text, reply_to_seq: m.reply_to_seq, media };
            write(m.room_id, send)
        }
        Wire::EditMessage(e) => write(e.room_id, RoomWrite::Edit { seq: e.seq, text: e.text }),
        Wire::DeleteMessage(d) => write(d.room_id, RoomWrite::Delete { seq: d.seq }),
        Wire::History(h) => {
            let page = history_page(&h, max_history_page)?;
            room_op(h.room_id, RoomOp::History(page))
        }
        Wire::Typing(t) => room_op(t.room_id, RoomOp::Typing { active: t.active }),
        Wire::Receipt(r) => {
            let kind = match ReceiptKind::try_from(r.kind) {
                Ok(ReceiptKind::Delivered) => DomainReceiptKind::Delivered,
                Ok(ReceiptKind::Read) => DomainReceiptKind::Read,
                _ => return Err(DomainError::invalid("kind must be RECEIPT_KIND_DELIVERED or RECEIPT_KIND_READ")),
            };
            room_op(r.room_id, RoomOp::Receipt { kind, up_to_seq: r.up_to_seq })
        }
        Wire::SetPushToken(r) => Ok(Request::Push(PushOp::SetToken(push_target(r)?))),
        Wire::ClearPushToken(_) => Ok(Request::Push(PushOp::ClearToken)),
        Wire::MuteRoom(m) => {
            Ok(Request::Push(PushOp::MuteRoom { room: room(m.room_id)?, until_ms: m.until_ms.max(0) }))
        }
        Wire::SetDoNotDisturb(d) => Ok(Request::Push(PushOp::SetDoNotDisturb { until_ms: d.until_ms.max(0) })),
        Wire::SetHidePreviews(h) => Ok(Request::Push(PushOp::SetHidePreviews { hide: h.hide_previews })),
        Wire::SetProfile(p) => Ok(Request::Profiles(ProfilesOp::Set(ProfileEdit {
            display_name: p.display_name,
            bio: p.bio,
            avatar: p.avatar_media_id,
            birthday: p.birthday,
            private: p.private,
        }))),
        Wire::GetProfiles(g) => {
            Ok(Request::Profiles(ProfilesOp::Get { users: users(g.user_ids, "user_ids")?, usernames: g.usernames }))
        }
        Wire::SearchUsers(s) => Ok(Request::Profiles(ProfilesOp::Search { prefix: s.prefix, limit: s.limit })),
        Wire::Follow(f) => Ok(Request::Follows(FollowsOp::Follow(user(f.user_id, "user_id")?))),
        Wire::Unfollow(f) => Ok(Request::Follows(FollowsOp::Unfollow(user(f.user_id, "user_id")?))),
        Wire::AnswerFollowRequest(a) => {
            Ok(Request::Follows(FollowsOp::Answer { user: user(a.user_id, "user_id")?, approve: a.approve }))
        }
        Wire::RemoveFollower(r) => Ok(Request::Follows(FollowsOp::RemoveFollower(user(r.user_id, "user_id")?))),
        Wire::Block(b) => Ok(Request::Follows(FollowsOp::Block(user(b.user_id, "user_id")?))),
        Wire::Unblock(b) => Ok(Request::Follows(FollowsOp::Unblock(user(b.user_id, "user_id")?))),
        Wire::CreatePost(p) => {
            let media = media_ids(&p.media_ids)?;
            let location = p.location.map(|l| (l.lat, l.lng));
            let create = PostsOp::Create { client_post_id: p.client_post_id, media, caption: p.caption, location };
            Ok(Request::Posts(create))
        }
        Wire::DeletePost(d) => Ok(Request::Posts(PostsOp::Delete(post(d.post_id)?))),
        Wire::GetPost(g) => Ok(Request::Posts(PostsOp::Get(post(g.post_id)?))),
        Wire::ListPosts(l) => {
            let author = user(l.user_id, "user_id")?;
            Ok(Request::Posts(PostsOp::List { author, cursor: l.cursor, limit: l.limit }))
        }
        Wire::Feed(f) => Ok(Request::Posts(PostsOp::Feed { cursor: f.cursor, limit: f.limit })),
        Wire::LikePost(l) => Ok(Request::Posts(PostsOp::Like { post: post(l.post_id)?, on: true })),
        Wire::UnlikePost(l) => Ok(Request::Posts(PostsOp::Like { post: post(l.post_id)?, on: false })),
        Wire::Comment(c) => Ok(Request::Posts(PostsOp::Comment {
            post: post(c.post_id)?,
            client_comment_id: c.client_comment_id,
            text: c.text,
        })),
        Wire::DeleteComment(d) => {
            if d.comment_id == 0 {
                return Err(DomainError::invalid_field("comment_id", "comment_id is required"));
            }
            Ok(Request::Posts(PostsOp::DeleteComment { post: post(d.post_id)?, comment: CommentId(d.comment_id) }))
        }
        Wire::ListLikes(l) => {
            Ok(Request::Posts(PostsOp::Likers { post: post(l.post_id)?, cursor: l.cursor, limit: l.limit }))
        }
        Wire::ListComments(l) => {
            Ok(Request::Posts(PostsOp::Comments { post: post(l.post_id)?, cursor: l.cursor, limit: l.limit }))
        }
        Wire::MarkActivitySeen(m) => Ok(Request::Activity(ActivityOp::Seen { up_to_pos: m.up_to_pos })),
        Wire::ActivityStatus(_) => Ok(Request::Activity(ActivityOp::Status)),
        Wire::MuteActivity(m) => Ok(Request::Activity(ActivityOp::Mute { until_ms: m.until_ms.max(0) })),
        Wire::ListFollows(l) => {
            let list = match WireFollowList::try_from(l.list) {
                Ok(WireFollowList::Followers) => FollowList::Followers,
                Ok(WireFollowList::Following) => FollowList::Following,
                Ok(WireFollowList::Requests) => FollowList::Requests,
                Ok(WireFollowList::Blocked) => FollowList::Blocked,
                _ => return Err(DomainError::invalid_field("list", "list must be one of FOLLOW_LIST_*")),
            };
            let user = (l.user_id != 0).then_some(UserId(l.user_id));
            Ok(Request::Follows(FollowsOp::List { user, list, cursor: l.cursor, limit: l.limit }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_frames_decode_with_string_or_number_ids() {
        let frame = br#"{"requestId":"7","sendMessage":{"roomId":"42","clientMsgId":"a","text":"hi"}}"#;
        let (id, request) = to_request(decode_frame(Encoding::Json, frame).unwrap(), 100).unwrap();
        assert_eq!(id, 7);
        assert_eq!(
            request,
            Request::Room {
                room: RoomId(42),
                op: RoomOp::Write(RoomWrite::Send {
                    client_msg_id: "a".into(),
                    text: "hi".into(),
                    reply_to_seq: 0,
                    media: Vec::new()
                })
            }
        );
        let frame = br#"{"requestId":8,"ping":{}}"#;
        assert_eq!(
            to_request(decode_frame(Encoding::Json, frame).unwrap(), 100).unwrap(),
            (8, Request::Session(SessionOp::Ping))
        );
    }

    #[test]
    fn request_ids_are_peeked_without_decoding_the_rest() {
        let frame = ClientFrame { request_id: 1 << 40, request: None }.encode_to_vec();
        assert_eq!(peek_request_id(Encoding::Protobuf, &frame), 1 << 40);
        assert_eq!(peek_request_id(Encoding::Protobuf, &[]), 0);
        assert_eq!(peek_request_id(Encoding::Protobuf, &[0x08, 0x80]), 0, "a truncated varint");
        assert_eq!(peek_request_id(Encoding::Protobuf, &[0x12, 0x00]), 0, "another field first");
        assert_eq!(peek_request_id(Encoding::Json, br#"{"requestId":"12","sendMessage":{"x":[1,2]}}"#), 12);
        assert_eq!(peek_request_id(Encoding::Json, br#"{"ping":{},"request_id":5}"#), 5);
        assert_eq!(peek_request_id(Encoding::Json, br#"{"requestId":{"a":1}}"#), 0);
        assert_eq!(peek_request_id(Encoding::Json, b"[1,2"), 0);
    }

    #[test]
    fn bad_frames_are_typed_errors_with_the_request_id_when_readable() {
        let (id, e) = decode_frame(Encoding::Json, br#"{"requestId":9,"sendMessage":{"roomId":"x"}}"#).unwrap_err();
        assert_eq!((id, e.code), (9, Code::BadFrame));
        let (id, e) = decode_frame(Encoding::Json, b"not json").unwrap_err();
        assert_eq!((id, e.code), (0, Code::BadFrame));
        let (_, e) = decode_frame(Encoding::Protobuf, &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.code, Code::BadFrame);
        // A protobuf frame broken after its request id still names the request it answers.
        let mut broken = ClientFrame { request_id: 300, request: None }.encode_to_vec();
        broken.extend_from_slice(&[0x12, 0x7f, 0x01]);
        let (id, e) = decode_frame(Encoding::Protobuf, &broken).unwrap_err();
        assert_eq!((id, e.code), (300, Code::BadFrame));
        let (id, e) = to_request(ClientFrame { request_id: 3, request: None }, 100).unwrap_err();
        assert_eq!((id, e.code), (3, Code::UnknownRequest));
        let frame = br#"{"requestId":4,"sendMessage":{"text":"hi"}}"#;
        let (id, e) = to_request(decode_frame(Encoding::Json, frame).unwrap(), 100).unwrap_err();
        assert_eq!((id, e.code), (4, Code::InvalidArgument));
    }

    /// A bounded fuzz of the decoders: random and mutated inputs never panic, and every rejection is
    /// a BAD_FRAME, UNKNOWN_REQUEST or INVALID_ARGUMENT. (The `fuzz/` crate runs the same target
    /// under libFuzzer for longer.)
    #[test]
    fn decoders_survive_random_and_mutated_input() {
        let seeds: Vec<Vec<u8>> = vec![
            ClientFrame {
                request_id: 1,
                request: Some(Wire::SendMessage(tidings_proto::v1::SendMessageRequest {
                    room_id: 5,
                    client_msg_id: "c".into(),
                    text: "hello".into(),
                    reply_to_seq: 0,
                    media_ids: Vec::new(),
                })),
            }
            .encode_to_vec(),
            br#"{"requestId":"1","history":{"roomId":"5","beforeSeq":"9","limit":10}}"#.to_vec(),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].clone();
            match next() % 3 {
                0 => input = (0..next() % 64).map(|_| next() as u8).collect(),
                1 => {
                    for _ in 0..1 + next() % 4 {
                        if !input.is_empty() {
                            let i = (next() as usize) % input.len();
                            input[i] = next() as u8;
                        }
                    }
                }
                _ => input.truncate((next() as usize) % (input.len() + 1)),
            }
            for encoding in [Encoding::Protobuf, Encoding::Json] {
                let result = decode_frame(encoding, &input).and_then(|f| to_request(f, 100));
                if let Err((_, e)) = result {
                    assert!(matches!(e.code, Code::BadFrame | Code::UnknownRequest | Code::InvalidArgument), "{e}");
                }
            }
        }
    }
}

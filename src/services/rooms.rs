//! Rooms: creating and listing them, and handing each request about one room to its actor.
//!
//! A room being created has no actor yet and no order to keep, so creation goes straight to the
//! store; the new room's actor starts on its first request. A request about an existing room goes
//! to the room's actor on the node that owns the room (`Peers::forward`), in the order the
//! connection read it.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use super::RoomsOp;
use crate::actors::{ActorRequest, Hub, Replier, ReplyBody, RoomOp, RoomRequest, RoomWrite, SentAck};
use crate::config::GroupAdds;
use crate::domain::{
    DeviceId, DomainError, DomainResult, EntryBody, MediaId, RoomEntry, RoomId, RoomKind, SYSTEM_USER, StreamEvent,
    UserId, new_random_id, now_ms, room_name, time_ordered_id,
};
use crate::store::{CreateRoomOutcome, NewRoom, NewUser};

pub async fn handle(hub: &Arc<Hub>, me: UserId, op: RoomsOp) -> DomainResult<ReplyBody> {
    match op {
        RoomsOp::CreateDirect { peer } => create_direct(hub, me, peer).await,
        RoomsOp::CreateGroup { name, members } => create_group(hub, me, &name, members).await,
        RoomsOp::List => Ok(ReplyBody::Rooms(hub.store.rooms_of(me).await?)),
    }
}

/// Hands a request about `room` to the room's actor: on the node that owns the room, or here when
/// this node owns it or the owner cannot be reached. Awaits the hand-over, not the answer, so a
/// connection's requests to one room keep their order.
pub async fn request(hub: &Arc<Hub>, me: UserId, device: DeviceId, room: RoomId, op: RoomOp, replier: Replier) {
    let request = ActorRequest::Room { room, op };
    if let Some(forwarding) = hub.peers.as_ref().and_then(|peers| peers.forward(me, device, &request))
        && let Some(answer) = forwarding.await
    {
        return replier.reply(answer);
    }
    let ActorRequest::Room { room, op } = request;
    request_here(hub, me, room, op, replier).await;
}

/// A message from the app's backend (server API) into a room, sent by `SYSTEM_USER` (created on
/// first use): in every member's stream like any message, idempotent by `client_msg_id`.
pub async fn system_message(
    hub: &Arc<Hub>,
    room: RoomId,
    text: String,
    client_msg_id: String,
) -> DomainResult<SentAck> {
    let system = NewUser {
        id: SYSTEM_USER,
        username: "app:system".into(),
        password_hash: String::new(),
        created_at_ms: now_ms(),
    };
    match hub.store.create_user(system).await.map_err(DomainError::from) {
        Err(e) if e.code != crate::domain::Code::Conflict => return Err(e),
        _ => {}
    }
    let (answers, mut answer) = mpsc::channel(1);
    let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a fresh permit");
    let replier = Replier::new(0, answers, permit);
    let send = RoomWrite::Send { client_msg_id, text, reply_to_seq: 0, media: Vec::new() };
    request(hub, SYSTEM_USER, DeviceId(0), room, RoomOp::Write(send), replier).await;
    match answer.recv().await.map(|answer| answer.result) {
        Some(Ok(ReplyBody::Sent(ack))) => Ok(ack),
        Some(Err(e)) => Err(e),
        _ => Err(DomainError::internal()),
    }
}

/// A request forwarded by another node: handled by the actor on this node, whatever this node's
/// view of the owner (the sender's view decided).
pub async fn forwarded(hub: &Arc<Hub>, me: UserId, request: ActorRequest) -> DomainResult<ReplyBody> {
    let (answers, mut answer) = mpsc::channel(1);
    let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a fresh permit");
    let replier = Replier::new(0, answers, permit);
    match request {
        ActorRequest::Room { room, op } => request_here(hub, me, room, op, replier).await,
    }
    answer.recv().await.map_or_else(|| Err(DomainError::internal()), |answer| answer.result)
}

/// Hands a request to the room's actor on this node (loading the room if needed).
async fn request_here(hub: &Arc<Hub>, me: UserId, room: RoomId, op: RoomOp, replier: Replier) {
    let checked = match &op {
        RoomOp::Write(RoomWrite::AddMembers(users)) => {
            async {
                require_existing(hub, users.clone()).await?;
                require_addable(hub, me, users.clone()).await
            }
            .await
        }
        RoomOp::Write(RoomWrite::Send { media, .. }) if !media.is_empty() => require_visible(hub, me, media).await,
        _ => Ok(()),
    };
    if let Err(e) = checked {
        return replier.error(e);
    }
    match hub.registry.room(room, hub).await {
        Ok(addr) => {
            let _ = addr.send(RoomRequest { user: me, op, replier }).await;
        }
        Err(e) => replier.error(e),
    }
}

/// Every image exists and `me` may see it (uploaded it, or is in a room that shows it): an image id
/// seen elsewhere cannot be sent on to make it readable to others.
async fn require_visible(hub: &Arc<Hub>, me: UserId, media: &[MediaId]) -> DomainResult<()> {
    for &id in media {
        if hub.store.media(id).await?.is_none() {
            return Err(DomainError::not_found(format!("no media {id}: upload it first (POST /v1/media)")));
        }
        if !hub.store.may_see_media(id, me).await? {
            return Err(DomainError::forbidden(format!("you may not send media {id}")));
        }
    }
    Ok(())
}

/// Opens the direct room between `me` and `peer`, or returns the one they already have.
async fn create_direct(hub: &Arc<Hub>, me: UserId, peer: UserId) -> DomainResult<ReplyBody> {
    if peer == me {
        return Err(DomainError::invalid("a direct room needs another user"));
    }
    require_existing(hub, vec![peer]).await?;
    if hub.store.blocked_between(me, peer).await? {
        return Err(DomainError::forbidden("you cannot start a chat with this user"));
    }
    create(hub, me, RoomKind::Direct, String::new(), vec![me, peer]).await
}

/// Creates a group owned by `me` with `members` (and `me`).
async fn create_group(hub: &Arc<Hub>, me: UserId, name: &str, members: Vec<UserId>) -> DomainResult<ReplyBody> {
    let name = room_name(name, hub.limits.max_room_name_chars)?;
    let mut members = members;
    members.push(me);
    members.sort_unstable();
    members.dedup();
    if members.len() > hub.limits.max_group_members {
        return Err(DomainError::invalid(format!("a group has at most {} members", hub.limits.max_group_members)));
    }
    let others: Vec<UserId> = members.iter().copied().filter(|&u| u != me).collect();
    require_existing(hub, others.clone()).await?;
    require_addable(hub, me, others).await?;
    create(hub, me, RoomKind::Group, name, members).await
}

/// With `limits.group_adds = "contacts"`: fails with FORBIDDEN unless every one of `users` has
/// sent `me` a message.
async fn require_addable(hub: &Arc<Hub>, me: UserId, users: Vec<UserId>) -> DomainResult<()> {
    if hub.limits.group_adds == GroupAdds::Anyone || users.is_empty() {
        return Ok(());
    }
    let wrote = hub.store.wrote_to(me, users.clone()).await?;
    match users.iter().find(|u| !wrote.contains(u)) {
        Some(stranger) => Err(DomainError::forbidden(format!(
            "user {stranger} has not written to you; only people who have can be added to a group"
        ))),
        None => Ok(()),
    }
}

/// Fails with NOT_FOUND naming the first user that does not exist.
async fn require_existing(hub: &Arc<Hub>, users: Vec<UserId>) -> DomainResult<()> {
    let existing = hub.store.existing_users(users.clone()).await?;
    match users.iter().find(|u| !existing.contains(u)) {
        Some(missing) => Err(DomainError::not_found(format!("no user {missing}"))),
        None => Ok(()),
    }
}

async fn create(
    hub: &Arc<Hub>,
    me: UserId,
    kind: RoomKind,
    name: String,
    members: Vec<UserId>,
) -> DomainResult<ReplyBody> {
    let id = RoomId(new_random_id());
    let sent_at_ms = now_ms();
    let entry = Arc::new(RoomEntry {
        room: id,
        seq: 1,
        id: time_ordered_id(sent_at_ms),
        sender: me,
        sent_at_ms,
        body: EntryBody::Created { kind, name: name.clone(), members: members.clone() },
        encoded: Default::default(),
    });
    let new_room =
        NewRoom { id, kind, name: name.clone(), creator: me, members: members.clone(), entry: (*entry).clone() };
    let room = match hub.store.create_room(new_room).await? {
        CreateRoomOutcome::Created { positions } => {
            hub.deliver(&positions, &StreamEvent::Entry(entry));
            hub.webhooks.emit(crate::webhooks::WebhookEvent::room_created(id, kind, &name, me, &members));
            id
        }
        CreateRoomOutcome::DirectExists(existing) => existing,
    };
    let summary = hub.store.room_summary(room, me).await?.ok_or_else(DomainError::internal)?;
    Ok(ReplyBody::Room(Box::new(summary)))
}

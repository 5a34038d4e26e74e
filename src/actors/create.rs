//! Creating rooms. A room being created has no actor yet and no order to keep, so creation goes
//! straight to the store; the new room's actor starts on its first request.

use std::sync::Arc;

use super::room::validate_room_name;
use super::{Hub, ReplyBody};
use crate::config::GroupAdds;
use crate::domain::{
    EntryBody, RoomEntry, RoomId, RoomKind, StreamEvent, UserId, new_random_id, now_ms, time_ordered_id,
};
use crate::error::{ApiError, ApiResult};
use crate::store::{CreateRoomOutcome, NewRoom};

/// Opens the direct room between `me` and `peer`, or returns the one they already have.
pub async fn create_direct(hub: &Arc<Hub>, me: UserId, peer: UserId) -> ApiResult<ReplyBody> {
    if peer == me {
        return Err(ApiError::invalid("a direct room needs another user"));
    }
    require_existing(hub, vec![peer]).await?;
    create(hub, me, RoomKind::Direct, String::new(), vec![me, peer]).await
}

/// Creates a group owned by `me` with `members` (and `me`).
pub async fn create_group(hub: &Arc<Hub>, me: UserId, name: &str, members: Vec<UserId>) -> ApiResult<ReplyBody> {
    let name = validate_room_name(name, hub.limits.max_room_name_chars)?;
    let mut members = members;
    members.push(me);
    members.sort_unstable();
    members.dedup();
    if members.len() > hub.limits.max_group_members {
        return Err(ApiError::invalid(format!("a group has at most {} members", hub.limits.max_group_members)));
    }
    let others: Vec<UserId> = members.iter().copied().filter(|&u| u != me).collect();
    require_existing(hub, others.clone()).await?;
    require_addable(hub, me, others).await?;
    create(hub, me, RoomKind::Group, name, members).await
}

/// With `limits.group_adds = "contacts"`: fails with FORBIDDEN unless every one of `users` has
/// sent `me` a message.
pub async fn require_addable(hub: &Arc<Hub>, me: UserId, users: Vec<UserId>) -> ApiResult<()> {
    if hub.limits.group_adds == GroupAdds::Anyone || users.is_empty() {
        return Ok(());
    }
    let wrote = hub.store.wrote_to(me, users.clone()).await?;
    match users.iter().find(|u| !wrote.contains(u)) {
        Some(stranger) => Err(ApiError::forbidden(format!(
            "user {stranger} has not written to you; only people who have can be added to a group"
        ))),
        None => Ok(()),
    }
}

/// Fails with NOT_FOUND naming the first user that does not exist.
pub async fn require_existing(hub: &Arc<Hub>, users: Vec<UserId>) -> ApiResult<()> {
    let existing = hub.store.existing_users(users.clone()).await?;
    match users.iter().find(|u| !existing.contains(u)) {
        Some(missing) => Err(ApiError::not_found(format!("no user {missing}"))),
        None => Ok(()),
    }
}

async fn create(
    hub: &Arc<Hub>,
    me: UserId,
    kind: RoomKind,
    name: String,
    members: Vec<UserId>,
) -> ApiResult<ReplyBody> {
    let id = RoomId(new_random_id());
    let sent_at_ms = now_ms();
    let entry = Arc::new(RoomEntry {
        room: id,
        seq: 1,
        id: time_ordered_id(sent_at_ms),
        sender: me,
        sent_at_ms,
        body: EntryBody::Created { kind, name: name.clone(), members: members.clone() },
    });
    let new_room = NewRoom { id, kind, name, creator: me, members, entry: (*entry).clone() };
    let room = match hub.store.create_room(new_room).await? {
        CreateRoomOutcome::Created { positions } => {
            hub.deliver(&positions, &StreamEvent::Entry(entry));
            id
        }
        CreateRoomOutcome::DirectExists(existing) => existing,
    };
    let summary = hub.store.room_summary(room, me).await?.ok_or_else(ApiError::internal)?;
    Ok(ReplyBody::Room(Box::new(summary)))
}

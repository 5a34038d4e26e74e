//! Sends each decoded request to whatever answers it.
//!
//! Requests about one room go to that room's actor in the order the connection read them (the
//! connection awaits the hand-over, not the answer), so a client's sends to a room keep their order.
//! Reads that touch only the store run as their own tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tidings_proto::Encoding;
use tidings_proto::v1::ServerFrame;
use tidings_proto::v1::server_frame::Frame;

use super::codes::code_from_wire;
use super::decode::decode_frame;
use crate::actors::{
    Hub, PresenceInfo, Replier, ReplyBody, Request, RoomOp, RoomRequest, StreamAck, SyncFrom, UserEntry, create_direct,
    create_group, require_addable, require_existing,
};
use crate::auth::{AuthService, Authenticated};
use crate::domain::{ConnId, PushRegistration, RoomId, UserId, now_ms};
use crate::error::{ApiError, ApiResult};

/// Who is asking, on which connection.
pub struct Caller {
    pub hub: Arc<Hub>,
    pub auth: Authenticated,
    pub auth_service: Arc<AuthService>,
    /// When the connection's access token expires; a Reauthenticate moves it later.
    pub expires_at_ms: Arc<AtomicI64>,
    pub conn: ConnId,
    pub user_actor: UserEntry,
}

/// `sent` is the frame as the client sent it: in a cluster a room request owned by another node is
/// forwarded there (decoded again only then, so other requests pay nothing for it).
pub async fn dispatch(caller: &Caller, request: Request, replier: Replier, sent: (Encoding, &[u8])) {
    let hub = &caller.hub;
    let me = caller.auth.user;
    match request {
        Request::Ping => replier.reply(Ok(ReplyBody::Pong { server_time_ms: now_ms() })),
        Request::Reauthenticate { access_token } => {
            let (service, device, expiry) =
                (caller.auth_service.clone(), caller.auth.device, caller.expires_at_ms.clone());
            actix::spawn(async move {
                let fresh = service.authenticate(&access_token).await;
                replier.reply(match fresh {
                    Ok(fresh) if fresh.user == me && fresh.device == device => {
                        expiry.fetch_max(fresh.expires_at_ms, Ordering::AcqRel);
                        Ok(ReplyBody::Ok)
                    }
                    Ok(_) => Err(ApiError::forbidden("that token is for another device")),
                    Err(e) => Err(e),
                });
            });
        }
        Request::Sync { after_pos } => {
            // A failed hand-over drops the replier, which answers INTERNAL.
            let _ = caller.user_actor.addr.send(SyncFrom { conn: caller.conn, after_pos, replier }).await;
        }
        Request::Ack { pos } => {
            let _ = caller.user_actor.addr.send(StreamAck { conn: caller.conn, pos, replier }).await;
        }
        Request::CreateDirect { peer } => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(create_direct(&hub, me, peer).await) });
        }
        Request::CreateGroup { name, members } => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(create_group(&hub, me, &name, members).await) });
        }
        Request::ListRooms => {
            let hub = hub.clone();
            actix::spawn(async move {
                replier.reply(hub.store.rooms_of(me).await.map(ReplyBody::Rooms).map_err(Into::into));
            });
        }
        Request::Presence { users } => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(presence(&hub, me, users).await) });
        }
        Request::SetPushToken(target) if !hub.push.allows_app(&target.app_id) => {
            replier.error(ApiError::invalid("this server sends no pushes for that app_id"));
        }
        Request::SetPushToken(target) => {
            let registration = PushRegistration {
                user: me,
                device: caller.auth.device,
                platform: target.platform,
                token: target.token,
                app_id: target.app_id,
                locale: target.locale,
                sandbox: target.sandbox,
            };
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(ok(hub.store.set_push_token(registration).await)) });
        }
        Request::ClearPushToken => {
            let (hub, device) = (hub.clone(), caller.auth.device);
            actix::spawn(async move { replier.reply(ok(hub.store.clear_push_token(me, device).await)) });
        }
        Request::MuteRoom { room, until_ms } => {
            let hub = hub.clone();
            actix::spawn(async move {
                let muted = async {
                    hub.store.room_summary(room, me).await?.ok_or_else(ApiError::not_a_member)?;
                    hub.store.set_room_mute(me, room, until_ms).await?;
                    Ok(ReplyBody::Ok)
                };
                replier.reply(muted.await);
            });
        }
        Request::SetDoNotDisturb { until_ms } => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(ok(hub.store.set_do_not_disturb(me, until_ms).await)) });
        }
        Request::SetHidePreviews { hide } => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(ok(hub.store.set_hide_previews(me, hide).await)) });
        }
        Request::Room { room, op } => {
            if let Some(cluster) = &hub.cluster
                && let Some(owner) = cluster.remote_owner(room)
                && let Ok(frame) = decode_frame(sent.0, sent.1)
            {
                // Awaited, not spawned: a client's requests to one room keep their order.
                if let Some(answer) = cluster.forward(&owner, me, caller.auth.device, frame).await {
                    return relay(replier, answer);
                }
                // The owner is unreachable: handle it here (the store fences seqs).
            }
            room_request(hub, me, room, op, replier).await;
        }
    }
}

/// Hands a request to the room's actor on this node (loading the room if needed).
pub async fn room_request(hub: &Arc<Hub>, me: UserId, room: RoomId, op: RoomOp, replier: Replier) {
    if let RoomOp::AddMembers(users) = &op {
        let checked = async {
            require_existing(hub, users.clone()).await?;
            require_addable(hub, me, users.clone()).await
        };
        if let Err(e) = checked.await {
            return replier.error(e);
        }
    }
    match hub.registry.room(room, hub).await {
        Ok(addr) => {
            let _ = addr.send(RoomRequest { user: me, op, replier }).await;
        }
        Err(e) => replier.error(e),
    }
}

/// Passes on the answer another node built.
fn relay(replier: Replier, answer: ServerFrame) {
    match answer.frame {
        Some(Frame::Reply(reply)) => replier.reply(Ok(ReplyBody::Relayed(Box::new(reply)))),
        Some(Frame::Error(e)) => replier.error(ApiError {
            code: code_from_wire(e.code),
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }),
        _ => replier.error(ApiError::internal()),
    }
}

fn ok(result: crate::store::StoreResult<()>) -> ApiResult<ReplyBody> {
    result.map(|()| ReplyBody::Ok).map_err(Into::into)
}

/// Presence of the asked-for users who share a room with `me`; the others are left out.
async fn presence(hub: &Arc<Hub>, me: UserId, users: Vec<UserId>) -> ApiResult<ReplyBody> {
    let contacts = hub.store.contacts_of(me).await?;
    let visible: Vec<UserId> = users.into_iter().filter(|u| contacts.contains(u)).collect();
    let last_seen = hub.store.last_seen(visible.clone()).await?;
    let infos = visible
        .into_iter()
        .map(|user| PresenceInfo {
            user,
            online: hub.registry.is_online(user),
            last_seen_ms: last_seen.iter().find(|(u, _)| *u == user).map_or(0, |(_, at)| *at),
        })
        .collect::<Vec<_>>();
    let mut infos = infos;
    if let Some(cluster) = &hub.cluster {
        for info in infos.iter_mut().filter(|i| !i.online) {
            info.online = cluster.online_elsewhere(info.user).await;
        }
    }
    Ok(ReplyBody::Presence(infos))
}

//! Routes each decoded request to what answers it; decides nothing (the rules are in `services`).
//!
//! Requests about one room go to that room's actor in the order the connection read them (the
//! connection awaits the hand-over, not the answer), so a client's sends to a room keep their order.
//! Requests that touch only the store run as their own tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::actors::{Hub, Replier, ReplyBody, StreamAck, SyncFrom, UserEntry};
use crate::auth::{AuthService, Authenticated};
use crate::domain::{ConnId, now_ms};
use crate::services::{self, Request, SessionOp, StreamOp};

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

pub async fn dispatch(caller: &Caller, request: Request, replier: Replier) {
    let hub = &caller.hub;
    let (me, device) = (caller.auth.user, caller.auth.device);
    match request {
        Request::Session(SessionOp::Ping) => replier.reply(Ok(ReplyBody::Pong { server_time_ms: now_ms() })),
        Request::Session(SessionOp::Reauthenticate { access_token }) => {
            let (auth, current, expiry) = (caller.auth_service.clone(), caller.auth, caller.expires_at_ms.clone());
            actix::spawn(async move {
                let fresh = services::session::reauthenticate(&auth, &current, &access_token).await;
                replier.reply(fresh.map(|expires_at_ms| {
                    expiry.fetch_max(expires_at_ms, Ordering::AcqRel);
                    ReplyBody::Ok
                }));
            });
        }
        // A failed hand-over drops the replier, which answers INTERNAL.
        Request::Stream(StreamOp::Sync { after_pos, epoch }) => {
            let _ = caller.user_actor.addr.send(SyncFrom { conn: caller.conn, after_pos, epoch, replier }).await;
        }
        Request::Stream(StreamOp::Ack { pos }) => {
            let _ = caller.user_actor.addr.send(StreamAck { conn: caller.conn, pos, replier }).await;
        }
        Request::Rooms(op) => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(services::rooms::handle(&hub, me, op).await) });
        }
        // Awaited, not spawned: a client's requests to one room keep their order.
        Request::Room { room, op } => services::rooms::request(hub, me, device, room, op, replier).await,
        Request::Presence { users } => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(services::presence::presence(&hub, me, users).await) });
        }
        Request::Profiles(op) => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(services::profiles::handle(&hub, me, op).await) });
        }
        Request::Follows(op) => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(services::follows::handle(&hub, me, op).await) });
        }
        Request::Posts(op) => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(services::posts::handle(&hub, me, op).await) });
        }
        Request::Activity(op) => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(services::activity::handle(&hub, me, op).await) });
        }
        Request::Push(op) => {
            let hub = hub.clone();
            actix::spawn(async move { replier.reply(services::push_prefs::handle(&hub, me, device, op).await) });
        }
    }
}

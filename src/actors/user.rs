//! One actor per user with at least one connection on this node.
//!
//! Each connection has its own position in the user's stream, kept by its `Cursor`
//! (`cursor.rs`: the states, the invariant and their tests). This actor feeds the cursors live
//! events and store pages, and does what they ask next: read a page, wait for a missing event,
//! close a connection that fell too far behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use tokio::sync::mpsc;

use super::cursor::{Cursor, GAP_WAIT, Next};
use super::{Ephemeral, Hub, Notice, Outbound, OutboundBudget, PresenceInfo, Replier, ReplyBody};
use crate::domain::{Code, ConnId, DeviceId, DomainError, StreamEvent, UserId, now_ms};
use crate::metrics::METRICS;

/// How soon a connection whose queue was full is tried again.
const FULL_QUEUE_RETRY: Duration = Duration::from_millis(50);
/// How soon a failed store read is tried again.
const STORE_RETRY: Duration = Duration::from_secs(1);
const MAILBOX_CAPACITY: usize = 4096;
const TICK: Duration = Duration::from_secs(1);

/// A connection joins its user's actor. Replies `Ok`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach {
    pub conn: ConnId,
    pub device: DeviceId,
    pub outbound: mpsc::Sender<Outbound>,
    /// The bytes of events in `outbound`, shared with the connection that writes them.
    pub budget: Arc<OutboundBudget>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub conn: ConnId,
}

/// The client's Sync: stream from after `after_pos`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SyncFrom {
    pub conn: ConnId,
    pub after_pos: u64,
    /// The stream epoch `after_pos` belongs to, when the client knows it.
    pub epoch: Option<String>,
    pub replier: Replier,
}

/// The client's Ack: it stored everything up to `pos`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StreamAck {
    pub conn: ConnId,
    pub pos: u64,
    pub replier: Replier,
}

/// A live event or an ephemeral one, from a room's fan-out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Push(pub Outbound);

/// Close the connections of these devices, telling them why.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Kick {
    pub devices: Vec<DeviceId>,
    pub reason: KickReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum KickReason {
    /// The devices were logged out (or revoked): `LOGGED_OUT`.
    #[default]
    LoggedOut,
    /// The app's backend closed them; they stay logged in: `DISCONNECTED`.
    Disconnected,
}

/// The user's live connections on this node.
#[derive(Message)]
#[rtype(result = "Vec<LiveConnection>")]
pub struct ListConnections;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConnection {
    pub conn: ConnId,
    pub device: DeviceId,
    pub connected_at_ms: i64,
}

struct Conn {
    device: DeviceId,
    cursor: Cursor,
    connected_at_ms: i64,
}

pub struct UserActor {
    user: UserId,
    hub: Arc<Hub>,
    missed: Arc<AtomicBool>,
    conns: HashMap<ConnId, Conn>,
    /// An ack has cancelled this user's delivered pushes in the store during this actor's life.
    acked_once: bool,
}

impl UserActor {
    pub fn new(user: UserId, hub: Arc<Hub>, missed: Arc<AtomicBool>) -> Self {
        Self { user, hub, missed, conns: HashMap::new(), acked_once: false }
    }

    /// Does what a connection's cursor asked for next.
    fn follow_up(&mut self, conn_id: ConnId, next: Next, ctx: &mut Context<Self>) {
        match next {
            Next::Nothing => {}
            Next::Read => self.read_page(conn_id, ctx),
            Next::ReadSoon => {
                ctx.run_later(FULL_QUEUE_RETRY, move |act, ctx| act.read_page(conn_id, ctx));
            }
            Next::ReadLater => {
                ctx.run_later(STORE_RETRY, move |act, ctx| act.read_page(conn_id, ctx));
            }
            Next::CheckGap => {
                ctx.run_later(GAP_WAIT, move |act, ctx| act.check_gap(conn_id, ctx));
            }
            Next::Resync => {
                tracing::info!(user = %self.user, conn = %conn_id, "slow consumer told to resync");
                // Dropping our sender closes the connection's queue: it sends RESYNC_REQUIRED and closes.
                self.remove_conn(conn_id, ctx);
            }
        }
    }

    fn on_event(&mut self, pos: u64, event: StreamEvent, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut follow = Vec::new();
        for (&id, conn) in self.conns.iter_mut() {
            match conn.cursor.offer(pos, &event, now) {
                Next::Nothing => {}
                next => follow.push((id, next)),
            }
        }
        for (id, next) in follow {
            self.follow_up(id, next, ctx);
        }
    }

    fn check_gap(&mut self, conn_id: ConnId, ctx: &mut Context<Self>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let next = conn.cursor.check_gap(Instant::now());
        self.follow_up(conn_id, next, ctx);
    }

    /// Reads the next page of a catching-up connection's stream from the store.
    fn read_page(&mut self, conn_id: ConnId, ctx: &mut Context<Self>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let Some(after) = conn.cursor.start_read() else { return };
        let store = self.hub.store.clone();
        let user = self.user;
        let limit = self.hub.limits.catch_up_page_events.max(1);
        let read = async move { store.events_after(user, after, limit).await };
        ctx.spawn(read.into_actor(self).map(move |result, act, ctx| {
            let grace = Duration::from_secs(act.hub.limits.slow_consumer_grace_secs);
            let Some(conn) = act.conns.get_mut(&conn_id) else { return };
            let next = conn.cursor.on_page(after, result, Instant::now(), grace);
            act.follow_up(conn_id, next, ctx);
        }));
    }

    fn remove_conn(&mut self, conn_id: ConnId, ctx: &mut Context<Self>) {
        if self.conns.remove(&conn_id).is_some() && self.conns.is_empty() {
            self.announce_presence(false);
            ctx.stop();
        }
    }

    /// Tells everyone who shares a room with this user that it came online or went offline.
    fn announce_presence(&self, online: bool) {
        let hub = self.hub.clone();
        let user = self.user;
        // Detached from the actor: an offline announcement outlives the actor that made it.
        actix::spawn(async move {
            let last_seen_ms = now_ms();
            if !online && let Err(e) = hub.store.set_last_seen(user, last_seen_ms).await {
                tracing::warn!(%user, error = %e, "could not record last seen");
            }
            // Online or offline for the backend means on every node: a session elsewhere says not.
            let kind = if online { "user.online" } else { "user.offline" };
            if hub.webhooks.wants(kind) {
                let elsewhere = match &hub.peers {
                    Some(peers) => peers.online_elsewhere(user).await,
                    None => false,
                };
                if !elsewhere {
                    let event = match online {
                        true => crate::webhooks::WebhookEvent::user_online(user),
                        false => crate::webhooks::WebhookEvent::user_offline(user),
                    };
                    hub.webhooks.emit(event);
                }
            }
            match hub.store.contacts_of(user).await {
                Ok(contacts) => {
                    hub.send_ephemeral(&contacts, Ephemeral::Presence(PresenceInfo { user, online, last_seen_ms }))
                }
                Err(e) => tracing::warn!(%user, error = %e, "could not announce presence"),
            }
        });
    }

    /// A fan-out found our mailbox full: every live connection re-reads from the store.
    fn recover_missed(&mut self, ctx: &mut Context<Self>) {
        // A load first: this runs for every event, and the flag is almost never set.
        if !self.missed.load(Ordering::Acquire) || !self.missed.swap(false, Ordering::AcqRel) {
            return;
        }
        // Whatever was lost may have included a logout (the bridge was away): ask the store.
        self.recheck_devices(None, ctx);
        let now = Instant::now();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.conns.get_mut(&id) {
                let next = conn.cursor.missed(now);
                self.follow_up(id, next, ctx);
            }
        }
    }
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        METRICS.users_online.inc();
        if let Some(peers) = &self.hub.peers {
            peers.user_arrived(self.user);
        }
        ctx.run_interval(TICK, |act, ctx| act.recover_missed(ctx));
        let every = Duration::from_secs(self.hub.limits.device_recheck_secs.max(1));
        ctx.run_interval(every, |act, ctx| act.recheck_devices(None, ctx));
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        METRICS.users_online.dec();
        if let Some(peers) = &self.hub.peers {
            peers.user_left(self.user);
        }
        self.hub.registry.forget_user(self.user, &ctx.address());
    }
}

impl Handler<Attach> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) {
        if self.conns.is_empty() {
            self.announce_presence(true);
        }
        let conn =
            Conn { device: msg.device, cursor: Cursor::new(msg.outbound, msg.budget), connected_at_ms: now_ms() };
        self.conns.insert(msg.conn, conn);
        // A logout between this connection's authentication and now sent its kick to no one.
        self.recheck_devices(Some(msg.device), ctx);
    }
}

impl Handler<Detach> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Detach, ctx: &mut Context<Self>) {
        self.remove_conn(msg.conn, ctx);
    }
}

impl Handler<SyncFrom> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: SyncFrom, ctx: &mut Context<Self>) {
        let SyncFrom { conn: conn_id, after_pos, epoch: resumed, replier } = msg;
        if !self.conns.contains_key(&conn_id) {
            replier.error(DomainError::internal());
            return;
        }
        let store = self.hub.store.clone();
        let user = self.user;
        let head = async move {
            Ok::<_, crate::store::StoreError>((store.stream_head(user).await?, store.stream_epoch(user).await?))
        };
        ctx.spawn(head.into_actor(self).map(move |head, act, ctx| {
            let (head, epoch) = match head {
                Ok(head) => head,
                Err(e) => return replier.error(e.into()),
            };
            if resumed.as_ref().is_some_and(|resumed| *resumed != epoch) {
                return replier.error(DomainError::new(
                    Code::StreamReset,
                    format!("this stream was started anew (epoch {epoch}); forget the stored position and sync from 0"),
                ));
            }
            if after_pos > head {
                return replier.error(DomainError::invalid(format!(
                    "after_pos {after_pos} is ahead of this stream (head {head}); sync from 0"
                )));
            }
            let Some(conn) = act.conns.get_mut(&conn_id) else { return replier.error(DomainError::internal()) };
            conn.cursor.sync_from(after_pos, Instant::now());
            replier.reply(Ok(ReplyBody::SyncStarted { head_pos: head, epoch }));
            act.read_page(conn_id, ctx);
        }));
    }
}

impl Handler<StreamAck> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: StreamAck, ctx: &mut Context<Self>) {
        let StreamAck { conn, pos, replier } = msg;
        let mut cancelling = None;
        if let Some(conn) = self.conns.get_mut(&conn)
            && conn.cursor.ack(pos)
        {
            // In a cluster another node may have queued the push: the first ack asks the store.
            let check_store = self.hub.peers.is_some() && !std::mem::replace(&mut self.acked_once, true);
            cancelling = self.hub.push.delivered(self.user, pos, check_store);
        }
        match cancelling {
            // Answered once the pushes it makes unnecessary are cancelled.
            Some(cancel) => {
                ctx.spawn(cancel.into_actor(self).map(move |(), _, _| replier.ok()));
            }
            None => replier.ok(),
        }
    }
}

impl Handler<Push> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) {
        self.recover_missed(ctx);
        match msg.0 {
            Outbound::Event(pos, event) => self.on_event(pos, event, ctx),
            Outbound::Ephemeral(event) => {
                for conn in self.conns.values() {
                    // Ephemeral: never stored, dropped for a connection that is full.
                    let _ = conn.cursor.outbound().try_send(Outbound::Ephemeral(event));
                }
            }
            Outbound::Page(..) | Outbound::Notice(_) => {}
        }
    }
}

impl UserActor {
    /// Asks the store whether the devices of this user's connections (or only `device`) are
    /// still logged in, and closes the connections of those that are not. The logout's own kick
    /// is immediate but best-effort (one publish in a cluster); this is what makes revocation
    /// hold: on attach (a logout between authenticating and attaching), after the bridge was away,
    /// and every `limits.device_recheck_secs`.
    fn recheck_devices(&mut self, device: Option<DeviceId>, ctx: &mut Context<Self>) {
        let mut devices: Vec<DeviceId> =
            self.conns.values().map(|c| c.device).filter(|d| device.is_none_or(|only| *d == only)).collect();
        devices.sort_unstable_by_key(|d| d.0);
        devices.dedup();
        if devices.is_empty() {
            return;
        }
        let (store, user) = (self.hub.store.clone(), self.user);
        let check = async move {
            let mut gone = Vec::new();
            for device in devices {
                match store.device(user, device).await {
                    Ok(Some(record)) if !record.revoked => {}
                    Ok(_) => gone.push(device),
                    // Unknown: keep the connection; the next check asks again.
                    Err(e) => tracing::debug!(%user, error = %e, "device recheck failed"),
                }
            }
            gone
        };
        ctx.spawn(check.into_actor(self).map(|gone, act, ctx| {
            if !gone.is_empty() {
                tracing::info!(user = %act.user, devices = gone.len(), "logged-out devices still connected: closing them");
                act.kick(&gone, KickReason::LoggedOut, ctx);
            }
        }));
    }

    /// Closes the devices' connections; how many there were.
    fn kick(&mut self, devices: &[DeviceId], reason: KickReason, ctx: &mut Context<Self>) -> usize {
        let kicked: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| devices.contains(&c.device)).map(|(id, _)| *id).collect();
        let notice = match reason {
            KickReason::LoggedOut => Notice::LoggedOut,
            KickReason::Disconnected => Notice::Disconnected,
        };
        for &id in &kicked {
            if let Some(conn) = self.conns.get(&id) {
                let _ = conn.cursor.outbound().try_send(Outbound::Notice(notice));
            }
            self.remove_conn(id, ctx);
        }
        kicked.len()
    }
}

impl Handler<Kick> for UserActor {
    type Result = usize;

    fn handle(&mut self, msg: Kick, ctx: &mut Context<Self>) -> usize {
        self.kick(&msg.devices, msg.reason, ctx)
    }
}

impl Handler<ListConnections> for UserActor {
    type Result = actix::MessageResult<ListConnections>;

    fn handle(&mut self, _: ListConnections, _: &mut Context<Self>) -> Self::Result {
        let mut live: Vec<LiveConnection> = self
            .conns
            .iter()
            .map(|(&conn, c)| LiveConnection { conn, device: c.device, connected_at_ms: c.connected_at_ms })
            .collect();
        live.sort_unstable_by_key(|c| (c.connected_at_ms, c.conn.0));
        actix::MessageResult(live)
    }
}

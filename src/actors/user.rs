//! One actor per user with at least one connection on this node.
//!
//! Each connection has its own position in the user's stream (`next_pos`: the next event it must
//! get). Invariant: a connection receives stream events in strictly increasing position order with
//! no gap; every live event is already durable when it arrives here, so whenever a connection
//! cannot take an event, or an event seems to be missing, the connection switches to catching up
//! from the store and switches back to live once the store has nothing more for it.
//!
//! States of a connection's stream:
//! - `NotSynced`: the client has not sent Sync yet; it gets ephemeral events only.
//! - `CatchingUp`: pages are read from the store and sent; live events are held meanwhile.
//! - `Live`: live events are sent as they come; one ahead of `next_pos` is held until the missing
//!   one arrives or `GAP_WAIT` passes (then: catch up).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use tokio::sync::{Semaphore, mpsc};

use super::{Ephemeral, Hub, Notice, Outbound, PresenceInfo, Replier, ReplyBody};
use crate::domain::error::DomainError;
use crate::domain::{ConnId, DeviceId, StreamEvent, UserId, now_ms};
use crate::metrics::METRICS;

/// Most live events held per connection while it catches up or waits for a missing event; beyond
/// this they are dropped and read from the store later.
const HELD_EVENTS_CAP: usize = 4096;
/// Pages of a catching-up connection queued at once: one being written, one ready behind it. The
/// connection's queue is bounded in items and a page is one item, so without this a connection
/// that syncs from 0 and never reads would hold its whole queue's worth of pages in memory.
const QUEUED_PAGES: usize = 2;
/// How long a live event ahead of a missing one waits before the connection catches up instead.
const GAP_WAIT: Duration = Duration::from_millis(300);
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

/// Close the connections of logged-out devices.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick {
    pub devices: Vec<DeviceId>,
}

enum StreamState {
    NotSynced,
    /// `behind_since`: when this connection last took a page (or fell behind).
    CatchingUp {
        next_pos: u64,
        reading: bool,
        behind_since: Instant,
    },
    Live {
        next_pos: u64,
        gap_since: Option<Instant>,
    },
}

struct Conn {
    device: DeviceId,
    outbound: mpsc::Sender<Outbound>,
    /// Permits for pages in the outbound queue (`QUEUED_PAGES`); a page gives its permit back when
    /// the connection has written it (or dropped it).
    pages: Arc<Semaphore>,
    state: StreamState,
    /// Live events that arrived ahead of `next_pos`.
    held: BTreeMap<u64, StreamEvent>,
    /// Held events were dropped: catching up must not stop before reading past them.
    dropped_held: bool,
    /// The highest position the client acknowledged (for push decisions).
    acked_pos: u64,
}

impl Conn {
    fn hold(&mut self, pos: u64, event: StreamEvent) {
        if self.held.len() < HELD_EVENTS_CAP {
            self.held.insert(pos, event);
        } else {
            self.dropped_held = true;
        }
    }

    /// Sends held events that are next in line. Returns false if the queue was full.
    fn drain_held(&mut self) -> bool {
        let StreamState::Live { next_pos, gap_since } = &mut self.state else { return true };
        while let Some(entry) = self.held.first_entry() {
            let pos = *entry.key();
            if pos < *next_pos {
                entry.remove();
                continue;
            }
            if pos > *next_pos {
                gap_since.get_or_insert_with(Instant::now);
                return true;
            }
            match self.outbound.try_send(Outbound::Event(pos, entry.get().clone())) {
                Ok(()) => {
                    entry.remove();
                    *next_pos += 1;
                }
                Err(_) => return false,
            }
        }
        *gap_since = None;
        true
    }

    fn fall_behind(&mut self, next_pos: u64) {
        self.state = StreamState::CatchingUp { next_pos, reading: false, behind_since: Instant::now() };
        self.held.clear();
        self.dropped_held = false;
    }
}

/// What to do with a connection after offering it an event.
enum After {
    Nothing,
    /// It fell behind or missed something: read from the store.
    CatchUp,
    /// Wait a moment for a missing event, then check.
    CheckGap,
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

    fn offer(conn: &mut Conn, pos: u64, event: &StreamEvent) -> After {
        match &mut conn.state {
            StreamState::NotSynced => After::Nothing,
            StreamState::CatchingUp { .. } => {
                conn.hold(pos, event.clone());
                After::Nothing
            }
            StreamState::Live { next_pos, gap_since } => {
                if pos < *next_pos {
                    return After::Nothing;
                }
                if pos > *next_pos {
                    let first_gap = gap_since.is_none();
                    gap_since.get_or_insert_with(Instant::now);
                    conn.hold(pos, event.clone());
                    return if first_gap { After::CheckGap } else { After::Nothing };
                }
                match conn.outbound.try_send(Outbound::Event(pos, event.clone())) {
                    Ok(()) => {
                        if let StreamState::Live { next_pos, .. } = &mut conn.state {
                            *next_pos += 1;
                        }
                        if conn.drain_held() { After::Nothing } else { Self::behind(conn) }
                    }
                    Err(_) => Self::behind(conn),
                }
            }
        }
    }

    /// A live connection could not take an event: it catches up from the store instead.
    fn behind(conn: &mut Conn) -> After {
        if let StreamState::Live { next_pos, .. } = conn.state {
            conn.fall_behind(next_pos);
            METRICS.slow_consumers_total.inc();
        }
        After::CatchUp
    }

    fn follow_up(&mut self, conn_id: ConnId, after: After, ctx: &mut Context<Self>) {
        match after {
            After::Nothing => {}
            After::CatchUp => {
                ctx.run_later(FULL_QUEUE_RETRY, move |act, ctx| act.read_page(conn_id, ctx));
            }
            After::CheckGap => {
                ctx.run_later(GAP_WAIT, move |act, ctx| act.check_gap(conn_id, ctx));
            }
        }
    }

    fn on_event(&mut self, pos: u64, event: StreamEvent, ctx: &mut Context<Self>) {
        let mut follow = Vec::new();
        for (&id, conn) in self.conns.iter_mut() {
            match Self::offer(conn, pos, &event) {
                After::Nothing => {}
                after => follow.push((id, after)),
            }
        }
        for (id, after) in follow {
            self.follow_up(id, after, ctx);
        }
    }

    /// A live event was missing for `GAP_WAIT`: catch up from the store.
    fn check_gap(&mut self, conn_id: ConnId, ctx: &mut Context<Self>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        if let StreamState::Live { next_pos, gap_since: Some(since) } = conn.state {
            if since.elapsed() >= GAP_WAIT {
                conn.fall_behind(next_pos);
                self.read_page(conn_id, ctx);
            } else {
                ctx.run_later(GAP_WAIT, move |act, ctx| act.check_gap(conn_id, ctx));
            }
        }
    }

    /// Reads the next page of a catching-up connection's stream from the store.
    fn read_page(&mut self, conn_id: ConnId, ctx: &mut Context<Self>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let StreamState::CatchingUp { next_pos, reading, .. } = &mut conn.state else { return };
        if *reading {
            return;
        }
        *reading = true;
        let after = *next_pos - 1;
        let store = self.hub.store.clone();
        let user = self.user;
        let limit = self.hub.limits.catch_up_page_events.max(1);
        let read = async move { store.events_after(user, after, limit).await };
        ctx.spawn(read.into_actor(self).map(move |result, act, ctx| act.on_page(conn_id, after, result, ctx)));
    }

    fn on_page(
        &mut self,
        conn_id: ConnId,
        read_after: u64,
        result: crate::store::StoreResult<Vec<(u64, StreamEvent)>>,
        ctx: &mut Context<Self>,
    ) {
        let grace = Duration::from_secs(self.hub.limits.slow_consumer_grace_secs);
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let StreamState::CatchingUp { next_pos, reading, behind_since } = &mut conn.state else { return };
        *reading = false;
        if *next_pos - 1 != read_after {
            // A Sync restarted the stream while this page was being read.
            self.read_page(conn_id, ctx);
            return;
        }
        let events = match result {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "catch-up read failed; retrying");
                ctx.run_later(STORE_RETRY, move |act, ctx| act.read_page(conn_id, ctx));
                return;
            }
        };
        if events.is_empty() {
            if std::mem::take(&mut conn.dropped_held) {
                self.read_page(conn_id, ctx);
                return;
            }
            let caught_up_to = *next_pos - 1;
            if conn.outbound.try_send(Outbound::Notice(Notice::CaughtUp { pos: caught_up_to })).is_err() {
                self.retry_or_resync(conn_id, grace, ctx);
                return;
            }
            conn.state = StreamState::Live { next_pos: *next_pos, gap_since: None };
            if !conn.drain_held() {
                // From where the held events that did go out left off, not from `caught_up_to`:
                // those would be sent twice.
                let after = Self::behind(conn);
                self.follow_up(conn_id, after, ctx);
            } else if let StreamState::Live { gap_since: Some(_), .. } = conn.state {
                self.follow_up(conn_id, After::CheckGap, ctx);
            }
            return;
        }
        let last = events.last().map_or(*next_pos, |(pos, _)| *pos);
        let n = events.len() as u64;
        let Ok(permit) = conn.pages.clone().try_acquire_owned() else {
            return self.retry_or_resync(conn_id, grace, ctx);
        };
        match conn.outbound.try_send(Outbound::Page(events, permit)) {
            Ok(()) => {
                METRICS.events_caught_up_total.add(n);
                // The grace measures time without progress: a long backlog read at the client's
                // pace is fine; a connection that takes nothing is not.
                *behind_since = Instant::now();
                *next_pos = last + 1;
                let next = *next_pos;
                conn.held.retain(|pos, _| *pos >= next);
                self.read_page(conn_id, ctx);
            }
            Err(_) => self.retry_or_resync(conn_id, grace, ctx),
        }
    }

    /// The connection's queue is full while catching up: try again shortly, or give up on it if it
    /// has been behind longer than the grace period (it is told to resync).
    fn retry_or_resync(&mut self, conn_id: ConnId, grace: Duration, ctx: &mut Context<Self>) {
        let Some(conn) = self.conns.get(&conn_id) else { return };
        let StreamState::CatchingUp { behind_since, .. } = conn.state else { return };
        if behind_since.elapsed() > grace {
            tracing::info!(user = %self.user, conn = %conn_id, "slow consumer told to resync");
            // Dropping our sender closes the connection's queue: it sends RESYNC_REQUIRED and closes.
            self.remove_conn(conn_id, ctx);
        } else {
            ctx.run_later(FULL_QUEUE_RETRY, move |act, ctx| act.read_page(conn_id, ctx));
        }
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
        if !self.missed.swap(false, Ordering::AcqRel) {
            return;
        }
        // Whatever was lost may have included a logout (the bridge was away): ask the store.
        self.recheck_devices(None, ctx);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.conns.get_mut(&id)
                && let StreamState::Live { next_pos, .. } = conn.state
            {
                conn.fall_behind(next_pos);
                self.read_page(id, ctx);
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
        self.conns.insert(
            msg.conn,
            Conn {
                device: msg.device,
                outbound: msg.outbound,
                pages: Arc::new(Semaphore::new(QUEUED_PAGES)),
                state: StreamState::NotSynced,
                held: BTreeMap::new(),
                dropped_held: false,
                acked_pos: 0,
            },
        );
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
        let SyncFrom { conn: conn_id, after_pos, replier } = msg;
        if !self.conns.contains_key(&conn_id) {
            replier.error(DomainError::internal());
            return;
        }
        let store = self.hub.store.clone();
        let user = self.user;
        let head = async move { store.stream_head(user).await };
        ctx.spawn(head.into_actor(self).map(move |head, act, ctx| {
            let head = match head {
                Ok(head) => head,
                Err(e) => return replier.error(e.into()),
            };
            if after_pos > head {
                return replier.error(DomainError::invalid(format!(
                    "after_pos {after_pos} is ahead of this stream (head {head}); sync from 0"
                )));
            }
            let Some(conn) = act.conns.get_mut(&conn_id) else { return replier.error(DomainError::internal()) };
            conn.fall_behind(after_pos + 1);
            replier.reply(Ok(ReplyBody::SyncStarted { head_pos: head }));
            act.read_page(conn_id, ctx);
        }));
    }
}

impl Handler<StreamAck> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: StreamAck, _ctx: &mut Context<Self>) {
        if let Some(conn) = self.conns.get_mut(&msg.conn)
            && msg.pos > conn.acked_pos
        {
            conn.acked_pos = msg.pos;
            // In a cluster another node may have queued the push: the first ack asks the store.
            let check_store = self.hub.peers.is_some() && !std::mem::replace(&mut self.acked_once, true);
            self.hub.push.delivered(self.user, msg.pos, check_store);
        }
        msg.replier.ok();
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
                    let _ = conn.outbound.try_send(Outbound::Ephemeral(event));
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
                act.kick(&gone, ctx);
            }
        }));
    }

    fn kick(&mut self, devices: &[DeviceId], ctx: &mut Context<Self>) {
        let kicked: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| devices.contains(&c.device)).map(|(id, _)| *id).collect();
        for id in kicked {
            if let Some(conn) = self.conns.get(&id) {
                let _ = conn.outbound.try_send(Outbound::Notice(Notice::LoggedOut));
            }
            self.remove_conn(id, ctx);
        }
    }
}

impl Handler<Kick> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Kick, ctx: &mut Context<Self>) {
        self.kick(&msg.devices, ctx);
    }
}

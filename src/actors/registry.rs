//! Finds the actor of a user, or of an actor key (a room, ...), on this node, starting it when
//! there is none.
//!
//! Actors remove themselves when they stop; a lookup that races with a stop sees a disconnected
//! address and starts a fresh actor, which reloads its state from the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::{Actor, Addr};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::room::RoomActor;
use super::user::UserActor;
use super::{Hub, Outbound};
use crate::domain::error::{DomainError, DomainResult};
use crate::domain::{ActorKey, RoomId, StreamEvent, UserId};
use crate::rate_limit::TokenBucket;

#[derive(Clone)]
pub struct UserEntry {
    pub addr: Addr<UserActor>,
    /// Set by a fan-out that found the actor's mailbox full: the actor then re-reads its
    /// connections' streams from the store, so nothing is lost.
    pub missed: Arc<AtomicBool>,
    /// The user's request budget, shared by all of its connections.
    requests: Arc<Mutex<TokenBucket>>,
}

impl UserEntry {
    /// Takes one request from the user's budget, or says how many milliseconds until one is free.
    pub fn take_request(&self, now: Instant) -> Result<(), u32> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).take(now)
    }
}

/// The actor hosted for a key, with the epoch it claimed the key under.
#[derive(Clone, PartialEq)]
enum Hosted {
    Room(Addr<RoomActor>, u64),
}

impl Hosted {
    fn connected(&self) -> bool {
        match self {
            Hosted::Room(addr, _) => addr.connected(),
        }
    }

    fn epoch(&self) -> u64 {
        match self {
            Hosted::Room(_, epoch) => *epoch,
        }
    }
}

#[derive(Default)]
pub struct Registry {
    users: DashMap<UserId, UserEntry>,
    actors: DashMap<ActorKey, Hosted>,
    /// One claim at a time per key on this node: two requests that both find no actor would
    /// otherwise both claim, and the first actor would be fenced by the second at once.
    claiming: DashMap<ActorKey, Arc<tokio::sync::Mutex<()>>>,
}

impl Registry {
    pub fn user(&self, user: UserId) -> Option<UserEntry> {
        self.users.get(&user).map(|e| e.clone()).filter(|e| e.addr.connected())
    }

    /// Whether the user has a live session on this node (a lookup, no clone: it runs per recipient
    /// on the send path).
    pub fn is_online(&self, user: UserId) -> bool {
        self.users.get(&user).is_some_and(|e| e.addr.connected())
    }

    /// Every user with a live session on this node.
    pub fn online_users(&self) -> Vec<UserId> {
        self.users.iter().filter(|e| e.addr.connected()).map(|e| *e.key()).collect()
    }

    /// The user's actor, started if needed (on the calling thread's arbiter).
    pub fn user_or_start(&self, user: UserId, hub: &Arc<Hub>) -> UserEntry {
        match self.users.entry(user) {
            Entry::Occupied(e) if e.get().addr.connected() => e.get().clone(),
            // Absent, or an actor that stopped: start a fresh one in its place.
            entry => {
                let missed = Arc::new(AtomicBool::new(false));
                let addr = UserActor::new(user, hub.clone(), missed.clone()).start();
                let limits = &hub.limits;
                let requests = TokenBucket::new(limits.user_requests_per_second, limits.user_request_burst);
                entry.insert(UserEntry { addr, missed, requests: Arc::new(Mutex::new(requests)) }).clone()
            }
        }
    }

    /// Called by a stopping user actor: forget it unless a newer one took its place.
    pub(super) fn forget_user(&self, user: UserId, addr: &Addr<UserActor>) {
        self.users.remove_if(&user, |_, e| e.addr == *addr);
    }

    /// The room's actor, loaded from the store and started if needed.
    pub async fn room(&self, room: RoomId, hub: &Arc<Hub>) -> DomainResult<Addr<RoomActor>> {
        let key = ActorKey::Room(room);
        if let Some(Hosted::Room(addr, _)) = self.actors.get(&key).map(|a| a.clone()).filter(Hosted::connected) {
            return Ok(addr);
        }
        let lock = self.claiming.entry(key).or_default().clone();
        let claimed = async {
            let _one_at_a_time = lock.lock().await;
            if let Some(Hosted::Room(addr, _)) = self.actors.get(&key).map(|a| a.clone()).filter(Hosted::connected) {
                return Ok(addr);
            }
            self.claim_room(key, room, hub).await
        }
        .await;
        // The map's handle and ours: no one else is waiting for this key.
        self.claiming.remove_if(&key, |_, l| Arc::strong_count(l) <= 2);
        claimed
    }

    async fn claim_room(&self, key: ActorKey, room: RoomId, hub: &Arc<Hub>) -> DomainResult<Addr<RoomActor>> {
        // Claimed, not just loaded: from here on an older writer of this room is fenced off.
        let claim = hub.store.claim_room(room).await?.ok_or_else(DomainError::not_a_member)?;
        let (state, epoch) = (claim.state, claim.epoch);
        for (positions, event) in &claim.finished {
            hub.deliver(positions, event);
        }
        let hosted = match self.actors.entry(key) {
            // Started meanwhile by a request that claimed after us: that one is the room's writer.
            Entry::Occupied(e) if e.get().connected() && e.get().epoch() > epoch => e.get().clone(),
            entry => entry.insert(Hosted::Room(RoomActor::new(state, epoch, hub.clone()).start(), epoch)).clone(),
        };
        let Hosted::Room(addr, _) = hosted;
        Ok(addr)
    }

    /// Forgets the actors `keep` says no: the next request for such a key starts a fresh actor
    /// from the store (the forgotten one finishes what it has in flight and idles out). Called when
    /// ownership of keys moves to other nodes.
    pub fn release(&self, keep: impl Fn(ActorKey) -> bool) -> usize {
        let before = self.actors.len();
        self.actors.retain(|key, _| keep(*key));
        before - self.actors.len()
    }

    pub(super) fn forget_room(&self, room: RoomId, addr: &Addr<RoomActor>) {
        self.actors.remove_if(&ActorKey::Room(room), |_, hosted| matches!(hosted, Hosted::Room(a, _) if a == addr));
    }

    /// Hands a durable event to the user actors of its recipients that are on this node. Users with
    /// no actor here have no connection here: they get the event when they sync.
    pub fn deliver(&self, positions: &[(UserId, u64)], event: &StreamEvent) {
        for &(user, pos) in positions {
            // Under the map's read guard: no clone of the entry per recipient on this hot path.
            if let Some(entry) = self.users.get(&user).filter(|e| e.addr.connected()) {
                entry.deliver(Outbound::Event(pos, event.clone()));
            }
        }
    }

    /// The user's actor here, if any, re-reads its connections' streams from the store.
    pub fn mark_missed(&self, user: UserId) {
        if let Some(entry) = self.users.get(&user) {
            entry.missed.store(true, Ordering::Release);
        }
    }

    /// Hands an ephemeral event to the user actors of `users` on this node; dropped where full.
    pub fn send_ephemeral(&self, users: impl IntoIterator<Item = UserId>, event: super::Ephemeral) {
        for user in users {
            if let Some(entry) = self.users.get(&user).filter(|e| e.addr.connected()) {
                let _ = entry.addr.try_send(super::user::Push(Outbound::Ephemeral(event)));
            }
        }
    }
}

impl UserEntry {
    /// Never blocks and never loses: a full mailbox marks the actor as having missed events.
    pub fn deliver(&self, outbound: Outbound) {
        if self.addr.try_send(super::user::Push(outbound)).is_err() {
            self.missed.store(true, Ordering::Release);
            crate::metrics::METRICS.slow_consumers_total.inc();
        }
    }
}

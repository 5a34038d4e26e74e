//! The part of push the actors touch: deciding, on the append path, who is queued for push, and
//! cancelling queued pushes when a device acknowledges its stream.
//!
//! Deciding is cheap (no store access): the jobs themselves are written by the append, in the same
//! transaction as the entry, so a message the server acknowledged never loses its push.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::Notify;

use super::notification::preview;
use crate::clock::Clock;
use crate::config::PushConfig;
use crate::domain::{EntryBody, Platform, PushKind, RoomEntry, UserId};
use crate::store::{PushFanout, Store};

pub struct PushGate {
    store: Arc<dyn Store>,
    /// Providers configured on this node; no job is queued for the others.
    platforms: Vec<Platform>,
    grace_ms: i64,
    preview_chars: usize,
    allowed_app_ids: Vec<String>,
    /// Users who may have pending pushes: an ack from one of them is worth a store write. Filled
    /// when this node decides on a push (before its append, so an ack of an entry whose push is
    /// still being queued goes to the store) and at start from the store; a user missing here
    /// (queued by another node) is still checked when the push falls due. The value is the
    /// decision's number: an ack that found nothing pending forgets the user only if no decision
    /// came meanwhile.
    pending: DashMap<UserId, u64>,
    decisions: AtomicU64,
    /// Wakes the push worker when a push is queued that is due before the worker means to look.
    pub(super) wake: Notify,
    /// When the worker will look at the queue next (Unix ms); it sets this before it sleeps.
    pub(super) next_look_ms: AtomicI64,
    /// The time grace windows and the worker's decisions are measured in.
    pub(super) clock: Clock,
}

impl PushGate {
    pub fn new(store: Arc<dyn Store>, platforms: Vec<Platform>, config: &PushConfig, clock: Clock) -> Self {
        Self {
            store,
            platforms,
            grace_ms: config.grace_ms as i64,
            preview_chars: config.preview_chars,
            allowed_app_ids: config.allowed_app_ids.clone(),
            pending: DashMap::new(),
            decisions: AtomicU64::new(0),
            wake: Notify::new(),
            next_look_ms: AtomicI64::new(0),
            clock,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.platforms.is_empty()
    }

    /// Whether devices may register tokens for `app_id` here (`push.allowed_app_ids`). An Android
    /// registration without an app id is allowed (FCM routes by token alone).
    pub fn allows_app(&self, app_id: &str) -> bool {
        self.allowed_app_ids.is_empty() || app_id.is_empty() || self.allowed_app_ids.iter().any(|a| a == app_id)
    }

    /// Which recipients of `entry` to reach by push: those `online` says have no live session,
    /// never the sender. `None` when the entry is not worth a notification.
    pub fn fanout(
        &self,
        entry: &RoomEntry,
        recipients: &[UserId],
        online: impl Fn(UserId) -> bool,
    ) -> Option<PushFanout> {
        if !self.enabled() {
            return None;
        }
        let (kind, preview, candidates): (_, _, &[UserId]) = match &entry.body {
            EntryBody::Text(message) => (PushKind::Message, preview(&message.text, self.preview_chars), recipients),
            EntryBody::MembersAdded(added) => (PushKind::AddedToRoom, String::new(), added),
            _ => return None,
        };
        let users: Vec<UserId> = candidates.iter().copied().filter(|&u| u != entry.sender && !online(u)).collect();
        if users.is_empty() {
            return None;
        }
        self.may_be_pending(&users);
        Some(PushFanout {
            users,
            kind,
            preview,
            due_at_ms: self.clock.now_ms() + self.grace_ms,
            platforms: self.platforms.clone(),
        })
    }

    /// The start of a text as a push shows it (`push.preview_chars`).
    pub fn preview(&self, text: &str) -> String {
        preview(text, self.preview_chars)
    }

    /// A push of activity to `user`, unless they have a live session. Its text is the store's to
    /// write, which knows the activity's group ("ana and 4 others liked your photo").
    pub fn activity(&self, user: UserId, online: bool) -> Option<PushFanout> {
        self.to_one(user, online, PushKind::Activity)
    }

    /// A push of a notification from the app's backend to `user`, unless they have a live
    /// session. The store writes what it says, with the notification.
    pub fn notification(&self, user: UserId, online: bool) -> Option<PushFanout> {
        self.to_one(user, online, PushKind::Notification)
    }

    fn to_one(&self, user: UserId, online: bool, kind: PushKind) -> Option<PushFanout> {
        if !self.enabled() || online {
            return None;
        }
        self.may_be_pending(&[user]);
        Some(PushFanout {
            users: vec![user],
            kind,
            preview: String::new(),
            due_at_ms: self.clock.now_ms() + self.grace_ms,
            platforms: self.platforms.clone(),
        })
    }

    /// The new preview of a message being edited, for its pushes still queued.
    pub fn revised_preview(&self, entry: &RoomEntry) -> Option<String> {
        match &entry.body {
            EntryBody::Edited { text, .. } if self.enabled() => Some(preview(text, self.preview_chars)),
            _ => None,
        }
    }

    /// The append carrying a fan-out to `users` committed: their pushes are queued, due at `due_at_ms`.
    /// The worker is woken only if it would otherwise look too late (a burst of messages would
    /// otherwise cost one queue scan each).
    pub fn queued(&self, users: &[UserId], due_at_ms: i64) {
        self.may_be_pending(users);
        self.job_due_at(due_at_ms);
    }

    /// A job falls due at `due_at_ms` (queued, or put back by an operator): wakes the worker if
    /// it would otherwise look later.
    pub fn job_due_at(&self, due_at_ms: i64) {
        if due_at_ms < self.next_look_ms.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    /// The time pushes fall due in.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Remembers users with pending pushes found in the store at start.
    pub(super) fn remember_pending(&self, users: Vec<UserId>) {
        self.may_be_pending(&users);
    }

    fn may_be_pending(&self, users: &[UserId]) {
        let decision = self.decisions.fetch_add(1, Ordering::Relaxed);
        for &user in users {
            self.pending.insert(user, decision);
        }
    }

    /// A device of `user` acknowledged its stream up to `pos`: its pending pushes up to there are
    /// not needed any more.
    ///
    /// `check_store` skips the hint: in a cluster a push may have been queued by another node, so a
    /// session's first ack asks the store whatever the hint says (once per session, not per ack).
    ///
    /// Returns the cancellation to await, if one is needed: the ack is answered once it is done,
    /// so that an acknowledged message is never pushed after the client heard back.
    pub fn delivered(
        self: &Arc<Self>,
        user: UserId,
        pos: u64,
        check_store: bool,
    ) -> Option<impl Future<Output = ()> + 'static> {
        let decision = self.pending.get(&user).map(|d| *d);
        if !self.enabled() || !(check_store || decision.is_some()) {
            return None;
        }
        let gate = self.clone();
        Some(async move {
            match gate.store.cancel_delivered_pushes(user, pos).await {
                Ok(0) => {
                    gate.pending.remove_if(&user, |_, d| Some(*d) == decision);
                }
                Ok(_) => {}
                // The push is still checked against the delivered marker when it falls due.
                Err(e) => tracing::warn!(%user, error = %e, "could not cancel delivered pushes"),
            }
        })
    }
}

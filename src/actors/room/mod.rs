//! One actor per active room: the single place that orders the room's entries.
//!
//! Invariants:
//! - Seqs are assigned in the handler itself (never in a detached future) and the entry is submitted
//!   to the store before the handler returns, so the store applies a room's entries in seq order and
//!   every member's stream has them in that order.
//! - The in-memory member list is changed when a membership entry is submitted, so an entry is
//!   delivered to exactly the members the room had at its seq. If a submitted entry then fails, the
//!   actor retires: it leaves the registry at once (the next request starts a fresh actor, which
//!   reloads the room), answers what reaches it meanwhile with UNAVAILABLE, and stops once its
//!   submitted appends have all been answered, so no request is ever dropped unanswered.
//! - The actor writes under the epoch it claimed when it started (`RoomStore::claim_room`). Once
//!   another actor (on another node, while ownership moves) claims the room, every append of this
//!   one is refused (`Fenced`), so two writers never interleave their entries in a room.
//! - A sender is acknowledged only after the store reported the entry durable.

mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};

use super::{Ephemeral, Hub, Replier, ReplyBody, RoomOp, RoomWrite, SentAck};
use crate::domain::error::{Code, DomainError, DomainResult};
use crate::domain::{
    EntryBody, Receipt, ReceiptKind, Role, RoomEntry, RoomId, RoomKind, RoomState, SYSTEM_USER, StreamEvent, UserId,
    now_ms, time_ordered_id,
};
use crate::metrics::METRICS;
use crate::store::{Append, AppendOutcome, HistoryPage, Positions, ReceiptWrite};
use plan::{OnCommit, RoomView, plan};

const MAILBOX_CAPACITY: usize = 4096;
/// Receipts are pushed to every member only in rooms up to this size. In a larger room every
/// member reading would send a receipt to every other member (quadratic: a 300-member room where
/// everyone reads once a second is 90,000 events a second, which the swarm's city scenario showed
/// swamping a node); there only the reader's own devices get the receipt, and the markers are in
/// the room list for whoever looks.
const RECEIPT_BROADCAST_MAX_MEMBERS: usize = 32;

/// How long a direct room trusts what it read about a block between its two members. A block
/// made on this node is seen at once (`Hub::blocks_changed`); one made on another node within this.
const BLOCK_RECHECK: Duration = Duration::from_secs(1);

/// Whether either member of a direct room blocked the other, as read at `at`.
#[derive(Clone, Copy)]
struct BlockCheck {
    blocked: bool,
    at: Instant,
    /// `Hub::blocks_generation` when it was read.
    generation: u64,
}

/// A request about this room from one of its (would-be) members.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomRequest {
    pub user: UserId,
    pub op: RoomOp,
    pub replier: Replier,
}

pub struct RoomActor {
    id: RoomId,
    kind: RoomKind,
    members: HashMap<UserId, Role>,
    last_seq: u64,
    hub: Arc<Hub>,
    last_activity: Instant,
    /// The epoch this actor claimed the room under; its appends are refused once it is not the
    /// room's any more.
    epoch: u64,
    /// Appends submitted and not yet answered.
    in_flight: usize,
    /// An append failed (the room moved, or the store did): answer everything UNAVAILABLE and stop
    /// once nothing is in flight.
    retiring: bool,
    /// A direct room's members: whether one blocked the other (read before a send when stale).
    block: Option<BlockCheck>,
}

impl RoomActor {
    pub fn new(state: RoomState, epoch: u64, hub: Arc<Hub>) -> Self {
        Self {
            id: state.meta.id,
            kind: state.meta.kind,
            members: state.members.iter().map(|m| (m.user, m.role)).collect(),
            last_seq: state.last_seq,
            hub,
            last_activity: Instant::now(),
            epoch,
            in_flight: 0,
            retiring: false,
            block: None,
        }
    }

    /// A send in a direct room: refused while either member blocks the other. What the actor knows
    /// of that is read again when stale, with the mailbox held meanwhile (`ctx.wait`), so the room's
    /// requests keep their order.
    fn send_direct(&mut self, user: UserId, write: RoomWrite, replier: Replier, ctx: &mut Context<Self>) {
        let generation = self.hub.blocks_generation();
        let fresh = self.block.is_some_and(|b| b.generation == generation && b.at.elapsed() < BLOCK_RECHECK);
        if fresh {
            return match self.block.is_some_and(|b| b.blocked) {
                true => replier.error(DomainError::forbidden("you cannot message this user")),
                false => self.append(user, write, replier, ctx),
            };
        }
        let Some(peer) = self.members.keys().copied().find(|&m| m != user) else {
            return self.append(user, write, replier, ctx);
        };
        let store = self.hub.store.clone();
        let read = async move { store.blocked_between(user, peer).await };
        ctx.wait(read.into_actor(self).map(move |blocked, act, ctx| match blocked {
            Ok(blocked) => {
                act.block = Some(BlockCheck { blocked, at: Instant::now(), generation });
                act.send_direct(user, write, replier, ctx);
            }
            Err(e) => replier.error(e.into()),
        }));
    }

    /// Stops taking requests: the registry forgets this actor now (the next request starts a fresh
    /// one), and it stops once its appends in flight are answered.
    fn retire(&mut self, ctx: &mut Context<Self>) {
        if !self.retiring {
            self.retiring = true;
            self.hub.registry.forget_room(self.id, &ctx.address());
        }
        if self.in_flight == 0 {
            ctx.stop();
        }
    }

    fn member_list(&self) -> Vec<UserId> {
        self.members.keys().copied().collect()
    }

    fn role_of(&self, user: UserId) -> DomainResult<Role> {
        self.members.get(&user).copied().ok_or_else(DomainError::not_a_member)
    }

    fn check_seq(&self, seq: u64) -> DomainResult<()> {
        if seq == 0 || seq > self.last_seq {
            return Err(DomainError::not_found(format!("no entry {seq} in this room")));
        }
        Ok(())
    }

    /// Assigns the next seq and submits the entry; answers once it is durable.
    fn append(&mut self, user: UserId, write: RoomWrite, replier: Replier, ctx: &mut Context<Self>) {
        let room =
            RoomView { kind: self.kind, members: &self.members, last_seq: self.last_seq, limits: &self.hub.limits };
        let planned = match plan(&room, user, write) {
            Ok(planned) => planned,
            Err(e) => return replier.error(e),
        };
        let sent_at_ms = now_ms();
        let entry = Arc::new(RoomEntry {
            room: self.id,
            seq: self.last_seq + 1,
            id: time_ordered_id(sent_at_ms),
            sender: user,
            sent_at_ms,
            body: planned.body,
            encoded: Default::default(),
        });
        let registry = &self.hub.registry;
        let push = self.hub.push.fanout(&entry, &planned.recipients, |u| registry.is_online(u));
        let pushed_to = push.as_ref().map(|p| (p.users.clone(), p.due_at_ms));
        let revised_preview = self.hub.push.revised_preview(&entry);
        let append = Append {
            entry: entry.clone(),
            epoch: self.epoch,
            recipients: planned.recipients,
            effect: planned.effect,
            push,
            revised_preview,
        };
        let committed = match self.hub.store.submit_append(append) {
            Ok(future) => future,
            // Nothing was queued: the room is as it was.
            Err(e) => return replier.error(e.into()),
        };
        // Submitted: the next entry is checked against the room as this one leaves it.
        self.in_flight += 1;
        self.last_seq = entry.seq;
        planned.change.apply(&mut self.members);
        let on_commit = planned.on_commit;
        ctx.spawn(committed.into_actor(self).map(move |outcome, act, ctx| {
            act.in_flight -= 1;
            act.on_committed(entry, outcome, on_commit, pushed_to, replier, ctx);
            if act.retiring {
                act.retire(ctx);
            }
        }));
    }

    fn on_committed(
        &mut self,
        entry: Arc<RoomEntry>,
        outcome: crate::store::StoreResult<AppendOutcome>,
        on_commit: OnCommit,
        pushed_to: Option<(Vec<UserId>, i64)>,
        replier: Replier,
        ctx: &mut Context<Self>,
    ) {
        let sent = |seq, message_id, sent_at_ms, duplicate| {
            ReplyBody::Sent(SentAck { room: entry.room, seq, message_id, sent_at_ms, duplicate })
        };
        let answer = match on_commit {
            OnCommit::Sent => sent(entry.seq, entry.id, entry.sent_at_ms, false),
            OnCommit::Ok => ReplyBody::Ok,
        };
        if matches!(outcome, Ok(AppendOutcome::Committed { .. } | AppendOutcome::Logged { .. })) {
            self.tell_backend(&entry);
        }
        match outcome {
            Ok(AppendOutcome::Committed { positions }) => {
                METRICS.messages_committed_total.inc();
                replier.reply(Ok(answer));
                self.fanned_out(entry, &positions, pushed_to);
            }
            Ok(AppendOutcome::Logged { fanout }) => {
                // Durable: the sender hears now, the recipients once the store has fanned it out.
                METRICS.messages_committed_total.inc();
                METRICS.room_fanouts_after_ack_total.inc();
                replier.reply(Ok(answer));
                self.in_flight += 1;
                ctx.spawn(fanout.done().into_actor(self).map(move |fanned_out, act, ctx| {
                    act.in_flight -= 1;
                    match fanned_out {
                        Ok(positions) => act.fanned_out(entry, &positions, pushed_to),
                        Err(e) => {
                            METRICS.room_fanouts_after_ack_failed_total.inc();
                            tracing::warn!(room = %act.id, seq = entry.seq, error = %e, "fan-out failed; reloading room");
                            act.retire(ctx);
                            act.reopen();
                        }
                    }
                    if act.retiring {
                        act.retire(ctx);
                    }
                }));
            }
            Ok(AppendOutcome::Duplicate { seq, id, sent_at_ms }) => {
                replier.reply(Ok(sent(seq, id, sent_at_ms, true)));
            }
            Ok(AppendOutcome::TargetNotFound) => {
                replier.error(DomainError::not_found("no such message (or it was deleted)"));
            }
            Ok(AppendOutcome::NotAllowed) => {
                replier.error(DomainError::forbidden("not your message"));
            }
            Ok(AppendOutcome::SeqTaken) => {
                tracing::warn!(room = %self.id, seq = entry.seq, "seq taken by another writer; reloading room");
                replier.error(room_moved());
                self.retire(ctx);
            }
            Ok(AppendOutcome::Fenced) => {
                tracing::info!(room = %self.id, seq = entry.seq, "another writer took the room over; retiring");
                METRICS.room_appends_fenced_total.inc();
                replier.error(room_moved());
                self.retire(ctx);
            }
            Err(e) => {
                tracing::warn!(room = %self.id, seq = entry.seq, error = %e, "append failed; reloading room");
                replier.error(e.into());
                self.retire(ctx);
            }
        }
    }

    /// A new message, for the app's backend (`webhooks.message_sent`).
    fn tell_backend(&self, entry: &RoomEntry) {
        if let EntryBody::Text(message) = &entry.body
            && self.hub.webhooks.wants("message.sent")
        {
            self.hub.webhooks.emit(crate::webhooks::WebhookEvent::MessageSent {
                room: entry.room.0,
                seq: entry.seq,
                message: entry.id,
                sender: entry.sender.0,
                client_msg_id: message.client_msg_id.clone(),
                text: message.text.clone(),
            });
        }
    }

    /// The entry is in its recipients' streams: their sessions get it, and the push gate learns
    /// of the pushes queued with it.
    fn fanned_out(&self, entry: Arc<RoomEntry>, positions: &Positions, pushed_to: Option<(Vec<UserId>, i64)>) {
        if let Some((users, due_at_ms)) = &pushed_to {
            self.hub.push.queued(users, *due_at_ms);
        }
        self.hub.deliver(positions, &StreamEvent::Entry(entry));
    }

    /// Starts the room's next writer now rather than at its next request: claiming the room
    /// finishes the fan-out this one left (and if that fails too, `fanout_sweep` tries again).
    fn reopen(&self) {
        let (hub, room) = (self.hub.clone(), self.id);
        actix::spawn(async move {
            if let Err(e) = hub.registry.room(room, &hub).await {
                tracing::warn!(%room, error = %e, "reopening the room failed; the sweep tries again");
            }
        });
    }

    fn history(&self, user: UserId, page: HistoryPage, replier: Replier, ctx: &mut Context<Self>) {
        if let Err(e) = self.role_of(user) {
            return replier.error(e);
        }
        let store = self.hub.store.clone();
        let room = self.id;
        ctx.spawn(
            async move {
                match store.history(room, page).await {
                    Ok((entries, more)) => replier.reply(Ok(ReplyBody::History { entries, more })),
                    Err(e) => replier.error(e.into()),
                }
            }
            .into_actor(self),
        );
    }

    fn typing(&self, user: UserId, active: bool, replier: Replier) {
        if let Err(e) = self.role_of(user) {
            return replier.error(e);
        }
        let others: Vec<UserId> = self.members.keys().copied().filter(|&m| m != user).collect();
        self.hub.send_ephemeral(&others, Ephemeral::Typing { room: self.id, user, active });
        replier.ok();
    }

    fn receipt(&self, user: UserId, kind: ReceiptKind, up_to_seq: u64, replier: Replier, ctx: &mut Context<Self>) {
        if let Err(e) = self.role_of(user).and_then(|_| self.check_seq(up_to_seq)) {
            return replier.error(e);
        }
        let recipients =
            if self.members.len() <= RECEIPT_BROADCAST_MAX_MEMBERS { self.member_list() } else { vec![user] };
        let write = ReceiptWrite { room: self.id, user, kind, up_to_seq, recipients };
        let hub = self.hub.clone();
        let room = self.id;
        ctx.spawn(
            async move {
                match hub.store.set_receipt(write).await {
                    Ok(Some(positions)) => {
                        replier.ok();
                        let receipt = Receipt { room, user, kind, up_to_seq };
                        hub.deliver(&positions, &StreamEvent::Receipt(receipt));
                    }
                    // The marker was already there: nothing new to tell anyone.
                    Ok(None) => replier.ok(),
                    Err(e) => replier.error(e.into()),
                }
            }
            .into_actor(self),
        );
    }
}

/// The answer while a room changes writers: retry shortly (the client keeps its `client_msg_id`,
/// so a retry never duplicates).
fn room_moved() -> DomainError {
    DomainError { retry_after_ms: 100, ..DomainError::new(Code::Unavailable, "room moved; retry") }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        METRICS.rooms_active.inc();
        let idle = Duration::from_secs(self.hub.limits.room_idle_secs.max(1));
        ctx.run_interval(idle.min(Duration::from_secs(30)), move |act, ctx| {
            if act.last_activity.elapsed() >= idle && act.in_flight == 0 {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        METRICS.rooms_active.dec();
        self.hub.registry.forget_room(self.id, &ctx.address());
    }
}

impl Handler<RoomRequest> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomRequest, ctx: &mut Context<Self>) {
        self.last_activity = Instant::now();
        let RoomRequest { user, op, replier } = msg;
        if self.retiring {
            // Sent before the registry forgot this actor; a retry reaches the fresh one.
            return replier.error(room_moved());
        }
        match op {
            RoomOp::History(page) => self.history(user, page, replier, ctx),
            RoomOp::Typing { active } => self.typing(user, active, replier),
            RoomOp::Receipt { kind, up_to_seq } => self.receipt(user, kind, up_to_seq, replier, ctx),
            // A system message is no member's: blocks between the members do not stop it.
            RoomOp::Write(write @ RoomWrite::Send { .. }) if self.kind == RoomKind::Direct && user != SYSTEM_USER => {
                self.send_direct(user, write, replier, ctx)
            }
            RoomOp::Write(write) => self.append(user, write, replier, ctx),
        }
    }
}

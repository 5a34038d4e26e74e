//! One actor per active room: the single place that orders the room's entries.
//!
//! Invariants:
//! - Seqs are assigned in the handler itself (never in a detached future) and the entry is submitted
//!   to the store before the handler returns, so the store applies a room's entries in seq order and
//!   every member's stream has them in that order.
//! - The in-memory member list is changed when a membership entry is submitted, so an entry is
//!   delivered to exactly the members the room had at its seq. If a submitted entry then fails, the
//!   actor stops and the next request reloads the room from the store.
//! - A sender is acknowledged only after the store reported the entry durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};

use super::{Ephemeral, Hub, Replier, ReplyBody, RoomOp, SentAck};
use crate::domain::{
    EntryBody, Receipt, ReceiptKind, Role, RoomEntry, RoomId, RoomKind, RoomState, StreamEvent, TextMessage, UserId,
    now_ms, time_ordered_id,
};
use crate::error::{ApiError, ApiResult, Code};
use crate::metrics::METRICS;
use crate::store::{Append, AppendOutcome, Effect, HistoryPage, ReceiptWrite};

const MAILBOX_CAPACITY: usize = 4096;
const MAX_CLIENT_MSG_ID_CHARS: usize = 64;
/// Receipts are pushed to every member only in rooms up to this size. In a larger room every
/// member reading would send a receipt to every other member (quadratic: a 300-member room where
/// everyone reads once a second is 90,000 events a second, which the swarm's city scenario showed
/// swamping a node); there only the reader's own devices get the receipt, and the markers are in
/// the room list for whoever looks.
const RECEIPT_BROADCAST_MAX_MEMBERS: usize = 32;

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
}

/// What to answer once an append is durable.
enum OnCommit {
    Sent,
    Ok,
}

impl RoomActor {
    pub fn new(state: RoomState, hub: Arc<Hub>) -> Self {
        Self {
            id: state.meta.id,
            kind: state.meta.kind,
            members: state.members.iter().map(|m| (m.user, m.role)).collect(),
            last_seq: state.last_seq,
            hub,
            last_activity: Instant::now(),
        }
    }

    fn member_list(&self) -> Vec<UserId> {
        self.members.keys().copied().collect()
    }

    fn role_of(&self, user: UserId) -> ApiResult<Role> {
        self.members.get(&user).copied().ok_or_else(ApiError::not_a_member)
    }

    fn require_group(&self) -> ApiResult<()> {
        match self.kind {
            RoomKind::Group => Ok(()),
            RoomKind::Direct => Err(ApiError::forbidden("direct rooms have exactly their two members")),
        }
    }

    fn require_manager(&self, user: UserId) -> ApiResult<Role> {
        self.require_group()?;
        let role = self.role_of(user)?;
        if role.can_manage() { Ok(role) } else { Err(ApiError::forbidden("only owners and admins may do this")) }
    }

    fn check_text(&self, text: &str) -> ApiResult<()> {
        if text.trim().is_empty() {
            return Err(ApiError::invalid("text is empty"));
        }
        let max = self.hub.limits.max_message_bytes;
        if text.len() > max {
            return Err(ApiError::new(Code::PayloadTooLarge, format!("text is {} bytes; at most {max}", text.len())));
        }
        Ok(())
    }

    fn check_seq(&self, seq: u64) -> ApiResult<()> {
        if seq == 0 || seq > self.last_seq {
            return Err(ApiError::not_found(format!("no entry {seq} in this room")));
        }
        Ok(())
    }

    /// Validates an op and turns it into the entry body, its effect and its recipients. Membership
    /// effects are applied to `self.members` here (see the module invariants).
    fn plan(&mut self, user: UserId, op: RoomOp) -> ApiResult<Planned> {
        let role = self.role_of(user)?;
        let everyone = |act: &Self| act.member_list();
        let planned = match op {
            RoomOp::Send { client_msg_id, text, reply_to_seq } => {
                self.check_text(&text)?;
                if client_msg_id.chars().count() > MAX_CLIENT_MSG_ID_CHARS {
                    return Err(ApiError::invalid(format!("client_msg_id is longer than {MAX_CLIENT_MSG_ID_CHARS}")));
                }
                if reply_to_seq != 0 {
                    self.check_seq(reply_to_seq)?;
                }
                let body = EntryBody::Text(TextMessage { text, client_msg_id, reply_to_seq, ..Default::default() });
                Planned { body, effect: Effect::None, recipients: everyone(self), on_commit: OnCommit::Sent }
            }
            RoomOp::Edit { seq, text } => {
                self.check_text(&text)?;
                self.check_seq(seq)?;
                let effect = Effect::Edit { target_seq: seq, editor: user, text: text.clone(), at_ms: now_ms() };
                let body = EntryBody::Edited { target_seq: seq, text };
                Planned { body, effect, recipients: everyone(self), on_commit: OnCommit::Sent }
            }
            RoomOp::Delete { seq } => {
                self.check_seq(seq)?;
                let by_moderator = self.kind == RoomKind::Group && role.can_manage();
                let effect = Effect::Delete { target_seq: seq, by: user, by_moderator };
                Planned {
                    body: EntryBody::Deleted { target_seq: seq },
                    effect,
                    recipients: everyone(self),
                    on_commit: OnCommit::Sent,
                }
            }
            RoomOp::AddMembers(users) => {
                self.require_manager(user)?;
                let mut added: Vec<UserId> = users.into_iter().filter(|u| !self.members.contains_key(u)).collect();
                added.sort_unstable();
                added.dedup();
                if added.is_empty() {
                    return Err(ApiError::invalid("everyone named is a member already"));
                }
                if self.members.len() + added.len() > self.hub.limits.max_group_members {
                    return Err(ApiError::invalid(format!(
                        "a group has at most {} members",
                        self.hub.limits.max_group_members
                    )));
                }
                // That the users exist was checked before the request got here (`transport::dispatch`).
                for &u in &added {
                    self.members.insert(u, Role::Member);
                }
                Planned {
                    body: EntryBody::MembersAdded(added.clone()),
                    effect: Effect::AddMembers(added),
                    recipients: everyone(self),
                    on_commit: OnCommit::Ok,
                }
            }
            RoomOp::RemoveMember(target) => {
                let my_role = self.require_manager(user)?;
                let target_role = self.role_of(target).map_err(|_| ApiError::not_found("not a member"))?;
                if target == user {
                    return Err(ApiError::invalid("use leave to leave a room"));
                }
                if target_role >= my_role {
                    return Err(ApiError::forbidden("you may only remove members below your role"));
                }
                let recipients = everyone(self);
                self.members.remove(&target);
                Planned {
                    body: EntryBody::MemberRemoved(target),
                    effect: Effect::RemoveMember(target),
                    recipients,
                    on_commit: OnCommit::Ok,
                }
            }
            RoomOp::Leave => {
                self.require_group()?;
                let recipients = everyone(self);
                self.members.remove(&user);
                Planned {
                    body: EntryBody::MemberLeft(user),
                    effect: Effect::RemoveMember(user),
                    recipients,
                    on_commit: OnCommit::Ok,
                }
            }
            RoomOp::Rename(name) => {
                self.require_manager(user)?;
                let name = validate_room_name(&name, self.hub.limits.max_room_name_chars)?;
                Planned {
                    body: EntryBody::Renamed(name.clone()),
                    effect: Effect::Rename(name),
                    recipients: everyone(self),
                    on_commit: OnCommit::Ok,
                }
            }
            RoomOp::SetRole(target, new_role) => {
                self.require_group()?;
                if role != Role::Owner {
                    return Err(ApiError::forbidden("only the owner may change roles"));
                }
                if new_role == Role::Owner {
                    return Err(ApiError::invalid("a room has one owner; choose member or admin"));
                }
                if target == user {
                    return Err(ApiError::invalid("the owner's role cannot change"));
                }
                self.role_of(target).map_err(|_| ApiError::not_found("not a member"))?;
                self.members.insert(target, new_role);
                Planned {
                    body: EntryBody::RoleChanged(target, new_role),
                    effect: Effect::SetRole(target, new_role),
                    recipients: everyone(self),
                    on_commit: OnCommit::Ok,
                }
            }
            RoomOp::History(_) | RoomOp::Typing { .. } | RoomOp::Receipt { .. } => {
                unreachable!("handled without an entry")
            }
        };
        Ok(planned)
    }

    /// Assigns the next seq and submits the entry; answers once it is durable.
    fn append(&mut self, user: UserId, op: RoomOp, replier: Replier, ctx: &mut Context<Self>) {
        let members_before = self.members.clone();
        let planned = match self.plan(user, op) {
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
        });
        let registry = &self.hub.registry;
        let push = self.hub.push.fanout(&entry, &planned.recipients, |u| registry.is_online(u));
        let pushed_to = push.as_ref().map(|p| (p.users.clone(), p.due_at_ms));
        let revised_preview = self.hub.push.revised_preview(&entry);
        let append = Append {
            entry: entry.clone(),
            recipients: planned.recipients,
            effect: planned.effect,
            push,
            revised_preview,
        };
        let committed = match self.hub.store.submit_append(append) {
            Ok(future) => future,
            Err(e) => {
                // Nothing was queued: undo the membership change and keep the seq.
                self.members = members_before;
                return replier.error(e.into());
            }
        };
        self.last_seq = entry.seq;
        let on_commit = planned.on_commit;
        ctx.spawn(committed.into_actor(self).map(move |outcome, act, ctx| {
            if let (Ok(AppendOutcome::Committed { .. }), Some((users, due_at_ms))) = (&outcome, &pushed_to) {
                act.hub.push.queued(users, *due_at_ms);
            }
            act.on_committed(entry, outcome, on_commit, replier, ctx);
        }));
    }

    fn on_committed(
        &mut self,
        entry: Arc<RoomEntry>,
        outcome: crate::store::StoreResult<AppendOutcome>,
        on_commit: OnCommit,
        replier: Replier,
        ctx: &mut Context<Self>,
    ) {
        let sent = |seq, message_id, sent_at_ms, duplicate| {
            ReplyBody::Sent(SentAck { room: entry.room, seq, message_id, sent_at_ms, duplicate })
        };
        match outcome {
            Ok(AppendOutcome::Committed { positions }) => {
                METRICS.messages_committed_total.inc();
                let answer = match on_commit {
                    OnCommit::Sent => sent(entry.seq, entry.id, entry.sent_at_ms, false),
                    OnCommit::Ok => ReplyBody::Ok,
                };
                replier.reply(Ok(answer));
                self.hub.deliver(&positions, &StreamEvent::Entry(entry));
            }
            Ok(AppendOutcome::Duplicate { seq, id, sent_at_ms }) => {
                replier.reply(Ok(sent(seq, id, sent_at_ms, true)));
            }
            Ok(AppendOutcome::TargetNotFound) => {
                replier.error(ApiError::not_found("no such message (or it was deleted)"));
            }
            Ok(AppendOutcome::NotAllowed) => {
                replier.error(ApiError::forbidden("not your message"));
            }
            Ok(AppendOutcome::SeqTaken) => {
                tracing::warn!(room = %self.id, seq = entry.seq, "seq taken by another writer; reloading room");
                replier
                    .error(ApiError { retry_after_ms: 100, ..ApiError::new(Code::Unavailable, "room moved; retry") });
                ctx.stop();
            }
            Err(e) => {
                tracing::warn!(room = %self.id, seq = entry.seq, error = %e, "append failed; reloading room");
                replier.error(e.into());
                ctx.stop();
            }
        }
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

struct Planned {
    body: EntryBody,
    effect: Effect,
    recipients: Vec<UserId>,
    on_commit: OnCommit,
}

pub(crate) fn validate_room_name(name: &str, max_chars: usize) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > max_chars {
        return Err(ApiError::invalid(format!("a room name has 1 to {max_chars} characters")));
    }
    Ok(name.to_owned())
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        METRICS.rooms_active.inc();
        let idle = Duration::from_secs(self.hub.limits.room_idle_secs.max(1));
        ctx.run_interval(idle.min(Duration::from_secs(30)), move |act, ctx| {
            if act.last_activity.elapsed() >= idle {
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
        match op {
            RoomOp::History(page) => self.history(user, page, replier, ctx),
            RoomOp::Typing { active } => self.typing(user, active, replier),
            RoomOp::Receipt { kind, up_to_seq } => self.receipt(user, kind, up_to_seq, replier, ctx),
            op => self.append(user, op, replier, ctx),
        }
    }
}

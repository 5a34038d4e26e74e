//! Appending to a room's log on ScyllaDB, fenced without a lightweight transaction per message.
//!
//! The room's writer claimed it (`claim_room`: the epoch + 1 by a lightweight transaction, and where
//! it starts). Each append then:
//! 1. checks what it can against the writer's own view (a duplicate `clientMsgId`, a seq already
//!    used, the message an edit or a reply names);
//! 2. writes its bucket's listing, its sender and its `clientMsgId` row, then the entry keyed
//!    `(room, bucket), seq, epoch` at QUORUM (two writers never overwrite each other). No logged
//!    batch: its parts become visible one by one anyway, and a batch log held up by one dead
//!    replica stalls every write until the cluster notices. So the order carries the meaning: an
//!    entry that is visible has its `clientMsgId` row visible too, and a `clientMsgId` row counts
//!    only with its entry (a write cut short between the two left the row alone);
//! 3. reads the room's epoch at QUORUM: if another writer claimed the room since, the append is
//!    `Fenced` (its row counts only if the new writer saw it, and then the new writer fans it out);
//! 4. applies the entry's effect;
//! 5. puts it into each recipient's stream (`streams.rs`), revises and queues its pushes, and
//!    records how far the room's fan-out went.
//!
//! Steps 1-4 are the entry's logging, step 5 its fan-out. Each room has two lanes, one per part,
//! and its appends pass through both in the order they were submitted: every recipient's stream
//! gets the room's entries in seq order, and the next entry can be logged while this one fans out;
//! rooms run side by side. An entry for fewer than `fanout_after_ack_from` recipients is answered
//! after its fan-out (`Committed`). A larger message is answered once logged (`Logged`): a room of
//! 10,000 members does not make its sender wait for 10,000 stream writes. (Edits, deletes and
//! membership changes are always answered after their fan-out: it revises pending pushes.) It is listed in
//! `rooms_behind` first, so that if this process dies before the fan-out is done, the room's next
//! claim finishes it (someone looks: `RoomStore::rooms_behind`). A claim of the room takes its
//! turn in both lanes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::fence::Claims;
use super::rooms::entry_insert_values;
use super::streams::StoredEvent;
use super::{ScyllaStore, id};
use crate::domain::{EntryBody, EventRef, RoomId};
use crate::store::{Append, AppendOutcome, Effect, LateFanout, Positions, StoreError, StoreErrorKind, StoreResult};

/// Appends submitted and not yet done, over all rooms; beyond this, `submit_append` answers Busy.
const MAX_IN_FLIGHT: usize = 8192;

/// A room's writer as this process knows it: its epoch, the log's claims, the last seq it used.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    epoch: u64,
    claims: Claims,
    last_seq: u64,
    /// An append of this writer failed or was fenced: it may have left an entry half fanned out,
    /// and a later append must not pass over it (the fan-out mark would skip it). Its appends are
    /// refused from then on; the next writer's claim finishes the fan-out.
    broken: bool,
}

/// The two lanes every append of a room passes through, in this order.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lane {
    /// Checks, the entry and its effect.
    Log = 0,
    /// Streams, pushes and the fan-out mark.
    Fanout = 1,
}

/// Per room: the ticket of the lane's newest comer and the signal that it is done.
type LaneMap = HashMap<RoomId, (u64, oneshot::Receiver<()>)>;

/// A place in a room's lane, waiting for its turn.
pub(super) struct Place {
    lane: Lane,
    room: RoomId,
    ticket: u64,
    previous: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

/// A room's lane is this one's until it leaves (or is dropped).
pub(super) struct Turn {
    lane: Lane,
    room: RoomId,
    ticket: u64,
    done: oneshot::Sender<()>,
}

impl Place {
    pub(super) async fn wait(self) -> Turn {
        if let Some(previous) = self.previous {
            // Done or dropped: either way, what entered before is over.
            let _ = previous.await;
        }
        Turn { lane: self.lane, room: self.room, ticket: self.ticket, done: self.done }
    }
}

/// Per room, two lanes (`Lane`): in each, its appends, and a claim's completion of the fan-out,
/// run one at a time in this process, in the order they entered. A claim that finishes a fan-out
/// therefore never races an append of this process still fanning out the same entry (across
/// processes, the streams' leases keep such a race from writing an event twice).
#[derive(Default)]
pub(super) struct Appends {
    /// Per lane.
    lanes: [Mutex<LaneMap>; 2],
    writers: Mutex<HashMap<RoomId, Writer>>,
    tickets: AtomicU64,
    in_flight: AtomicUsize,
}

impl Appends {
    /// This process claimed `room` under `epoch`, with the log's claims as of then.
    pub(super) fn claimed(&self, room: RoomId, epoch: u64, claims: Claims) {
        let last_seq = claims.start_of(epoch).saturating_sub(1);
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if writers.get(&room).is_none_or(|w| w.epoch < epoch) {
            writers.insert(room, Writer { epoch, claims, last_seq, broken: false });
        }
    }

    /// Takes a place in one of the room's lanes: what entered before goes first.
    pub(super) fn enter(&self, room: RoomId, lane: Lane) -> Place {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (done, signal) = oneshot::channel::<()>();
        let mut lanes = self.lanes[lane as usize].lock().unwrap_or_else(|e| e.into_inner());
        let previous = lanes.insert(room, (ticket, signal)).map(|(_, signal)| signal);
        Place { lane, room, ticket, previous, done }
    }

    /// The room to oneself, in both lanes: after every append that entered before.
    pub(super) async fn enter_both(&self, room: RoomId) -> [Turn; 2] {
        let log = self.enter(room, Lane::Log).wait().await;
        // Every earlier append has left the log lane, so its place in the fan-out lane is taken.
        let fanout = self.enter(room, Lane::Fanout).wait().await;
        [log, fanout]
    }

    /// Leaves the lane (dropping a `Turn` lets the next one go too, but keeps the lane listed).
    pub(super) fn leave(&self, turn: Turn) {
        let Turn { lane, room, ticket, done } = turn;
        drop(done);
        let mut lanes = self.lanes[lane as usize].lock().unwrap_or_else(|e| e.into_inner());
        if lanes.get(&room).is_some_and(|(t, _)| *t == ticket) {
            lanes.remove(&room);
        }
    }

    /// No append is in flight.
    pub(super) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn writer(&self, room: RoomId) -> Option<Writer> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner()).get(&room).cloned()
    }

    fn wrote(&self, room: RoomId, epoch: u64, seq: u64) {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = writers.get_mut(&room).filter(|w| w.epoch == epoch) {
            w.last_seq = w.last_seq.max(seq);
        }
    }

    /// The writer of `epoch` writes no more (see `Writer::broken`).
    fn break_writer(&self, room: RoomId, epoch: u64) {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        match writers.get_mut(&room) {
            Some(w) if w.epoch == epoch => w.broken = true,
            Some(w) if w.epoch > epoch => {}
            _ => {
                let broken = Writer { epoch, claims: Claims::default(), last_seq: u64::MAX, broken: true };
                writers.insert(room, broken);
            }
        }
    }
}

impl ScyllaStore {
    /// Queues an append behind the room's earlier ones and starts it; the future is its outcome.
    pub(super) fn submit(&self, append: Append) -> StoreResult<BoxFuture<'static, StoreResult<AppendOutcome>>> {
        self.check_open()?;
        let appends = &self.appends;
        if appends.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            appends.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::new(StoreErrorKind::Busy, "too many appends in flight"));
        }
        let room = append.entry.room;
        let place = appends.enter(room, Lane::Log);
        let (reply, outcome) = oneshot::channel();
        let store = self.clone();
        tokio::spawn(async move {
            store.run_append(append, place, reply).await;
            store.appends.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(Box::pin(
            async move { outcome.await.unwrap_or_else(|_| Err(StoreError::unavailable("the append was dropped"))) },
        ))
    }

    /// Logs the append in its turn, then fans it out in its turn; answers after the one or the
    /// other (see the module's notes).
    async fn run_append(&self, append: Append, place: Place, reply: oneshot::Sender<StoreResult<AppendOutcome>>) {
        let (room, seq, epoch) = (append.entry.room, append.entry.seq, append.epoch);
        let turn = place.wait().await;
        // Only plain messages: an edit or a delete is answered once its fan-out has revised or
        // withdrawn the pushes still waiting for its target, so that none goes out as it was.
        let after_ack = append.effect == Effect::None && append.recipients.len() >= self.options.fanout_after_ack_from;
        let logged = self.log_append(&append, after_ack).await;
        let logged = match logged {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(Ok(refused)),
            Err(e) => {
                self.appends.break_writer(room, epoch);
                Err(Err(e))
            }
        };
        if let Err(answer) = logged {
            tracing::debug!(%room, seq, epoch, outcome = ?answer, "append not logged");
            self.appends.leave(turn);
            let _ = reply.send(answer);
            return;
        }
        // Its place in the fan-out lane before it leaves the log lane: the fan-outs keep seq order.
        let place = self.appends.enter(room, Lane::Fanout);
        self.appends.leave(turn);
        // Answered now, with the positions to come; or after the fan-out, with them.
        let answer = match after_ack {
            true => {
                let (done, fanout) = LateFanout::new();
                let _ = reply.send(Ok(AppendOutcome::Logged { fanout }));
                Err(done)
            }
            false => Ok(reply),
        };
        let turn = place.wait().await;
        let fanned_out = self.fan_out(&append, after_ack).await;
        if fanned_out.is_err() {
            self.appends.break_writer(room, epoch);
        }
        tracing::debug!(%room, seq, epoch, after_ack, outcome = ?fanned_out, "append fanned out");
        self.appends.leave(turn);
        match answer {
            Err(done) => {
                let _ = done.send(fanned_out);
            }
            Ok(reply) => {
                let _ = reply.send(fanned_out.map(|positions| AppendOutcome::Committed { positions }));
            }
        }
    }

    /// The writer an append names, or why it cannot write.
    async fn writer_for(&self, append: &Append) -> StoreResult<Result<Writer, AppendOutcome>> {
        let room = append.entry.room;
        if let Some(writer) = self.appends.writer(room) {
            if writer.epoch == append.epoch && !writer.broken {
                return Ok(Ok(writer));
            }
            if writer.epoch == append.epoch {
                return Ok(Err(AppendOutcome::Fenced));
            }
            if writer.epoch > append.epoch {
                return Ok(Err(AppendOutcome::Fenced));
            }
        }
        // Claimed through another handle on the same keyspace: learn the claim from the store.
        let claims = self.room_claims(room).await?;
        let start = claims.start_of(append.epoch);
        if start == 0 || !claims.counts(append.epoch, u64::MAX) {
            return Ok(Err(AppendOutcome::Fenced));
        }
        self.appends.claimed(room, append.epoch, claims);
        Ok(self.appends.writer(room).filter(|w| w.epoch == append.epoch).ok_or(AppendOutcome::Fenced))
    }

    /// Checks the append, writes the entry (listing the room as behind first when its fan-out
    /// comes after the acknowledgement) and applies its effect; or says why it was refused.
    async fn log_append(&self, append: &Append, after_ack: bool) -> StoreResult<Result<(), AppendOutcome>> {
        let entry = &append.entry;
        let room = entry.room;
        let writer = match self.writer_for(append).await? {
            Ok(writer) => writer,
            Err(outcome) => return Ok(Err(outcome)),
        };
        if let Some(outcome) = self.refused(append, &writer).await? {
            return Ok(Err(outcome));
        }
        if after_ack {
            self.list_behind(room, entry.seq).await?;
        }
        if let EntryBody::Text(message) = &entry.body {
            self.link_media(room, &message.media).await?;
        }
        self.write_entry(append).await?;
        if self.room_epoch(room).await? != append.epoch {
            self.appends.break_writer(room, append.epoch);
            return Ok(Err(AppendOutcome::Fenced));
        }
        self.appends.wrote(room, append.epoch, entry.seq);
        self.apply_effect(room, &append.effect, &writer.claims).await?;
        Ok(Ok(()))
    }

    /// Puts a logged entry into its recipients' streams, revises and queues pushes, and moves the
    /// room's fan-out mark; the positions the entry got.
    async fn fan_out(&self, append: &Append, listed_behind: bool) -> StoreResult<Positions> {
        let entry = &append.entry;
        let room = entry.room;
        let writer = match self.appends.writer(room) {
            Some(writer) if writer.epoch == append.epoch && !writer.broken => writer,
            // An earlier fan-out of this writer failed: passing it would move the mark over it.
            _ => {
                return Err(StoreError::unavailable(
                    "an earlier fan-out in this room failed; the next claim finishes it",
                ));
            }
        };
        match &append.effect {
            Effect::Edit { target_seq, .. } => {
                if let Some(preview) = &append.revised_preview {
                    self.revise_pushes(room, *target_seq, preview).await?;
                }
            }
            Effect::Delete { target_seq, .. } => self.retract_pushes(room, *target_seq, &writer.claims).await?,
            _ => {}
        }
        let event = StoredEvent { event: EventRef::entry(room, entry.seq), ref_epoch: append.epoch };
        let positions = self.write_events(&append.recipients, event, false).await?;
        if let Some(fanout) = &append.push {
            self.enqueue_pushes(fanout, super::push_queue::PushSource::entry(entry), &positions).await?;
        }
        self.record_fanned_out(room, entry.seq).await?;
        if listed_behind {
            self.unlist_behind(room, entry.seq).await?;
        }
        Ok(positions)
    }

    /// What the writer's view refuses before anything is written.
    async fn refused(&self, append: &Append, writer: &Writer) -> StoreResult<Option<AppendOutcome>> {
        let entry = &append.entry;
        let room = entry.room;
        if let EntryBody::Text(message) = &entry.body {
            if !message.client_msg_id.is_empty() {
                let values = (id(room.0), id(entry.sender.0), &message.client_msg_id);
                let earlier = self.rows::<(i64, i64, i64, i64)>(&self.rooms.client_msg, values).await?;
                for (epoch, seq, msg_id, sent_at_ms) in earlier {
                    let (epoch, seq) = (epoch as u64, seq as u64);
                    // It counts only with its entry: a send cut short may have written the row alone.
                    if writer.claims.counts(epoch, seq) && self.entry_row(room, seq, epoch).await?.is_some() {
                        // Only the room's writer may say so: a writer fenced meanwhile knows
                        // nothing of newer claims, under which that row may not count.
                        if self.room_epoch(room).await? != append.epoch {
                            self.appends.break_writer(room, append.epoch);
                            return Ok(Some(AppendOutcome::Fenced));
                        }
                        return Ok(Some(AppendOutcome::Duplicate { seq, id: msg_id as u64, sent_at_ms }));
                    }
                }
            }
            if message.reply_to_seq != 0
                && self.standing_message(room, message.reply_to_seq, &writer.claims).await?.is_none()
            {
                return Ok(Some(AppendOutcome::TargetNotFound));
            }
        }
        if entry.seq <= writer.last_seq {
            return Ok(Some(AppendOutcome::SeqTaken));
        }
        let (target_seq, actor, may_any) = match &append.effect {
            Effect::Edit { target_seq, editor, .. } => (*target_seq, *editor, false),
            Effect::Delete { target_seq, by, by_moderator } => (*target_seq, *by, *by_moderator),
            _ => return Ok(None),
        };
        Ok(match self.standing_message(room, target_seq, &writer.claims).await? {
            None => Some(AppendOutcome::TargetNotFound),
            Some(target) if target.entry.sender != actor && !may_any => Some(AppendOutcome::NotAllowed),
            Some(_) => None,
        })
    }

    /// The entry's bucket listing, sender and `clientMsgId` rows, then the entry itself.
    async fn write_entry(&self, append: &Append) -> StoreResult<()> {
        let entry = &append.entry;
        let s = &self.rooms;
        let (room, sender) = (id(entry.room.0), id(entry.sender.0));
        let bucket = self.log_bucket(entry.seq);
        let listed = self.execute(&s.list_bucket, (room, bucket));
        match &entry.body {
            EntryBody::Text(message) => {
                let client_msg = async {
                    if message.client_msg_id.is_empty() {
                        return Ok(());
                    }
                    let values = (
                        room,
                        sender,
                        &message.client_msg_id,
                        append.epoch as i64,
                        entry.seq as i64,
                        entry.id as i64,
                        entry.sent_at_ms,
                    );
                    self.execute(&s.insert_client_msg, values).await.map(|_| ())
                };
                let sender_row = self.execute(&s.add_sender, (room, sender));
                futures_util::try_join!(listed, sender_row, client_msg)?;
            }
            _ => {
                listed.await?;
            }
        }
        let values = entry_insert_values(entry, bucket, append.epoch, &append.recipients);
        self.execute(&s.insert_entry, values).await?;
        Ok(())
    }
}

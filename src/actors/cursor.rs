//! A connection's place in its user's stream: the state machine behind `UserActor`, apart from
//! the actor so that it can be driven step by step (and its clock with it) in tests.
//!
//! Invariant: a connection receives stream events in strictly increasing position order with no
//! gap. Every live event is already durable when it arrives, so whenever a connection cannot take
//! an event, or an event seems to be missing, it switches to catching up from the store, and back
//! to live once the store has nothing more for it.
//!
//! States:
//! - `NotSynced`: the client has not sent Sync yet; it gets ephemeral events only.
//! - `CatchingUp`: pages are read from the store and sent; live events are held meanwhile.
//! - `Live`: live events are sent as they come; one ahead of `next_pos` is held until the missing
//!   one arrives or `GAP_WAIT` passes (then: catch up).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::{Notice, Outbound, OutboundBudget, event_bytes};
use crate::domain::StreamEvent;
use crate::metrics::METRICS;
use crate::store::StoreResult;

/// Most live events held per connection while it catches up or waits for a missing event; beyond
/// this they are dropped and read from the store later.
const HELD_EVENTS_CAP: usize = 4096;
/// Pages of a catching-up connection queued at once: one being written, one ready behind it. The
/// connection's queue is bounded in items and a page is one item, so without this a connection
/// that syncs from 0 and never reads would hold its whole queue's worth of pages in memory.
pub(super) const QUEUED_PAGES: usize = 2;
/// How long a live event ahead of a missing one waits before the connection catches up instead.
pub(super) const GAP_WAIT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
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

/// What the connection's actor must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    Nothing,
    /// Read the next page from the store now (`start_read`).
    Read,
    /// The queue was full: read again shortly.
    ReadSoon,
    /// The store failed: read again after a pause.
    ReadLater,
    /// An event is missing: call `check_gap` after `GAP_WAIT`.
    CheckGap,
    /// Behind for longer than the grace period: close the connection (the client resyncs).
    Resync,
}

pub(super) struct Cursor {
    outbound: mpsc::Sender<Outbound>,
    /// The bytes of the events in `outbound`: an event or page that does not fit is read from the
    /// store later, as one that finds the queue full.
    budget: Arc<OutboundBudget>,
    /// Permits for pages in the outbound queue (`QUEUED_PAGES`); a page gives its permit back when
    /// the connection has written it (or dropped it).
    pages: Arc<Semaphore>,
    state: State,
    /// Live events that arrived ahead of `next_pos`.
    held: BTreeMap<u64, StreamEvent>,
    /// Held events were dropped: catching up must not stop before reading past them.
    dropped_held: bool,
    /// The highest position the client acknowledged (for push decisions).
    acked_pos: u64,
}

impl Cursor {
    pub fn new(outbound: mpsc::Sender<Outbound>, budget: Arc<OutboundBudget>) -> Self {
        Self {
            outbound,
            budget,
            pages: Arc::new(Semaphore::new(QUEUED_PAGES)),
            state: State::NotSynced,
            held: BTreeMap::new(),
            dropped_held: false,
            acked_pos: 0,
        }
    }

    /// The connection's queue, for what is not part of the stream (ephemeral events, notices).
    pub fn outbound(&self) -> &mpsc::Sender<Outbound> {
        &self.outbound
    }

    /// The client's Ack of everything up to `pos`: true when that is more than it acknowledged
    /// before (acks may repeat or arrive out of order).
    pub fn ack(&mut self, pos: u64) -> bool {
        let advanced = pos > self.acked_pos;
        self.acked_pos = self.acked_pos.max(pos);
        advanced
    }

    /// The client's Sync: stream from after `after_pos` (read from the store first).
    pub fn sync_from(&mut self, after_pos: u64, now: Instant) {
        self.fall_behind(after_pos + 1, now);
    }

    /// A live event at `pos`.
    pub fn offer(&mut self, pos: u64, event: &StreamEvent, now: Instant) -> Next {
        match &mut self.state {
            State::NotSynced => Next::Nothing,
            State::CatchingUp { .. } => {
                self.hold(pos, event.clone());
                Next::Nothing
            }
            State::Live { next_pos, gap_since } => {
                if pos < *next_pos {
                    return Next::Nothing;
                }
                if pos > *next_pos {
                    let first_gap = gap_since.is_none();
                    gap_since.get_or_insert(now);
                    self.hold(pos, event.clone());
                    return if first_gap { Next::CheckGap } else { Next::Nothing };
                }
                match queue_event(&self.outbound, &self.budget, pos, event) {
                    true => {
                        *next_pos += 1;
                        if self.drain_held(now) { Next::Nothing } else { self.behind(now) }
                    }
                    false => self.behind(now),
                }
            }
        }
    }

    /// `GAP_WAIT` after an event went missing: still missing means catching up from the store.
    pub fn check_gap(&mut self, now: Instant) -> Next {
        match self.state {
            State::Live { next_pos, gap_since: Some(since) } if now.duration_since(since) >= GAP_WAIT => {
                self.fall_behind(next_pos, now);
                Next::Read
            }
            State::Live { gap_since: Some(_), .. } => Next::CheckGap,
            _ => Next::Nothing,
        }
    }

    /// Something addressed to this user was lost on its way (a full mailbox, the bridge away): a
    /// live connection re-reads from the store.
    pub fn missed(&mut self, now: Instant) -> Next {
        match self.state {
            State::Live { next_pos, .. } => {
                self.fall_behind(next_pos, now);
                Next::Read
            }
            _ => Next::Nothing,
        }
    }

    /// Begins reading the next page: the position to read after, unless no read is due (live, or
    /// a read already under way).
    pub fn start_read(&mut self) -> Option<u64> {
        let State::CatchingUp { next_pos, reading, .. } = &mut self.state else { return None };
        if *reading {
            return None;
        }
        *reading = true;
        Some(*next_pos - 1)
    }

    /// The page read after `read_after` (by `start_read`); `grace` is how long a connection may
    /// take nothing before it is told to resync.
    pub fn on_page(
        &mut self,
        read_after: u64,
        result: StoreResult<Vec<(u64, StreamEvent)>>,
        now: Instant,
        grace: Duration,
    ) -> Next {
        let State::CatchingUp { next_pos, reading, .. } = &mut self.state else { return Next::Nothing };
        *reading = false;
        if *next_pos - 1 != read_after {
            // A Sync restarted the stream while this page was being read.
            return Next::Read;
        }
        let next = *next_pos;
        let events = match result {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "catch-up read failed; retrying");
                return Next::ReadLater;
            }
        };
        if events.is_empty() {
            if std::mem::take(&mut self.dropped_held) {
                return Next::Read;
            }
            if self.outbound.try_send(Outbound::Notice(Notice::CaughtUp { pos: next - 1 })).is_err() {
                return self.queue_full(now, grace);
            }
            self.state = State::Live { next_pos: next, gap_since: None };
            return match self.drain_held(now) {
                // From where the held events that did go out left off, not from where the store
                // left off: those would be sent twice.
                false => self.behind(now),
                true if matches!(self.state, State::Live { gap_since: Some(_), .. }) => Next::CheckGap,
                true => Next::Nothing,
            };
        }
        // What fits the byte budget goes now; the rest is read again when there is room.
        let mut events = events;
        let (fit, bytes) = fitting(&events, self.budget.room());
        events.truncate(fit);
        let last = events.last().map_or(next, |(pos, _)| *pos);
        let n = events.len() as u64;
        let Ok(permit) = self.pages.clone().try_acquire_owned() else { return self.queue_full(now, grace) };
        if !queue_within(&self.outbound, &self.budget, bytes, Outbound::Page(events, permit)) {
            return self.queue_full(now, grace);
        }
        METRICS.events_caught_up_total.add(n);
        if let State::CatchingUp { next_pos, behind_since, .. } = &mut self.state {
            // The grace measures time without progress: a long backlog read at the client's pace
            // is fine; a connection that takes nothing is not.
            *behind_since = now;
            *next_pos = last + 1;
        }
        self.held.retain(|pos, _| *pos > last);
        Next::Read
    }

    /// The queue is full while catching up: try again shortly, or give up on the connection once
    /// it has been behind longer than the grace period.
    fn queue_full(&self, now: Instant, grace: Duration) -> Next {
        match self.state {
            State::CatchingUp { behind_since, .. } if now.duration_since(behind_since) > grace => Next::Resync,
            _ => Next::ReadSoon,
        }
    }

    fn hold(&mut self, pos: u64, event: StreamEvent) {
        if self.held.len() < HELD_EVENTS_CAP {
            self.held.insert(pos, event);
        } else {
            self.dropped_held = true;
        }
    }

    /// Sends held events that are next in line. False if the queue was full.
    fn drain_held(&mut self, now: Instant) -> bool {
        let State::Live { next_pos, gap_since } = &mut self.state else { return true };
        while let Some(entry) = self.held.first_entry() {
            let pos = *entry.key();
            if pos < *next_pos {
                entry.remove();
                continue;
            }
            if pos > *next_pos {
                gap_since.get_or_insert(now);
                return true;
            }
            match queue_event(&self.outbound, &self.budget, pos, entry.get()) {
                true => {
                    entry.remove();
                    *next_pos += 1;
                }
                false => return false,
            }
        }
        *gap_since = None;
        true
    }

    /// A live connection could not take an event: it catches up from the store instead, from the
    /// first event it did not get.
    fn behind(&mut self, now: Instant) -> Next {
        if let State::Live { next_pos, .. } = self.state {
            self.fall_behind(next_pos, now);
            METRICS.slow_consumers_total.inc();
        }
        Next::ReadSoon
    }

    fn fall_behind(&mut self, next_pos: u64, now: Instant) {
        self.state = State::CatchingUp { next_pos, reading: false, behind_since: now };
        self.held.clear();
        self.dropped_held = false;
    }
}

/// Queues a live event if it fits both the queue and the byte budget.
fn queue_event(outbound: &mpsc::Sender<Outbound>, budget: &OutboundBudget, pos: u64, event: &StreamEvent) -> bool {
    queue_within(outbound, budget, event_bytes(event), Outbound::Event(pos, event.clone()))
}

/// Queues `item` of `bytes` if it fits both the queue and the byte budget.
fn queue_within(outbound: &mpsc::Sender<Outbound>, budget: &OutboundBudget, bytes: usize, item: Outbound) -> bool {
    if !budget.try_add(bytes) {
        return false;
    }
    if outbound.try_send(item).is_err() {
        budget.written(bytes);
        return false;
    }
    true
}

/// How many of a page's first events fit in `room` bytes, at least one (an empty queue takes any
/// event), and their bytes.
fn fitting(events: &[(u64, StreamEvent)], room: usize) -> (usize, usize) {
    let (mut fit, mut bytes) = (0, 0);
    for (_, event) in events {
        let size = event_bytes(event);
        if fit > 0 && bytes + size > room {
            break;
        }
        fit += 1;
        bytes += size;
    }
    (fit, bytes)
}

#[cfg(test)]
mod tests {
    //! The cursor driven step by step: a store of durable positions, a client that reads its
    //! queue when told to, and a clock that moves only when told to. What the client got is
    //! written `1 2` (live events), `[3 4]` (a page), `^4` (caught up to 4).

    use super::*;
    use crate::domain::{Receipt, ReceiptKind, RoomId, UserId};
    use crate::store::StoreError;

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Events up to here are durable.
        Durable(u64),
        Sync(u64),
        /// A live event at this position.
        Offer(u64),
        /// The client takes this many items off its queue (`usize::MAX`: all).
        Client(usize),
        /// Time passes; whatever the cursor asked to do by then is done.
        Tick(u64),
        Missed,
        /// The next store read fails.
        FailRead,
    }
    use Step::*;

    const ALL: usize = usize::MAX;

    struct Harness {
        cursor: Cursor,
        queue: mpsc::Receiver<Outbound>,
        now: Instant,
        head: u64,
        page: usize,
        grace: Duration,
        fail_read: bool,
        /// What the cursor asked for, and when.
        later: Vec<(Instant, Next)>,
        got: Vec<String>,
        resynced: bool,
    }

    fn event(pos: u64) -> StreamEvent {
        StreamEvent::Receipt(Receipt { room: RoomId(1), user: UserId(1), kind: ReceiptKind::Read, up_to_seq: pos })
    }

    impl Harness {
        fn new(queue_capacity: usize, page: usize) -> Self {
            let (tx, queue) = mpsc::channel(queue_capacity);
            Self {
                cursor: Cursor::new(tx, Arc::new(OutboundBudget::new(usize::MAX / 2))),
                queue,
                now: Instant::now(),
                head: 0,
                page,
                grace: Duration::from_secs(2),
                fail_read: false,
                later: Vec::new(),
                got: Vec::new(),
                resynced: false,
            }
        }

        fn run(&mut self, steps: &[Step]) {
            for &step in steps {
                match step {
                    Durable(head) => self.head = head,
                    Sync(after) => {
                        self.cursor.sync_from(after, self.now);
                        self.follow(Next::Read);
                    }
                    Offer(pos) => {
                        let next = self.cursor.offer(pos, &event(pos), self.now);
                        self.follow(next);
                    }
                    Client(n) => {
                        for _ in 0..n {
                            match self.queue.try_recv() {
                                Ok(item) => self.got.push(shown(item)),
                                Err(_) => break,
                            }
                        }
                    }
                    Tick(ms) => self.tick(Duration::from_millis(ms)),
                    Missed => {
                        let next = self.cursor.missed(self.now);
                        self.follow(next);
                    }
                    FailRead => self.fail_read = true,
                }
            }
        }

        /// Does what the cursor asked: a read at once, the rest when its time comes.
        fn follow(&mut self, next: Next) {
            match next {
                Next::Nothing => {}
                Next::Read => self.read(),
                Next::ReadSoon => self.later.push((self.now + Duration::from_millis(50), Next::Read)),
                Next::ReadLater => self.later.push((self.now + Duration::from_secs(1), Next::Read)),
                Next::CheckGap => self.later.push((self.now + GAP_WAIT, Next::CheckGap)),
                Next::Resync => self.resynced = true,
            }
        }

        fn read(&mut self) {
            let Some(after) = self.cursor.start_read() else { return };
            let result = match std::mem::take(&mut self.fail_read) {
                true => Err(StoreError::unavailable("the disk is gone")),
                false => Ok((after + 1..=self.head).take(self.page).map(|pos| (pos, event(pos))).collect()),
            };
            let next = self.cursor.on_page(after, result, self.now, self.grace);
            self.follow(next);
        }

        fn tick(&mut self, by: Duration) {
            let until = self.now + by;
            while let Some(i) =
                (0..self.later.len()).filter(|&i| self.later[i].0 <= until).min_by_key(|&i| self.later[i].0)
            {
                let (at, what) = self.later.remove(i);
                self.now = self.now.max(at);
                match what {
                    Next::CheckGap => {
                        let next = self.cursor.check_gap(self.now);
                        self.follow(next);
                    }
                    _ => self.follow(what),
                }
            }
            self.now = until;
        }
    }

    fn shown(item: Outbound) -> String {
        let pos = |event: &StreamEvent| match event {
            StreamEvent::Receipt(r) => r.up_to_seq,
            StreamEvent::Entry(e) => e.seq,
            StreamEvent::Post { post, .. } => post.0,
            StreamEvent::Activity(a) => a.id,
            StreamEvent::Notification(n) => n.id,
        };
        match item {
            Outbound::Event(at, e) => {
                assert_eq!(at, pos(&e));
                at.to_string()
            }
            // The page's permit goes back as the client writes it.
            Outbound::Page(events, _permit) => {
                format!("[{}]", events.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(" "))
            }
            Outbound::Notice(Notice::CaughtUp { pos }) => format!("^{pos}"),
            other => format!("{other:?}"),
        }
    }

    /// (what, queue capacity, page size, steps, what the client got, told to resync)
    type Case = (&'static str, usize, usize, &'static [Step], &'static str, bool);

    const CASES: &[Case] = &[
        ("before Sync, live events are not sent", 8, 10, &[Offer(1), Client(ALL)], "", false),
        ("Sync from 0 on an empty stream goes live at once", 8, 10, &[Sync(0), Client(ALL)], "^0", false),
        (
            "Sync reads the backlog in pages, then goes live",
            8,
            2,
            &[Durable(5), Sync(0), Client(ALL), Tick(50), Client(ALL), Durable(6), Offer(6), Client(ALL)],
            "[1 2] [3 4] [5] ^5 6",
            false,
        ),
        (
            "Sync from a position reads only what follows it",
            8,
            10,
            &[Durable(5), Sync(3), Client(ALL)],
            "[4 5] ^5",
            false,
        ),
        (
            "live events go out in order; old ones are not sent again",
            8,
            10,
            &[Sync(0), Offer(1), Offer(2), Offer(1), Client(ALL)],
            "^0 1 2",
            false,
        ),
        (
            "an event ahead of a missing one waits for it",
            8,
            10,
            &[Sync(0), Durable(2), Offer(2), Tick(100), Offer(1), Client(ALL), Tick(1000), Client(ALL)],
            "^0 1 2",
            false,
        ),
        (
            "a gap still open after GAP_WAIT is read from the store",
            8,
            10,
            &[Sync(0), Durable(2), Offer(2), Tick(299), Client(ALL), Tick(1), Client(ALL)],
            "^0 [1 2] ^2",
            false,
        ),
        (
            "events live while catching up are held, then sent after the page",
            8,
            10,
            &[Durable(2), Sync(0), Durable(3), Offer(3), Client(ALL)],
            "[1 2] ^2 3",
            false,
        ),
        (
            "a full queue falls behind and resumes from the first event not sent",
            2,
            10,
            &[Sync(0), Client(ALL), Durable(3), Offer(1), Offer(2), Offer(3), Client(ALL), Tick(50), Client(ALL)],
            "^0 1 2 [3] ^3",
            false,
        ),
        (
            "a page waits for a free page permit, not for the client",
            16,
            1,
            &[Durable(4), Sync(0), Tick(200), Client(1), Tick(50), Client(ALL), Tick(50), Client(ALL)],
            "[1] [2] [3] [4] ^4",
            false,
        ),
        (
            "a connection that takes nothing for longer than the grace is told to resync",
            1,
            1,
            &[Durable(3), Sync(0), Tick(1500), Tick(1500)],
            "",
            true,
        ),
        (
            "a slow connection that keeps taking pages is never told to resync",
            1,
            1,
            &[
                Durable(4),
                Sync(0),
                Tick(1500),
                Client(1),
                Tick(1500),
                Client(1),
                Tick(1500),
                Client(1),
                Tick(1500),
                Client(ALL),
                Tick(50),
                Client(ALL),
            ],
            "[1] [2] [3] [4] ^4",
            false,
        ),
        (
            "a failed store read is retried after a pause",
            8,
            10,
            &[Durable(2), FailRead, Sync(0), Client(ALL), Tick(999), Client(ALL), Tick(1), Client(ALL)],
            "[1 2] ^2",
            false,
        ),
        (
            "a missed event makes a live connection read the store",
            8,
            10,
            &[Sync(0), Client(ALL), Durable(2), Missed, Client(ALL), Offer(1), Offer(2), Offer(3), Client(ALL)],
            "^0 [1 2] ^2 3",
            false,
        ),
    ];

    #[test]
    fn the_cursor_table() {
        for &(what, capacity, page, steps, expected, resync) in CASES {
            let mut harness = Harness::new(capacity, page);
            harness.run(steps);
            assert_eq!(harness.got.join(" "), expected, "{what}");
            assert_eq!(harness.resynced, resync, "{what}: told to resync");
        }
    }

    #[test]
    fn acks_only_ever_advance() {
        let mut cursor = Harness::new(1, 1).cursor;
        let table = [(3, true), (3, false), (2, false), (0, false), (4, true), (10, true), (9, false)];
        for (pos, advanced) in table {
            assert_eq!(cursor.ack(pos), advanced, "ack {pos}");
        }
    }

    #[test]
    fn a_sync_during_a_read_restarts_from_its_own_position() {
        let mut harness = Harness::new(8, 10);
        harness.head = 5;
        harness.cursor.sync_from(0, harness.now);
        let stale = harness.cursor.start_read().unwrap();
        harness.cursor.sync_from(3, harness.now);
        let page = Ok((1..=5).map(|pos| (pos, event(pos))).collect());
        assert_eq!(harness.cursor.on_page(stale, page, harness.now, harness.grace), Next::Read);
        harness.follow(Next::Read);
        harness.run(&[Client(ALL)]);
        assert_eq!(harness.got.join(" "), "[4 5] ^5");
    }

    #[test]
    fn held_events_beyond_the_cap_are_read_from_the_store_before_going_live() {
        let cap = HELD_EVENTS_CAP as u64;
        let mut harness = Harness::new(8, 10);
        harness.head = cap + 10;
        harness.cursor.sync_from(0, harness.now);
        let reading = harness.cursor.start_read().unwrap();
        for pos in 1..=cap + 10 {
            assert_eq!(harness.cursor.offer(pos, &event(pos), harness.now), Next::Nothing);
        }
        // The store had nothing yet when the read began; the held events do not all fit.
        let next = harness.cursor.on_page(reading, Ok(Vec::new()), harness.now, harness.grace);
        assert_eq!(next, Next::Read, "not live yet: held events were dropped");
    }
}

//! Users' streams on ScyllaDB.
//!
//! A stream's positions are contiguous and given by one writer at a time: the process holding the
//! stream's lease. Taking a lease over is a lightweight transaction (the epoch + 1), then a read of
//! the stream's tail at QUORUM; the new writer records where it starts (`stream_claims`). Each event
//! is written with its writer's epoch (its index row first, then the event row), then the lease is
//! read back at QUORUM: only if it is still the writer's does the position count.
//! A writer that lost its lease (or whose write failed) takes it back and looks the event up in
//! `stream_index` before writing it again, so an event is never in a stream twice (see `fence.rs`
//! for which rows count). An index row counts only with its event row: a write cut short between
//! the two left an index row alone. No logged batch: a batch log that one dead replica holds up
//! stalls every write for as long as the cluster takes to notice (seconds), and its parts become
//! visible one by one anyway.
//!
//! In one process, the writes to one stream are serialized by that stream's lock, in the order
//! they arrive; a room's appends arrive in seq order (`append.rs`), so every stream has a room's
//! entries in seq order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{join_all, try_join_all};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::fence::Claims;
use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare};
use crate::domain::{EventKind, EventRef, Receipt, ReceiptKind, Source, StreamEvent, UserId};
use crate::store::codec::{EventRow, event_ref_from, event_row};
use crate::store::{StoreError, StoreErrorKind, StoreResult};

/// How many times a write retries after losing its stream's lease to another writer.
const LEASE_TRIES: usize = 8;
/// Rows read per page when scanning a stream.
const PAGE: usize = 256;

/// An event on its way into streams: what it is, and for an entry the epoch its row was written under.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoredEvent {
    pub event: EventRef,
    pub ref_epoch: u64,
}

pub(super) struct Streams {
    lease_epoch: PreparedStatement,
    lease_create: PreparedStatement,
    lease_move: PreparedStatement,
    claims_of: PreparedStatement,
    claim_insert: PreparedStatement,
    last_bucket: PreparedStatement,
    tail_page: PreparedStatement,
    page_after: PreparedStatement,
    index_find: PreparedStatement,
    insert_index: PreparedStatement,
    insert_event: PreparedStatement,
    list_bucket: PreparedStatement,
    event_at: PreparedStatement,
    epoch_read: PreparedStatement,
    epoch_create: PreparedStatement,
    epoch_rotate: PreparedStatement,
    /// The leases this process holds (or last held), one lock per stream.
    leases: Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<Lease>>>>,
}

/// A stream lease as its holder sees it. `epoch` 0: not held (take it before writing).
#[derive(Debug, Default)]
struct Lease {
    epoch: u64,
    next_pos: u64,
    claims: Claims,
    /// The bucket this holder has listed in `stream_buckets`.
    listed_bucket: Option<u64>,
}

impl Streams {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        let insert_index =
            p("INSERT INTO {ks}.stream_index (user_id, source_id, kind, reference, actor_id, epoch, pos)
            VALUES (?, ?, ?, ?, ?, ?, ?)")
            .await?;
        let insert_event = p("INSERT INTO {ks}.stream_events (user_id, bucket, pos, epoch, kind, source_id, reference,
            actor_id, ref_epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .await?;
        let list_bucket = p("INSERT INTO {ks}.stream_buckets (user_id, bucket) VALUES (?, ?)").await?;
        Ok(Self {
            event_at: p(
                "SELECT pos FROM {ks}.stream_events WHERE user_id = ? AND bucket = ? AND pos = ? AND epoch = ?",
            )
            .await?,
            lease_epoch: p("SELECT epoch FROM {ks}.stream_leases WHERE user_id = ?").await?,
            lease_create: p("INSERT INTO {ks}.stream_leases (user_id, epoch) VALUES (?, 1) IF NOT EXISTS").await?,
            lease_move: p("UPDATE {ks}.stream_leases SET epoch = ? WHERE user_id = ? IF epoch = ?").await?,
            claims_of: p("SELECT epoch, start_pos FROM {ks}.stream_claims WHERE user_id = ?").await?,
            claim_insert: p("INSERT INTO {ks}.stream_claims (user_id, epoch, start_pos) VALUES (?, ?, ?)").await?,
            last_bucket: p("SELECT bucket FROM {ks}.stream_buckets WHERE user_id = ? ORDER BY bucket DESC LIMIT 1")
                .await?,
            tail_page: p("SELECT pos, epoch FROM {ks}.stream_events WHERE user_id = ? AND bucket = ? AND pos < ?
                ORDER BY pos DESC LIMIT ?")
            .await?,
            page_after: p("SELECT pos, epoch, kind, source_id, reference, actor_id, ref_epoch FROM {ks}.stream_events
                WHERE user_id = ? AND bucket = ? AND pos > ? LIMIT ?")
            .await?,
            index_find: p("SELECT epoch, pos FROM {ks}.stream_index WHERE user_id = ? AND source_id = ? AND kind = ?
                AND reference = ? AND actor_id = ?")
            .await?,
            insert_index,
            insert_event,
            list_bucket,
            epoch_read: p("SELECT value FROM {ks}.meta WHERE key = 'stream_epoch'").await?,
            epoch_create: p("INSERT INTO {ks}.meta (key, value) VALUES ('stream_epoch', ?) IF NOT EXISTS").await?,
            epoch_rotate: p("UPDATE {ks}.meta SET value = ? WHERE key = 'stream_epoch' IF value = ?").await?,
            leases: Mutex::default(),
        })
    }

    fn lease(&self, user: UserId) -> Arc<tokio::sync::Mutex<Lease>> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.entry(user).or_default().clone()
    }
}

impl ScyllaStore {
    fn stream_bucket(&self, pos: u64) -> i64 {
        (pos / self.options.bucket_size) as i64
    }

    /// Puts one event into each of `users`' streams; returns the positions, in the order of
    /// `users` (each user once). `redo`: the event may be there already (a write finished after a
    /// crash); it is looked up first.
    pub(super) async fn write_events(
        &self,
        users: &[UserId],
        event: StoredEvent,
        redo: bool,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        // Every write runs to its end even when another fails: one dropped half-way would leave its
        // stream in doubt (see `write_event`), costing the next writer a takeover.
        join_all(users.into_iter().map(|user| async move {
            let pos = self.write_event(user, event, redo).await?;
            Ok::<_, StoreError>((user, pos))
        }))
        .await
        .into_iter()
        .collect()
    }

    async fn write_event(&self, user: UserId, event: StoredEvent, redo: bool) -> StoreResult<u64> {
        let s = &self.streams;
        let lock = s.lease(user);
        let mut lease = lock.lock().await;
        let mut look_first = redo;
        for _ in 0..LEASE_TRIES {
            if lease.epoch == 0 {
                *lease = self.take_stream(user).await?;
            }
            if look_first && let Some(pos) = self.find_in_stream(user, &event, &lease.claims).await? {
                tracing::debug!(%user, pos, event = ?event.event, "stream write found done");
                return Ok(pos);
            }
            let pos = lease.next_pos;
            // In doubt until the write is checked: if this future is dropped half-way (its caller
            // went away), the row may be there or not, and the next write must take the stream
            // over (reading its tail) rather than use `pos` again.
            let epoch = std::mem::take(&mut lease.epoch);
            let bucket = self.stream_bucket(pos);
            let row = event_row(&event.event);
            let index =
                (id(user.0), row.source_id, row.kind as i32, row.reference, row.actor, epoch as i64, pos as i64);
            let values = (
                id(user.0),
                bucket,
                pos as i64,
                epoch as i64,
                row.kind as i32,
                row.source_id,
                row.reference,
                row.actor,
                event.ref_epoch as i64,
            );
            let written = async {
                if lease.listed_bucket != Some(bucket as u64) {
                    self.execute(&s.list_bucket, (id(user.0), bucket)).await?;
                }
                // The index first: an event row is never without its index row.
                self.execute(&s.insert_index, index).await?;
                self.execute(&s.insert_event, values).await
            };
            // Written or not, a failed write cannot tell: the lease stays in doubt.
            written.await?;
            lease.listed_bucket = Some(bucket as u64);
            if self.stream_lease_epoch(user).await? == epoch {
                lease.epoch = epoch;
                lease.next_pos += 1;
                tracing::debug!(%user, pos, epoch, event = ?event.event, "stream write");
                return Ok(pos);
            }
            // Another writer took the stream over: our row counts only if it saw it.
            look_first = true;
        }
        Err(StoreError::unavailable(format!("stream of user {user} is contended; retry")))
    }

    async fn stream_lease_epoch(&self, user: UserId) -> StoreResult<u64> {
        let rows = self.rows::<(i64,)>(&self.streams.lease_epoch, (id(user.0),)).await?;
        Ok(rows.first().map_or(0, |(e,)| *e as u64))
    }

    /// Takes the stream's lease: a new epoch, starting after the last event that counts.
    async fn take_stream(&self, user: UserId) -> StoreResult<Lease> {
        let s = &self.streams;
        let current = self.stream_lease_epoch(user).await?;
        let epoch = self
            .next_epoch(&s.lease_create, &s.lease_move, id(user.0), current, LEASE_TRIES)
            .await?
            .ok_or_else(|| StoreError::unavailable(format!("stream of user {user} is contended")))?;
        let mut claims = self.stream_claims(user).await?;
        let start = self.stream_tail(user, &claims).await? + 1;
        self.execute(&s.claim_insert, (id(user.0), epoch as i64, start as i64)).await?;
        tracing::debug!(%user, epoch, start, "took the stream's lease");
        claims.push(epoch, start);
        Ok(Lease { epoch, next_pos: start, claims, listed_bucket: None })
    }

    async fn stream_claims(&self, user: UserId) -> StoreResult<Claims> {
        let rows = self.rows::<(i64, i64)>(&self.streams.claims_of, (id(user.0),)).await?;
        Ok(Claims::new(rows.into_iter().map(|(e, s)| (e as u64, s as u64)).collect()))
    }

    async fn last_stream_bucket(&self, user: UserId) -> StoreResult<Option<u64>> {
        let rows = self.rows::<(i64,)>(&self.streams.last_bucket, (id(user.0),)).await?;
        Ok(rows.first().map(|(b,)| *b as u64))
    }

    /// The stream's newest position that counts (0 when empty).
    async fn stream_tail(&self, user: UserId, claims: &Claims) -> StoreResult<u64> {
        let Some(last) = self.last_stream_bucket(user).await? else { return Ok(0) };
        for bucket in (0..=last).rev() {
            let mut below = i64::MAX;
            loop {
                let rows = self
                    .rows::<(i64, i64)>(&self.streams.tail_page, (id(user.0), bucket as i64, below, PAGE as i32))
                    .await?;
                if let Some(&(pos, _)) = rows.iter().find(|&&(pos, epoch)| claims.counts(epoch as u64, pos as u64)) {
                    return Ok(pos as u64);
                }
                match rows.last() {
                    Some(&(pos, _)) if rows.len() == PAGE => below = pos,
                    _ => break,
                }
            }
        }
        Ok(0)
    }

    /// Where `event` already is in the stream, if a write of it counted.
    async fn find_in_stream(&self, user: UserId, event: &StoredEvent, claims: &Claims) -> StoreResult<Option<u64>> {
        let row = event_row(&event.event);
        let values = (id(user.0), row.source_id, row.kind as i32, row.reference, row.actor);
        let found = self.rows::<(i64, i64)>(&self.streams.index_find, values).await?;
        for (epoch, pos) in found {
            if !claims.counts(epoch as u64, pos as u64) {
                continue;
            }
            // An index row counts only with its event (a write cut short leaves the index alone).
            let at = (id(user.0), self.stream_bucket(pos as u64), pos, epoch);
            if !self.rows::<(i64,)>(&self.streams.event_at, at).await?.is_empty() {
                return Ok(Some(pos as u64));
            }
        }
        Ok(None)
    }

    /// The stream's events after `after_pos` that count, in order, with the rows of their entries.
    pub(super) async fn stream_events_after(
        &self,
        user: UserId,
        after_pos: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, StreamEvent)>> {
        let Some(last) = self.last_stream_bucket(user).await? else { return Ok(Vec::new()) };
        let claims = self.stream_claims(user).await?;
        let mut found: Vec<(u64, EventRef, u64)> = Vec::new();
        let mut bucket = (after_pos + 1) / self.options.bucket_size;
        let mut from = after_pos;
        while bucket <= last && found.len() < limit {
            let asked = (limit - found.len() + 8).min(PAGE * 4);
            type EventRowValues = (i64, i64, i32, i64, i64, i64, Option<i64>);
            let rows = self
                .rows::<EventRowValues>(
                    &self.streams.page_after,
                    (id(user.0), bucket as i64, from as i64, asked as i32),
                )
                .await?;
            let full = rows.len() == asked;
            let mut last_seen = from;
            for (pos, epoch, kind, source_id, reference, actor, ref_epoch) in rows {
                let pos = pos as u64;
                last_seen = last_seen.max(pos);
                let counts = claims.counts(epoch as u64, pos);
                let next = found.last().map_or(after_pos, |f| f.0);
                if !counts || pos <= next || found.len() >= limit {
                    continue;
                }
                let row = EventRow { kind: kind as i64, source_id, reference, actor };
                let event = event_ref_from(&row).ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Corrupt, format!("stream event kind {kind} unknown"))
                })?;
                found.push((pos, event, ref_epoch.unwrap_or(0) as u64));
            }
            if full {
                // Rows of one position under several epochs may straddle the page: read it again
                // (unless that would not move on).
                from = if last_seen - 1 > from { last_seen - 1 } else { last_seen };
            } else {
                // Every position of the next bucket is past `from`.
                bucket += 1;
            }
        }
        try_join_all(found.into_iter().map(|(pos, event, ref_epoch)| async move {
            Ok::<_, StoreError>((pos, self.resolve(user, event, ref_epoch).await?))
        }))
        .await
    }

    /// The event a stream row describes, with its entry read for an entry.
    async fn resolve(&self, user: UserId, event: EventRef, ref_epoch: u64) -> StoreResult<StreamEvent> {
        if let EventKind::Activity = event.kind {
            let activity = self.activity_row(user, event.reference).await?.ok_or_else(|| {
                StoreError::new(StoreErrorKind::Corrupt, format!("{user} has no activity {}", event.reference))
            })?;
            return Ok(StreamEvent::Activity(Arc::new(activity)));
        }
        if let EventKind::Notification = event.kind {
            let notification = self.notification_row(user, event.reference).await?.ok_or_else(|| {
                StoreError::new(StoreErrorKind::Corrupt, format!("{user} has no notification {}", event.reference))
            })?;
            return Ok(StreamEvent::Notification(Arc::new(notification)));
        }
        if let (EventKind::Post, Source::Feed(author)) = (event.kind, event.source) {
            let post = crate::domain::PostId(event.reference);
            let details = crate::store::PostStore::post(self, post).await?.map(Arc::new);
            return Ok(StreamEvent::Post { post, author, details });
        }
        let Source::Room(room) = event.source else {
            return Err(StoreError::new(StoreErrorKind::Corrupt, "a stream event from no room"));
        };
        let receipt = |kind| {
            let user = event.actor.ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, "a receipt of no one"))?;
            Ok(StreamEvent::Receipt(Receipt { room, user, kind, up_to_seq: event.reference }))
        };
        match event.kind {
            EventKind::Entry => {
                let entry = self.entry_row(room, event.reference, ref_epoch).await?.ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Corrupt, format!("room {room} has no entry {}", event.reference))
                })?;
                Ok(StreamEvent::Entry(Arc::new(entry.entry)))
            }
            EventKind::Delivered => receipt(ReceiptKind::Delivered),
            EventKind::Read => receipt(ReceiptKind::Read),
            EventKind::Post | EventKind::Activity | EventKind::Notification => {
                Err(StoreError::new(StoreErrorKind::Corrupt, "a post, activity or notification event from a room"))
            }
        }
    }

    pub(super) async fn stream_head_of(&self, user: UserId) -> StoreResult<u64> {
        let claims = self.stream_claims(user).await?;
        self.stream_tail(user, &claims).await
    }

    /// The streams' epoch, made on first use.
    pub(super) async fn streams_epoch(&self) -> StoreResult<String> {
        let s = &self.streams;
        if let Some((Some(epoch),)) = self.rows::<(Option<String>,)>(&s.epoch_read, ()).await?.into_iter().next() {
            return Ok(epoch);
        }
        let fresh = crate::store::new_stream_epoch();
        let created = lwt(self.execute(&s.epoch_create, (&fresh,)).await?)?;
        Ok(if created.applied { fresh } else { created.text("value").unwrap_or(fresh) })
    }

    pub(super) async fn rotate_streams_epoch(&self) -> StoreResult<String> {
        let s = &self.streams;
        for _ in 0..LEASE_TRIES {
            let current = self.streams_epoch().await?;
            let fresh = crate::store::new_stream_epoch();
            if lwt(self.execute(&s.epoch_rotate, (&fresh, &current)).await?)?.applied {
                return Ok(fresh);
            }
        }
        Err(StoreError::unavailable("the stream epoch is being rotated elsewhere"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RoomId;
    use crate::store::scylla::ScyllaOptions;

    /// A write redone (after a crash, or by a claim finishing a fan-out) finds the first one. Runs on
    /// the CQL node `TIDINGS_SCYLLA_NODES` names (`.ci/run` sets it); the store's other tests are the
    /// conformance suite in `tests/it`.
    #[tokio::test]
    async fn a_redone_write_finds_the_first() {
        let Ok(nodes) = std::env::var("TIDINGS_SCYLLA_NODES") else { return };
        let keyspace = format!("tidings_unit_{:08x}", rand::random::<u32>());
        let store = ScyllaStore::open(ScyllaOptions::new(vec![nodes], &keyspace)).await.unwrap();
        let user = UserId(5);
        let event = StoredEvent { event: EventRef::entry(RoomId(9), 3), ref_epoch: 2 };
        let first = store.write_events(&[user], event, false).await.unwrap();
        let again = store.write_events(&[user], event, true).await.unwrap();
        let other = StoredEvent { event: EventRef::entry(RoomId(9), 4), ref_epoch: 2 };
        let next = store.write_events(&[user], other, true).await.unwrap();
        store.drop_keyspace().await.unwrap();
        assert_eq!((first, again, next), (vec![(user, 1)], vec![(user, 1)], vec![(user, 2)]));
    }
}

//! Rooms on ScyllaDB: their rows, members, logs and receipts, and the reads the room list needs.
//!
//! A room's log is partitioned by `(room, seq / bucket_size)`; `room_buckets` lists the buckets in
//! use, so the tail is one small read away. Rows carry their writer's epoch and count only as
//! `fence.rs` says. The room list, contacts and "who wrote here" are maintained rows
//! (`user_rooms`, `room_members`, `room_senders`), never joins.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use futures_util::{StreamExt, TryStreamExt};
use scylla::DeserializeRow;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::fence::Claims;
use super::streams::StoredEvent;
use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare};
use crate::domain::{
    EntryBody, EventRef, MemberRecord, Receipt, ReceiptKind, Role, RoomEntry, RoomId, RoomKind, RoomMeta, RoomState,
    RoomSummary, StreamEvent, UserId,
};
use crate::store::codec::{
    StoredBody, body_from_columns, entry_columns, role_code, role_from, room_kind_code, room_kind_from,
};
use crate::store::{
    Append, AppendOutcome, Claim, CreateRoomOutcome, Effect, HistoryPage, NewRoom, Positions, ReceiptWrite, RoomStore,
    StoreError, StoreErrorKind, StoreResult, UNREAD_COUNT_CAP,
};

/// Rows read per page when scanning a room's log.
const PAGE: usize = 128;
/// `rooms_behind` partitions: a few, so that no one partition takes every big room's writes.
const BEHIND_SHARDS: i32 = 16;
/// Rooms read per shard by one `rooms_behind` call; the rest wait for the next.
const BEHIND_LISTED_AT_ONCE: usize = 1000;
/// How many rooms' summaries are read at once for a room list.
const SUMMARIES_AT_ONCE: usize = 16;

const ENTRY_COLUMNS: &str = "seq, epoch, id, sender_id, sent_at_ms, kind, text, client_msg_id, target_seq, users, \
                             role, edited_at_ms, deleted, recipients";

/// An entry's row as stored.
#[derive(DeserializeRow)]
struct EntryValues {
    seq: i64,
    epoch: i64,
    id: i64,
    sender_id: i64,
    sent_at_ms: i64,
    kind: i32,
    text: Option<String>,
    client_msg_id: Option<String>,
    target_seq: Option<i64>,
    users: Option<String>,
    role: Option<i32>,
    edited_at_ms: Option<i64>,
    deleted: Option<bool>,
    recipients: Option<Vec<i64>>,
}

/// Which way a scan of the log runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Newest {
    First,
    Last,
}

/// Adds the rows of a page that count to `found`, each seq once (a page may repeat the last seq
/// of the one before: it is read again when its rows straddle two pages); true once `found` holds
/// `limit` entries.
fn take_counting(
    room: RoomId,
    claims: &Claims,
    rows: Vec<EntryValues>,
    found: &mut Vec<EntryRow>,
    limit: usize,
    order: Newest,
) -> StoreResult<bool> {
    for row in rows {
        let seen = found.last().is_some_and(|f| match order {
            Newest::First => f.entry.seq as i64 <= row.seq,
            Newest::Last => f.entry.seq as i64 >= row.seq,
        });
        if !seen && claims.counts(row.epoch as u64, row.seq as u64) {
            found.push(row.into_row(room)?);
            if found.len() == limit {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// An entry read back, with what only the store keeps of it.
pub(super) struct EntryRow {
    pub entry: RoomEntry,
    pub epoch: u64,
    pub recipients: Vec<UserId>,
}

impl EntryValues {
    fn into_row(self, room: RoomId) -> StoreResult<EntryRow> {
        let kind = self.kind;
        let body = body_from_columns(StoredBody {
            kind: kind as i64,
            text: self.text.unwrap_or_default(),
            client_msg_id: self.client_msg_id,
            target_seq: self.target_seq.unwrap_or(0) as u64,
            users: self.users.unwrap_or_default(),
            role: self.role.unwrap_or(0) as i64,
            edited_at_ms: self.edited_at_ms.unwrap_or(0),
            deleted: self.deleted.unwrap_or(false),
        })
        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, format!("entry kind {kind} unknown")))?;
        Ok(EntryRow {
            entry: RoomEntry {
                room,
                seq: self.seq as u64,
                id: self.id as u64,
                sender: UserId(self.sender_id as u64),
                sent_at_ms: self.sent_at_ms,
                body,
                encoded: Default::default(),
            },
            epoch: self.epoch as u64,
            recipients: self.recipients.unwrap_or_default().into_iter().map(|u| UserId(u as u64)).collect(),
        })
    }
}

pub(super) struct Statements {
    pub insert_entry: PreparedStatement,
    entry_at: PreparedStatement,
    entry_exact: PreparedStatement,
    entries_before: PreparedStatement,
    entries_after: PreparedStatement,
    pub edit_entry: PreparedStatement,
    pub delete_entry: PreparedStatement,
    pub list_bucket: PreparedStatement,
    last_bucket: PreparedStatement,
    insert_room: PreparedStatement,
    room_row: PreparedStatement,
    pub rename: PreparedStatement,
    pub put_member: PreparedStatement,
    pub remove_member: PreparedStatement,
    members_of: PreparedStatement,
    is_member: PreparedStatement,
    markers_of: PreparedStatement,
    marker_of: PreparedStatement,
    mark_delivered: PreparedStatement,
    mark_read: PreparedStatement,
    pub add_user_room: PreparedStatement,
    pub remove_user_room: PreparedStatement,
    rooms_of_user: PreparedStatement,
    claim_direct: PreparedStatement,
    pub add_sender: PreparedStatement,
    senders_of: PreparedStatement,
    usernames: PreparedStatement,
    pub epoch_of: PreparedStatement,
    epoch_create: PreparedStatement,
    epoch_move: PreparedStatement,
    claims_of: PreparedStatement,
    claim_insert: PreparedStatement,
    fanout_of: PreparedStatement,
    pub fanout_done: PreparedStatement,
    pub list_behind: PreparedStatement,
    unlist_behind: PreparedStatement,
    rooms_behind: PreparedStatement,
    pub client_msg: PreparedStatement,
    pub insert_client_msg: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: String| async move { prepare(session, options, &cql).await };
        let select = |rest: &str| format!("SELECT {ENTRY_COLUMNS} FROM {{ks}}.room_entries {rest}");
        Ok(Self {
            insert_entry: p(
                "INSERT INTO {ks}.room_entries (room_id, bucket, seq, epoch, id, sender_id, sent_at_ms, kind,
                text, client_msg_id, target_seq, users, role, edited_at_ms, deleted, recipients)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    .into(),
            )
            .await?,
            entry_at: p(select("WHERE room_id = ? AND bucket = ? AND seq = ?")).await?,
            entry_exact: p(select("WHERE room_id = ? AND bucket = ? AND seq = ? AND epoch = ?")).await?,
            entries_before: p(select("WHERE room_id = ? AND bucket = ? AND seq < ? ORDER BY seq DESC LIMIT ?")).await?,
            entries_after: p(select("WHERE room_id = ? AND bucket = ? AND seq > ? LIMIT ?")).await?,
            edit_entry: p("UPDATE {ks}.room_entries SET text = ?, edited_at_ms = ?
                WHERE room_id = ? AND bucket = ? AND seq = ? AND epoch = ?"
                .into())
            .await?,
            delete_entry: p("UPDATE {ks}.room_entries SET text = '', users = '', deleted = true
                WHERE room_id = ? AND bucket = ? AND seq = ? AND epoch = ?"
                .into())
            .await?,
            list_bucket: p("INSERT INTO {ks}.room_buckets (room_id, bucket) VALUES (?, ?)".into()).await?,
            last_bucket:
                p("SELECT bucket FROM {ks}.room_buckets WHERE room_id = ? ORDER BY bucket DESC LIMIT 1".into()).await?,
            insert_room: p("INSERT INTO {ks}.rooms (room_id, kind, name, created_at_ms) VALUES (?, ?, ?, ?)".into())
                .await?,
            room_row: p("SELECT kind, name, created_at_ms FROM {ks}.rooms WHERE room_id = ?".into()).await?,
            rename: p("UPDATE {ks}.rooms SET name = ? WHERE room_id = ?".into()).await?,
            put_member: p("INSERT INTO {ks}.room_members (room_id, user_id, role) VALUES (?, ?, ?)".into()).await?,
            remove_member: p("DELETE FROM {ks}.room_members WHERE room_id = ? AND user_id = ?".into()).await?,
            members_of: p("SELECT user_id, role FROM {ks}.room_members WHERE room_id = ?".into()).await?,
            is_member: p("SELECT role FROM {ks}.room_members WHERE room_id = ? AND user_id = ?".into()).await?,
            markers_of: p("SELECT user_id, delivered_seq, read_seq FROM {ks}.room_markers WHERE room_id = ?".into())
                .await?,
            marker_of: p(
                "SELECT delivered_seq, read_seq FROM {ks}.room_markers WHERE room_id = ? AND user_id = ?".into()
            )
            .await?,
            mark_delivered: p("UPDATE {ks}.room_markers USING TIMESTAMP ? SET delivered_seq = ?
                WHERE room_id = ? AND user_id = ?"
                .into())
            .await?,
            mark_read: p("UPDATE {ks}.room_markers USING TIMESTAMP ? SET read_seq = ?, delivered_seq = ?
                WHERE room_id = ? AND user_id = ?"
                .into())
            .await?,
            add_user_room: p("INSERT INTO {ks}.user_rooms (user_id, room_id) VALUES (?, ?)".into()).await?,
            remove_user_room: p("DELETE FROM {ks}.user_rooms WHERE user_id = ? AND room_id = ?".into()).await?,
            rooms_of_user: p("SELECT room_id FROM {ks}.user_rooms WHERE user_id = ?".into()).await?,
            claim_direct: p(
                "INSERT INTO {ks}.direct_rooms (user_lo, user_hi, room_id) VALUES (?, ?, ?) IF NOT EXISTS".into()
            )
            .await?,
            add_sender: p("INSERT INTO {ks}.room_senders (room_id, sender_id) VALUES (?, ?)".into()).await?,
            senders_of: p("SELECT sender_id FROM {ks}.room_senders WHERE room_id = ?".into()).await?,
            usernames: p("SELECT user_id, username FROM {ks}.users WHERE user_id IN ?".into()).await?,
            epoch_of: p("SELECT epoch FROM {ks}.room_epochs WHERE room_id = ?".into()).await?,
            epoch_create: p("INSERT INTO {ks}.room_epochs (room_id, epoch) VALUES (?, 1) IF NOT EXISTS".into()).await?,
            epoch_move: p("UPDATE {ks}.room_epochs SET epoch = ? WHERE room_id = ? IF epoch = ?".into()).await?,
            claims_of: p("SELECT epoch, start_seq FROM {ks}.room_claims WHERE room_id = ?".into()).await?,
            claim_insert: p("INSERT INTO {ks}.room_claims (room_id, epoch, start_seq) VALUES (?, ?, ?)".into()).await?,
            fanout_of: p("SELECT seq FROM {ks}.room_fanout WHERE room_id = ?".into()).await?,
            fanout_done: p("UPDATE {ks}.room_fanout USING TIMESTAMP ? SET seq = ? WHERE room_id = ?".into()).await?,
            list_behind: p("INSERT INTO {ks}.rooms_behind (shard, room_id) VALUES (?, ?) USING TIMESTAMP ?".into())
                .await?,
            unlist_behind: p("DELETE FROM {ks}.rooms_behind USING TIMESTAMP ? WHERE shard = ? AND room_id = ?".into())
                .await?,
            rooms_behind: p("SELECT room_id FROM {ks}.rooms_behind WHERE shard = ? LIMIT ?".into()).await?,
            client_msg: p("SELECT epoch, seq, id, sent_at_ms FROM {ks}.client_msgs
                WHERE room_id = ? AND sender_id = ? AND client_msg_id = ?"
                .into())
            .await?,
            insert_client_msg: p("INSERT INTO {ks}.client_msgs (room_id, sender_id, client_msg_id, epoch, seq, id,
                sent_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
                .into())
            .await?,
        })
    }
}

/// The values of an entry's row, ready to insert.
pub(super) fn entry_insert_values<'a>(
    entry: &'a RoomEntry,
    bucket: i64,
    epoch: u64,
    recipients: &[UserId],
) -> impl scylla::serialize::row::SerializeRow + use<'a> {
    let c = entry_columns(&entry.body);
    (
        id(entry.room.0),
        bucket,
        entry.seq as i64,
        epoch as i64,
        entry.id as i64,
        id(entry.sender.0),
        entry.sent_at_ms,
        c.kind as i32,
        c.text,
        c.client_msg_id,
        c.target_seq as i64,
        c.users,
        c.role as i32,
        c.edited_at_ms,
        c.deleted,
        recipients.iter().map(|u| id(u.0)).collect::<Vec<_>>(),
    )
}

impl ScyllaStore {
    pub(super) fn log_bucket(&self, seq: u64) -> i64 {
        (seq / self.options.bucket_size) as i64
    }

    pub(super) async fn room_claims(&self, room: RoomId) -> StoreResult<Claims> {
        let rows = self.rows::<(i64, i64)>(&self.rooms.claims_of, (id(room.0),)).await?;
        Ok(Claims::new(rows.into_iter().map(|(e, s)| (e as u64, s as u64)).collect()))
    }

    pub(super) async fn room_epoch(&self, room: RoomId) -> StoreResult<u64> {
        let rows = self.rows::<(i64,)>(&self.rooms.epoch_of, (id(room.0),)).await?;
        Ok(rows.first().map_or(0, |(e,)| *e as u64))
    }

    /// The entry of `seq` written under `epoch`.
    pub(super) async fn entry_row(&self, room: RoomId, seq: u64, epoch: u64) -> StoreResult<Option<EntryRow>> {
        let values = (id(room.0), self.log_bucket(seq), seq as i64, epoch as i64);
        let rows = self.rows::<EntryValues>(&self.rooms.entry_exact, values).await?;
        rows.into_iter().next().map(|r| r.into_row(room)).transpose()
    }

    /// The entry at `seq` that counts, if any.
    pub(super) async fn entry_at(&self, room: RoomId, seq: u64, claims: &Claims) -> StoreResult<Option<EntryRow>> {
        let values = (id(room.0), self.log_bucket(seq), seq as i64);
        let rows = self.rows::<EntryValues>(&self.rooms.entry_at, values).await?;
        rows.into_iter().find(|r| claims.counts(r.epoch as u64, r.seq as u64)).map(|r| r.into_row(room)).transpose()
    }

    /// A standing (not deleted) message at `seq`: its row, if there is one.
    pub(super) async fn standing_message(
        &self,
        room: RoomId,
        seq: u64,
        claims: &Claims,
    ) -> StoreResult<Option<EntryRow>> {
        Ok(self
            .entry_at(room, seq, claims)
            .await?
            .filter(|row| matches!(&row.entry.body, EntryBody::Text(m) if !m.deleted)))
    }

    async fn last_log_bucket(&self, room: RoomId) -> StoreResult<Option<u64>> {
        let rows = self.rows::<(i64,)>(&self.rooms.last_bucket, (id(room.0),)).await?;
        Ok(rows.first().map(|(b,)| *b as u64))
    }

    /// Up to `limit` entries that count, newest first, with seq < `below`.
    pub(super) async fn entries_before(
        &self,
        room: RoomId,
        claims: &Claims,
        below: u64,
        limit: usize,
    ) -> StoreResult<Vec<EntryRow>> {
        let mut found: Vec<EntryRow> = Vec::new();
        let Some(last) = self.last_log_bucket(room).await? else { return Ok(found) };
        let top = if below == 0 { return Ok(found) } else { (below - 1) / self.options.bucket_size };
        for bucket in (0..=top.min(last)).rev() {
            let mut bound = below.min((bucket + 1) * self.options.bucket_size) as i64;
            loop {
                let values = (id(room.0), bucket as i64, bound, PAGE as i32);
                let rows = self.rows::<EntryValues>(&self.rooms.entries_before, values).await?;
                let full = rows.len() == PAGE;
                let lowest = rows.iter().map(|r| r.seq).min().unwrap_or(bound);
                if take_counting(room, claims, rows, &mut found, limit, Newest::First)? {
                    return Ok(found);
                }
                if !full {
                    break;
                }
                // Rows of one seq under several epochs may straddle the page: read it again.
                bound = if lowest + 1 < bound { lowest + 1 } else { lowest };
            }
        }
        Ok(found)
    }

    /// Up to `limit` entries that count, oldest first, with seq > `above`.
    pub(super) async fn entries_after(
        &self,
        room: RoomId,
        claims: &Claims,
        above: u64,
        limit: usize,
    ) -> StoreResult<Vec<EntryRow>> {
        let mut found: Vec<EntryRow> = Vec::new();
        let Some(last) = self.last_log_bucket(room).await? else { return Ok(found) };
        for bucket in (above + 1) / self.options.bucket_size..=last {
            let mut bound = above as i64;
            loop {
                let values = (id(room.0), bucket as i64, bound, PAGE as i32);
                let rows = self.rows::<EntryValues>(&self.rooms.entries_after, values).await?;
                let full = rows.len() == PAGE;
                let highest = rows.iter().map(|r| r.seq).max().unwrap_or(bound);
                if take_counting(room, claims, rows, &mut found, limit, Newest::Last)? {
                    return Ok(found);
                }
                if !full {
                    break;
                }
                bound = if highest - 1 > bound { highest - 1 } else { highest };
            }
        }
        Ok(found)
    }

    /// The room's newest entry that counts.
    pub(super) async fn last_entry(&self, room: RoomId, claims: &Claims) -> StoreResult<Option<EntryRow>> {
        Ok(self.entries_before(room, claims, u64::MAX, 1).await?.pop())
    }

    pub(super) async fn room_meta(&self, room: RoomId) -> StoreResult<Option<RoomMeta>> {
        let rows = self.rows::<(i32, Option<String>, i64)>(&self.rooms.room_row, (id(room.0),)).await?;
        Ok(rows.into_iter().next().map(|(kind, name, created_at_ms)| RoomMeta {
            id: room,
            kind: room_kind_from(kind as i64),
            name: name.unwrap_or_default(),
            created_at_ms,
        }))
    }

    async fn members(&self, room: RoomId) -> StoreResult<Vec<MemberRecord>> {
        let s = &self.rooms;
        let members = self.rows::<(i64, i32)>(&s.members_of, (id(room.0),)).await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let markers: HashMap<i64, (Option<i64>, Option<i64>)> = self
            .rows::<(i64, Option<i64>, Option<i64>)>(&s.markers_of, (id(room.0),))
            .await?
            .into_iter()
            .map(|(user, delivered, read)| (user, (delivered, read)))
            .collect();
        let ids: Vec<i64> = members.iter().map(|(u, _)| *u).collect();
        let names: HashMap<i64, String> = self
            .rows::<(i64, Option<String>)>(&s.usernames, (ids,))
            .await?
            .into_iter()
            .map(|(u, name)| (u, name.unwrap_or_default()))
            .collect();
        let mut records: Vec<MemberRecord> = members
            .into_iter()
            .map(|(user, role)| {
                let (delivered, read) = markers.get(&user).copied().unwrap_or_default();
                let read = read.unwrap_or(0) as u64;
                MemberRecord {
                    user: UserId(user as u64),
                    username: names.get(&user).cloned().unwrap_or_default(),
                    role: role_from(role as i64),
                    delivered_up_to_seq: (delivered.unwrap_or(0) as u64).max(read),
                    read_up_to_seq: read,
                }
            })
            .collect();
        records.sort_by_key(|m| m.user);
        Ok(records)
    }

    pub(super) async fn is_member(&self, room: RoomId, user: UserId) -> StoreResult<bool> {
        Ok(!self.rows::<(i32,)>(&self.rooms.is_member, (id(room.0), id(user.0))).await?.is_empty())
    }

    /// A member's markers: (delivered, read).
    pub(super) async fn markers(&self, room: RoomId, user: UserId) -> StoreResult<(u64, u64)> {
        let rows = self.rows::<(Option<i64>, Option<i64>)>(&self.rooms.marker_of, (id(room.0), id(user.0))).await?;
        let (delivered, read) = rows.first().copied().unwrap_or_default();
        let read = read.unwrap_or(0) as u64;
        Ok(((delivered.unwrap_or(0) as u64).max(read), read))
    }

    /// The room, with its newest entry that counts.
    async fn load_with_last(
        &self,
        room: RoomId,
        claims: &Claims,
    ) -> StoreResult<Option<(RoomState, Option<RoomEntry>)>> {
        let Some(meta) = self.room_meta(room).await? else { return Ok(None) };
        let members = self.members(room).await?;
        let last = self.last_entry(room, claims).await?.map(|e| e.entry);
        let last_seq = last.as_ref().map_or(0, |e| e.seq);
        Ok(Some((RoomState { meta, members, last_seq }, last)))
    }

    async fn load(&self, room: RoomId, claims: &Claims) -> StoreResult<Option<RoomState>> {
        Ok(self.load_with_last(room, claims).await?.map(|(state, _)| state))
    }

    pub(super) async fn user_rooms(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        let rows = self.rows::<(i64,)>(&self.rooms.rooms_of_user, (id(user.0),)).await?;
        Ok(rows.into_iter().map(|(r,)| RoomId(r as u64)).collect())
    }

    /// Messages from others after the user's read marker (standing ones), up to the cap.
    async fn unread(&self, room: RoomId, user: UserId, read_up_to: u64, claims: &Claims) -> StoreResult<u32> {
        let mut count = 0u32;
        let mut above = read_up_to;
        loop {
            let page = self.entries_after(room, claims, above, PAGE).await?;
            let full = page.len() == PAGE;
            for row in &page {
                if row.entry.sender != user && matches!(&row.entry.body, EntryBody::Text(m) if !m.deleted) {
                    count += 1;
                    if count >= UNREAD_COUNT_CAP {
                        return Ok(count);
                    }
                }
            }
            match page.last() {
                Some(last) if full => above = last.entry.seq,
                _ => return Ok(count),
            }
        }
    }

    /// The user's unread messages over all rooms (the badge).
    pub(super) async fn unread_total(&self, user: UserId) -> StoreResult<u32> {
        let rooms = self.user_rooms(user).await?;
        let counts: Vec<u32> = futures_util::stream::iter(rooms)
            .map(|room| async move {
                let claims = self.room_claims(room).await?;
                let (_, read) = self.markers(room, user).await?;
                self.unread(room, user, read, &claims).await
            })
            .buffer_unordered(SUMMARIES_AT_ONCE)
            .try_collect()
            .await?;
        Ok(counts.iter().sum::<u32>().min(UNREAD_COUNT_CAP))
    }

    /// Claims the room: the epoch + 1 by a lightweight transaction, then where this writer starts.
    async fn take_room(&self, room: RoomId) -> StoreResult<(u64, Claims, u64)> {
        let s = &self.rooms;
        let current = self.room_epoch(room).await?;
        let Some(epoch) = self.next_epoch(&s.epoch_create, &s.epoch_move, id(room.0), current, 8).await? else {
            return Err(StoreError::unavailable(format!("room {room} is being claimed elsewhere; retry")));
        };
        let mut claims = self.room_claims(room).await?;
        let tail = self.last_entry(room, &claims).await?.map_or(0, |e| e.entry.seq);
        self.execute(&s.claim_insert, (id(room.0), epoch as i64, (tail + 1) as i64)).await?;
        tracing::debug!(%room, epoch, start = tail + 1, "claimed the room");
        claims.push(epoch, tail + 1);
        Ok((epoch, claims, tail))
    }

    /// How far the room's entries are known to be in their recipients' streams.
    async fn fanned_out(&self, room: RoomId) -> StoreResult<u64> {
        let rows = self.rows::<(i64,)>(&self.rooms.fanout_of, (id(room.0),)).await?;
        Ok(rows.first().map_or(0, |(s,)| *s as u64))
    }

    pub(super) async fn record_fanned_out(&self, room: RoomId, seq: u64) -> StoreResult<()> {
        self.execute(&self.rooms.fanout_done, (seq as i64, seq as i64, id(room.0))).await?;
        Ok(())
    }

    /// Lists the room as behind until its fan-out reaches `seq` (before the entry is written).
    pub(super) async fn list_behind(&self, room: RoomId, seq: u64) -> StoreResult<()> {
        self.execute(&self.rooms.list_behind, (behind_shard(room), id(room.0), seq as i64)).await?;
        Ok(())
    }

    /// The room's fan-out reached `seq`: it is not behind, unless a later entry listed it again.
    pub(super) async fn unlist_behind(&self, room: RoomId, seq: u64) -> StoreResult<()> {
        self.execute(&self.rooms.unlist_behind, (seq as i64, behind_shard(room), id(room.0))).await?;
        Ok(())
    }

    async fn behind(&self) -> StoreResult<Vec<RoomId>> {
        let shards = (0..BEHIND_SHARDS)
            .map(|shard| self.rows::<(i64,)>(&self.rooms.rooms_behind, (shard, BEHIND_LISTED_AT_ONCE as i32)));
        let listed = try_join_all(shards).await?;
        Ok(listed.into_iter().flatten().map(|(room,)| RoomId(room as u64)).collect())
    }

    /// Finishes what a writer that stopped (crashed, or lost the room) may have left undone: each
    /// entry after the fan-out mark gets its effect applied and reaches its recipients' streams.
    /// Both steps are idempotent.
    async fn finish_fanout(
        &self,
        room: RoomId,
        claims: &Claims,
        tail: u64,
    ) -> StoreResult<Vec<(Positions, StreamEvent)>> {
        let mut finished = Vec::new();
        let mut done = self.fanned_out(room).await?;
        while done < tail {
            let rows = self.entries_after(room, claims, done, PAGE).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                self.apply_effect(room, &effect_of(&row.entry), claims).await?;
                let event = StoredEvent { event: EventRef::entry(room, row.entry.seq), ref_epoch: row.epoch };
                let positions = self.write_events(&row.recipients, event, true).await?;
                done = row.entry.seq;
                finished.push((positions, StreamEvent::Entry(std::sync::Arc::new(row.entry))));
            }
        }
        if !finished.is_empty() {
            let seqs: Vec<u64> = finished
                .iter()
                .filter_map(|(_, e)| match e {
                    StreamEvent::Entry(entry) => Some(entry.seq),
                    StreamEvent::Receipt(_)
                    | StreamEvent::Post { .. }
                    | StreamEvent::Activity(_)
                    | StreamEvent::Notification(_) => None,
                })
                .collect();
            tracing::info!(%room, ?seqs, "finished the fan-out a stopped writer left");
        }
        if done > 0 {
            self.record_fanned_out(room, done).await?;
            self.unlist_behind(room, done).await?;
        }
        Ok(finished)
    }

    /// Applies what an entry changes besides the log. Idempotent, so a writer finishing another's
    /// fan-out applies it again from the entry (`effect_of`).
    pub(super) async fn apply_effect(&self, room: RoomId, effect: &Effect, claims: &Claims) -> StoreResult<()> {
        let s = &self.rooms;
        let room_id = id(room.0);
        match effect {
            Effect::None => {}
            Effect::AddMembers(users) => {
                try_join_all(users.iter().map(|&u| self.add_member(room, u, Role::Member))).await?;
            }
            Effect::RemoveMember(user) => {
                self.execute(&s.remove_member, (room_id, id(user.0))).await?;
                self.execute(&s.remove_user_room, (id(user.0), room_id)).await?;
            }
            Effect::Rename(name) => {
                self.execute(&s.rename, (name, room_id)).await?;
            }
            Effect::SetRole(user, role) => {
                self.execute(&s.put_member, (room_id, id(user.0), role_code(*role) as i32)).await?;
            }
            Effect::Edit { target_seq, text, at_ms, .. } => {
                if let Some(target) = self.entry_at(room, *target_seq, claims).await? {
                    let (bucket, seq, epoch) = (self.log_bucket(*target_seq), *target_seq as i64, target.epoch as i64);
                    self.execute(&s.edit_entry, (text, *at_ms, room_id, bucket, seq, epoch)).await?;
                }
            }
            Effect::Delete { target_seq, .. } => {
                if let Some(target) = self.entry_at(room, *target_seq, claims).await? {
                    let (bucket, seq, epoch) = (self.log_bucket(*target_seq), *target_seq as i64, target.epoch as i64);
                    self.execute(&s.delete_entry, (room_id, bucket, seq, epoch)).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn add_member(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<()> {
        let s = &self.rooms;
        // Already a member: keep the role.
        if !self.is_member(room, user).await? {
            self.execute(&s.put_member, (id(room.0), id(user.0), role_code(role) as i32)).await?;
        }
        self.execute(&s.add_user_room, (id(user.0), id(room.0))).await?;
        Ok(())
    }

    /// Whether `writer` has sent a message in a room it shares with `reader` (other than `except`).
    pub(super) async fn has_written_to(
        &self,
        writer: UserId,
        reader: UserId,
        except: Option<RoomId>,
    ) -> StoreResult<bool> {
        for room in self.user_rooms(reader).await? {
            if Some(room) == except {
                continue;
            }
            let senders = self.rows::<(i64,)>(&self.rooms.senders_of, (id(room.0),)).await?;
            if senders.contains(&(id(writer.0),)) && self.is_member(room, writer).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(super) async fn username_of(&self, user: UserId) -> StoreResult<Option<String>> {
        let rows = self.rows::<(i64, Option<String>)>(&self.rooms.usernames, (vec![id(user.0)],)).await?;
        Ok(rows.into_iter().next().and_then(|(_, name)| name))
    }

    async fn summary(&self, room: RoomId, user: UserId) -> StoreResult<Option<RoomSummary>> {
        let claims = self.room_claims(room).await?;
        let Some((state, last_entry)) = self.load_with_last(room, &claims).await? else { return Ok(None) };
        let Some(me) = state.members.iter().find(|m| m.user == user) else { return Ok(None) };
        let read_up_to_seq = me.read_up_to_seq;
        let unread_count = self.unread(room, user, read_up_to_seq, &claims).await?;
        Ok(Some(RoomSummary {
            meta: state.meta,
            members: state.members,
            last_seq: state.last_seq,
            last_entry,
            unread_count,
            read_up_to_seq,
        }))
    }

    async fn create_new_room(&self, mut room: NewRoom) -> StoreResult<CreateRoomOutcome> {
        let s = &self.rooms;
        if room.kind == RoomKind::Direct {
            let [a, b] = room.members[..] else {
                return Err(StoreError::new(StoreErrorKind::Corrupt, "a direct room has two members"));
            };
            let (lo, hi) = (a.min(b), a.max(b));
            let claim = lwt(self.execute(&s.claim_direct, (id(lo.0), id(hi.0), id(room.id.0))).await?)?;
            if !claim.applied {
                let existing = RoomId(claim.bigint("room_id").unwrap_or(0) as u64);
                if self.room_meta(existing).await?.is_some() {
                    return Ok(CreateRoomOutcome::DirectExists(existing));
                }
                // The pair's room was claimed by a creation that stopped before the room was
                // written: finish it under the claimed id.
                room.id = existing;
                room.entry.room = existing;
            }
        }
        // The entry first, then the room's rows: the room exists once its row does, and by then its
        // first entry is there for whoever claims it (and finishes its fan-out).
        let entry = &room.entry;
        self.execute(&s.insert_entry, entry_insert_values(entry, self.log_bucket(entry.seq), 0, &room.members)).await?;
        self.execute(&s.list_bucket, (id(room.id.0), self.log_bucket(entry.seq))).await?;
        for &member in &room.members {
            let role = if room.kind == RoomKind::Group && member == room.creator { Role::Owner } else { Role::Member };
            self.add_member(room.id, member, role).await?;
        }
        let values = (id(room.id.0), room_kind_code(room.kind) as i32, &room.name, entry.sent_at_ms);
        self.execute(&s.insert_room, values).await?;
        let event = StoredEvent { event: EventRef::entry(room.id, entry.seq), ref_epoch: 0 };
        // Looked up first: a member's first send may claim the room (and finish this fan-out)
        // before this write of it.
        let positions = self.write_events(&room.members, event, true).await?;
        self.record_fanned_out(room.id, entry.seq).await?;
        Ok(CreateRoomOutcome::Created { positions })
    }

    async fn receipt(&self, r: ReceiptWrite) -> StoreResult<Option<Positions>> {
        let s = &self.rooms;
        let (delivered, read) = self.markers(r.room, r.user).await?;
        // A read marker implies delivery; neither marker ever moves back.
        let moved = match r.kind {
            ReceiptKind::Delivered => r.up_to_seq > delivered,
            ReceiptKind::Read => r.up_to_seq > read,
        };
        if !moved {
            return Ok(None);
        }
        let receipt = Receipt { room: r.room, user: r.user, kind: r.kind, up_to_seq: r.up_to_seq };
        // The events first, the marker after: a receipt cut short is redone in full by its retry
        // (the stream index keeps each event once).
        let event = StoredEvent { event: EventRef::receipt(&receipt), ref_epoch: 0 };
        let positions = self.write_events(&r.recipients, event, true).await?;
        let (room, user, seq) = (id(r.room.0), id(r.user.0), r.up_to_seq as i64);
        match r.kind {
            ReceiptKind::Delivered => self.execute(&s.mark_delivered, (seq, seq, room, user)).await?,
            ReceiptKind::Read => self.execute(&s.mark_read, (seq, seq, seq, room, user)).await?,
        };
        self.cancel_pushes_covered_by(r.user, r.room, r.up_to_seq).await?;
        Ok(Some(positions))
    }
}

#[async_trait]
impl RoomStore for ScyllaStore {
    async fn create_room(&self, room: NewRoom) -> StoreResult<CreateRoomOutcome> {
        self.check_open()?;
        self.create_new_room(room).await
    }

    async fn load_room(&self, room: RoomId) -> StoreResult<Option<RoomState>> {
        let claims = self.room_claims(room).await?;
        self.load(room, &claims).await
    }

    async fn rooms_behind(&self) -> StoreResult<Vec<RoomId>> {
        self.check_open()?;
        self.behind().await
    }

    async fn claim_room(&self, room: RoomId) -> StoreResult<Option<Claim>> {
        self.check_open()?;
        if self.room_meta(room).await?.is_none() {
            return Ok(None);
        }
        // After this process's appends to the room: their fan-outs are not redone under them.
        let turns = self.appends.enter_both(room).await;
        let claimed = async {
            let (epoch, claims, tail) = self.take_room(room).await?;
            let finished = self.finish_fanout(room, &claims, tail).await?;
            let Some(state) = self.load(room, &claims).await? else { return Ok(None) };
            self.appends.claimed(room, epoch, claims);
            Ok(Some(Claim { state, epoch, finished }))
        }
        .await;
        for turn in turns {
            self.appends.leave(turn);
        }
        claimed
    }

    fn submit_append(
        &self,
        append: Append,
    ) -> StoreResult<futures_util::future::BoxFuture<'static, StoreResult<AppendOutcome>>> {
        self.submit(append)
    }

    async fn set_receipt(&self, receipt: ReceiptWrite) -> StoreResult<Option<Positions>> {
        self.check_open()?;
        self.receipt(receipt).await
    }

    async fn history(&self, room: RoomId, page: HistoryPage) -> StoreResult<(Vec<RoomEntry>, bool)> {
        let claims = self.room_claims(room).await?;
        let (rows, limit, newest_first) = match page {
            HistoryPage::Latest { limit } => {
                (self.entries_before(room, &claims, u64::MAX, limit + 1).await?, limit, true)
            }
            HistoryPage::Before { seq, limit } => {
                (self.entries_before(room, &claims, seq, limit + 1).await?, limit, true)
            }
            HistoryPage::After { seq, limit } => {
                (self.entries_after(room, &claims, seq, limit + 1).await?, limit, false)
            }
        };
        let more = rows.len() > limit;
        let mut entries: Vec<RoomEntry> = rows.into_iter().take(limit).map(|r| r.entry).collect();
        if newest_first {
            entries.reverse();
        }
        Ok((entries, more))
    }

    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomSummary>> {
        let rooms = self.user_rooms(user).await?;
        let summaries: Vec<Option<RoomSummary>> = futures_util::stream::iter(rooms)
            .map(|room| self.summary(room, user))
            .buffer_unordered(SUMMARIES_AT_ONCE)
            .try_collect()
            .await?;
        let mut summaries: Vec<RoomSummary> = summaries.into_iter().flatten().collect();
        // Most recently active first, as a chat list shows them.
        summaries
            .sort_by_key(|s| std::cmp::Reverse(s.last_entry.as_ref().map_or(s.meta.created_at_ms, |e| e.sent_at_ms)));
        Ok(summaries)
    }

    async fn room_summary(&self, room: RoomId, user: UserId) -> StoreResult<Option<RoomSummary>> {
        self.summary(room, user).await
    }

    async fn contacts_of(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        let rooms = self.user_rooms(user).await?;
        let mut contacts = BTreeSet::new();
        for room in rooms {
            for (member, _) in self.rows::<(i64, i32)>(&self.rooms.members_of, (id(room.0),)).await? {
                if member != id(user.0) {
                    contacts.insert(UserId(member as u64));
                }
            }
        }
        Ok(contacts.into_iter().collect())
    }

    async fn wrote_to(&self, user: UserId, users: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        let mut wrote = Vec::new();
        for writer in users {
            if self.has_written_to(writer, user, None).await? {
                wrote.push(writer);
            }
        }
        Ok(wrote)
    }
}

/// What an entry changed besides the log, read back from the entry.
fn effect_of(entry: &RoomEntry) -> Effect {
    match &entry.body {
        EntryBody::MembersAdded(users) => Effect::AddMembers(users.clone()),
        EntryBody::MemberRemoved(user) | EntryBody::MemberLeft(user) => Effect::RemoveMember(*user),
        EntryBody::Renamed(name) => Effect::Rename(name.clone()),
        EntryBody::RoleChanged(user, role) => Effect::SetRole(*user, *role),
        EntryBody::Edited { target_seq, text } => {
            Effect::Edit { target_seq: *target_seq, editor: entry.sender, text: text.clone(), at_ms: entry.sent_at_ms }
        }
        EntryBody::Deleted { target_seq } => {
            Effect::Delete { target_seq: *target_seq, by: entry.sender, by_moderator: true }
        }
        EntryBody::Text(_) | EntryBody::Created { .. } => Effect::None,
    }
}

fn behind_shard(room: RoomId) -> i32 {
    (room.0 % BEHIND_SHARDS as u64) as i32
}

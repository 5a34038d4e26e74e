//! Reads. They run on a small pool of read connections (WAL lets them proceed while the writer
//! commits), each on tokio's blocking pool so no async worker ever waits on disk.

use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{ENTRY_COLUMNS, entry_from_row, shared_entry_from_row};
use crate::domain::{
    DeviceId, EventKind, MemberRecord, Receipt, ReceiptKind, RoomEntry, RoomId, RoomMeta, RoomState, RoomSummary,
    Source, StreamEvent, UserId,
};
use crate::store::codec::{EventRow, event_ref_from, role_from, room_kind_from};
use crate::store::{DeviceInfo, DeviceRecord, HistoryPage, UserRecord};

use crate::store::UNREAD_COUNT_CAP;

pub(super) fn user_by_name(conn: &Connection, username: &str) -> rusqlite::Result<Option<UserRecord>> {
    conn.prepare_cached("SELECT user_id, username, password_hash FROM users WHERE username = ?1")?
        .query_row([username], |r| {
            Ok(UserRecord { id: UserId(r.get::<_, i64>(0)? as u64), username: r.get(1)?, password_hash: r.get(2)? })
        })
        .optional()
}

pub(super) fn existing_users(conn: &Connection, users: &[UserId]) -> rusqlite::Result<Vec<UserId>> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM users WHERE user_id = ?1")?;
    let mut found = Vec::with_capacity(users.len());
    for &user in users {
        if stmt.exists([user.0 as i64])? {
            found.push(user);
        }
    }
    Ok(found)
}

pub(super) fn device(conn: &Connection, user: UserId, device: DeviceId) -> rusqlite::Result<Option<DeviceRecord>> {
    conn.prepare_cached(
        "SELECT name, refresh_hash, refresh_expires_at_ms, created_at_ms, revoked FROM devices
         WHERE user_id = ?1 AND device_id = ?2",
    )?
    .query_row(params![user.0 as i64, device.0 as i64], |r| {
        Ok(DeviceRecord {
            user,
            device,
            name: r.get(0)?,
            refresh_hash: r.get(1)?,
            refresh_expires_at_ms: r.get(2)?,
            created_at_ms: r.get(3)?,
            revoked: r.get(4)?,
        })
    })
    .optional()
}

pub(super) fn devices_of(conn: &Connection, user: UserId) -> rusqlite::Result<Vec<DeviceInfo>> {
    conn.prepare_cached(
        "SELECT device_id, name, created_at_ms, revoked FROM devices WHERE user_id = ?1 ORDER BY device_id",
    )?
    .query_map(params![user.0 as i64], |r| {
        Ok(DeviceInfo {
            device: DeviceId(r.get::<_, i64>(0)? as u64),
            name: r.get(1)?,
            created_at_ms: r.get(2)?,
            revoked: r.get(3)?,
        })
    })?
    .collect()
}

pub(super) fn account_blocked(conn: &Connection, user: UserId) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT blocked_at_ms FROM account_blocks WHERE user_id = ?1")?
        .query_row([user.0 as i64], |r| r.get(0))
        .optional()
}

pub(super) fn last_seen(conn: &Connection, users: &[UserId]) -> rusqlite::Result<Vec<(UserId, i64)>> {
    let mut stmt = conn.prepare_cached("SELECT last_seen_ms FROM users WHERE user_id = ?1")?;
    let mut seen = Vec::with_capacity(users.len());
    for &user in users {
        if let Some(at) = stmt.query_row([user.0 as i64], |r| r.get::<_, i64>(0)).optional()? {
            seen.push((user, at));
        }
    }
    Ok(seen)
}

fn room_meta(conn: &Connection, room: RoomId) -> rusqlite::Result<Option<RoomMeta>> {
    conn.prepare_cached("SELECT kind, name, created_at_ms FROM rooms WHERE room_id = ?1")?
        .query_row([room.0 as i64], |r| {
            Ok(RoomMeta { id: room, kind: room_kind_from(r.get(0)?), name: r.get(1)?, created_at_ms: r.get(2)? })
        })
        .optional()
}

fn members(conn: &Connection, room: RoomId) -> rusqlite::Result<Vec<MemberRecord>> {
    conn.prepare_cached(
        "SELECT m.user_id, coalesce(u.username, ''), m.role, m.delivered_seq, m.read_seq
         FROM members m LEFT JOIN users u ON u.user_id = m.user_id WHERE m.room_id = ?1 ORDER BY m.user_id",
    )?
    .query_map([room.0 as i64], |r| {
        Ok(MemberRecord {
            user: UserId(r.get::<_, i64>(0)? as u64),
            username: r.get(1)?,
            role: role_from(r.get(2)?),
            delivered_up_to_seq: r.get::<_, i64>(3)? as u64,
            read_up_to_seq: r.get::<_, i64>(4)? as u64,
        })
    })?
    .collect()
}

fn last_seq(conn: &Connection, room: RoomId) -> rusqlite::Result<u64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM entries WHERE room_id = ?1 ORDER BY seq DESC LIMIT 1")?
        .query_row([room.0 as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

pub(super) fn load_room(conn: &Connection, room: RoomId) -> rusqlite::Result<Option<RoomState>> {
    let Some(meta) = room_meta(conn, room)? else { return Ok(None) };
    Ok(Some(RoomState { meta, members: members(conn, room)?, last_seq: last_seq(conn, room)? }))
}

fn entry_at(conn: &Connection, room: RoomId, seq: u64) -> rusqlite::Result<Option<RoomEntry>> {
    conn.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE room_id = ?1 AND seq = ?2"))?
        .query_row(params![room.0 as i64, seq as i64], |r| entry_from_row(r, 0))
        .optional()
}

pub(super) fn history(conn: &Connection, room: RoomId, page: HistoryPage) -> rusqlite::Result<(Vec<RoomEntry>, bool)> {
    let (sql, bound, limit, newest_first) = match page {
        HistoryPage::Latest { limit } => ("seq <= ?2 ORDER BY seq DESC", i64::MAX, limit, true),
        HistoryPage::Before { seq, limit } => ("seq < ?2 ORDER BY seq DESC", seq as i64, limit, true),
        HistoryPage::After { seq, limit } => ("seq > ?2 ORDER BY seq ASC", seq as i64, limit, false),
    };
    let mut entries: Vec<RoomEntry> = conn
        .prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE room_id = ?1 AND {sql} LIMIT ?3"))?
        .query_map(params![room.0 as i64, bound, (limit + 1) as i64], |r| entry_from_row(r, 0))?
        .collect::<rusqlite::Result<_>>()?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    if newest_first {
        entries.reverse();
    }
    Ok((entries, more))
}

pub(super) fn room_summary(conn: &Connection, room: RoomId, user: UserId) -> rusqlite::Result<Option<RoomSummary>> {
    let Some(state) = load_room(conn, room)? else { return Ok(None) };
    let Some(me) = state.members.iter().find(|m| m.user == user) else { return Ok(None) };
    let read_up_to_seq = me.read_up_to_seq;
    let unread: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM entries WHERE room_id = ?1 AND seq > ?2 AND kind = 1
             AND deleted = 0 AND sender_id != ?3 LIMIT ?4)",
        )?
        .query_row(params![room.0 as i64, read_up_to_seq as i64, user.0 as i64, UNREAD_COUNT_CAP as i64], |r| {
            r.get(0)
        })?;
    let last_entry = entry_at(conn, room, state.last_seq)?;
    Ok(Some(RoomSummary {
        meta: state.meta,
        members: state.members,
        last_seq: state.last_seq,
        last_entry,
        unread_count: unread as u32,
        read_up_to_seq,
    }))
}

pub(super) fn rooms_of(conn: &Connection, user: UserId) -> rusqlite::Result<Vec<RoomSummary>> {
    let rooms: Vec<RoomId> = conn
        .prepare_cached("SELECT room_id FROM user_rooms WHERE user_id = ?1")?
        .query_map([user.0 as i64], |r| r.get::<_, i64>(0).map(|id| RoomId(id as u64)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut summaries = Vec::with_capacity(rooms.len());
    for room in rooms {
        if let Some(summary) = room_summary(conn, room, user)? {
            summaries.push(summary);
        }
    }
    // Most recently active first, as a chat list shows them.
    summaries.sort_by_key(|s| std::cmp::Reverse(s.last_entry.as_ref().map_or(s.meta.created_at_ms, |e| e.sent_at_ms)));
    Ok(summaries)
}

pub(super) fn contacts_of(conn: &Connection, user: UserId) -> rusqlite::Result<Vec<UserId>> {
    conn.prepare_cached(
        "SELECT DISTINCT m.user_id FROM user_rooms ur JOIN members m ON m.room_id = ur.room_id
         WHERE ur.user_id = ?1 AND m.user_id != ?1",
    )?
    .query_map([user.0 as i64], |r| r.get::<_, i64>(0).map(|id| UserId(id as u64)))?
    .collect()
}

/// Whether `writer` has sent a message in a room shared with `reader` (other than `except`).
pub(super) fn has_written_to(
    conn: &Connection,
    writer: UserId,
    reader: UserId,
    except: Option<RoomId>,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM user_rooms ur JOIN members m ON m.room_id = ur.room_id AND m.user_id = ?2
                        WHERE ur.user_id = ?1 AND ur.room_id != ?3
                          AND EXISTS (SELECT 1 FROM entries e WHERE e.room_id = ur.room_id AND e.sender_id = ?2
                                      AND e.kind = 1))",
    )?
    .query_row(params![reader.0 as i64, writer.0 as i64, except.map_or(0, |r| r.0 as i64)], |r| r.get(0))
}

pub(super) fn events_after(
    conn: &Connection,
    user: UserId,
    after_pos: u64,
    limit: usize,
) -> rusqlite::Result<Vec<(u64, StreamEvent)>> {
    let columns = ENTRY_COLUMNS.split(", ").map(|c| format!("en.{c}")).collect::<Vec<_>>().join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT ev.pos, ev.kind, ev.room_id, ev.seq, ev.actor_id, {columns}
         FROM events ev LEFT JOIN entries en ON en.room_id = ev.room_id AND en.seq = ev.seq
         WHERE ev.user_id = ?1 AND ev.pos > ?2 ORDER BY ev.pos LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![user.0 as i64, after_pos as i64, limit as i64], |r| {
        let pos = r.get::<_, i64>(0)? as u64;
        let row = EventRow { kind: r.get(1)?, source_id: r.get(2)?, reference: r.get(3)?, actor: r.get(4)? };
        let unknown =
            || rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Integer, "event kind".into());
        let described = event_ref_from(&row).ok_or_else(unknown)?;
        let event = match (described.kind, described.source) {
            (EventKind::Entry, _) => StreamEvent::Entry(shared_entry_from_row(r, 5)?),
            (kind @ (EventKind::Delivered | EventKind::Read), Source::Room(room)) => StreamEvent::Receipt(Receipt {
                room,
                user: described.actor.ok_or_else(unknown)?,
                kind: if kind == EventKind::Read { ReceiptKind::Read } else { ReceiptKind::Delivered },
                up_to_seq: described.reference,
            }),
            (EventKind::Post, Source::Feed(author)) => {
                let post = crate::domain::PostId(described.reference);
                let details = super::posts::read(conn, post)?.map(std::sync::Arc::new);
                StreamEvent::Post { post, author, details }
            }
            (EventKind::Activity, Source::User(_)) => {
                let activity = super::activity::read(conn, user, described.reference)?.ok_or_else(unknown)?;
                StreamEvent::Activity(std::sync::Arc::new(activity))
            }
            (EventKind::Notification, Source::Server) => {
                let notification = super::notifications::read(conn, user, described.reference)?.ok_or_else(unknown)?;
                StreamEvent::Notification(std::sync::Arc::new(notification))
            }
            _ => return Err(unknown()),
        };
        Ok((pos, event))
    })?;
    rows.collect()
}

pub(super) fn stream_head(conn: &Connection, user: UserId) -> rusqlite::Result<u64> {
    Ok(conn
        .prepare_cached("SELECT pos FROM events WHERE user_id = ?1 ORDER BY pos DESC LIMIT 1")?
        .query_row([user.0 as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

pub(super) fn stream_epoch(conn: &Connection) -> rusqlite::Result<String> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'stream_epoch'")?.query_row([], |r| r.get(0))
}

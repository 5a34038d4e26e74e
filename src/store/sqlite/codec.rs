//! SQLite rows of entries: the column list and reading an entry back. The layout of the columns
//! themselves is the backends' shared one (`store/codec.rs`).

use std::sync::Arc;

use rusqlite::Row;

use crate::domain::{RoomEntry, RoomId, UserId};
use crate::store::codec::{StoredBody, body_from_columns};

/// Column list for reading an entry; `entry_from_row` expects them in this order at `offset`.
pub(super) const ENTRY_COLUMNS: &str = "room_id, seq, id, sender_id, sent_at_ms, kind, text, client_msg_id, target_seq, users, role, edited_at_ms, deleted";

/// Reads an entry from `row`, starting at column `offset` (see `ENTRY_COLUMNS`).
pub(super) fn entry_from_row(row: &Row<'_>, offset: usize) -> rusqlite::Result<RoomEntry> {
    let get_u64 = |i: usize| row.get::<_, i64>(offset + i).map(|v| v as u64);
    let kind: i64 = row.get(offset + 5)?;
    let stored = StoredBody {
        kind,
        text: row.get(offset + 6)?,
        client_msg_id: row.get(offset + 7)?,
        target_seq: get_u64(8)?,
        users: row.get(offset + 9)?,
        role: row.get(offset + 10)?,
        edited_at_ms: row.get(offset + 11)?,
        deleted: row.get::<_, i64>(offset + 12)? != 0,
    };
    let body = body_from_columns(stored).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            offset + 5,
            rusqlite::types::Type::Integer,
            format!("unknown entry kind {kind}").into(),
        )
    })?;
    Ok(RoomEntry {
        room: RoomId(get_u64(0)?),
        seq: get_u64(1)?,
        id: get_u64(2)?,
        sender: UserId(get_u64(3)?),
        sent_at_ms: row.get(offset + 4)?,
        body,
        encoded: Default::default(),
    })
}

pub(super) fn shared_entry_from_row(row: &Row<'_>, offset: usize) -> rusqlite::Result<Arc<RoomEntry>> {
    entry_from_row(row, offset).map(Arc::new)
}

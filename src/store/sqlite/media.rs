//! Stored images: a record per image, its bytes in chunks, and who uploaded it.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::domain::{ImageFormat, MediaId, MediaInfo, UserId};
use crate::store::{MediaRecord, NewMedia, StoreResult};

/// Version 4 of the schema.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS media (
    media_id BLOB PRIMARY KEY,
    format INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size INTEGER NOT NULL,
    chunk_bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS media_chunks (
    media_id BLOB NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (media_id, idx)
);
CREATE TABLE IF NOT EXISTS media_uploaders (
    media_id BLOB NOT NULL,
    user_id INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (media_id, user_id)
) WITHOUT ROWID;
-- The rooms whose messages show an image: their members may read it.
CREATE TABLE IF NOT EXISTS media_refs (
    media_id BLOB NOT NULL,
    room_id INTEGER NOT NULL,
    PRIMARY KEY (media_id, room_id)
) WITHOUT ROWID;
";

/// A message of `room` shows these images (in the message's own transaction).
pub(super) fn link(tx: &Transaction<'_>, room: crate::domain::RoomId, media: &[MediaId]) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO media_refs (media_id, room_id) VALUES (?1, ?2)")?;
    for id in media {
        insert.execute(params![&id.0[..], room.0 as i64])?;
    }
    Ok(())
}

/// The image's chunks and record unless it is stored already; its uploader either way. (In one
/// transaction here, so the order of the contract holds trivially.)
pub(super) fn put(tx: &Transaction<'_>, media: &NewMedia) -> rusqlite::Result<StoreResult<()>> {
    let id = &media.info.id.0[..];
    let stored: Option<i64> =
        tx.prepare_cached("SELECT 1 FROM media WHERE media_id = ?1")?.query_row([id], |r| r.get(0)).optional()?;
    if stored.is_none() {
        let mut insert =
            tx.prepare_cached("INSERT OR REPLACE INTO media_chunks (media_id, idx, data) VALUES (?1, ?2, ?3)")?;
        for (index, chunk) in media.chunks.iter().enumerate() {
            insert.execute(params![id, index as i64, &chunk[..]])?;
        }
        let info = &media.info;
        tx.prepare_cached(
            "INSERT INTO media (media_id, format, width, height, size, chunk_bytes, chunks, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            id,
            info.format.code(),
            info.width,
            info.height,
            info.bytes as i64,
            media.chunk_bytes,
            media.chunks.len() as i64,
            media.at_ms
        ])?;
    }
    tx.prepare_cached("INSERT OR IGNORE INTO media_uploaders (media_id, user_id, at_ms) VALUES (?1, ?2, ?3)")?
        .execute(params![id, media.uploader.0 as i64, media.at_ms])?;
    Ok(Ok(()))
}

pub(super) fn record(c: &Connection, id: MediaId) -> rusqlite::Result<Option<MediaRecord>> {
    c.prepare_cached(
        "SELECT format, width, height, size, chunk_bytes, chunks, created_at_ms, public FROM media WHERE media_id = ?1",
    )?
    .query_row([&id.0[..]], |r| {
        let format = ImageFormat::from_code(r.get(0)?).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, "unknown image format".into())
        })?;
        Ok(MediaRecord {
            info: MediaInfo { id, format, width: r.get(1)?, height: r.get(2)?, bytes: r.get::<_, i64>(3)? as u64 },
            chunk_bytes: r.get(4)?,
            chunks: r.get(5)?,
            created_at_ms: r.get(6)?,
            public: r.get(7)?,
        })
    })
    .optional()
}

pub(super) fn chunk(c: &Connection, id: MediaId, index: u32) -> rusqlite::Result<Option<Vec<u8>>> {
    c.prepare_cached(
        "SELECT data FROM media_chunks WHERE media_id = ?1 AND idx = ?2
           AND EXISTS (SELECT 1 FROM media WHERE media_id = ?1)",
    )?
    .query_row(params![&id.0[..], index], |r| r.get(0))
    .optional()
}

/// Anyone for a public image; else the uploader, a member of a room whose messages show it, or
/// one who may see a post that shows it (its author, anyone for a public author, an approved
/// follower of a private one).
pub(super) fn may_see(c: &Connection, id: MediaId, user: UserId) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM media WHERE media_id = ?1 AND public)
             OR EXISTS (SELECT 1 FROM media_uploaders WHERE media_id = ?1 AND user_id = ?2)
             OR EXISTS (SELECT 1 FROM media_refs r JOIN members m ON m.room_id = r.room_id
                        WHERE r.media_id = ?1 AND m.user_id = ?2)
             OR EXISTS (SELECT 1 FROM media_authors a LEFT JOIN profiles p ON p.user_id = a.author
                        WHERE a.media_id = ?1
                          AND (a.author = ?2 OR NOT coalesce(p.private, 0)
                               OR EXISTS (SELECT 1 FROM follows f
                                          WHERE f.follower = ?2 AND f.followee = a.author AND f.state = 2)))",
    )?
    .query_row(params![&id.0[..], user.0 as i64], |r| r.get(0))
}

pub(super) fn uploaded(c: &Connection, id: MediaId, user: UserId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM media_uploaders WHERE media_id = ?1 AND user_id = ?2")?
        .query_row(params![&id.0[..], user.0 as i64], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// Makes an image readable by anyone.
pub(super) fn publish(tx: &Transaction<'_>, id: MediaId) -> rusqlite::Result<StoreResult<()>> {
    tx.prepare_cached("UPDATE media SET public = 1 WHERE media_id = ?1")?.execute([&id.0[..]])?;
    Ok(Ok(()))
}

/// Images no message shows, last uploaded before `before_ms`: deleted, up to `limit`.
pub(super) fn collect_orphans(
    tx: &Transaction<'_>,
    before_ms: i64,
    limit: usize,
) -> rusqlite::Result<StoreResult<u64>> {
    let orphans: Vec<Vec<u8>> = tx
        .prepare_cached(
            "SELECT m.media_id FROM media m
             WHERE NOT m.public AND NOT EXISTS (SELECT 1 FROM media_refs r WHERE r.media_id = m.media_id)
               AND NOT EXISTS (SELECT 1 FROM media_authors a WHERE a.media_id = m.media_id)
               AND (SELECT MAX(u.at_ms) FROM media_uploaders u WHERE u.media_id = m.media_id) < ?1
             LIMIT ?2",
        )?
        .query_map(params![before_ms, limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &orphans {
        for table in ["media", "media_chunks", "media_uploaders"] {
            tx.prepare_cached(&format!("DELETE FROM {table} WHERE media_id = ?1"))?.execute([id])?;
        }
    }
    Ok(Ok(orphans.len() as u64))
}

//! Posts on SQLite: a row per post with its author's count, changed in one transaction, and the
//! images each post shows (`media_authors`: who may see them follows the post's author).

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::domain::{Location, Post, PostId, UserId, media_from_bytes, media_to_bytes};
use crate::store::{StoreError, StoreErrorKind, StoreResult};

/// Version 7 of the schema.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS posts (
    post_id INTEGER PRIMARY KEY,
    author INTEGER NOT NULL,
    client_post_id TEXT NOT NULL,
    media BLOB NOT NULL,
    caption TEXT NOT NULL,
    lat REAL,
    lng REAL,
    created_at_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS posts_by_client_id ON posts (author, client_post_id);
CREATE INDEX IF NOT EXISTS posts_by_author ON posts (author, post_id);
CREATE TABLE IF NOT EXISTS post_counts (
    author INTEGER PRIMARY KEY,
    posts INTEGER NOT NULL DEFAULT 0
);
-- The images posts show, by author: who may see a post may see its images.
CREATE TABLE IF NOT EXISTS media_authors (
    media_id BLOB NOT NULL,
    author INTEGER NOT NULL,
    PRIMARY KEY (media_id, author)
) WITHOUT ROWID;
";

const COLUMNS: &str = "post_id, author, media, caption, lat, lng, created_at_ms";

fn post_of(r: &Row<'_>) -> rusqlite::Result<Post> {
    let media: Vec<u8> = r.get(2)?;
    let media = media_from_bytes(&media).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Blob, "media ids of a post".into())
    })?;
    let (lat, lng): (Option<f64>, Option<f64>) = (r.get(4)?, r.get(5)?);
    Ok(Post {
        id: PostId(r.get::<_, i64>(0)? as u64),
        author: UserId(r.get::<_, i64>(1)? as u64),
        media,
        caption: r.get(3)?,
        location: lat.zip(lng).map(|(lat, lng)| Location { lat, lng }),
        created_at_ms: r.get(6)?,
    })
}

pub(super) fn create(tx: &Transaction<'_>, post: &Post, client_post_id: &str) -> rusqlite::Result<StoreResult<Post>> {
    let author = post.author.0 as i64;
    let made: Option<Post> = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM posts WHERE author = ?1 AND client_post_id = ?2"))?
        .query_row(params![author, client_post_id], post_of)
        .optional()?;
    if let Some(made) = made {
        return Ok(Ok(made));
    }
    let inserted = tx
        .prepare_cached(
            "INSERT INTO posts (post_id, author, client_post_id, media, caption, lat, lng, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (post_id) DO NOTHING",
        )?
        .execute(params![
            post.id.0 as i64,
            author,
            client_post_id,
            media_to_bytes(&post.media),
            post.caption,
            post.location.map(|l| l.lat),
            post.location.map(|l| l.lng),
            post.created_at_ms
        ])?;
    if inserted == 0 {
        return Ok(Err(StoreError::new(StoreErrorKind::Conflict, "post id taken")));
    }
    tx.prepare_cached(
        "INSERT INTO post_counts (author, posts) VALUES (?1, 1) ON CONFLICT (author) DO UPDATE SET posts = posts + 1",
    )?
    .execute([author])?;
    super::feeds::start(tx, post.id, post.author, post.created_at_ms)?;
    let mut link = tx.prepare_cached("INSERT OR IGNORE INTO media_authors (media_id, author) VALUES (?1, ?2)")?;
    for media in &post.media {
        link.execute(params![&media.0[..], author])?;
    }
    Ok(Ok(post.clone()))
}

pub(super) fn read(c: &Connection, id: PostId) -> rusqlite::Result<Option<Post>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM posts WHERE post_id = ?1"))?
        .query_row([id.0 as i64], post_of)
        .optional()
}

pub(super) fn delete(tx: &Transaction<'_>, id: PostId) -> rusqlite::Result<StoreResult<bool>> {
    let author: Option<i64> = tx
        .prepare_cached("DELETE FROM posts WHERE post_id = ?1 RETURNING author")?
        .query_row([id.0 as i64], |r| r.get(0))
        .optional()?;
    if let Some(author) = author {
        tx.prepare_cached("UPDATE post_counts SET posts = posts - 1 WHERE author = ?1")?.execute([author])?;
    }
    Ok(Ok(author.is_some()))
}

pub(super) fn of_author(
    c: &Connection,
    author: UserId,
    before: Option<PostId>,
    limit: usize,
) -> rusqlite::Result<Vec<Post>> {
    let before = before.map_or(i64::MAX, |p| p.0 as i64);
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM posts WHERE author = ?1 AND post_id < ?2 ORDER BY post_id DESC LIMIT ?3"
    ))?
    .query_map(params![author.0 as i64, before, limit as i64], post_of)?
    .collect()
}

pub(super) fn counts(c: &Connection, authors: &[UserId]) -> rusqlite::Result<Vec<(UserId, u64)>> {
    let mut read = c.prepare_cached("SELECT posts FROM post_counts WHERE author = ?1")?;
    authors
        .iter()
        .map(|&a| {
            let n: Option<i64> = read.query_row([a.0 as i64], |r| r.get(0)).optional()?;
            Ok((a, n.unwrap_or(0).max(0) as u64))
        })
        .collect()
}

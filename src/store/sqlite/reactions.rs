//! Likes and comments on SQLite: a row per like and per comment, and the post's counts, changed
//! in one transaction.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::domain::{Comment, CommentId, LATEST_LIKERS, LatestReactions, PostId, Reactions, UserId, now_ms};
use crate::store::StoreResult;

/// Version 9 of the schema.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS post_likes (
    post_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    PRIMARY KEY (post_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS post_comments (
    post_id INTEGER NOT NULL,
    comment_id INTEGER NOT NULL,
    author INTEGER NOT NULL,
    client_comment_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (post_id, comment_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS post_comments_by_client_id ON post_comments (post_id, author, client_comment_id);
CREATE TABLE IF NOT EXISTS post_reactions (
    post_id INTEGER PRIMARY KEY,
    likes INTEGER NOT NULL DEFAULT 0,
    comments INTEGER NOT NULL DEFAULT 0
);
";

fn count(tx: &Transaction<'_>, post: PostId, column: &str, delta: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO post_reactions (post_id) VALUES (?1)")?.execute([post.0 as i64])?;
    tx.prepare_cached(&format!("UPDATE post_reactions SET {column} = {column} + ?2 WHERE post_id = ?1"))?
        .execute(params![post.0 as i64, delta])?;
    Ok(())
}

pub(super) fn set_like(
    tx: &Transaction<'_>,
    post: PostId,
    user: UserId,
    on: bool,
) -> rusqlite::Result<StoreResult<bool>> {
    let changed = if on {
        tx.prepare_cached("INSERT OR IGNORE INTO post_likes (post_id, user_id, liked_at_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![post.0 as i64, user.0 as i64, now_ms()])?
    } else {
        tx.prepare_cached("DELETE FROM post_likes WHERE post_id = ?1 AND user_id = ?2")?
            .execute(params![post.0 as i64, user.0 as i64])?
    };
    if changed > 0 {
        count(tx, post, "likes", if on { 1 } else { -1 })?;
    }
    Ok(Ok(changed > 0))
}

pub(super) fn liked(c: &Connection, post: PostId, user: UserId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM post_likes WHERE post_id = ?1 AND user_id = ?2")?
        .exists(params![post.0 as i64, user.0 as i64])
}

pub(super) fn likers(
    c: &Connection,
    post: PostId,
    after: Option<UserId>,
    limit: usize,
) -> rusqlite::Result<Vec<UserId>> {
    c.prepare_cached("SELECT user_id FROM post_likes WHERE post_id = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3")?
        .query_map(params![post.0 as i64, after.map_or(0, |u| u.0 as i64), limit as i64], |r| {
            Ok(UserId(r.get::<_, i64>(0)? as u64))
        })?
        .collect()
}

const COLUMNS: &str = "comment_id, post_id, author, text, created_at_ms";

fn comment_of(r: &Row<'_>) -> rusqlite::Result<Comment> {
    Ok(Comment {
        id: CommentId(r.get::<_, i64>(0)? as u64),
        post: PostId(r.get::<_, i64>(1)? as u64),
        author: UserId(r.get::<_, i64>(2)? as u64),
        text: r.get(3)?,
        created_at_ms: r.get(4)?,
    })
}

/// Version 11, after the `post_likes.liked_at_ms` column: a post's likes by time, for its latest
/// likers.
pub(super) const LIKES_BY_TIME: &str =
    "CREATE INDEX IF NOT EXISTS post_likes_by_time ON post_likes (post_id, liked_at_ms)";

pub(super) fn latest(c: &Connection, post: PostId) -> rusqlite::Result<LatestReactions> {
    let likers = c
        .prepare_cached("SELECT user_id FROM post_likes WHERE post_id = ?1 ORDER BY liked_at_ms DESC LIMIT ?2")?
        .query_map(params![post.0 as i64, LATEST_LIKERS as i64], |r| Ok(UserId(r.get::<_, i64>(0)? as u64)))?
        .collect::<rusqlite::Result<_>>()?;
    let comment = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM post_comments WHERE post_id = ?1 ORDER BY comment_id DESC LIMIT 1"
        ))?
        .query_row([post.0 as i64], comment_of)
        .optional()?;
    Ok(LatestReactions { likers, comment })
}

pub(super) fn add_comment(
    tx: &Transaction<'_>,
    comment: &Comment,
    client_id: &str,
) -> rusqlite::Result<StoreResult<Comment>> {
    let made = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM post_comments WHERE post_id = ?1 AND author = ?2 AND client_comment_id = ?3"
        ))?
        .query_row(params![comment.post.0 as i64, comment.author.0 as i64, client_id], comment_of)
        .optional()?;
    if let Some(made) = made {
        return Ok(Ok(made));
    }
    tx.prepare_cached(
        "INSERT INTO post_comments (post_id, comment_id, author, client_comment_id, text, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        comment.post.0 as i64,
        comment.id.0 as i64,
        comment.author.0 as i64,
        client_id,
        comment.text,
        comment.created_at_ms
    ])?;
    count(tx, comment.post, "comments", 1)?;
    Ok(Ok(comment.clone()))
}

pub(super) fn comment(c: &Connection, post: PostId, id: CommentId) -> rusqlite::Result<Option<Comment>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM post_comments WHERE post_id = ?1 AND comment_id = ?2"))?
        .query_row(params![post.0 as i64, id.0 as i64], comment_of)
        .optional()
}

pub(super) fn delete_comment(tx: &Transaction<'_>, post: PostId, id: CommentId) -> rusqlite::Result<StoreResult<bool>> {
    let deleted = tx
        .prepare_cached("DELETE FROM post_comments WHERE post_id = ?1 AND comment_id = ?2")?
        .execute(params![post.0 as i64, id.0 as i64])?;
    if deleted > 0 {
        count(tx, post, "comments", -1)?;
    }
    Ok(Ok(deleted > 0))
}

pub(super) fn comments(
    c: &Connection,
    post: PostId,
    after: Option<CommentId>,
    limit: usize,
) -> rusqlite::Result<Vec<Comment>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM post_comments WHERE post_id = ?1 AND comment_id > ?2 ORDER BY comment_id LIMIT ?3"
    ))?
    .query_map(params![post.0 as i64, after.map_or(0, |c| c.0 as i64), limit as i64], comment_of)?
    .collect()
}

pub(super) fn reactions(c: &Connection, posts: &[PostId]) -> rusqlite::Result<Vec<(PostId, Reactions)>> {
    let mut read = c.prepare_cached("SELECT likes, comments FROM post_reactions WHERE post_id = ?1")?;
    posts
        .iter()
        .map(|&post| {
            let counts = read
                .query_row([post.0 as i64], |r| {
                    Ok(Reactions {
                        likes: r.get::<_, i64>(0)?.max(0) as u64,
                        comments: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                })
                .optional()?;
            Ok((post, counts.unwrap_or_default()))
        })
        .collect()
}

//! Home feeds on SQLite: a row per (follower, post), the fan-out jobs with how far each got (a
//! page of feed rows and the job's progress in one transaction), and the wide authors.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::domain::{PostId, UserId};
use crate::store::{FanoutJob, StoreResult};

/// Version 8 of the schema.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS home_feeds (
    user_id INTEGER NOT NULL,
    post_id INTEGER NOT NULL,
    author INTEGER NOT NULL,
    PRIMARY KEY (user_id, post_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fanout_jobs (
    post_id INTEGER PRIMARY KEY,
    author INTEGER NOT NULL,
    after_user INTEGER NOT NULL DEFAULT 0,
    started_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wide_authors (
    author INTEGER PRIMARY KEY
);
";

/// A new post's fan-out, in the post's transaction.
pub(super) fn start(tx: &Transaction<'_>, post: PostId, author: UserId, at_ms: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO fanout_jobs (post_id, author, started_at_ms) VALUES (?1, ?2, ?3)")?
        .execute(params![post.0 as i64, author.0 as i64, at_ms])?;
    Ok(())
}

fn job_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<FanoutJob> {
    let after: i64 = r.get(2)?;
    Ok(FanoutJob {
        post: PostId(r.get::<_, i64>(0)? as u64),
        author: UserId(r.get::<_, i64>(1)? as u64),
        after: (after != 0).then_some(UserId(after as u64)),
        started_at_ms: r.get(3)?,
    })
}

pub(super) fn job(c: &Connection, post: PostId) -> rusqlite::Result<Option<FanoutJob>> {
    c.prepare_cached("SELECT post_id, author, after_user, started_at_ms FROM fanout_jobs WHERE post_id = ?1")?
        .query_row([post.0 as i64], job_of)
        .optional()
}

pub(super) fn pending(c: &Connection, limit: usize) -> rusqlite::Result<Vec<FanoutJob>> {
    c.prepare_cached("SELECT post_id, author, after_user, started_at_ms FROM fanout_jobs ORDER BY post_id LIMIT ?1")?
        .query_map([limit as i64], job_of)?
        .collect()
}

pub(super) fn page(
    tx: &Transaction<'_>,
    job: FanoutJob,
    followers: &[UserId],
    into_feeds: bool,
) -> rusqlite::Result<StoreResult<()>> {
    let mut insert =
        tx.prepare_cached("INSERT OR IGNORE INTO home_feeds (user_id, post_id, author) VALUES (?1, ?2, ?3)")?;
    for follower in followers.iter().filter(|_| into_feeds) {
        insert.execute(params![follower.0 as i64, job.post.0 as i64, job.author.0 as i64])?;
    }
    if let Some(last) = followers.last() {
        tx.prepare_cached("UPDATE fanout_jobs SET after_user = max(after_user, ?2) WHERE post_id = ?1")?
            .execute(params![job.post.0 as i64, last.0 as i64])?;
    }
    Ok(Ok(()))
}

pub(super) fn finish(tx: &Transaction<'_>, post: PostId) -> rusqlite::Result<StoreResult<()>> {
    tx.prepare_cached("DELETE FROM fanout_jobs WHERE post_id = ?1")?.execute([post.0 as i64])?;
    Ok(Ok(()))
}

pub(super) fn home(
    c: &Connection,
    user: UserId,
    before: Option<PostId>,
    limit: usize,
) -> rusqlite::Result<Vec<(PostId, UserId)>> {
    let before = before.map_or(i64::MAX, |p| p.0 as i64);
    c.prepare_cached(
        "SELECT post_id, author FROM home_feeds WHERE user_id = ?1 AND post_id < ?2 ORDER BY post_id DESC LIMIT ?3",
    )?
    .query_map(params![user.0 as i64, before, limit as i64], |r| {
        Ok((PostId(r.get::<_, i64>(0)? as u64), UserId(r.get::<_, i64>(1)? as u64)))
    })?
    .collect()
}

pub(super) fn add_wide(tx: &Transaction<'_>, author: UserId) -> rusqlite::Result<StoreResult<()>> {
    tx.prepare_cached("INSERT OR IGNORE INTO wide_authors (author) VALUES (?1)")?.execute([author.0 as i64])?;
    Ok(Ok(()))
}

pub(super) fn wide(c: &Connection) -> rusqlite::Result<Vec<UserId>> {
    c.prepare_cached("SELECT author FROM wide_authors")?
        .query_map([], |r| Ok(UserId(r.get::<_, i64>(0)? as u64)))?
        .collect()
}

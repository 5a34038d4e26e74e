//! The follow graph on SQLite: a row per follow (requested or approved) and the two counts each
//! follow moves, changed in one transaction; blocks.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::domain::{FollowCounts, FollowList, FollowState, UserId, now_ms};
use crate::store::{StoreError, StoreErrorKind, StoreResult};

/// Version 6 of the schema.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS follows (
    follower INTEGER NOT NULL,
    followee INTEGER NOT NULL,
    state INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (follower, followee)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS follows_in ON follows (followee, state, follower);
CREATE TABLE IF NOT EXISTS follow_counts (
    user_id INTEGER PRIMARY KEY,
    followers INTEGER NOT NULL DEFAULT 0,
    following INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS blocks (
    blocker INTEGER NOT NULL,
    blocked INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;
";

pub(super) fn state(c: &Connection, from: UserId, to: UserId) -> rusqlite::Result<FollowState> {
    let code: Option<i32> = c
        .prepare_cached("SELECT state FROM follows WHERE follower = ?1 AND followee = ?2")?
        .query_row(params![from.0 as i64, to.0 as i64], |r| r.get(0))
        .optional()?;
    Ok(code.and_then(FollowState::from_code).unwrap_or_default())
}

pub(super) fn followers_among(c: &Connection, followee: UserId, users: &[UserId]) -> rusqlite::Result<Vec<UserId>> {
    let mut follows = c.prepare_cached("SELECT 1 FROM follows WHERE follower = ?1 AND followee = ?2 AND state = ?3")?;
    let approved = FollowState::Following.code();
    let mut found = Vec::new();
    for &user in users {
        if follows.exists(params![user.0 as i64, followee.0 as i64, approved])? {
            found.push(user);
        }
    }
    Ok(found)
}

/// The follow and both counts, in the writer's transaction.
pub(super) fn set(
    tx: &Transaction<'_>,
    from: UserId,
    to: UserId,
    new: FollowState,
    when: &[FollowState],
) -> rusqlite::Result<StoreResult<FollowState>> {
    let old = state(tx, from, to)?;
    if (!when.is_empty() && !when.contains(&old)) || old == new {
        return Ok(Ok(old));
    }
    let (a, b) = (from.0 as i64, to.0 as i64);
    match new {
        FollowState::None => {
            tx.prepare_cached("DELETE FROM follows WHERE follower = ?1 AND followee = ?2")?.execute(params![a, b])?;
        }
        _ => {
            tx.prepare_cached(
                "INSERT INTO follows (follower, followee, state, since_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (follower, followee) DO UPDATE SET state = excluded.state, since_ms = excluded.since_ms",
            )?
            .execute(params![a, b, new.code(), now_ms()])?;
        }
    }
    let delta = i64::from(new == FollowState::Following) - i64::from(old == FollowState::Following);
    if delta != 0 {
        for (user, column) in [(b, "followers"), (a, "following")] {
            tx.prepare_cached("INSERT OR IGNORE INTO follow_counts (user_id) VALUES (?1)")?.execute([user])?;
            tx.prepare_cached(&format!("UPDATE follow_counts SET {column} = {column} + ?2 WHERE user_id = ?1"))?
                .execute(params![user, delta])?;
        }
    }
    Ok(Ok(old))
}

pub(super) fn counts(c: &Connection, users: &[UserId]) -> rusqlite::Result<Vec<(UserId, FollowCounts)>> {
    let mut read = c.prepare_cached("SELECT followers, following FROM follow_counts WHERE user_id = ?1")?;
    users
        .iter()
        .map(|&user| {
            let counts = read
                .query_row([user.0 as i64], |r| {
                    Ok(FollowCounts { followers: r.get::<_, i64>(0)? as u64, following: r.get::<_, i64>(1)? as u64 })
                })
                .optional()?;
            Ok((user, counts.unwrap_or_default()))
        })
        .collect()
}

pub(super) fn list(
    c: &Connection,
    user: UserId,
    list: FollowList,
    after: Option<UserId>,
    limit: usize,
) -> rusqlite::Result<Vec<UserId>> {
    let sql = match list {
        FollowList::Followers => {
            "SELECT follower FROM follows WHERE followee = ?1 AND state = 2 AND follower > ?2 ORDER BY follower LIMIT ?3"
        }
        FollowList::Following => {
            "SELECT followee FROM follows WHERE follower = ?1 AND state = 2 AND followee > ?2 ORDER BY followee LIMIT ?3"
        }
        FollowList::Requests => {
            "SELECT follower FROM follows WHERE followee = ?1 AND state = 1 AND follower > ?2 ORDER BY follower LIMIT ?3"
        }
        FollowList::Blocked => {
            "SELECT blocked FROM blocks WHERE blocker = ?1 AND blocked > ?2 ORDER BY blocked LIMIT ?3"
        }
    };
    // User ids are below 2^63 (`new_random_id`): 0 is before every one.
    let after = after.map_or(0, |u| u.0 as i64);
    let users: Vec<i64> = c
        .prepare_cached(sql)?
        .query_map(params![user.0 as i64, after, limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(users.into_iter().map(|u| UserId(u as u64)).collect())
}

pub(super) fn set_block(
    tx: &Transaction<'_>,
    blocker: UserId,
    blocked: UserId,
    on: bool,
) -> rusqlite::Result<StoreResult<()>> {
    if blocker == blocked {
        return Ok(Err(StoreError::new(StoreErrorKind::Conflict, "one cannot block oneself")));
    }
    let (a, b) = (blocker.0 as i64, blocked.0 as i64);
    if on {
        tx.prepare_cached("INSERT OR IGNORE INTO blocks (blocker, blocked, at_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![a, b, now_ms()])?;
    } else {
        tx.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?.execute(params![a, b])?;
    }
    Ok(Ok(()))
}

pub(super) fn blockers_of(c: &Connection, user: UserId, others: &[UserId]) -> rusqlite::Result<Vec<UserId>> {
    let mut blocked = c.prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?;
    let mut found = Vec::new();
    for &other in others {
        if blocked.exists(params![other.0 as i64, user.0 as i64])? {
            found.push(other);
        }
    }
    Ok(found)
}

//! Activity on SQLite: an activity row (once per recipient and `dedup_key`), its group's running
//! state, its stream event and its push, in one transaction; what each user has seen.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::domain::{
    ACTIVITY_UNREAD_CAP, Activity, ActivityGroup, ActivityKind, ActivityStatus, CommentId, NewActivity, PostId, UserId,
    describe, time_ordered_id,
};
use crate::store::codec::{join_users, split_users};

/// Version 10 of the schema.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS activities (
    recipient INTEGER NOT NULL,
    activity_id INTEGER NOT NULL,
    dedup_key TEXT NOT NULL,
    kind INTEGER NOT NULL,
    actor INTEGER NOT NULL,
    post_id INTEGER NOT NULL,
    comment_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    group_id INTEGER NOT NULL,
    group_count INTEGER NOT NULL,
    group_actors TEXT NOT NULL,
    pos INTEGER NOT NULL,
    PRIMARY KEY (recipient, activity_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS activities_by_key ON activities (recipient, dedup_key);
CREATE INDEX IF NOT EXISTS activities_by_pos ON activities (recipient, pos);
CREATE TABLE IF NOT EXISTS activity_groups (
    recipient INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    post_id INTEGER NOT NULL,
    group_id INTEGER NOT NULL,
    opened_at_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    actors TEXT NOT NULL,
    PRIMARY KEY (recipient, kind, post_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS activity_seen (
    user_id INTEGER PRIMARY KEY,
    pos INTEGER NOT NULL
);
";

const COLUMNS: &str =
    "recipient, activity_id, kind, actor, post_id, comment_id, text, at_ms, group_id, group_count, group_actors";

fn activity_of(r: &Row<'_>) -> rusqlite::Result<Activity> {
    let kind: i64 = r.get(2)?;
    Ok(Activity {
        recipient: UserId(r.get::<_, i64>(0)? as u64),
        id: r.get::<_, i64>(1)? as u64,
        kind: ActivityKind::from_code(kind).ok_or(rusqlite::Error::IntegralValueOutOfRange(2, kind))?,
        actor: UserId(r.get::<_, i64>(3)? as u64),
        post: PostId(r.get::<_, i64>(4)? as u64),
        comment: CommentId(r.get::<_, i64>(5)? as u64),
        text: r.get(6)?,
        at_ms: r.get(7)?,
        group: ActivityGroup {
            id: r.get::<_, i64>(8)? as u64,
            count: r.get::<_, i64>(9)? as u32,
            actors: split_users(&r.get::<_, String>(10)?),
        },
    })
}

/// The group `new` joins: the open one of its kind and post, or a new one with `id` first.
fn join_group(tx: &Transaction<'_>, new: &NewActivity, id: u64) -> rusqlite::Result<ActivityGroup> {
    let (recipient, kind, post) = (new.recipient.0 as i64, new.kind.code(), new.post.0 as i64);
    let open = tx
        .prepare_cached(
            "SELECT group_id, count, actors FROM activity_groups
             WHERE recipient = ?1 AND kind = ?2 AND post_id = ?3 AND opened_at_ms > ?4",
        )?
        .query_row(params![recipient, kind, post, new.at_ms - new.window_ms], |r| {
            Ok(ActivityGroup {
                id: r.get::<_, i64>(0)? as u64,
                count: r.get::<_, i64>(1)? as u32,
                actors: split_users(&r.get::<_, String>(2)?),
            })
        })
        .optional()?;
    let opened = open.is_none();
    let group = ActivityGroup::joined(open, id, new.actor);
    if opened {
        tx.prepare_cached(
            "INSERT INTO activity_groups (recipient, kind, post_id, group_id, opened_at_ms, count, actors)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (recipient, kind, post_id) DO UPDATE SET group_id = excluded.group_id,
                 opened_at_ms = excluded.opened_at_ms, count = excluded.count, actors = excluded.actors",
        )?
        .execute(params![
            recipient,
            kind,
            post,
            group.id as i64,
            new.at_ms,
            group.count,
            join_users(&group.actors)
        ])?;
    } else {
        tx.prepare_cached(
            "UPDATE activity_groups SET count = ?4, actors = ?5 WHERE recipient = ?1 AND kind = ?2 AND post_id = ?3",
        )?
        .execute(params![recipient, kind, post, group.count, join_users(&group.actors)])?;
    }
    Ok(group)
}

/// The activity's row, unless one with its `dedup_key` is there already. The caller puts its
/// stream event at `pos` in the same transaction.
pub(super) fn insert(
    tx: &Transaction<'_>,
    new: &NewActivity,
    pos: impl FnOnce(&Activity) -> rusqlite::Result<u64>,
) -> rusqlite::Result<Option<(u64, Activity)>> {
    let key = new.dedup_key();
    let seen = tx
        .prepare_cached("SELECT 1 FROM activities WHERE recipient = ?1 AND dedup_key = ?2")?
        .query_row(params![new.recipient.0 as i64, key], |_| Ok(()))
        .optional()?;
    if seen.is_some() {
        return Ok(None);
    }
    let id = time_ordered_id(new.at_ms);
    let activity = new.recorded(id, join_group(tx, new, id)?);
    let pos = pos(&activity)?;
    tx.prepare_cached(&format!(
        "INSERT INTO activities ({COLUMNS}, dedup_key, pos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?
    .execute(params![
        new.recipient.0 as i64,
        id as i64,
        new.kind.code(),
        new.actor.0 as i64,
        new.post.0 as i64,
        new.comment.0 as i64,
        new.text,
        new.at_ms,
        activity.group.id as i64,
        activity.group.count,
        join_users(&activity.group.actors),
        key,
        pos as i64
    ])?;
    Ok(Some((pos, activity)))
}

/// What a push of the activity says: "ana and 4 others liked your photo".
pub(super) fn push_line(tx: &Transaction<'_>, activity: &Activity) -> rusqlite::Result<String> {
    let name: String = tx
        .prepare_cached("SELECT username FROM users WHERE user_id = ?1")?
        .query_row([activity.actor.0 as i64], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    Ok(describe(activity, &name))
}

pub(super) fn read(c: &Connection, recipient: UserId, id: u64) -> rusqlite::Result<Option<Activity>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM activities WHERE recipient = ?1 AND activity_id = ?2"))?
        .query_row(params![recipient.0 as i64, id as i64], activity_of)
        .optional()
}

pub(super) fn set_seen(tx: &Transaction<'_>, user: UserId, up_to_pos: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO activity_seen (user_id, pos) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET pos = max(pos, excluded.pos)",
    )?
    .execute(params![user.0 as i64, up_to_pos as i64])?;
    Ok(())
}

pub(super) fn status(c: &Connection, user: UserId) -> rusqlite::Result<ActivityStatus> {
    let seen: i64 = c
        .prepare_cached("SELECT pos FROM activity_seen WHERE user_id = ?1")?
        .query_row([user.0 as i64], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let unread: i64 = c
        .prepare_cached("SELECT count(*) FROM (SELECT 1 FROM activities WHERE recipient = ?1 AND pos > ?2 LIMIT ?3)")?
        .query_row(params![user.0 as i64, seen, ACTIVITY_UNREAD_CAP as i64], |r| r.get(0))?;
    Ok(ActivityStatus { seen_up_to_pos: seen as u64, unread: unread as u32 })
}

//! Push tokens, preferences and the push queue in SQLite: the writes the writer thread runs (inside
//! its transaction) and the reads the read pool runs.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::domain::{
    ACTIVITY_PUSH_ROOM, DeviceId, NOTIFICATION_PUSH_ROOM, Platform, PushKind, PushRegistration, RoomId, RoomKind,
    UserId,
};
use crate::metrics::PUSH_METRICS;
use crate::store::UNREAD_COUNT_CAP;
use crate::store::codec::{room_kind_code, room_kind_from};
use crate::store::{
    Positions, PushContext, PushFanout, PushJob, PushJobEnd, PushJobState, PushJobSummary, PushJobsListed,
    PushPreferences, StoreError, StoreErrorKind, StoreResult,
};

type CmdResult<T> = rusqlite::Result<StoreResult<T>>;

pub(super) fn set_token(tx: &Transaction<'_>, r: &PushRegistration, now_ms: i64) -> CmdResult<()> {
    let live = tx
        .prepare_cached("SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2 AND revoked = 0")?
        .query_row(params![r.user.0 as i64, r.device.0 as i64], |_| Ok(()))
        .optional()?;
    if live.is_none() {
        return Ok(Err(StoreError::new(StoreErrorKind::Conflict, "the device is logged out")));
    }
    // A token belongs to one app install. Another device of the same user that registered it
    // before (a reinstall) gives it up; another user's device keeps it: moving it would let
    // anyone who learned a token take over its pushes. (Logging out clears a device's token, so
    // an account switch on one phone frees it.)
    let previous = tx
        .prepare_cached("SELECT user_id, device_id FROM push_tokens WHERE platform = ?1 AND token = ?2")?
        .query_row(params![r.platform.code(), r.token], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
        .optional()?;
    if let Some((user, device)) = previous
        && (user as u64, device as u64) != (r.user.0, r.device.0)
    {
        if user as u64 != r.user.0 {
            return Ok(Err(StoreError::new(StoreErrorKind::Conflict, "this push token is another account's")));
        }
        clear_token(tx, UserId(user as u64), DeviceId(device as u64))?;
    }
    tx.prepare_cached(
        "INSERT INTO push_tokens (user_id, device_id, platform, token, app_id, locale, sandbox, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (user_id, device_id) DO UPDATE SET platform = excluded.platform, token = excluded.token,
             app_id = excluded.app_id, locale = excluded.locale, sandbox = excluded.sandbox,
             updated_at_ms = excluded.updated_at_ms",
    )?
    .execute(params![
        r.user.0 as i64,
        r.device.0 as i64,
        r.platform.code(),
        r.token,
        r.app_id,
        r.locale,
        r.sandbox,
        now_ms
    ])?;
    // Jobs already queued name the device, not the token: they go to the new token.
    Ok(Ok(()))
}

fn token_of(tx: &Transaction<'_>, user: UserId, device: DeviceId) -> rusqlite::Result<Option<String>> {
    tx.prepare_cached("SELECT token FROM push_tokens WHERE user_id = ?1 AND device_id = ?2")?
        .query_row(params![user.0 as i64, device.0 as i64], |r| r.get(0))
        .optional()
}

/// Forgets a device's token and every push queued for it.
pub(super) fn clear_token(tx: &Transaction<'_>, user: UserId, device: DeviceId) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM push_tokens WHERE user_id = ?1 AND device_id = ?2")?
        .execute(params![user.0 as i64, device.0 as i64])?;
    tx.prepare_cached("DELETE FROM push_jobs WHERE user_id = ?1 AND device_id = ?2 AND state < 2")?
        .execute(params![user.0 as i64, device.0 as i64])?;
    Ok(())
}

pub(super) fn set_room_mute(tx: &Transaction<'_>, user: UserId, room: RoomId, until_ms: i64) -> CmdResult<()> {
    if until_ms <= 0 {
        tx.prepare_cached("DELETE FROM room_mutes WHERE user_id = ?1 AND room_id = ?2")?
            .execute(params![user.0 as i64, room.0 as i64])?;
    } else {
        tx.prepare_cached(
            "INSERT INTO room_mutes (user_id, room_id, until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, room_id) DO UPDATE SET until_ms = excluded.until_ms",
        )?
        .execute(params![user.0 as i64, room.0 as i64, until_ms])?;
    }
    Ok(Ok(()))
}

pub(super) fn set_do_not_disturb(tx: &Transaction<'_>, user: UserId, until_ms: i64) -> CmdResult<()> {
    tx.prepare_cached(
        "INSERT INTO push_prefs (user_id, dnd_until_ms) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET dnd_until_ms = excluded.dnd_until_ms",
    )?
    .execute(params![user.0 as i64, until_ms.max(0)])?;
    Ok(Ok(()))
}

pub(super) fn set_hide_previews(tx: &Transaction<'_>, user: UserId, hide: bool) -> CmdResult<()> {
    tx.prepare_cached(
        "INSERT INTO push_prefs (user_id, hide_previews) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET hide_previews = excluded.hide_previews",
    )?
    .execute(params![user.0 as i64, hide])?;
    Ok(Ok(()))
}

/// Queues (or merges into the pending job) one push per registered device of each fan-out user.
pub(super) fn enqueue(
    tx: &Transaction<'_>,
    fanout: &PushFanout,
    room: RoomId,
    seq: u64,
    sender: UserId,
    positions: &Positions,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let platforms: i64 = fanout.platforms.iter().map(|p| 1i64 << p.code()).sum();
    if platforms == 0 {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO push_jobs (user_id, device_id, room_id, platform, state, due_ms, kind, count, last_seq, last_pos,
                                sender_id, preview, created_at_ms)
         SELECT user_id, device_id, ?3, platform, 0, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10 FROM push_tokens
         WHERE user_id = ?1 AND ((?2 >> platform) & 1) = 1
         ON CONFLICT (user_id, device_id, room_id) WHERE state = 0 DO UPDATE SET
             count = count + 1, kind = excluded.kind, last_seq = excluded.last_seq, last_pos = excluded.last_pos,
             many_senders = many_senders OR sender_id != excluded.sender_id, sender_id = excluded.sender_id,
             preview = excluded.preview
         RETURNING platform",
    )?;
    for user in &fanout.users {
        let Some(&(_, pos)) = positions.iter().find(|(u, _)| u == user) else { continue };
        // "X added you to <any name>" only from someone the user has written to: a stranger's
        // group is in the stream, not on the lock screen.
        if fanout.kind == PushKind::AddedToRoom && !super::reads::has_written_to(tx, *user, sender, Some(room))? {
            continue;
        }
        let mut queued = upsert.query(params![
            user.0 as i64,
            platforms,
            room.0 as i64,
            fanout.due_at_ms,
            fanout.kind.code(),
            seq as i64,
            pos as i64,
            sender.0 as i64,
            fanout.preview,
            now_ms
        ])?;
        while let Some(row) = queued.next()? {
            if let Some(platform) = Platform::from_code(row.get(0)?) {
                PUSH_METRICS.of(platform).queued.inc();
            }
        }
    }
    Ok(())
}

/// The message `seq` was edited: pushes not yet sent (or kept as failed) that show its text show
/// the new one.
pub(super) fn revise(tx: &Transaction<'_>, room: RoomId, seq: u64, preview: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE push_jobs SET preview = ?3 WHERE room_id = ?1 AND last_seq = ?2 AND state IN (0, 2)")?
        .execute(params![room.0 as i64, seq as i64, preview])?;
    Ok(())
}

/// The message `seq` was deleted: a pending push announcing only it is cancelled; one that also
/// announces later messages counts one fewer; one whose preview was its text loses the preview; a
/// failed one kept for inspection forgets the text. A push already claimed is on its way.
pub(super) fn retract(tx: &Transaction<'_>, room: RoomId, seq: u64) -> rusqlite::Result<()> {
    let (room, seq) = (room.0 as i64, seq as i64);
    let mut cancel = tx.prepare_cached(
        "DELETE FROM push_jobs WHERE room_id = ?1 AND last_seq = ?2 AND state = 0 AND count <= 1 RETURNING platform",
    )?;
    let mut cancelled = cancel.query(params![room, seq])?;
    while let Some(row) = cancelled.next()? {
        if let Some(platform) = Platform::from_code(row.get(0)?) {
            PUSH_METRICS.of(platform).dropped.inc();
        }
    }
    // Pending jobs that took the message in: it was appended after they were created.
    tx.prepare_cached(
        "UPDATE push_jobs SET count = count - 1, preview = CASE WHEN last_seq = ?2 THEN '' ELSE preview END
         WHERE room_id = ?1 AND state = 0 AND last_seq >= ?2 AND count > 1
           AND created_at_ms <= (SELECT sent_at_ms FROM entries WHERE room_id = ?1 AND seq = ?2)",
    )?
    .execute(params![room, seq])?;
    tx.prepare_cached("UPDATE push_jobs SET preview = '' WHERE room_id = ?1 AND last_seq = ?2 AND state = 2")?
        .execute(params![room, seq])?;
    Ok(())
}

/// A delivered or read marker moved to `up_to_seq`: pending pushes it covers are not needed.
pub(super) fn cancel_covered_by_receipt(
    tx: &Transaction<'_>,
    user: UserId,
    room: RoomId,
    up_to_seq: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM push_jobs WHERE user_id = ?1 AND room_id = ?2 AND state = 0 AND last_seq <= ?3")?
        .execute(params![user.0 as i64, room.0 as i64, up_to_seq as i64])?;
    Ok(())
}

/// The user saw their activity up to stream position `up_to_pos`: pending activity pushes up to
/// there are not needed.
pub(super) fn cancel_seen_activity(tx: &Transaction<'_>, user: UserId, up_to_pos: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM push_jobs WHERE user_id = ?1 AND room_id = ?2 AND state = 0 AND last_pos <= ?3")?
        .execute(params![user.0 as i64, ACTIVITY_PUSH_ROOM.0 as i64, up_to_pos as i64])?;
    Ok(())
}

/// How far each user's stream was acknowledged (schema version 12).
pub(super) const DELIVERED_TABLE: &str = "
CREATE TABLE IF NOT EXISTS push_delivered (
    user_id INTEGER PRIMARY KEY,
    up_to_pos INTEGER NOT NULL
) WITHOUT ROWID;
";

pub(super) fn cancel_delivered(tx: &Transaction<'_>, user: UserId, up_to_pos: u64) -> CmdResult<u64> {
    tx.prepare_cached(
        "INSERT INTO push_delivered (user_id, up_to_pos) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET up_to_pos = max(up_to_pos, excluded.up_to_pos)",
    )?
    .execute(params![user.0 as i64, up_to_pos as i64])?;
    tx.prepare_cached("DELETE FROM push_jobs WHERE user_id = ?1 AND state = 0 AND last_pos <= ?2")?
        .execute(params![user.0 as i64, up_to_pos as i64])?;
    let left: i64 = tx
        .prepare_cached("SELECT count(*) FROM push_jobs WHERE user_id = ?1 AND state = 0")?
        .query_row([user.0 as i64], |r| r.get(0))?;
    Ok(Ok(left as u64))
}

const JOB_COLUMNS: &str = "j.job_id, j.user_id, j.device_id, j.room_id, j.kind, j.count, j.last_seq, j.last_pos,
    j.sender_id, j.many_senders, j.preview, j.attempts, j.created_at_ms, t.platform, t.token, t.app_id, t.locale,
    t.sandbox";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<PushJob> {
    let platform: i64 = r.get(13)?;
    Ok(PushJob {
        id: r.get::<_, i64>(0)? as u64,
        user: UserId(r.get::<_, i64>(1)? as u64),
        device: DeviceId(r.get::<_, i64>(2)? as u64),
        room: RoomId(r.get::<_, i64>(3)? as u64),
        kind: PushKind::from_code(r.get(4)?),
        count: r.get::<_, i64>(5)? as u32,
        last_seq: r.get::<_, i64>(6)? as u64,
        last_pos: r.get::<_, i64>(7)? as u64,
        sender: UserId(r.get::<_, i64>(8)? as u64),
        many_senders: r.get(9)?,
        preview: r.get(10)?,
        attempts: r.get::<_, i64>(11)? as u32,
        created_at_ms: r.get(12)?,
        platform: Platform::from_code(platform).ok_or(rusqlite::Error::IntegralValueOutOfRange(13, platform))?,
        token: r.get(14)?,
        app_id: r.get(15)?,
        locale: r.get(16)?,
        sandbox: r.get(17)?,
    })
}

/// Leases due jobs to the caller. A job whose device has no token any more is dropped here.
pub(super) fn claim(tx: &Transaction<'_>, now_ms: i64, lease_ms: i64, limit: usize) -> CmdResult<Vec<PushJob>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM push_jobs j LEFT JOIN push_tokens t USING (user_id, device_id)
         WHERE j.state < 2 AND j.due_ms <= ?1 ORDER BY j.due_ms LIMIT ?2"
    );
    let mut select = tx.prepare_cached(&sql)?;
    let mut rows = select.query(params![now_ms, limit as i64])?;
    let mut jobs = Vec::new();
    let mut orphans = Vec::new();
    while let Some(row) = rows.next()? {
        match row.get::<_, Option<i64>>(13)? {
            Some(_) => jobs.push(job_from_row(row)?),
            None => orphans.push(row.get::<_, i64>(0)?),
        }
    }
    drop(rows);
    let mut lease = tx.prepare_cached("UPDATE push_jobs SET state = 1, due_ms = ?2 WHERE job_id = ?1")?;
    for job in &jobs {
        lease.execute(params![job.id as i64, now_ms + lease_ms])?;
    }
    let mut delete = tx.prepare_cached("DELETE FROM push_jobs WHERE job_id = ?1")?;
    for id in orphans {
        delete.execute([id])?;
    }
    Ok(Ok(jobs))
}

pub(super) fn finish(tx: &Transaction<'_>, job: &PushJob, end: &PushJobEnd) -> CmdResult<()> {
    let id = job.id as i64;
    match end {
        PushJobEnd::Sent | PushJobEnd::Dropped => {
            tx.prepare_cached("DELETE FROM push_jobs WHERE job_id = ?1")?.execute([id])?;
        }
        PushJobEnd::Retry { at_ms, error } => {
            tx.prepare_cached(
                "UPDATE push_jobs SET state = 1, due_ms = ?2, attempts = attempts + 1, last_error = ?3
                 WHERE job_id = ?1",
            )?
            .execute(params![id, at_ms, error])?;
        }
        PushJobEnd::Failed { reason } => {
            // due_ms becomes the time it failed, which is what purging goes by.
            tx.prepare_cached(
                "UPDATE push_jobs SET state = 2, attempts = attempts + 1, last_error = ?2, due_ms = ?3
                 WHERE job_id = ?1",
            )?
            .execute(params![id, reason, crate::domain::now_ms()])?;
        }
        PushJobEnd::TokenDead { token, .. } => {
            // Only if the device still has that token: it may have registered a fresh one meanwhile.
            if token_of(tx, job.user, job.device)?.as_deref() == Some(token.as_str()) {
                clear_token(tx, job.user, job.device)?;
            }
            tx.prepare_cached("DELETE FROM push_jobs WHERE job_id = ?1")?.execute([id])?;
        }
    }
    Ok(Ok(()))
}

pub(super) fn purge_failed(tx: &Transaction<'_>, before_ms: i64) -> CmdResult<u64> {
    let purged = tx.prepare_cached("DELETE FROM push_jobs WHERE state = 2 AND due_ms < ?1")?.execute([before_ms])?;
    Ok(Ok(purged as u64))
}

/// An operator's retry of a failed job: leased-and-due-now (state 1) rather than pending, so it
/// neither takes a new message's place in the device's pending job nor is merged into.
pub(super) fn retry_failed(tx: &Transaction<'_>, user: UserId, job: u64, now_ms: i64) -> CmdResult<bool> {
    let changed = tx
        .prepare_cached(
            "UPDATE push_jobs SET state = 1, due_ms = ?3, attempts = 0 WHERE job_id = ?1 AND user_id = ?2 AND state = 2",
        )?
        .execute(params![job as i64, user.0 as i64, now_ms])?;
    Ok(Ok(changed > 0))
}

pub(super) fn drop_job(tx: &Transaction<'_>, user: UserId, job: u64) -> CmdResult<bool> {
    let deleted = tx
        .prepare_cached("DELETE FROM push_jobs WHERE job_id = ?1 AND user_id = ?2")?
        .execute(params![job as i64, user.0 as i64])?;
    Ok(Ok(deleted > 0))
}

pub(super) fn list(conn: &Connection, which: PushJobsListed, limit: usize) -> rusqlite::Result<Vec<PushJobSummary>> {
    let filter = match which {
        PushJobsListed::Queued => "state < 2 ORDER BY due_ms, job_id",
        PushJobsListed::Failed => "state = 2 ORDER BY due_ms DESC, job_id DESC",
    };
    let sql = format!(
        "SELECT job_id, user_id, device_id, room_id, kind, count, state, attempts, due_ms, created_at_ms, last_error
         FROM push_jobs WHERE {filter} LIMIT ?1"
    );
    conn.prepare_cached(&sql)?
        .query_map([limit as i64], |r| {
            Ok(PushJobSummary {
                id: r.get::<_, i64>(0)? as u64,
                user: UserId(r.get::<_, i64>(1)? as u64),
                device: DeviceId(r.get::<_, i64>(2)? as u64),
                room: RoomId(r.get::<_, i64>(3)? as u64),
                kind: PushKind::from_code(r.get(4)?),
                count: r.get::<_, i64>(5)? as u32,
                state: match r.get::<_, i64>(6)? {
                    0 => PushJobState::Pending,
                    1 => PushJobState::Claimed,
                    _ => PushJobState::Failed,
                },
                attempts: r.get::<_, i64>(7)? as u32,
                due_ms: r.get(8)?,
                created_at_ms: r.get(9)?,
                last_error: r.get(10)?,
            })
        })?
        .collect()
}

pub(super) fn next_due(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT min(due_ms) FROM push_jobs WHERE state < 2")?.query_row([], |r| r.get(0))
}

pub(super) fn users_with_pending(conn: &Connection) -> rusqlite::Result<Vec<UserId>> {
    conn.prepare_cached("SELECT DISTINCT user_id FROM push_jobs WHERE state = 0")?
        .query_map([], |r| r.get::<_, i64>(0).map(|u| UserId(u as u64)))?
        .collect()
}

pub(super) fn token(conn: &Connection, user: UserId, device: DeviceId) -> rusqlite::Result<Option<PushRegistration>> {
    conn.prepare_cached(
        "SELECT platform, token, app_id, locale, sandbox FROM push_tokens WHERE user_id = ?1 AND device_id = ?2",
    )?
    .query_row(params![user.0 as i64, device.0 as i64], |r| {
        let platform: i64 = r.get(0)?;
        Ok(PushRegistration {
            user,
            device,
            platform: Platform::from_code(platform).ok_or(rusqlite::Error::IntegralValueOutOfRange(0, platform))?,
            token: r.get(1)?,
            app_id: r.get(2)?,
            locale: r.get(3)?,
            sandbox: r.get(4)?,
        })
    })
    .optional()
}

/// The contexts of several jobs, read in one transaction: one snapshot and one pair of file locks
/// for the batch rather than one per query (each query outside a transaction is its own).
pub(super) fn contexts(conn: &Connection, jobs: &[PushJob]) -> rusqlite::Result<Vec<rusqlite::Result<PushContext>>> {
    conn.prepare_cached("BEGIN")?.execute([])?;
    let contexts = jobs.iter().map(|job| context(conn, job)).collect();
    conn.prepare_cached("COMMIT")?.execute([])?;
    Ok(contexts)
}

pub(super) fn context(conn: &Connection, job: &PushJob) -> rusqlite::Result<PushContext> {
    // Activity and notifications are in no room: no name, no markers, always "a member".
    let activity = job.room == ACTIVITY_PUSH_ROOM || job.room == NOTIFICATION_PUSH_ROOM;
    // One statement for what six point lookups would read: each statement run costs more than the
    // lookup itself (the drain of a push backlog spends a third of its time here).
    let row = conn
        .prepare_cached(
            "SELECT r.kind, r.name, s.username, m.read_seq, m.delivered_seq, d.up_to_pos, mu.until_ms,
                    p.dnd_until_ms, p.hide_previews
             FROM (SELECT ?1 AS room_id, ?2 AS user_id, ?3 AS sender_id) q
             LEFT JOIN rooms r ON r.room_id = q.room_id
             LEFT JOIN users s ON s.user_id = q.sender_id
             LEFT JOIN members m ON m.room_id = q.room_id AND m.user_id = q.user_id
             LEFT JOIN push_delivered d ON d.user_id = q.user_id
             LEFT JOIN room_mutes mu ON mu.user_id = q.user_id AND mu.room_id = q.room_id
             LEFT JOIN push_prefs p ON p.user_id = q.user_id",
        )?
        .query_row(params![job.room.0 as i64, job.user.0 as i64, job.sender.0 as i64], |r| {
            Ok(ContextRow {
                room_kind: r.get(0)?,
                room_name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                sender_name: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                marks: r.get::<_, Option<i64>>(3)?.zip(r.get::<_, Option<i64>>(4)?),
                stream_delivered: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                muted_until_ms: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                dnd_until_ms: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
                hide_previews: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
            })
        })?;
    let (kind, room_name) = match (activity, row.room_kind) {
        (true, _) => (room_kind_code(RoomKind::Direct), String::new()),
        (false, Some(kind)) => (kind, row.room_name),
        // A room that is not there: an error, as a failed read is (the push is tried again).
        (false, None) => return Err(rusqlite::Error::QueryReturnedNoRows),
    };
    Ok(PushContext {
        room_kind: room_kind_from(kind),
        room_name,
        sender_name: row.sender_name,
        badge: unread_total(conn, job.user)?,
        read_up_to_seq: row.marks.map_or(0, |m| m.0 as u64),
        delivered_up_to_seq: row.marks.map_or(0, |m| m.1 as u64),
        stream_delivered_up_to_pos: row.stream_delivered as u64,
        muted_until_ms: row.muted_until_ms,
        dnd_until_ms: row.dnd_until_ms,
        hide_previews: row.hide_previews,
        member: activity || row.marks.is_some(),
    })
}

/// One row of `context`'s query: `None` where a left join found nothing.
struct ContextRow {
    room_kind: Option<i64>,
    room_name: String,
    sender_name: String,
    marks: Option<(i64, i64)>,
    stream_delivered: i64,
    muted_until_ms: i64,
    dnd_until_ms: i64,
    hide_previews: bool,
}

pub(super) fn preferences(conn: &Connection, user: UserId, room: RoomId) -> rusqlite::Result<PushPreferences> {
    let (user, room) = (user.0 as i64, room.0 as i64);
    let muted_until_ms: i64 = conn
        .prepare_cached("SELECT until_ms FROM room_mutes WHERE user_id = ?1 AND room_id = ?2")?
        .query_row(params![user, room], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let (dnd_until_ms, hide_previews): (i64, bool) = conn
        .prepare_cached("SELECT dnd_until_ms, hide_previews FROM push_prefs WHERE user_id = ?1")?
        .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, false));
    Ok(PushPreferences { muted_until_ms, dnd_until_ms, hide_previews })
}

/// Unread messages from others over all of the user's rooms (each room counted up to its cap).
fn unread_total(conn: &Connection, user: UserId) -> rusqlite::Result<u32> {
    let per_room: Vec<i64> = conn
        .prepare_cached(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM entries e WHERE e.room_id = m.room_id AND e.seq > m.read_seq
                     AND e.kind = 1 AND e.deleted = 0 AND e.sender_id != ?1 LIMIT ?2))
             FROM user_rooms ur JOIN members m ON m.room_id = ur.room_id AND m.user_id = ur.user_id
             WHERE ur.user_id = ?1",
        )?
        .query_map(params![user.0 as i64, UNREAD_COUNT_CAP as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(per_room.into_iter().map(|n| n as u32).sum::<u32>().min(crate::store::BADGE_CAP))
}

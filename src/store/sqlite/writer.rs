//! The single writer: one thread owns the write connection and commits whatever has queued up
//! while the previous commit was on its way to disk (group commit). One fsync then covers a whole
//! batch, which is what makes acknowledging every message only after it is durable affordable.
//!
//! Each command runs inside its own savepoint, so a command that fails leaves nothing behind while
//! the rest of its batch commits. Replies are sent only after the batch's COMMIT returned.

use std::collections::HashMap;
use std::thread;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::push;
use crate::domain::{
    ACTIVITY_PUSH_ROOM, Activity, ActivityStatus, Comment, CommentId, DeviceId, EntryBody, EventRef, FollowState,
    MediaId, NOTIFICATION_PUSH_ROOM, NewActivity, NewNotification, NotificationPush, Post, PostId, ProfileChange,
    PushRegistration, Receipt, ReceiptKind, Role, RoomId, RoomKind, RoomState, UserId, now_ms, time_ordered_id,
};
use crate::metrics::METRICS;
use crate::store::codec::{entry_columns, event_row, role_code, room_kind_code};
use crate::store::{
    Append, AppendOutcome, CreateRoomOutcome, DeviceRecord, Effect, FanoutJob, NewMedia, NewRoom, NewUser, Positions,
    PushFanout, PushJob, PushJobEnd, ReceiptWrite, RecordedNotification, RefreshRotation, StoreError, StoreErrorKind,
    StoreResult,
};

pub(super) type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A write, with where to send its result.
pub(super) enum WriteCmd {
    CreateUser(NewUser, Reply<()>),
    CreateDevice(DeviceRecord, Reply<()>),
    RotateRefresh {
        user: UserId,
        device: DeviceId,
        old_hash: Vec<u8>,
        new_hash: Vec<u8>,
        expires_at_ms: i64,
        reply: Reply<RefreshRotation>,
    },
    RevokeDevices {
        user: UserId,
        only: Option<DeviceId>,
        reply: Reply<Vec<DeviceId>>,
    },
    SetLastSeen {
        user: UserId,
        at_ms: i64,
        reply: Reply<()>,
    },
    SetAccountBlocked {
        user: UserId,
        at_ms: i64,
        reply: Reply<()>,
    },
    CreateRoom(NewRoom, Reply<CreateRoomOutcome>),
    ClaimRoom(RoomId, Reply<Option<(RoomState, u64)>>),
    RotateStreamEpochs(Reply<String>),
    Append(Append, Reply<AppendOutcome>),
    Receipt(ReceiptWrite, Reply<Option<Positions>>),
    SetPushToken(PushRegistration, Reply<()>),
    ClearPushToken {
        user: UserId,
        device: DeviceId,
        reply: Reply<()>,
    },
    SetRoomMute {
        user: UserId,
        room: RoomId,
        until_ms: i64,
        reply: Reply<()>,
    },
    SetDoNotDisturb {
        user: UserId,
        until_ms: i64,
        reply: Reply<()>,
    },
    SetHidePreviews {
        user: UserId,
        hide: bool,
        reply: Reply<()>,
    },
    CancelDeliveredPushes {
        user: UserId,
        up_to_pos: u64,
        reply: Reply<u64>,
    },
    ClaimPushJobs {
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
        reply: Reply<Vec<PushJob>>,
    },
    FinishPushJob(PushJob, PushJobEnd, Reply<()>),
    /// Many ends in one command (the push worker records them in batches).
    FinishPushJobs(Vec<(PushJob, PushJobEnd)>, Reply<()>),
    PurgeFailedPushes {
        before_ms: i64,
        reply: Reply<u64>,
    },
    RetryFailedPush {
        user: UserId,
        job: u64,
        now_ms: i64,
        reply: Reply<bool>,
    },
    DropPushJob {
        user: UserId,
        job: u64,
        reply: Reply<bool>,
    },
    PutMedia(NewMedia, Reply<()>),
    PublishMedia(MediaId, Reply<()>),
    CreatePost(Post, String, Reply<Post>),
    DeletePost(PostId, Reply<bool>),
    SetLike(PostId, UserId, bool, Reply<bool>),
    AddComment(Comment, String, Reply<Comment>),
    DeleteComment(PostId, CommentId, Reply<bool>),
    FanOutPage {
        job: FanoutJob,
        followers: Vec<UserId>,
        into_feeds: bool,
        live: Vec<UserId>,
        reply: Reply<Positions>,
    },
    FinishFanout(PostId, Reply<()>),
    RecordActivity(NewActivity, Option<PushFanout>, Reply<Option<(u64, Activity)>>),
    RecordNotification(NewNotification, Option<PushFanout>, Reply<RecordedNotification>),
    SetActivitySeen(UserId, u64, Reply<ActivityStatus>),
    AddWideAuthor(UserId, Reply<()>),
    SetFollow {
        from: UserId,
        to: UserId,
        state: FollowState,
        when: Vec<FollowState>,
        reply: Reply<FollowState>,
    },
    SetBlock {
        blocker: UserId,
        blocked: UserId,
        on: bool,
        reply: Reply<()>,
    },
    ChangeProfile {
        user: UserId,
        change: ProfileChange,
        reply: Reply<bool>,
    },
    CollectOrphanMedia {
        before_ms: i64,
        limit: usize,
        reply: Reply<u64>,
    },
    /// Finish what is queued before this, then stop.
    Close(oneshot::Sender<()>),
}

/// A command's result, waiting for its batch to commit.
type PendingReply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, result: StoreResult<T>) -> PendingReply {
    Box::new(move |commit| {
        let outcome = match commit {
            Ok(()) => result,
            Err(e) => Err(e.clone()),
        };
        let _ = reply.send(outcome);
    })
}

/// Starts the writer thread; it runs until a `Close` arrives or every sender is gone.
pub(super) fn spawn(
    mut conn: Connection,
    mut commands: mpsc::Receiver<WriteCmd>,
    max_batch: usize,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("tidings-store-writer".into())
        .spawn(move || {
            while let Some(first) = commands.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match commands.try_recv() {
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                }
                let close = match batch.iter().position(|c| matches!(c, WriteCmd::Close(_))) {
                    Some(i) => {
                        // Commands queued behind a Close are refused (their senders see the drop).
                        batch.truncate(i + 1);
                        match batch.pop() {
                            Some(WriteCmd::Close(done)) => Some(done),
                            _ => None,
                        }
                    }
                    None => None,
                };
                run_batch(&mut conn, batch);
                if let Some(done) = close {
                    commands.close();
                    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                    let _ = done.send(());
                    return;
                }
            }
        })
        .expect("spawning the store writer thread")
}

fn run_batch(conn: &mut Connection, batch: Vec<WriteCmd>) {
    if batch.is_empty() {
        return;
    }
    let size = batch.len();
    let mut replies: Vec<PendingReply> = Vec::with_capacity(size);
    let committed = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut heads = StreamHeads::default();
        for cmd in batch {
            replies.push(execute(&tx, &mut heads, cmd));
        }
        tx.commit()
    })();
    let commit_result = committed.map_err(|e| StoreError::caused_by(StoreErrorKind::Unavailable, e));
    if let Err(e) = &commit_result {
        tracing::error!(error = %e, batch = size, "store batch failed");
    }
    METRICS.store_batch(size as u64);
    for reply in replies {
        reply(commit_result.as_ref().map(|_| ()));
    }
}

/// Runs one command in its own savepoint.
fn execute(tx: &Transaction<'_>, heads: &mut StreamHeads, cmd: WriteCmd) -> PendingReply {
    macro_rules! run {
        ($reply:expr, $body:expr) => {{
            let result = in_savepoint(tx, heads, $body);
            pending($reply, result)
        }};
    }
    match cmd {
        WriteCmd::CreateUser(user, reply) => run!(reply, |tx, _| create_user(tx, &user)),
        WriteCmd::CreateDevice(device, reply) => run!(reply, |tx, _| create_device(tx, &device)),
        WriteCmd::RotateRefresh { user, device, old_hash, new_hash, expires_at_ms, reply } => {
            run!(reply, |tx, _| rotate_refresh(tx, user, device, &old_hash, &new_hash, expires_at_ms))
        }
        WriteCmd::RevokeDevices { user, only, reply } => run!(reply, |tx, _| revoke_devices(tx, user, only)),
        WriteCmd::SetLastSeen { user, at_ms, reply } => run!(reply, |tx, _| {
            tx.prepare_cached("UPDATE users SET last_seen_ms = ?2 WHERE user_id = ?1")?
                .execute(params![user.0 as i64, at_ms])?;
            Ok(Ok(()))
        }),
        WriteCmd::SetAccountBlocked { user, at_ms, reply } => run!(reply, |tx, _| {
            match at_ms {
                0 => tx.prepare_cached("DELETE FROM account_blocks WHERE user_id = ?1")?.execute([user.0 as i64])?,
                _ => tx
                    .prepare_cached(
                        "INSERT INTO account_blocks (user_id, blocked_at_ms) VALUES (?1, ?2)
                         ON CONFLICT (user_id) DO NOTHING",
                    )?
                    .execute(params![user.0 as i64, at_ms])?,
            };
            Ok(Ok(()))
        }),
        WriteCmd::CreateRoom(room, reply) => run!(reply, |tx, heads| create_room(tx, heads, &room)),
        WriteCmd::ClaimRoom(room, reply) => run!(reply, |tx, _| claim_room(tx, room)),
        WriteCmd::RotateStreamEpochs(reply) => run!(reply, |tx, _| {
            let epoch = crate::store::new_stream_epoch();
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('stream_epoch', ?1)", [&epoch])?;
            Ok(Ok(epoch))
        }),
        WriteCmd::Append(append, reply) => run!(reply, |tx, heads| append_entry(tx, heads, &append)),
        WriteCmd::Receipt(receipt, reply) => run!(reply, |tx, heads| set_receipt(tx, heads, &receipt)),
        WriteCmd::SetPushToken(registration, reply) => {
            run!(reply, |tx, _| push::set_token(tx, &registration, now_ms()))
        }
        WriteCmd::ClearPushToken { user, device, reply } => run!(reply, |tx, _| {
            push::clear_token(tx, user, device)?;
            Ok(Ok(()))
        }),
        WriteCmd::SetRoomMute { user, room, until_ms, reply } => {
            run!(reply, |tx, _| push::set_room_mute(tx, user, room, until_ms))
        }
        WriteCmd::SetDoNotDisturb { user, until_ms, reply } => {
            run!(reply, |tx, _| push::set_do_not_disturb(tx, user, until_ms))
        }
        WriteCmd::SetHidePreviews { user, hide, reply } => run!(reply, |tx, _| push::set_hide_previews(tx, user, hide)),
        WriteCmd::CancelDeliveredPushes { user, up_to_pos, reply } => {
            run!(reply, |tx, _| push::cancel_delivered(tx, user, up_to_pos))
        }
        WriteCmd::ClaimPushJobs { now_ms, lease_ms, limit, reply } => {
            run!(reply, |tx, _| push::claim(tx, now_ms, lease_ms, limit))
        }
        WriteCmd::FinishPushJob(job, end, reply) => run!(reply, |tx, _| push::finish(tx, &job, &end)),
        WriteCmd::FinishPushJobs(ends, reply) => run!(reply, |tx, _| {
            for (job, end) in &ends {
                if let Err(e) = push::finish(tx, job, end)? {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        }),
        WriteCmd::PurgeFailedPushes { before_ms, reply } => run!(reply, |tx, _| push::purge_failed(tx, before_ms)),
        WriteCmd::RetryFailedPush { user, job, now_ms, reply } => {
            run!(reply, |tx, _| push::retry_failed(tx, user, job, now_ms))
        }
        WriteCmd::DropPushJob { user, job, reply } => run!(reply, |tx, _| push::drop_job(tx, user, job)),
        WriteCmd::PutMedia(media, reply) => run!(reply, |tx, _| super::media::put(tx, &media)),
        WriteCmd::PublishMedia(id, reply) => run!(reply, |tx, _| super::media::publish(tx, id)),
        WriteCmd::CreatePost(post, client_id, reply) => {
            run!(reply, |tx, _| super::posts::create(tx, &post, &client_id))
        }
        WriteCmd::DeletePost(id, reply) => run!(reply, |tx, _| super::posts::delete(tx, id)),
        WriteCmd::SetLike(post, user, on, reply) => run!(reply, |tx, _| super::reactions::set_like(tx, post, user, on)),
        WriteCmd::AddComment(comment, client_id, reply) => {
            run!(reply, |tx, _| super::reactions::add_comment(tx, &comment, &client_id))
        }
        WriteCmd::DeleteComment(post, id, reply) => run!(reply, |tx, _| super::reactions::delete_comment(tx, post, id)),
        WriteCmd::FanOutPage { job, followers, into_feeds, live, reply } => run!(reply, |tx, heads| {
            if let Err(e) = super::feeds::page(tx, job, &followers, into_feeds)? {
                return Ok(Err(e));
            }
            Ok(Ok(push_events(tx, heads, &live, &EventRef::post(job.author, job.post))?))
        }),
        WriteCmd::FinishFanout(post, reply) => run!(reply, |tx, _| super::feeds::finish(tx, post)),
        WriteCmd::RecordActivity(new, push, reply) => run!(reply, |tx, heads| {
            let recipient = new.recipient;
            let recorded = super::activity::insert(tx, &new, |a| {
                let event = EventRef::activity(a.actor, a.id);
                Ok(push_events(tx, heads, &[recipient], &event)?.first().map_or(0, |&(_, pos)| pos))
            })?;
            if let (Some((pos, activity)), Some(mut fanout)) = (&recorded, push) {
                fanout.preview = super::activity::push_line(tx, activity)?;
                let positions = vec![(recipient, *pos)];
                push::enqueue(tx, &fanout, ACTIVITY_PUSH_ROOM, activity.id, activity.actor, &positions, now_ms())?;
            }
            Ok(Ok(recorded))
        }),
        WriteCmd::RecordNotification(new, push, reply) => run!(reply, |tx, heads| {
            if let Some((pos, notification)) = super::notifications::by_key(tx, &new)? {
                return Ok(Ok(RecordedNotification { pos, notification, fresh: false }));
            }
            let id = time_ordered_id(new.at_ms);
            let positions = push_events(tx, heads, &[new.recipient], &EventRef::notification(id))?;
            let pos = positions.first().map_or(0, |&(_, pos)| pos);
            let notification = super::notifications::insert(tx, &new, id, pos)?;
            if let Some(mut fanout) = push {
                fanout.preview = NotificationPush::of(&notification).encode();
                push::enqueue(tx, &fanout, NOTIFICATION_PUSH_ROOM, id, UserId(0), &positions, now_ms())?;
            }
            Ok(Ok(RecordedNotification { pos, notification, fresh: true }))
        }),
        WriteCmd::SetActivitySeen(user, up_to_pos, reply) => run!(reply, |tx, _| {
            super::activity::set_seen(tx, user, up_to_pos)?;
            // Seen activity needs no push: cancelled in the same transaction, as queued with it.
            push::cancel_seen_activity(tx, user, up_to_pos)?;
            Ok(Ok(super::activity::status(tx, user)?))
        }),
        WriteCmd::AddWideAuthor(author, reply) => run!(reply, |tx, _| super::feeds::add_wide(tx, author)),
        WriteCmd::SetFollow { from, to, state, when, reply } => {
            run!(reply, |tx, _| super::graph::set(tx, from, to, state, &when))
        }
        WriteCmd::SetBlock { blocker, blocked, on, reply } => {
            run!(reply, |tx, _| super::graph::set_block(tx, blocker, blocked, on))
        }
        WriteCmd::ChangeProfile { user, change, reply } => {
            run!(reply, |tx, _| super::profiles::change(tx, user, &change))
        }
        WriteCmd::CollectOrphanMedia { before_ms, limit, reply } => {
            run!(reply, |tx, _| super::media::collect_orphans(tx, before_ms, limit))
        }
        WriteCmd::Close(done) => {
            let _ = done.send(());
            Box::new(|_| {})
        }
    }
}

/// What a command body returns: an SQL failure, or a logical outcome. Both an SQL failure and a
/// logical `Err` roll the command's savepoint back; an `Ok` outcome (even `Duplicate`) keeps it.
type CmdResult<T> = rusqlite::Result<StoreResult<T>>;

fn in_savepoint<T>(
    tx: &Transaction<'_>,
    heads: &mut StreamHeads,
    body: impl FnOnce(&Transaction<'_>, &mut StreamHeads) -> CmdResult<T>,
) -> StoreResult<T> {
    let sql = |e: rusqlite::Error| StoreError::caused_by(StoreErrorKind::Unavailable, e);
    // Prepared once and kept: `execute_batch` would parse them again for every command.
    let run = |statement: &str| tx.prepare_cached(statement).and_then(|mut s| s.execute([])).map_err(sql);
    run("SAVEPOINT cmd")?;
    heads.undo.clear();
    let outcome = body(tx, heads);
    if let Ok(Ok(_)) = &outcome {
        run("RELEASE cmd")?;
    } else {
        heads.roll_back();
        run("ROLLBACK TO cmd")?;
        run("RELEASE cmd")?;
    }
    match outcome {
        Ok(result) => result,
        Err(e) => {
            tracing::warn!(error = %e, "store command failed");
            Err(StoreError::caused_by(StoreErrorKind::Unavailable, e))
        }
    }
}

/// The newest stream position of each user touched by this batch. Read from the table on first use
/// inside the write transaction, so several processes sharing one file still never reuse a position.
#[derive(Default)]
struct StreamHeads {
    known: HashMap<UserId, u64>,
    /// What the current command changed, to undo if its savepoint rolls back.
    undo: Vec<(UserId, Option<u64>)>,
}

impl StreamHeads {
    fn roll_back(&mut self) {
        for (user, previous) in self.undo.drain(..).rev() {
            match previous {
                Some(head) => self.known.insert(user, head),
                None => self.known.remove(&user),
            };
        }
    }

    fn next(&mut self, tx: &Transaction<'_>, user: UserId) -> rusqlite::Result<u64> {
        let head = match self.known.get(&user) {
            Some(head) => *head,
            None => tx
                .prepare_cached("SELECT pos FROM events WHERE user_id = ?1 ORDER BY pos DESC LIMIT 1")?
                .query_row([user.0 as i64], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64,
        };
        let previous = self.known.insert(user, head + 1);
        self.undo.push((user, previous));
        Ok(head + 1)
    }
}

/// Puts one event into each recipient's stream; returns the positions.
fn push_events(
    tx: &Transaction<'_>,
    heads: &mut StreamHeads,
    recipients: &[UserId],
    event: &EventRef,
) -> rusqlite::Result<Positions> {
    let row = event_row(event);
    let mut users = recipients.to_vec();
    users.sort_unstable();
    users.dedup();
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (user_id, pos, kind, room_id, seq, actor_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut positions = Vec::with_capacity(users.len());
    for user in users {
        let pos = heads.next(tx, user)?;
        insert.execute(params![user.0 as i64, pos as i64, row.kind, row.source_id, row.reference, row.actor])?;
        positions.push((user, pos));
    }
    Ok(positions)
}

fn create_user(tx: &Transaction<'_>, user: &NewUser) -> CmdResult<()> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO users (user_id, username, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![user.id.0 as i64, user.username, user.password_hash, user.created_at_ms])?;
    if inserted == 0 {
        return Ok(Err(StoreError::new(StoreErrorKind::Conflict, "username taken")));
    }
    super::profiles::index_new_user(tx, user.id, &user.username)?;
    Ok(Ok(()))
}

fn create_device(tx: &Transaction<'_>, d: &DeviceRecord) -> CmdResult<()> {
    tx.prepare_cached(
        "INSERT INTO devices (user_id, device_id, name, refresh_hash, refresh_expires_at_ms, created_at_ms, revoked)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        d.user.0 as i64,
        d.device.0 as i64,
        d.name,
        d.refresh_hash,
        d.refresh_expires_at_ms,
        d.created_at_ms,
        d.revoked
    ])?;
    Ok(Ok(()))
}

fn rotate_refresh(
    tx: &Transaction<'_>,
    user: UserId,
    device: DeviceId,
    old_hash: &[u8],
    new_hash: &[u8],
    expires_at_ms: i64,
) -> CmdResult<RefreshRotation> {
    let changed = tx
        .prepare_cached(
            "UPDATE devices SET refresh_hash = ?4, refresh_expires_at_ms = ?5
             WHERE user_id = ?1 AND device_id = ?2 AND refresh_hash = ?3 AND revoked = 0",
        )?
        .execute(params![user.0 as i64, device.0 as i64, old_hash, new_hash, expires_at_ms])?;
    if changed == 1 {
        tx.prepare_cached(
            "INSERT INTO refresh_previous (user_id, device_id, hash) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, device_id) DO UPDATE SET hash = excluded.hash",
        )?
        .execute(params![user.0 as i64, device.0 as i64, old_hash])?;
        return Ok(Ok(RefreshRotation::Rotated));
    }
    let reused = tx
        .prepare_cached("SELECT 1 FROM refresh_previous WHERE user_id = ?1 AND device_id = ?2 AND hash = ?3")?
        .exists(params![user.0 as i64, device.0 as i64, old_hash])?;
    if !reused {
        return Ok(Ok(RefreshRotation::Unknown));
    }
    let revoked = match revoke_devices(tx, user, Some(device))? {
        Ok(revoked) => revoked,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(RefreshRotation::Reused { revoked }))
}

fn revoke_devices(tx: &Transaction<'_>, user: UserId, only: Option<DeviceId>) -> CmdResult<Vec<DeviceId>> {
    let mut live = tx.prepare_cached("SELECT device_id FROM devices WHERE user_id = ?1 AND revoked = 0")?;
    let devices: Vec<DeviceId> = live
        .query_map([user.0 as i64], |r| r.get::<_, i64>(0))?
        .map(|d| d.map(|d| DeviceId(d as u64)))
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|d| only.is_none_or(|o| o == *d))
        .collect();
    let mut revoke =
        tx.prepare_cached("UPDATE devices SET revoked = 1, refresh_hash = x'' WHERE user_id = ?1 AND device_id = ?2")?;
    for d in &devices {
        revoke.execute(params![user.0 as i64, d.0 as i64])?;
        tx.prepare_cached("DELETE FROM refresh_previous WHERE user_id = ?1 AND device_id = ?2")?
            .execute(params![user.0 as i64, d.0 as i64])?;
        // A logged-out device must not be woken by pushes meant for whoever uses the app next.
        push::clear_token(tx, user, *d)?;
    }
    Ok(Ok(devices))
}

fn create_room(tx: &Transaction<'_>, heads: &mut StreamHeads, room: &NewRoom) -> CmdResult<CreateRoomOutcome> {
    if room.kind == RoomKind::Direct {
        let [a, b] = room.members[..] else {
            return Ok(Err(StoreError::new(StoreErrorKind::Corrupt, "a direct room has two members")));
        };
        let (lo, hi) = (a.min(b), a.max(b));
        let existing = tx
            .prepare_cached("SELECT room_id FROM direct_rooms WHERE user_lo = ?1 AND user_hi = ?2")?
            .query_row(params![lo.0 as i64, hi.0 as i64], |r| r.get::<_, i64>(0))
            .optional()?;
        if let Some(existing) = existing {
            return Ok(Ok(CreateRoomOutcome::DirectExists(crate::domain::RoomId(existing as u64))));
        }
        tx.prepare_cached("INSERT INTO direct_rooms (user_lo, user_hi, room_id) VALUES (?1, ?2, ?3)")?
            .execute(params![lo.0 as i64, hi.0 as i64, room.id.0 as i64])?;
    }
    tx.prepare_cached("INSERT INTO rooms (room_id, kind, name, created_at_ms) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![room.id.0 as i64, room_kind_code(room.kind), room.name, room.entry.sent_at_ms])?;
    for &member in &room.members {
        let role = if room.kind == RoomKind::Group && member == room.creator { Role::Owner } else { Role::Member };
        add_member(tx, room.id.0, member, role)?;
    }
    insert_entry(tx, &room.entry)?;
    let positions = push_events(tx, heads, &room.members, &EventRef::entry(room.id, room.entry.seq))?;
    Ok(Ok(CreateRoomOutcome::Created { positions }))
}

fn add_member(tx: &Transaction<'_>, room: u64, user: UserId, role: Role) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO members (room_id, user_id, role) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
        .execute(params![room as i64, user.0 as i64, role_code(role)])?;
    tx.prepare_cached("INSERT INTO user_rooms (user_id, room_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
        .execute(params![user.0 as i64, room as i64])?;
    Ok(())
}

/// Inserts an entry; false when its seq is taken.
fn insert_entry(tx: &Transaction<'_>, entry: &crate::domain::RoomEntry) -> rusqlite::Result<bool> {
    let c = entry_columns(&entry.body);
    let inserted = tx
        .prepare_cached(
            "INSERT INTO entries (room_id, seq, id, sender_id, sent_at_ms, kind, text, client_msg_id, target_seq,
                                  users, role, edited_at_ms, deleted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (room_id, seq) DO NOTHING",
        )?
        .execute(params![
            entry.room.0 as i64,
            entry.seq as i64,
            entry.id as i64,
            entry.sender.0 as i64,
            entry.sent_at_ms,
            c.kind,
            c.text,
            c.client_msg_id,
            c.target_seq as i64,
            c.users,
            c.role,
            c.edited_at_ms,
            c.deleted
        ])?;
    Ok(inserted == 1)
}

/// The sender of a standing (not deleted) message, if `seq` is one.
fn standing_message_sender(tx: &Transaction<'_>, room: u64, seq: u64) -> rusqlite::Result<Option<UserId>> {
    tx.prepare_cached("SELECT sender_id FROM entries WHERE room_id = ?1 AND seq = ?2 AND kind = 1 AND deleted = 0")?
        .query_row(params![room as i64, seq as i64], |r| r.get::<_, i64>(0))
        .optional()
        .map(|s| s.map(|s| UserId(s as u64)))
}

fn claim_room(tx: &Transaction<'_>, room: RoomId) -> CmdResult<Option<(RoomState, u64)>> {
    let Some(state) = super::reads::load_room(tx, room)? else { return Ok(Ok(None)) };
    let epoch: i64 = tx
        .prepare_cached(
            "INSERT INTO room_owners (room_id, epoch) VALUES (?1, 1)
             ON CONFLICT (room_id) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
        )?
        .query_row([room.0 as i64], |r| r.get(0))?;
    Ok(Ok(Some((state, epoch as u64))))
}

fn append_entry(tx: &Transaction<'_>, heads: &mut StreamHeads, append: &Append) -> CmdResult<AppendOutcome> {
    let entry = &append.entry;
    let room = entry.room.0;
    let epoch: Option<i64> = tx
        .prepare_cached("SELECT epoch FROM room_owners WHERE room_id = ?1")?
        .query_row([room as i64], |r| r.get(0))
        .optional()?;
    if epoch != Some(append.epoch as i64) {
        return Ok(Ok(AppendOutcome::Fenced));
    }
    if let EntryBody::Text(message) = &entry.body {
        if !message.client_msg_id.is_empty() {
            let earlier = tx
                .prepare_cached(
                    "SELECT seq, id, sent_at_ms FROM entries WHERE room_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3",
                )?
                .query_row(params![room as i64, entry.sender.0 as i64, message.client_msg_id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)?))
                })
                .optional()?;
            if let Some((seq, id, sent_at_ms)) = earlier {
                return Ok(Ok(AppendOutcome::Duplicate { seq, id, sent_at_ms }));
            }
        }
        if message.reply_to_seq != 0 && standing_message_sender(tx, room, message.reply_to_seq)?.is_none() {
            return Ok(Ok(AppendOutcome::TargetNotFound));
        }
    }
    match &append.effect {
        Effect::Edit { target_seq, editor, .. } => match standing_message_sender(tx, room, *target_seq)? {
            None => return Ok(Ok(AppendOutcome::TargetNotFound)),
            Some(sender) if sender != *editor => return Ok(Ok(AppendOutcome::NotAllowed)),
            Some(_) => {}
        },
        Effect::Delete { target_seq, by, by_moderator } => match standing_message_sender(tx, room, *target_seq)? {
            None => return Ok(Ok(AppendOutcome::TargetNotFound)),
            Some(sender) if sender != *by && !by_moderator => return Ok(Ok(AppendOutcome::NotAllowed)),
            Some(_) => {}
        },
        _ => {}
    }
    if !insert_entry(tx, entry)? {
        return Ok(Ok(AppendOutcome::SeqTaken));
    }
    if let EntryBody::Text(message) = &entry.body {
        super::media::link(tx, entry.room, &message.media)?;
    }
    apply_effect(tx, room, &append.effect)?;
    match &append.effect {
        Effect::Edit { target_seq, .. } => {
            if let Some(preview) = &append.revised_preview {
                push::revise(tx, entry.room, *target_seq, preview)?;
            }
        }
        Effect::Delete { target_seq, .. } => push::retract(tx, entry.room, *target_seq)?,
        _ => {}
    }
    let positions = push_events(tx, heads, &append.recipients, &EventRef::entry(entry.room, entry.seq))?;
    if let Some(fanout) = &append.push {
        push::enqueue(tx, fanout, entry.room, entry.seq, entry.sender, &positions, entry.sent_at_ms)?;
    }
    Ok(Ok(AppendOutcome::Committed { positions }))
}

fn apply_effect(tx: &Transaction<'_>, room: u64, effect: &Effect) -> rusqlite::Result<()> {
    match effect {
        Effect::None => {}
        Effect::AddMembers(users) => {
            for &user in users {
                add_member(tx, room, user, Role::Member)?;
            }
        }
        Effect::RemoveMember(user) => {
            tx.prepare_cached("DELETE FROM members WHERE room_id = ?1 AND user_id = ?2")?
                .execute(params![room as i64, user.0 as i64])?;
            tx.prepare_cached("DELETE FROM user_rooms WHERE user_id = ?1 AND room_id = ?2")?
                .execute(params![user.0 as i64, room as i64])?;
        }
        Effect::Rename(name) => {
            tx.prepare_cached("UPDATE rooms SET name = ?2 WHERE room_id = ?1")?.execute(params![room as i64, name])?;
        }
        Effect::SetRole(user, role) => {
            tx.prepare_cached("UPDATE members SET role = ?3 WHERE room_id = ?1 AND user_id = ?2")?.execute(params![
                room as i64,
                user.0 as i64,
                role_code(*role)
            ])?;
        }
        Effect::Edit { target_seq, text, at_ms, .. } => {
            tx.prepare_cached("UPDATE entries SET text = ?3, edited_at_ms = ?4 WHERE room_id = ?1 AND seq = ?2")?
                .execute(params![room as i64, *target_seq as i64, text, at_ms])?;
        }
        Effect::Delete { target_seq, .. } => {
            tx.prepare_cached("UPDATE entries SET text = '', users = '', deleted = 1 WHERE room_id = ?1 AND seq = ?2")?
                .execute(params![room as i64, *target_seq as i64])?;
        }
    }
    Ok(())
}

fn set_receipt(tx: &Transaction<'_>, heads: &mut StreamHeads, r: &ReceiptWrite) -> CmdResult<Option<Positions>> {
    // A read marker implies delivery; neither marker ever moves back.
    let sql = match r.kind {
        ReceiptKind::Delivered => {
            "UPDATE members SET delivered_seq = ?3 WHERE room_id = ?1 AND user_id = ?2 AND delivered_seq < ?3"
        }
        ReceiptKind::Read => {
            "UPDATE members SET read_seq = ?3, delivered_seq = max(delivered_seq, ?3)
             WHERE room_id = ?1 AND user_id = ?2 AND read_seq < ?3"
        }
    };
    let moved = tx.prepare_cached(sql)?.execute(params![r.room.0 as i64, r.user.0 as i64, r.up_to_seq as i64])?;
    if moved == 0 {
        return Ok(Ok(None));
    }
    push::cancel_covered_by_receipt(tx, r.user, r.room, r.up_to_seq)?;
    let receipt = Receipt { room: r.room, user: r.user, kind: r.kind, up_to_seq: r.up_to_seq };
    let positions = push_events(tx, heads, &r.recipients, &EventRef::receipt(&receipt))?;
    Ok(Ok(Some(positions)))
}

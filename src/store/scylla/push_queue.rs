//! The durable push queue on ScyllaDB.
//!
//! A job lives in its user's partition (`push_jobs`: user, device, room, job id), so merging a new
//! message into a device's pending job, and cancelling what an ack or a receipt covers, read and
//! write one partition. Workers find due jobs through `push_due`, partitioned by shard (of the
//! user) and time bucket (of the due time); `push_due_buckets` lists each shard's buckets. A job's
//! due row is written before the job and moved with it, so a job is never without one; a due row
//! without its job (a crash between) is deleted when a worker meets it.
//!
//! Every change of a job's state is a lightweight transaction on the job's row (`IF state = ...`),
//! so a merge never lands in a job a worker has claimed and two workers never claim one job. That
//! is one lightweight transaction per push merged or sent, on the path of messages to offline
//! devices only; ARCHITECTURE.md says what would take it off.

use std::collections::BTreeSet;

use async_trait::async_trait;
use scylla::DeserializeRow;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::fence::Claims;
use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare};
use crate::domain::{
    ACTIVITY_PUSH_ROOM, DeviceId, NOTIFICATION_PUSH_ROOM, Platform, PushKind, RoomEntry, RoomId, RoomKind, UserId,
    now_ms, time_ordered_id,
};
use crate::metrics::PUSH_METRICS;
use crate::store::{
    BADGE_CAP, Positions, PushContext, PushFanout, PushJob, PushJobEnd, PushJobState, PushJobSummary, PushJobsListed,
    PushPrefsStore, PushQueueStore, StoreError, StoreErrorKind, StoreResult,
};

/// Shards of the due index: claims read each.
const SHARDS: i32 = 16;
/// Width of a due index bucket.
const BUCKET_MS: i64 = 60_000;

const PENDING: i32 = 0;
const CLAIMED: i32 = 1;
const FAILED: i32 = 2;

fn shard(user: UserId) -> i32 {
    (user.0 % SHARDS as u64) as i32
}

fn due_bucket(due_ms: i64) -> i64 {
    due_ms.max(0) / BUCKET_MS
}

const JOB_COLUMNS: &str = "device_id, room_id, job_id, state, due_ms, kind, count, last_seq, last_pos, sender_id, \
                           many_senders, preview, attempts, created_at_ms, last_error";

#[derive(DeserializeRow, Debug, Clone)]
struct JobRow {
    device_id: i64,
    room_id: i64,
    job_id: i64,
    state: i32,
    due_ms: i64,
    kind: i32,
    count: i32,
    last_seq: i64,
    last_pos: i64,
    sender_id: i64,
    many_senders: Option<bool>,
    preview: Option<String>,
    attempts: Option<i32>,
    created_at_ms: i64,
    last_error: Option<String>,
}

/// A row of the due index.
#[derive(DeserializeRow, Debug, Clone, Copy)]
struct DueRow {
    due_ms: i64,
    job_id: i64,
    user_id: i64,
    device_id: i64,
    room_id: i64,
    state: i32,
}

/// What a push announces: the newest entry (a room's, or an activity under
/// `ACTIVITY_PUSH_ROOM` with its id as the seq) and who made it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PushSource {
    pub room: RoomId,
    pub seq: u64,
    pub sender: UserId,
}

impl PushSource {
    pub(super) fn entry(entry: &RoomEntry) -> Self {
        Self { room: entry.room, seq: entry.seq, sender: entry.sender }
    }
}

pub(super) struct Statements {
    jobs_of: PreparedStatement,
    job: PreparedStatement,
    create: PreparedStatement,
    merge: PreparedStatement,
    lease: PreparedStatement,
    retry: PreparedStatement,
    fail: PreparedStatement,
    delete_if: PreparedStatement,
    delete: PreparedStatement,
    set_preview: PreparedStatement,
    shrink: PreparedStatement,
    index: PreparedStatement,
    unindex: PreparedStatement,
    list_bucket: PreparedStatement,
    buckets: PreparedStatement,
    due_page: PreparedStatement,
    first_due: PreparedStatement,
    all_due: PreparedStatement,
    retry_failed: PreparedStatement,
    record_failed: PreparedStatement,
    newest_failed: PreparedStatement,
    failed_before: PreparedStatement,
    forget_failed: PreparedStatement,
    devices_with_tokens: PreparedStatement,
    note_delivered: PreparedStatement,
    delivered: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: String| async move { prepare(session, options, &cql).await };
        let key = "WHERE user_id = ? AND device_id = ? AND room_id = ? AND job_id = ?";
        Ok(Self {
            jobs_of: p(format!("SELECT {JOB_COLUMNS} FROM {{ks}}.push_jobs WHERE user_id = ?")).await?,
            job: p(format!("SELECT {JOB_COLUMNS} FROM {{ks}}.push_jobs {key}")).await?,
            create: p("INSERT INTO {ks}.push_jobs (user_id, device_id, room_id, job_id, state, due_ms, kind, count,
                last_seq, last_pos, sender_id, many_senders, preview, attempts, created_at_ms)
                VALUES (?, ?, ?, ?, 0, ?, ?, 1, ?, ?, ?, false, ?, 0, ?) IF NOT EXISTS"
                .into())
            .await?,
            merge: p(format!(
                "UPDATE {{ks}}.push_jobs SET count = ?, kind = ?, last_seq = ?, last_pos = ?, sender_id = ?,
                many_senders = ?, preview = ? {key} IF state = 0 AND count = ?"
            ))
            .await?,
            lease: p(format!("UPDATE {{ks}}.push_jobs SET state = 1, due_ms = ? {key} IF state = ? AND due_ms = ?"))
                .await?,
            retry: p(format!(
                "UPDATE {{ks}}.push_jobs SET due_ms = ?, attempts = ?, last_error = ? {key} IF state = 1 AND due_ms = ?"
            ))
            .await?,
            fail: p(format!(
                "UPDATE {{ks}}.push_jobs SET state = 2, due_ms = ?, attempts = ?, last_error = ? {key}
                IF state = 1 AND due_ms = ?"
            ))
            .await?,
            delete_if: p(format!("DELETE FROM {{ks}}.push_jobs {key} IF state = ?")).await?,
            delete: p(format!("DELETE FROM {{ks}}.push_jobs {key} IF EXISTS")).await?,
            set_preview: p(format!("UPDATE {{ks}}.push_jobs SET preview = ? {key} IF state = ?")).await?,
            shrink: p(format!("UPDATE {{ks}}.push_jobs SET count = ?, preview = ? {key} IF state = 0 AND count = ?"))
                .await?,
            index: p("INSERT INTO {ks}.push_due (shard, bucket, due_ms, job_id, user_id, device_id, room_id, state)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                .into())
            .await?,
            unindex: p("DELETE FROM {ks}.push_due WHERE shard = ? AND bucket = ? AND due_ms = ? AND job_id = ?".into())
                .await?,
            list_bucket: p("INSERT INTO {ks}.push_due_buckets (shard, bucket) VALUES (?, ?)".into()).await?,
            buckets: p("SELECT bucket FROM {ks}.push_due_buckets WHERE shard = ? AND bucket <= ?".into()).await?,
            due_page: p("SELECT due_ms, job_id, user_id, device_id, room_id, state FROM {ks}.push_due
                WHERE shard = ? AND bucket = ? AND due_ms <= ? LIMIT ?"
                .into())
            .await?,
            first_due: p("SELECT due_ms FROM {ks}.push_due WHERE shard = ? AND bucket = ? LIMIT 1".into()).await?,
            all_due: p("SELECT due_ms, job_id, user_id, device_id, room_id, state FROM {ks}.push_due
                WHERE shard = ? AND bucket = ?"
                .into())
            .await?,
            retry_failed: p(format!(
                "UPDATE {{ks}}.push_jobs SET state = 1, due_ms = ?, attempts = 0 {key} IF state = 2"
            ))
            .await?,
            record_failed: p("INSERT INTO {ks}.push_failed (shard, failed_at_ms, job_id, user_id, device_id, room_id)
                VALUES (?, ?, ?, ?, ?, ?)"
                .into())
            .await?,
            failed_before: p("SELECT failed_at_ms, job_id, user_id, device_id, room_id FROM {ks}.push_failed
                WHERE shard = ? AND failed_at_ms < ?"
                .into())
            .await?,
            newest_failed: p("SELECT failed_at_ms, job_id, user_id, device_id, room_id FROM {ks}.push_failed
                WHERE shard = ? ORDER BY failed_at_ms DESC LIMIT ?"
                .into())
            .await?,
            forget_failed: p("DELETE FROM {ks}.push_failed WHERE shard = ? AND failed_at_ms = ? AND job_id = ?".into())
                .await?,
            devices_with_tokens: p("SELECT device_id, platform FROM {ks}.push_tokens WHERE user_id = ?".into()).await?,
            // The position is the write's timestamp too: of acks from two devices at once, the
            // further one wins, without a read or a lightweight transaction.
            note_delivered:
                p("UPDATE {ks}.push_delivered USING TIMESTAMP ? SET up_to_pos = ? WHERE user_id = ?".into()).await?,
            delivered: p("SELECT up_to_pos FROM {ks}.push_delivered WHERE user_id = ?".into()).await?,
        })
    }
}

/// A job's primary key values.
fn key(user: i64, job: &JobRow) -> (i64, i64, i64, i64) {
    (user, job.device_id, job.room_id, job.job_id)
}

impl ScyllaStore {
    async fn jobs_of(&self, user: UserId) -> StoreResult<Vec<JobRow>> {
        self.rows::<JobRow>(&self.push_queue.jobs_of, (id(user.0),)).await
    }

    async fn index_job(
        &self,
        user: i64,
        job_id: i64,
        device: i64,
        room: i64,
        due_ms: i64,
        state: i32,
    ) -> StoreResult<()> {
        let s = &self.push_queue;
        let sh = shard(UserId(user as u64));
        self.execute(&s.list_bucket, (sh, due_bucket(due_ms))).await?;
        self.execute(&s.index, (sh, due_bucket(due_ms), due_ms, job_id, user, device, room, state)).await?;
        Ok(())
    }

    async fn unindex_job(&self, user: i64, job_id: i64, due_ms: i64) -> StoreResult<()> {
        let sh = shard(UserId(user as u64));
        self.execute(&self.push_queue.unindex, (sh, due_bucket(due_ms), due_ms, job_id)).await?;
        Ok(())
    }

    /// Deletes a job if it is still in `state`, with its due row.
    async fn drop_job_if(&self, user: i64, job: &JobRow, state: i32) -> StoreResult<bool> {
        let (u, d, r, j) = key(user, job);
        if !lwt(self.execute(&self.push_queue.delete_if, (u, d, r, j, state)).await?)?.applied {
            return Ok(false);
        }
        self.unindex_job(user, job.job_id, job.due_ms).await?;
        Ok(true)
    }

    /// Queues (or merges into the pending job) one push per registered device of each fan-out user.
    pub(super) async fn enqueue_pushes(
        &self,
        fanout: &PushFanout,
        entry: PushSource,
        positions: &Positions,
    ) -> StoreResult<()> {
        for user in &fanout.users {
            let Some(&(_, pos)) = positions.iter().find(|(u, _)| u == user) else { continue };
            // "X added you to <any name>" only from someone the user has written to.
            if fanout.kind == PushKind::AddedToRoom
                && !self.has_written_to(*user, entry.sender, Some(entry.room)).await?
            {
                continue;
            }
            let devices = self.rows::<(i64, i32)>(&self.push_queue.devices_with_tokens, (id(user.0),)).await?;
            let devices: Vec<(i64, Platform)> = devices
                .into_iter()
                .filter_map(|(d, p)| Platform::from_code(p as i64).map(|p| (d, p)))
                .filter(|(_, p)| fanout.platforms.contains(p))
                .collect();
            if devices.is_empty() {
                continue;
            }
            let jobs = self.jobs_of(*user).await?;
            for (device, platform) in devices {
                let pending =
                    jobs.iter().find(|j| j.device_id == device && j.room_id == id(entry.room.0) && j.state == PENDING);
                if let Some(job) = pending
                    && self.merge_push(id(user.0), job, fanout, entry, pos).await?
                {
                    PUSH_METRICS.of(platform).queued.inc();
                    continue;
                }
                self.create_push(id(user.0), device, fanout, entry, pos).await?;
                PUSH_METRICS.of(platform).queued.inc();
            }
        }
        Ok(())
    }

    async fn merge_push(
        &self,
        user: i64,
        job: &JobRow,
        fanout: &PushFanout,
        entry: PushSource,
        pos: u64,
    ) -> StoreResult<bool> {
        let many = job.many_senders.unwrap_or(false) || job.sender_id != id(entry.sender.0);
        let (u, d, r, j) = key(user, job);
        let values = (
            job.count + 1,
            fanout.kind.code() as i32,
            entry.seq as i64,
            pos as i64,
            id(entry.sender.0),
            many,
            &fanout.preview,
            u,
            d,
            r,
            j,
            job.count,
        );
        Ok(lwt(self.execute(&self.push_queue.merge, values).await?)?.applied)
    }

    async fn create_push(
        &self,
        user: i64,
        device: i64,
        fanout: &PushFanout,
        entry: PushSource,
        pos: u64,
    ) -> StoreResult<()> {
        let job_id = time_ordered_id(now_ms()) as i64;
        let room = id(entry.room.0);
        // The due row first: a job is never without one.
        self.index_job(user, job_id, device, room, fanout.due_at_ms, PENDING).await?;
        let values = (
            user,
            device,
            room,
            job_id,
            fanout.due_at_ms,
            fanout.kind.code() as i32,
            entry.seq as i64,
            pos as i64,
            id(entry.sender.0),
            &fanout.preview,
            now_ms(),
        );
        self.execute(&self.push_queue.create, values).await?;
        Ok(())
    }

    /// Pending activity pushes of `user` up to stream position `up_to_pos` are not needed any more
    /// (the user saw that activity).
    pub(super) async fn cancel_activity_pushes(&self, user: UserId, up_to_pos: u64) -> StoreResult<()> {
        for job in self.jobs_of(user).await? {
            if job.room_id == id(ACTIVITY_PUSH_ROOM.0) && job.state == PENDING && job.last_pos as u64 <= up_to_pos {
                self.drop_job_if(id(user.0), &job, PENDING).await?;
            }
        }
        Ok(())
    }

    /// Pending pushes of `user` for `room` up to `up_to_seq` are not needed any more.
    pub(super) async fn cancel_pushes_covered_by(&self, user: UserId, room: RoomId, up_to_seq: u64) -> StoreResult<()> {
        for job in self.jobs_of(user).await? {
            if job.room_id == id(room.0) && job.state == PENDING && job.last_seq as u64 <= up_to_seq {
                self.drop_job_if(id(user.0), &job, PENDING).await?;
            }
        }
        Ok(())
    }

    /// Forgets the device's queued (not failed) pushes.
    pub(super) async fn forget_device_pushes(&self, user: UserId, device: DeviceId) -> StoreResult<()> {
        for job in self.jobs_of(user).await? {
            if job.device_id == id(device.0) && job.state != FAILED {
                self.drop_job_if(id(user.0), &job, job.state).await?;
            }
        }
        Ok(())
    }

    /// The pushes of `seq`'s recipients that show its text, to revise or retract.
    async fn jobs_showing(&self, room: RoomId, seq: u64, claims: &Claims) -> StoreResult<Vec<(i64, JobRow)>> {
        let Some(entry) = self.entry_at(room, seq, claims).await? else { return Ok(Vec::new()) };
        let mut found = Vec::new();
        for user in entry.recipients {
            for job in self.jobs_of(user).await? {
                if job.room_id == id(room.0) && job.last_seq >= seq as i64 {
                    found.push((id(user.0), job));
                }
            }
        }
        Ok(found)
    }

    /// The message `seq` was edited: pushes not yet sent (or kept as failed) showing it show the
    /// new text.
    pub(super) async fn revise_pushes(&self, room: RoomId, seq: u64, preview: &str) -> StoreResult<()> {
        let claims = self.room_claims(room).await?;
        for (user, job) in self.jobs_showing(room, seq, &claims).await? {
            if job.last_seq == seq as i64 && job.state != CLAIMED {
                let (u, d, r, j) = key(user, &job);
                self.execute(&self.push_queue.set_preview, (preview, u, d, r, j, job.state)).await?;
            }
        }
        Ok(())
    }

    /// The message `seq` was deleted: a pending push for it alone is dropped; one that also stands
    /// for later messages counts one fewer (and loses its preview if it showed this one).
    pub(super) async fn retract_pushes(&self, room: RoomId, seq: u64, claims: &Claims) -> StoreResult<()> {
        let sent_at = self.entry_at(room, seq, claims).await?.map_or(i64::MAX, |e| e.entry.sent_at_ms);
        for (user, job) in self.jobs_showing(room, seq, claims).await? {
            let (u, d, r, j) = key(user, &job);
            let shows = job.last_seq == seq as i64;
            match job.state {
                PENDING if shows && job.count <= 1 => {
                    self.drop_job_if(user, &job, PENDING).await?;
                }
                PENDING if job.created_at_ms <= sent_at.max(job.created_at_ms) => {
                    let preview = if shows { String::new() } else { job.preview.clone().unwrap_or_default() };
                    self.execute(&self.push_queue.shrink, ((job.count - 1).max(1), preview, u, d, r, j, job.count))
                        .await?;
                }
                FAILED if shows => {
                    self.execute(&self.push_queue.set_preview, ("", u, d, r, j, FAILED)).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The due rows of a shard up to `now_ms`, oldest first, at most `limit`.
    async fn due_in_shard(&self, shard: i32, now_ms: i64, limit: usize) -> StoreResult<Vec<DueRow>> {
        let s = &self.push_queue;
        let mut buckets: Vec<i64> =
            self.rows::<(i64,)>(&s.buckets, (shard, due_bucket(now_ms))).await?.into_iter().map(|(b,)| b).collect();
        buckets.sort_unstable();
        let mut due = Vec::new();
        for bucket in buckets {
            let rows = self.rows::<DueRow>(&s.due_page, (shard, bucket, now_ms, (limit - due.len()) as i32)).await?;
            due.extend(rows);
            if due.len() >= limit {
                break;
            }
        }
        Ok(due)
    }

    /// Leases one due job to the caller, if it is still as its due row says.
    async fn lease_job(&self, row: DueRow, now_ms: i64, lease_ms: i64) -> StoreResult<Option<PushJob>> {
        let s = &self.push_queue;
        let k = (row.user_id, row.device_id, row.room_id, row.job_id);
        let Some(job) = self.rows::<JobRow>(&s.job, k).await?.into_iter().next() else {
            // A due row whose job is gone (finished, or never written): clear it.
            self.unindex_job(row.user_id, row.job_id, row.due_ms).await?;
            return Ok(None);
        };
        if job.state == FAILED || job.due_ms != row.due_ms {
            self.unindex_job(row.user_id, row.job_id, row.due_ms).await?;
            return Ok(None);
        }
        let until = now_ms.saturating_add(lease_ms);
        let leased = lwt(self.execute(&s.lease, (until, k.0, k.1, k.2, k.3, job.state, job.due_ms)).await?)?;
        if !leased.applied {
            return Ok(None);
        }
        self.index_job(row.user_id, row.job_id, row.device_id, row.room_id, until, CLAIMED).await?;
        self.unindex_job(row.user_id, row.job_id, row.due_ms).await?;
        let (user, device) = (UserId(row.user_id as u64), DeviceId(row.device_id as u64));
        let Some(token) = self.push_token(user, device).await? else {
            // The device's token is gone: so is the job.
            let leased_row = JobRow { state: CLAIMED, due_ms: until, ..job };
            self.drop_job_if(row.user_id, &leased_row, CLAIMED).await?;
            return Ok(None);
        };
        Ok(Some(PushJob {
            id: job.job_id as u64,
            user,
            device,
            room: RoomId(job.room_id as u64),
            kind: PushKind::from_code(job.kind as i64),
            count: job.count.max(0) as u32,
            last_seq: job.last_seq as u64,
            last_pos: job.last_pos as u64,
            sender: UserId(job.sender_id as u64),
            many_senders: job.many_senders.unwrap_or(false),
            preview: job.preview.unwrap_or_default(),
            attempts: job.attempts.unwrap_or(0).max(0) as u32,
            created_at_ms: job.created_at_ms,
            platform: token.platform,
            token: token.token,
            app_id: token.app_id,
            locale: token.locale,
            sandbox: token.sandbox,
        }))
    }

    /// A job of `user`'s by its id.
    async fn job_of(&self, user: UserId, job: u64) -> StoreResult<Option<JobRow>> {
        Ok(self.jobs_of(user).await?.into_iter().find(|j| j.job_id == job as i64))
    }

    /// A job by its key, as an operator sees it, if it is still there.
    async fn job_summary(&self, user: i64, device: i64, room: i64, job: i64) -> StoreResult<Option<PushJobSummary>> {
        let Some(row) = self.rows::<JobRow>(&self.push_queue.job, (user, device, room, job)).await?.into_iter().next()
        else {
            return Ok(None);
        };
        Ok(Some(PushJobSummary {
            id: row.job_id as u64,
            user: UserId(user as u64),
            device: DeviceId(row.device_id as u64),
            room: RoomId(row.room_id as u64),
            kind: PushKind::from_code(row.kind as i64),
            count: row.count.max(0) as u32,
            state: match row.state {
                PENDING => PushJobState::Pending,
                CLAIMED => PushJobState::Claimed,
                _ => PushJobState::Failed,
            },
            attempts: row.attempts.unwrap_or(0).max(0) as u32,
            due_ms: row.due_ms,
            created_at_ms: row.created_at_ms,
            last_error: row.last_error.unwrap_or_default(),
        }))
    }

    /// Queued jobs, the one due first first: the due index's first rows in each shard, checked
    /// against their jobs (a row a lease or a retry moved on is stale).
    async fn queued_jobs(&self, limit: usize) -> StoreResult<Vec<PushJobSummary>> {
        let mut due = Vec::new();
        for shard in 0..SHARDS {
            due.extend(self.due_in_shard(shard, i64::MAX, limit).await?);
        }
        due.sort_by_key(|r| (r.due_ms, r.job_id));
        let mut listed = Vec::new();
        for row in due {
            if listed.len() >= limit {
                break;
            }
            let job = self.job_summary(row.user_id, row.device_id, row.room_id, row.job_id).await?;
            if let Some(job) = job.filter(|j| j.state != PushJobState::Failed && j.due_ms == row.due_ms) {
                listed.push(job);
            }
        }
        Ok(listed)
    }

    /// Failed jobs, the newest failure first.
    async fn failed_jobs(&self, limit: usize) -> StoreResult<Vec<PushJobSummary>> {
        let mut failed = Vec::new();
        for shard in 0..SHARDS {
            let rows = self.rows::<(i64, i64, i64, i64, i64)>(&self.push_queue.newest_failed, (shard, limit as i32));
            failed.extend(rows.await?);
        }
        failed.sort_by_key(|&(at, job, ..)| std::cmp::Reverse((at, job)));
        let mut listed = Vec::new();
        for (_, job, user, device, room) in failed {
            if listed.len() >= limit {
                break;
            }
            if let Some(job) =
                self.job_summary(user, device, room, job).await?.filter(|j| j.state == PushJobState::Failed)
            {
                listed.push(job);
            }
        }
        Ok(listed)
    }

    /// The job's row as it is now (its due time moves with every lease).
    async fn current_job(&self, job: &PushJob) -> StoreResult<Option<JobRow>> {
        let k = (id(job.user.0), id(job.device.0), id(job.room.0), job.id as i64);
        Ok(self.rows::<JobRow>(&self.push_queue.job, k).await?.into_iter().next())
    }
}

#[async_trait]
impl PushQueueStore for ScyllaStore {
    async fn cancel_delivered_pushes(&self, user: UserId, up_to_pos: u64) -> StoreResult<u64> {
        // Noted before the jobs are read: a job queued meanwhile is then dropped when it falls due.
        let pos = up_to_pos as i64;
        self.execute(&self.push_queue.note_delivered, (pos, pos, id(user.0))).await?;
        let mut still_pending = 0;
        for job in self.jobs_of(user).await? {
            if job.state != PENDING {
                continue;
            }
            if job.last_pos as u64 <= up_to_pos {
                // Not dropped means claimed meanwhile: no longer pending either.
                self.drop_job_if(id(user.0), &job, PENDING).await?;
            } else {
                still_pending += 1;
            }
        }
        Ok(still_pending)
    }

    async fn claim_push_jobs(&self, now_ms: i64, lease_ms: i64, limit: usize) -> StoreResult<Vec<PushJob>> {
        self.check_open()?;
        let mut due = Vec::new();
        for shard in 0..SHARDS {
            due.extend(self.due_in_shard(shard, now_ms, limit).await?);
        }
        due.sort_by_key(|r| (r.due_ms, r.job_id));
        let mut claimed = Vec::new();
        for row in due {
            if claimed.len() >= limit {
                break;
            }
            if let Some(job) = self.lease_job(row, now_ms, lease_ms).await? {
                claimed.push(job);
            }
        }
        Ok(claimed)
    }

    async fn next_push_due(&self) -> StoreResult<Option<i64>> {
        let s = &self.push_queue;
        let mut next: Option<i64> = None;
        for shard in 0..SHARDS {
            let mut buckets: Vec<i64> =
                self.rows::<(i64,)>(&s.buckets, (shard, i64::MAX)).await?.into_iter().map(|(b,)| b).collect();
            buckets.sort_unstable();
            for bucket in buckets {
                if let Some(&(due,)) = self.rows::<(i64,)>(&s.first_due, (shard, bucket)).await?.first() {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    break;
                }
            }
        }
        Ok(next)
    }

    async fn push_context(&self, job: PushJob) -> StoreResult<crate::store::PushContext> {
        // Activity and notifications are in no room: no name, no markers, always "a member".
        let activity = job.room == ACTIVITY_PUSH_ROOM || job.room == NOTIFICATION_PUSH_ROOM;
        let (kind, room_name) = match activity {
            true => (RoomKind::Direct, String::new()),
            false => match self.room_meta(job.room).await? {
                Some(meta) => (meta.kind, meta.name),
                None => return Err(StoreError::new(StoreErrorKind::Corrupt, format!("room {} is gone", job.room))),
            },
        };
        let sender_name = self.username_of(job.sender).await?.unwrap_or_default();
        let member = activity || self.is_member(job.room, job.user).await?;
        let (delivered, read) = if activity { (0, 0) } else { self.markers(job.room, job.user).await? };
        let prefs = self.push_preferences(job.user, job.room).await?;
        let stream_delivered =
            self.rows::<(Option<i64>,)>(&self.push_queue.delivered, (id(job.user.0),)).await?.first().and_then(|r| r.0);
        Ok(PushContext {
            room_kind: kind,
            room_name,
            sender_name,
            badge: self.unread_total(job.user).await?.min(BADGE_CAP),
            read_up_to_seq: read,
            delivered_up_to_seq: delivered,
            stream_delivered_up_to_pos: stream_delivered.unwrap_or(0) as u64,
            muted_until_ms: prefs.muted_until_ms,
            dnd_until_ms: prefs.dnd_until_ms,
            hide_previews: prefs.hide_previews,
            member,
        })
    }

    async fn finish_push_job(&self, job: PushJob, end: PushJobEnd) -> StoreResult<()> {
        let s = &self.push_queue;
        let Some(row) = self.current_job(&job).await? else { return Ok(()) };
        let user = id(job.user.0);
        let (u, d, r, j) = key(user, &row);
        match end {
            PushJobEnd::Sent | PushJobEnd::Dropped => {
                self.execute(&s.delete, (u, d, r, j)).await?;
                self.unindex_job(user, row.job_id, row.due_ms).await?;
            }
            PushJobEnd::Retry { at_ms, error } => {
                let attempts = row.attempts.unwrap_or(0) + 1;
                self.index_job(user, row.job_id, row.device_id, row.room_id, at_ms, CLAIMED).await?;
                let moved = lwt(self.execute(&s.retry, (at_ms, attempts, &error, u, d, r, j, row.due_ms)).await?)?;
                if moved.applied {
                    self.unindex_job(user, row.job_id, row.due_ms).await?;
                } else {
                    self.unindex_job(user, row.job_id, at_ms).await?;
                }
            }
            PushJobEnd::Failed { reason } => {
                let (failed_at, attempts) = (now_ms(), row.attempts.unwrap_or(0) + 1);
                let failed =
                    lwt(self.execute(&s.fail, (failed_at, attempts, &reason, u, d, r, j, row.due_ms)).await?)?;
                if failed.applied {
                    self.execute(&s.record_failed, (shard(job.user), failed_at, j, u, d, r)).await?;
                    self.unindex_job(user, row.job_id, row.due_ms).await?;
                }
            }
            PushJobEnd::TokenDead { token, .. } => {
                // Only if the device still has that token: it may have registered a fresh one meanwhile.
                if self.push_token(job.user, job.device).await?.is_some_and(|t| t.token == token) {
                    self.forget_push_token(job.user, job.device).await?;
                }
                self.execute(&s.delete, (u, d, r, j)).await?;
                self.unindex_job(user, row.job_id, row.due_ms).await?;
            }
        }
        Ok(())
    }

    async fn users_with_pending_pushes(&self) -> StoreResult<Vec<UserId>> {
        let s = &self.push_queue;
        let mut users = BTreeSet::new();
        for shard in 0..SHARDS {
            for (bucket,) in self.rows::<(i64,)>(&s.buckets, (shard, i64::MAX)).await? {
                for row in self.rows::<DueRow>(&s.all_due, (shard, bucket)).await? {
                    if row.state == PENDING {
                        users.insert(UserId(row.user_id as u64));
                    }
                }
            }
        }
        Ok(users.into_iter().collect())
    }

    async fn list_push_jobs(&self, which: PushJobsListed, limit: usize) -> StoreResult<Vec<PushJobSummary>> {
        match which {
            PushJobsListed::Queued => self.queued_jobs(limit).await,
            PushJobsListed::Failed => self.failed_jobs(limit).await,
        }
    }

    async fn retry_failed_push(&self, user: UserId, job: u64, now_ms: i64) -> StoreResult<bool> {
        let Some(row) = self.job_of(user, job).await?.filter(|j| j.state == FAILED) else { return Ok(false) };
        let (u, d, r, j) = key(id(user.0), &row);
        // Leased and due now rather than pending (see the SQLite store): the due row first, as
        // for every move of a job.
        self.index_job(u, j, d, r, now_ms, CLAIMED).await?;
        if !lwt(self.execute(&self.push_queue.retry_failed, (now_ms, u, d, r, j)).await?)?.applied {
            self.unindex_job(u, j, now_ms).await?;
            return Ok(false);
        }
        // A failed job's due time is when it failed: its row in `push_failed`.
        self.execute(&self.push_queue.forget_failed, (shard(user), row.due_ms, j)).await?;
        Ok(true)
    }

    async fn drop_push_job(&self, user: UserId, job: u64) -> StoreResult<bool> {
        let Some(row) = self.job_of(user, job).await? else { return Ok(false) };
        if !self.drop_job_if(id(user.0), &row, row.state).await? {
            return Ok(false);
        }
        if row.state == FAILED {
            self.execute(&self.push_queue.forget_failed, (shard(user), row.due_ms, row.job_id)).await?;
        }
        Ok(true)
    }

    async fn purge_failed_pushes(&self, before_ms: i64) -> StoreResult<u64> {
        let s = &self.push_queue;
        let mut purged = 0;
        for shard in 0..SHARDS {
            let rows = self.rows::<(i64, i64, i64, i64, i64)>(&s.failed_before, (shard, before_ms)).await?;
            for (failed_at, job_id, user, device, room) in rows {
                self.execute(&s.delete, (user, device, room, job_id)).await?;
                self.execute(&s.forget_failed, (shard, failed_at, job_id)).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

//! The embedded default backend: one SQLite file in WAL mode, one writer thread with group commit
//! (`writer.rs`), a pool of read connections (`reads.rs`).

mod activity;
mod checkpointer;
mod codec;
mod feeds;
mod graph;
mod media;
mod notifications;
mod posts;
mod profiles;
mod push;
mod reactions;
mod reads;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use writer::WriteCmd;

use super::{
    AccountStore, ActivityStore, Append, AppendOutcome, Claim, CreateRoomOutcome, DeviceInfo, DeviceRecord, FanoutJob,
    FeedStore, GraphStore, HistoryPage, MediaRecord, MediaStore, NewMedia, NewRoom, NewUser, NotificationStore,
    Positions, PostStore, ProfileStore, PushContext, PushFanout, PushJob, PushJobEnd, PushJobSummary, PushJobsListed,
    PushPreferences, PushPrefsStore, PushQueueStore, ReactionStore, ReceiptWrite, RecordedNotification,
    RefreshRotation, RoomStore, Store, StoreError, StoreErrorKind, StoreResult, StreamStore, UserRecord,
};
use crate::config::Synchronous;
use crate::domain::{
    Activity, ActivityStatus, Comment, CommentId, DeviceId, FollowCounts, FollowList, FollowState, LatestReactions,
    MediaId, NewActivity, NewNotification, Post, PostId, Profile, ProfileChange, PushRegistration, Reactions,
    RoomEntry, RoomId, RoomState, RoomSummary, StreamEvent, UserId,
};

/// Settings of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// How long a write waits for another process holding the file's write lock.
    pub busy_timeout: Duration,
    /// Most commands committed together.
    pub max_batch: usize,
    /// Writes waiting for the writer; senders wait (back-pressure) beyond this.
    pub queue_capacity: usize,
    /// Read connections at most; reads beyond wait for one. Each holds its own page cache.
    pub max_readers: usize,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_batch: 1024,
            queue_capacity: 8192,
            max_readers: 8,
        }
    }
}

pub struct SqliteStore {
    options: SqliteOptions,
    writes: mpsc::Sender<WriteCmd>,
    /// Idle read connections; a read opens another when all are busy, up to `max_readers`.
    readers: Mutex<Vec<Connection>>,
    /// One permit per read connection. Unbounded, a burst of reads (a thousand phones connecting
    /// at once, each announcing its presence) opened a connection and a blocking thread per read
    /// and kept every connection: measured, 674 of them and 54 MB.
    read_slots: tokio::sync::Semaphore,
    closed: AtomicBool,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: checkpointer::Checkpointer,
}

impl SqliteStore {
    /// Opens or creates the database at `options.path` and starts the writer.
    pub fn open(options: SqliteOptions) -> StoreResult<Self> {
        if let Some(parent) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::unavailable(format!("creating {}: {e}", parent.display())))?;
        }
        let conn = Self::open_and_create(&options)?;
        let (writes, commands) = mpsc::channel(options.queue_capacity);
        let writer_thread = writer::spawn(conn, commands, options.max_batch);
        let checkpointer = checkpointer::Checkpointer::start(Self::connect(&options)?);
        Ok(Self {
            read_slots: tokio::sync::Semaphore::new(options.max_readers.max(1)),
            options,
            writes,
            readers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            writer_thread: Mutex::new(Some(writer_thread)),
            checkpointer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.options.path
    }

    /// Opens the writer's connection and creates the tables. Nodes of a cluster starting together
    /// on a fresh file race to switch it to WAL and create the schema; SQLite answers "locked"
    /// without waiting for those, so the loser retries within the busy timeout.
    fn open_and_create(options: &SqliteOptions) -> StoreResult<Connection> {
        let deadline = std::time::Instant::now() + options.busy_timeout;
        loop {
            let attempt = schema::open(&options.path, options.synchronous, options.busy_timeout)
                .and_then(|conn| schema::migrate(&conn).map(|()| conn));
            match attempt {
                Ok(conn) => return Ok(conn),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(sql_error(e)),
            }
        }
    }

    fn connect(options: &SqliteOptions) -> StoreResult<Connection> {
        schema::open(&options.path, options.synchronous, options.busy_timeout).map_err(sql_error)
    }

    async fn write<T>(&self, make: impl FnOnce(writer::Reply<T>) -> WriteCmd) -> StoreResult<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("store is closed"));
        }
        let (reply, answer) = oneshot::channel();
        self.writes.send(make(reply)).await.map_err(|_| StoreError::unavailable("store writer stopped"))?;
        answer.await.map_err(|_| StoreError::unavailable("store writer stopped"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("store is closed"));
        }
        let _slot = self.read_slots.acquire().await.map_err(|_| StoreError::unavailable("store is closed"))?;
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reader = pooled.ok_or_else(|| self.options.clone());
        let (conn, result) = tokio::task::spawn_blocking(move || {
            // Opened off the async thread: opening a file and setting pragmas blocks.
            let conn = match reader {
                Ok(conn) => conn,
                Err(options) => Self::connect(&options)?,
            };
            let result = query(&conn);
            Ok::<_, StoreError>((conn, result))
        })
        .await
        .map_err(|e| StoreError::unavailable(format!("read task failed: {e}")))??;
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        result.map_err(sql_error)
    }
}

fn sql_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::caused_by(StoreErrorKind::Corrupt, e)
        }
        other => StoreError::caused_by(StoreErrorKind::Unavailable, other),
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_user(&self, user: NewUser) -> StoreResult<()> {
        self.write(|reply| WriteCmd::CreateUser(user, reply)).await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let username = username.to_owned();
        self.read(move |c| reads::user_by_name(c, &username)).await
    }

    async fn existing_users(&self, users: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        self.read(move |c| reads::existing_users(c, &users)).await
    }

    async fn create_device(&self, device: DeviceRecord) -> StoreResult<()> {
        self.write(|reply| WriteCmd::CreateDevice(device, reply)).await
    }

    async fn device(&self, user: UserId, device: DeviceId) -> StoreResult<Option<DeviceRecord>> {
        self.read(move |c| reads::device(c, user, device)).await
    }

    async fn devices_of(&self, user: UserId) -> StoreResult<Vec<DeviceInfo>> {
        self.read(move |c| reads::devices_of(c, user)).await
    }

    async fn set_account_blocked(&self, user: UserId, at_ms: i64) -> StoreResult<()> {
        self.write(|reply| WriteCmd::SetAccountBlocked { user, at_ms, reply }).await
    }

    async fn account_blocked(&self, user: UserId) -> StoreResult<Option<i64>> {
        self.read(move |c| reads::account_blocked(c, user)).await
    }

    async fn rotate_refresh(
        &self,
        user: UserId,
        device: DeviceId,
        old_hash: Vec<u8>,
        new_hash: Vec<u8>,
        new_expires_at_ms: i64,
    ) -> StoreResult<RefreshRotation> {
        self.write(|reply| WriteCmd::RotateRefresh {
            user,
            device,
            old_hash,
            new_hash,
            expires_at_ms: new_expires_at_ms,
            reply,
        })
        .await
    }

    async fn revoke_devices(&self, user: UserId, only: Option<DeviceId>) -> StoreResult<Vec<DeviceId>> {
        self.write(|reply| WriteCmd::RevokeDevices { user, only, reply }).await
    }

    async fn set_last_seen(&self, user: UserId, at_ms: i64) -> StoreResult<()> {
        self.write(|reply| WriteCmd::SetLastSeen { user, at_ms, reply }).await
    }

    async fn last_seen(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, i64)>> {
        self.read(move |c| reads::last_seen(c, &users)).await
    }
}

#[async_trait]
impl RoomStore for SqliteStore {
    async fn create_room(&self, room: NewRoom) -> StoreResult<CreateRoomOutcome> {
        self.write(|reply| WriteCmd::CreateRoom(room, reply)).await
    }

    async fn claim_room(&self, room: RoomId) -> StoreResult<Option<Claim>> {
        // One transaction per write: nothing is ever left half done to finish.
        let claimed = self.write(|reply| WriteCmd::ClaimRoom(room, reply)).await?;
        Ok(claimed.map(|(state, epoch)| Claim { state, epoch, finished: Vec::new() }))
    }

    async fn load_room(&self, room: RoomId) -> StoreResult<Option<RoomState>> {
        self.read(move |c| reads::load_room(c, room)).await
    }

    fn submit_append(&self, append: Append) -> StoreResult<BoxFuture<'static, StoreResult<AppendOutcome>>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("store is closed"));
        }
        let (reply, answer) = oneshot::channel();
        self.writes.try_send(WriteCmd::Append(append, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::new(StoreErrorKind::Busy, "store write queue is full"),
            mpsc::error::TrySendError::Closed(_) => StoreError::unavailable("store writer stopped"),
        })?;
        Ok(Box::pin(async move { answer.await.map_err(|_| StoreError::unavailable("store writer stopped"))? }))
    }

    async fn set_receipt(&self, receipt: ReceiptWrite) -> StoreResult<Option<Positions>> {
        self.write(|reply| WriteCmd::Receipt(receipt, reply)).await
    }

    async fn history(&self, room: RoomId, page: HistoryPage) -> StoreResult<(Vec<RoomEntry>, bool)> {
        self.read(move |c| reads::history(c, room, page)).await
    }

    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomSummary>> {
        self.read(move |c| reads::rooms_of(c, user)).await
    }

    async fn room_summary(&self, room: RoomId, user: UserId) -> StoreResult<Option<RoomSummary>> {
        self.read(move |c| reads::room_summary(c, room, user)).await
    }

    async fn contacts_of(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        self.read(move |c| reads::contacts_of(c, user)).await
    }

    async fn wrote_to(&self, user: UserId, users: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        self.read(move |c| {
            let mut wrote = Vec::new();
            for other in users {
                if reads::has_written_to(c, other, user, None)? {
                    wrote.push(other);
                }
            }
            Ok(wrote)
        })
        .await
    }

    /// None: an append's one transaction puts the entry in every recipient's stream.
    async fn rooms_behind(&self) -> StoreResult<Vec<RoomId>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl StreamStore for SqliteStore {
    async fn events_after(&self, user: UserId, after_pos: u64, limit: usize) -> StoreResult<Vec<(u64, StreamEvent)>> {
        self.read(move |c| reads::events_after(c, user, after_pos, limit)).await
    }

    async fn stream_head(&self, user: UserId) -> StoreResult<u64> {
        self.read(move |c| reads::stream_head(c, user)).await
    }

    /// One epoch for every stream of the file.
    async fn stream_epoch(&self, _user: UserId) -> StoreResult<String> {
        self.read(reads::stream_epoch).await
    }

    async fn rotate_stream_epochs(&self) -> StoreResult<String> {
        self.write(WriteCmd::RotateStreamEpochs).await
    }
}

#[async_trait]
impl PushPrefsStore for SqliteStore {
    async fn set_push_token(&self, registration: PushRegistration) -> StoreResult<()> {
        self.write(|reply| WriteCmd::SetPushToken(registration, reply)).await
    }

    async fn clear_push_token(&self, user: UserId, device: DeviceId) -> StoreResult<()> {
        self.write(|reply| WriteCmd::ClearPushToken { user, device, reply }).await
    }

    async fn set_room_mute(&self, user: UserId, room: RoomId, until_ms: i64) -> StoreResult<()> {
        self.write(|reply| WriteCmd::SetRoomMute { user, room, until_ms, reply }).await
    }

    async fn set_do_not_disturb(&self, user: UserId, until_ms: i64) -> StoreResult<()> {
        self.write(|reply| WriteCmd::SetDoNotDisturb { user, until_ms, reply }).await
    }

    async fn set_hide_previews(&self, user: UserId, hide: bool) -> StoreResult<()> {
        self.write(|reply| WriteCmd::SetHidePreviews { user, hide, reply }).await
    }

    async fn push_token(&self, user: UserId, device: DeviceId) -> StoreResult<Option<PushRegistration>> {
        self.read(move |c| push::token(c, user, device)).await
    }

    async fn push_preferences(&self, user: UserId, room: RoomId) -> StoreResult<PushPreferences> {
        self.read(move |c| push::preferences(c, user, room)).await
    }
}

#[async_trait]
impl PushQueueStore for SqliteStore {
    async fn cancel_delivered_pushes(&self, user: UserId, up_to_pos: u64) -> StoreResult<u64> {
        self.write(|reply| WriteCmd::CancelDeliveredPushes { user, up_to_pos, reply }).await
    }

    async fn claim_push_jobs(&self, now_ms: i64, lease_ms: i64, limit: usize) -> StoreResult<Vec<PushJob>> {
        self.write(|reply| WriteCmd::ClaimPushJobs { now_ms, lease_ms, limit, reply }).await
    }

    async fn next_push_due(&self) -> StoreResult<Option<i64>> {
        self.read(push::next_due).await
    }

    async fn push_context(&self, job: PushJob) -> StoreResult<PushContext> {
        self.read(move |c| push::context(c, &job)).await
    }

    async fn push_contexts(&self, jobs: Vec<PushJob>) -> Vec<StoreResult<PushContext>> {
        let count = jobs.len();
        let read = self.read(move |c| push::contexts(c, &jobs)).await;
        match read {
            Ok(contexts) => contexts.into_iter().map(|c| c.map_err(sql_error)).collect(),
            Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn finish_push_jobs(&self, ends: Vec<(PushJob, PushJobEnd)>) -> StoreResult<()> {
        self.write(|reply| WriteCmd::FinishPushJobs(ends, reply)).await
    }

    async fn finish_push_job(&self, job: PushJob, end: PushJobEnd) -> StoreResult<()> {
        self.write(|reply| WriteCmd::FinishPushJob(job, end, reply)).await
    }

    async fn users_with_pending_pushes(&self) -> StoreResult<Vec<UserId>> {
        self.read(push::users_with_pending).await
    }

    async fn purge_failed_pushes(&self, before_ms: i64) -> StoreResult<u64> {
        self.write(|reply| WriteCmd::PurgeFailedPushes { before_ms, reply }).await
    }

    async fn list_push_jobs(&self, which: PushJobsListed, limit: usize) -> StoreResult<Vec<PushJobSummary>> {
        self.read(move |c| push::list(c, which, limit)).await
    }

    async fn retry_failed_push(&self, user: UserId, job: u64, now_ms: i64) -> StoreResult<bool> {
        self.write(|reply| WriteCmd::RetryFailedPush { user, job, now_ms, reply }).await
    }

    async fn drop_push_job(&self, user: UserId, job: u64) -> StoreResult<bool> {
        self.write(|reply| WriteCmd::DropPushJob { user, job, reply }).await
    }
}

#[async_trait]
impl MediaStore for SqliteStore {
    async fn put_media(&self, media: NewMedia) -> StoreResult<()> {
        self.write(|reply| WriteCmd::PutMedia(media, reply)).await
    }

    async fn media(&self, id: MediaId) -> StoreResult<Option<MediaRecord>> {
        self.read(move |c| media::record(c, id)).await
    }

    async fn media_chunk(&self, id: MediaId, index: u32) -> StoreResult<Option<bytes::Bytes>> {
        Ok(self.read(move |c| media::chunk(c, id, index)).await?.map(bytes::Bytes::from))
    }

    async fn uploaded_media(&self, id: MediaId, user: UserId) -> StoreResult<bool> {
        self.read(move |c| media::uploaded(c, id, user)).await
    }

    async fn may_see_media(&self, id: MediaId, user: UserId) -> StoreResult<bool> {
        self.read(move |c| media::may_see(c, id, user)).await
    }

    async fn collect_orphan_media(&self, uploaded_before_ms: i64, limit: usize) -> StoreResult<u64> {
        self.write(|reply| WriteCmd::CollectOrphanMedia { before_ms: uploaded_before_ms, limit, reply }).await
    }

    async fn publish_media(&self, id: MediaId) -> StoreResult<()> {
        self.write(|reply| WriteCmd::PublishMedia(id, reply)).await
    }
}

#[async_trait]
impl ProfileStore for SqliteStore {
    async fn change_profile(&self, user: UserId, change: ProfileChange) -> StoreResult<bool> {
        self.write(|reply| WriteCmd::ChangeProfile { user, change, reply }).await
    }

    async fn profiles(&self, users: Vec<UserId>) -> StoreResult<Vec<Profile>> {
        self.read(move |c| profiles::read_many(c, &users)).await
    }

    async fn search_profiles(&self, prefix: String, limit: usize) -> StoreResult<Vec<Profile>> {
        self.read(move |c| profiles::search(c, &prefix, limit)).await
    }
}

#[async_trait]
impl GraphStore for SqliteStore {
    async fn followers_among(&self, followee: UserId, users: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        self.read(move |c| graph::followers_among(c, followee, &users)).await
    }

    async fn follow_state(&self, from: UserId, to: UserId) -> StoreResult<FollowState> {
        self.read(move |c| graph::state(c, from, to)).await
    }

    async fn set_follow(
        &self,
        from: UserId,
        to: UserId,
        state: FollowState,
        when: &[FollowState],
    ) -> StoreResult<FollowState> {
        let when = when.to_vec();
        self.write(|reply| WriteCmd::SetFollow { from, to, state, when, reply }).await
    }

    async fn follow_counts(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, FollowCounts)>> {
        self.read(move |c| graph::counts(c, &users)).await
    }

    async fn follow_list(
        &self,
        user: UserId,
        list: FollowList,
        after: Option<UserId>,
        limit: usize,
    ) -> StoreResult<Vec<UserId>> {
        self.read(move |c| graph::list(c, user, list, after, limit)).await
    }

    async fn set_block(&self, blocker: UserId, blocked: UserId, on: bool) -> StoreResult<()> {
        self.write(|reply| WriteCmd::SetBlock { blocker, blocked, on, reply }).await
    }

    async fn blockers_of(&self, user: UserId, others: Vec<UserId>) -> StoreResult<Vec<UserId>> {
        self.read(move |c| graph::blockers_of(c, user, &others)).await
    }

    async fn settle_follows(&self, _limit: usize) -> StoreResult<u64> {
        Ok(0)
    }
}

#[async_trait]
impl PostStore for SqliteStore {
    async fn create_post(&self, post: Post, client_post_id: String) -> StoreResult<Post> {
        self.write(|reply| WriteCmd::CreatePost(post, client_post_id, reply)).await
    }

    async fn post(&self, id: PostId) -> StoreResult<Option<Post>> {
        self.read(move |c| posts::read(c, id)).await
    }

    async fn delete_post(&self, id: PostId) -> StoreResult<bool> {
        self.write(|reply| WriteCmd::DeletePost(id, reply)).await
    }

    async fn posts_of(&self, author: UserId, before: Option<PostId>, limit: usize) -> StoreResult<Vec<Post>> {
        self.read(move |c| posts::of_author(c, author, before, limit)).await
    }

    async fn post_counts(&self, authors: Vec<UserId>) -> StoreResult<Vec<(UserId, u64)>> {
        self.read(move |c| posts::counts(c, &authors)).await
    }
}

#[async_trait]
impl FeedStore for SqliteStore {
    async fn fanout_job(&self, post: PostId) -> StoreResult<Option<FanoutJob>> {
        self.read(move |c| feeds::job(c, post)).await
    }

    async fn pending_fanouts(&self, limit: usize) -> StoreResult<Vec<FanoutJob>> {
        self.read(move |c| feeds::pending(c, limit)).await
    }

    async fn fan_out_page(
        &self,
        job: FanoutJob,
        followers: &[UserId],
        into_feeds: bool,
        live: &[UserId],
    ) -> StoreResult<Positions> {
        let (followers, live) = (followers.to_vec(), live.to_vec());
        self.write(|reply| WriteCmd::FanOutPage { job, followers, into_feeds, live, reply }).await
    }

    async fn finish_fanout(&self, post: PostId) -> StoreResult<()> {
        self.write(|reply| WriteCmd::FinishFanout(post, reply)).await
    }

    async fn home_feed(
        &self,
        user: UserId,
        before: Option<PostId>,
        limit: usize,
    ) -> StoreResult<Vec<(PostId, UserId)>> {
        self.read(move |c| feeds::home(c, user, before, limit)).await
    }

    async fn add_wide_author(&self, author: UserId) -> StoreResult<()> {
        self.write(|reply| WriteCmd::AddWideAuthor(author, reply)).await
    }

    async fn wide_authors(&self) -> StoreResult<Vec<UserId>> {
        self.read(feeds::wide).await
    }
}

#[async_trait]
impl ReactionStore for SqliteStore {
    async fn set_like(&self, post: PostId, user: UserId, on: bool) -> StoreResult<bool> {
        self.write(|reply| WriteCmd::SetLike(post, user, on, reply)).await
    }

    async fn liked(&self, post: PostId, user: UserId) -> StoreResult<bool> {
        self.read(move |c| reactions::liked(c, post, user)).await
    }

    async fn likers(&self, post: PostId, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>> {
        self.read(move |c| reactions::likers(c, post, after, limit)).await
    }

    async fn add_comment(&self, comment: Comment, client_comment_id: String) -> StoreResult<Comment> {
        self.write(|reply| WriteCmd::AddComment(comment, client_comment_id, reply)).await
    }

    async fn comment(&self, post: PostId, id: CommentId) -> StoreResult<Option<Comment>> {
        self.read(move |c| reactions::comment(c, post, id)).await
    }

    async fn delete_comment(&self, post: PostId, id: CommentId) -> StoreResult<bool> {
        self.write(|reply| WriteCmd::DeleteComment(post, id, reply)).await
    }

    async fn comments(&self, post: PostId, after: Option<CommentId>, limit: usize) -> StoreResult<Vec<Comment>> {
        self.read(move |c| reactions::comments(c, post, after, limit)).await
    }

    async fn reactions(&self, posts: Vec<PostId>) -> StoreResult<Vec<(PostId, Reactions)>> {
        self.read(move |c| reactions::reactions(c, &posts)).await
    }

    async fn latest_reactions(&self, post: PostId) -> StoreResult<LatestReactions> {
        self.read(move |c| reactions::latest(c, post)).await
    }
}

#[async_trait]
impl NotificationStore for SqliteStore {
    async fn record_notification(
        &self,
        notification: NewNotification,
        push: Option<PushFanout>,
    ) -> StoreResult<RecordedNotification> {
        self.write(|reply| WriteCmd::RecordNotification(notification, push, reply)).await
    }
}

#[async_trait]
impl ActivityStore for SqliteStore {
    async fn record_activity(
        &self,
        activity: NewActivity,
        push: Option<PushFanout>,
    ) -> StoreResult<Option<(u64, Activity)>> {
        self.write(|reply| WriteCmd::RecordActivity(activity, push, reply)).await
    }

    async fn set_activity_seen(&self, user: UserId, up_to_pos: u64) -> StoreResult<ActivityStatus> {
        self.write(|reply| WriteCmd::SetActivitySeen(user, up_to_pos, reply)).await
    }

    async fn activity_status(&self, user: UserId) -> StoreResult<ActivityStatus> {
        self.read(move |c| activity::status(c, user)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ready(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await.is_ok()
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.checkpointer.stop().await;
        let (done, finished) = oneshot::channel();
        if self.writes.send(WriteCmd::Close(done)).await.is_ok() {
            let _ = finished.await;
        }
        let thread = self.writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Files this process holds open at `path`.
    fn open_handles(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_reads_shares_a_bounded_pool_of_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tidings.db");
        let store = Arc::new(SqliteStore::open(SqliteOptions { max_readers: 3, ..SqliteOptions::new(&path) }).unwrap());
        let path = path.canonicalize().unwrap();
        let before = open_handles(&path);
        let reads: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.user_by_name(&format!("nobody{i}")).await })
            })
            .collect();
        for read in reads {
            assert!(read.await.unwrap().unwrap().is_none());
        }
        let opened = open_handles(&path) - before;
        assert!((1..=3).contains(&opened), "{opened} read connections for 200 concurrent reads");
    }
}

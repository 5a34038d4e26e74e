//! Storage: domain-level traits and their backends.
//!
//! The traits speak rooms, entries, streams and accounts, never rows or keys, so that the embedded
//! SQLite default and ScyllaDB can both implement them without cross-partition transactions:
//! - a room's log is keyed by room and clustered by `seq` (ScyllaDB partitions it by
//!   `(room_id, seq / ENTRY_BUCKET_SIZE)`);
//! - a user's stream is keyed by user and clustered by position;
//! - every write names the one room (or user) it is about.
//!
//! Invariant: a write future resolves only once the write is durable (committed to disk); callers
//! acknowledge clients after that and never before.

pub(crate) mod codec;
mod error;
pub mod scylla;
pub mod sqlite;
mod types;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

pub use error::{StoreError, StoreErrorKind};
pub use types::{
    Append, AppendOutcome, Claim, CreateRoomOutcome, DeviceInfo, DeviceRecord, Effect, FanoutJob, HistoryPage,
    LateFanout, MediaRecord, NewMedia, NewRoom, NewUser, Positions, PushContext, PushFanout, PushJob, PushJobEnd,
    PushJobState, PushJobSummary, PushJobsListed, PushPreferences, ReceiptWrite, RecordedNotification, RefreshRotation,
    UserRecord,
};

use crate::domain::{
    Activity, ActivityStatus, Comment, CommentId, DeviceId, FollowCounts, FollowList, FollowState, LatestReactions,
    MediaId, NewActivity, NewNotification, Post, PostId, Profile, ProfileChange, PushRegistration, Reactions, RoomId,
    RoomState, RoomSummary, StreamEvent, UserId,
};

/// How many seqs share one partition of a room's log in partitioned backends.
pub const ENTRY_BUCKET_SIZE: u64 = 16_384;

pub type StoreResult<T> = Result<T, StoreError>;

/// Unread counts stop at this many: "999+" is all a badge needs, and counting stays cheap.
pub const UNREAD_COUNT_CAP: u32 = 1000;

/// Index rows a search reads per user it answers: one user can match one prefix by a few keys.
pub(crate) const SEARCH_ROWS_PER_USER: usize = 4;

/// The most a push badge shows.
pub(crate) const BADGE_CAP: u32 = 9_999;

/// A new stream epoch: clients' stored positions belong to one epoch (see `StreamStore`).
pub(crate) fn new_stream_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Accounts and devices.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Fails with `Conflict` when the username is taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<()>;
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// The subset of `users` that exist.
    async fn existing_users(&self, users: Vec<UserId>) -> StoreResult<Vec<UserId>>;
    async fn create_device(&self, device: DeviceRecord) -> StoreResult<()>;
    async fn device(&self, user: UserId, device: DeviceId) -> StoreResult<Option<DeviceRecord>>;
    /// Every device the user ever logged in with, revoked ones too, by id.
    async fn devices_of(&self, user: UserId) -> StoreResult<Vec<DeviceInfo>>;
    /// Replaces the refresh token hash if it still is `old_hash` and the device is live, keeping
    /// `old_hash` as the device's previous one. A device presenting its previous hash again is
    /// revoked in the same write (reuse detection: one of the two holders stole it).
    async fn rotate_refresh(
        &self,
        user: UserId,
        device: DeviceId,
        old_hash: Vec<u8>,
        new_hash: Vec<u8>,
        new_expires_at_ms: i64,
    ) -> StoreResult<RefreshRotation>;
    /// Revokes one device, or all of the user's, with their push tokens and queued pushes; returns
    /// the devices that were live.
    async fn revoke_devices(&self, user: UserId, only: Option<DeviceId>) -> StoreResult<Vec<DeviceId>>;
    async fn set_last_seen(&self, user: UserId, at_ms: i64) -> StoreResult<()>;
    async fn last_seen(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, i64)>>;
    /// Blocks (`at_ms` > 0, when) or unblocks (0) a user's account (the server API): a blocked
    /// user cannot log in, refresh or connect; their devices and data stay.
    async fn set_account_blocked(&self, user: UserId, at_ms: i64) -> StoreResult<()>;
    /// When the account was blocked, if it is.
    async fn account_blocked(&self, user: UserId) -> StoreResult<Option<i64>>;
}

/// Rooms, their members and their logs.
#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Creates a room with its first entry (seq 1, `Created`) in every member's stream. For a direct
    /// room that already exists between the two users, returns it instead.
    async fn create_room(&self, room: NewRoom) -> StoreResult<CreateRoomOutcome>;
    async fn load_room(&self, room: RoomId) -> StoreResult<Option<RoomState>>;
    /// Takes over writing to `room`: a fresh epoch, and the room's state as of the takeover. From
    /// then on an append carrying an older epoch is refused (`AppendOutcome::Fenced`), so a writer
    /// that lost the room (another node took it while views disagreed) cannot append any more.
    /// `None` when the room does not exist. A backend whose writes are steps (ScyllaDB) finishes
    /// what a stopped writer left half done before it returns, and says what it finished.
    async fn claim_room(&self, room: RoomId) -> StoreResult<Option<Claim>>;
    /// Starts appending one entry to a room's log: applies its effect and puts it in each
    /// recipient's stream, atomically. Does not wait: the submission is queued before this returns,
    /// so appends to one room submitted in seq order are applied in that order (and every recipient's
    /// stream sees them in seq order). Fails at once with `Busy` when the backend's queue is full.
    /// The returned future resolves once the append is durable.
    fn submit_append(&self, append: Append) -> StoreResult<BoxFuture<'static, StoreResult<AppendOutcome>>>;
    /// Advances a member's delivered or read marker; when it moved, puts the receipt in each
    /// recipient's stream and cancels the member's pending pushes for the room up to that seq.
    /// `None` when the marker was already there.
    async fn set_receipt(&self, receipt: ReceiptWrite) -> StoreResult<Option<Positions>>;
    async fn history(&self, room: RoomId, page: HistoryPage) -> StoreResult<(Vec<crate::domain::RoomEntry>, bool)>;
    /// The rooms `user` is a member of, with last entry and unread count.
    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomSummary>>;
    async fn room_summary(&self, room: RoomId, user: UserId) -> StoreResult<Option<RoomSummary>>;
    /// Everyone who shares at least one room with `user` (not `user`).
    async fn contacts_of(&self, user: UserId) -> StoreResult<Vec<UserId>>;
    /// Those of `users` who have sent `user` a message: in a room they share with `user`.
    async fn wrote_to(&self, user: UserId, users: Vec<UserId>) -> StoreResult<Vec<UserId>>;
    /// Rooms with acknowledged entries not yet in all their recipients' streams
    /// (`AppendOutcome::Logged`): a live writer is still fanning them out, or one stopped (a crash)
    /// and the room's next claim finishes them. A backend that always fans out before the
    /// acknowledgement (SQLite) has none.
    async fn rooms_behind(&self) -> StoreResult<Vec<RoomId>>;
}

/// The per-user durable event streams.
#[async_trait]
pub trait StreamStore: Send + Sync {
    /// Up to `limit` events with position > `after_pos`, in order.
    async fn events_after(&self, user: UserId, after_pos: u64, limit: usize) -> StoreResult<Vec<(u64, StreamEvent)>>;
    /// The newest position of the user's stream (0 when empty).
    async fn stream_head(&self, user: UserId) -> StoreResult<u64>;
    /// The epoch of the user's stream. Positions mean something only within one epoch; a new one
    /// starts when streams are started anew (a store restored from a backup, or moved to another
    /// backend: `rotate_stream_epochs`), so that a client resuming with positions of an earlier
    /// stream is told to start over instead of silently skipping what its positions now name.
    async fn stream_epoch(&self, user: UserId) -> StoreResult<String>;
    /// Starts a new epoch for every stream; returns it.
    async fn rotate_stream_epochs(&self) -> StoreResult<String>;
}

/// Push tokens, preferences and the durable push queue.
///
/// Jobs are queued by `RoomStore::submit_append` (atomically with their entry), one per device and
/// room, and live through: pending (a new entry for the same device and room merges into it) ->
/// claimed (leased to one sender; a lease that runs out makes it claimable again, so a crash loses
/// nothing) -> finished (deleted, or kept as failed).
#[async_trait]
pub trait PushPrefsStore: Send + Sync {
    /// Registers or replaces the device's token. A token another device of the same user had
    /// moves here; one another account holds is refused (`Conflict`), as is a logged-out device.
    async fn set_push_token(&self, registration: PushRegistration) -> StoreResult<()>;
    /// Forgets the device's token and its queued pushes.
    async fn clear_push_token(&self, user: UserId, device: DeviceId) -> StoreResult<()>;
    /// The device's registered token, if any.
    async fn push_token(&self, user: UserId, device: DeviceId) -> StoreResult<Option<PushRegistration>>;
    /// Mutes pushes for one room until `until_ms` (0 unmutes).
    async fn set_room_mute(&self, user: UserId, room: RoomId, until_ms: i64) -> StoreResult<()>;
    /// No pushes at all until `until_ms` (0 turns it off).
    async fn set_do_not_disturb(&self, user: UserId, until_ms: i64) -> StoreResult<()>;
    /// Pushes to the user show no sender, room or text.
    async fn set_hide_previews(&self, user: UserId, hide: bool) -> StoreResult<()>;
    /// The user's preferences as they bear on a push from `room`.
    async fn push_preferences(&self, user: UserId, room: RoomId) -> StoreResult<PushPreferences>;
}

/// The durable push queue.
#[async_trait]
pub trait PushQueueStore: Send + Sync {
    /// A device of `user` received its stream up to `pos`: cancels the pending pushes it covers,
    /// and notes the position (`PushContext::stream_delivered_up_to_pos`), so that a push queued
    /// after the ack for what it covers is not sent either: where an entry reaches streams before
    /// its pushes are queued (ScyllaDB), a device may read and acknowledge it in between.
    /// Returns how many pending pushes the user still has.
    async fn cancel_delivered_pushes(&self, user: UserId, up_to_pos: u64) -> StoreResult<u64>;
    /// Claims up to `limit` jobs due by `now_ms`, leased until `now_ms + lease_ms`, oldest due first.
    async fn claim_push_jobs(&self, now_ms: i64, lease_ms: i64, limit: usize) -> StoreResult<Vec<PushJob>>;
    /// When the next unclaimed or lease-expired job falls due, if any.
    async fn next_push_due(&self) -> StoreResult<Option<i64>>;
    async fn push_context(&self, job: PushJob) -> StoreResult<PushContext>;
    /// The contexts of a claimed batch, in its order: in one read where the backend can (one
    /// read transaction and one trip to a reader instead of one per job and query).
    async fn push_contexts(&self, jobs: Vec<PushJob>) -> Vec<StoreResult<PushContext>> {
        let mut contexts = Vec::with_capacity(jobs.len());
        for job in jobs {
            contexts.push(self.push_context(job).await);
        }
        contexts
    }
    async fn finish_push_job(&self, job: PushJob, end: PushJobEnd) -> StoreResult<()>;
    /// Several ends at once: one write where the backend can. Each is recorded or, on an error,
    /// left to its lease (the first error is returned).
    async fn finish_push_jobs(&self, ends: Vec<(PushJob, PushJobEnd)>) -> StoreResult<()> {
        let mut result = Ok(());
        for (job, end) in ends {
            if let Err(e) = self.finish_push_job(job, end).await {
                result = result.and(Err(e));
            }
        }
        result
    }
    /// Users with pending (unclaimed) pushes.
    async fn users_with_pending_pushes(&self) -> StoreResult<Vec<UserId>>;
    /// Deletes failed jobs that failed before `before_ms`; returns how many.
    async fn purge_failed_pushes(&self, before_ms: i64) -> StoreResult<u64>;
    /// Up to `limit` jobs, for an operator to look at.
    async fn list_push_jobs(&self, which: PushJobsListed, limit: usize) -> StoreResult<Vec<PushJobSummary>>;
    /// An operator's second chance for a failed job: due at `now_ms`, with its attempts counted
    /// from 0 again (it still is not sent if it is no longer needed). `false` when `user` has no
    /// such failed job.
    async fn retry_failed_push(&self, user: UserId, job: u64, now_ms: i64) -> StoreResult<bool>;
    /// Deletes a job, whatever its state (one being sent this moment may still arrive). `false`
    /// when `user` has no such job.
    async fn drop_push_job(&self, user: UserId, job: u64) -> StoreResult<bool>;
}

/// Stored images, content-addressed and cut in chunks.
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Stores an image under its id unless the same bytes are there already, and records
    /// `uploader` as one who uploaded it. The chunks are written before the image's record, so an
    /// image whose record exists is whole; a crash in between leaves chunks that no record names,
    /// which the next upload of the same bytes writes again.
    async fn put_media(&self, media: NewMedia) -> StoreResult<()>;
    async fn media(&self, id: MediaId) -> StoreResult<Option<MediaRecord>>;
    /// One chunk of a stored image (`None` past the last, or for an unknown image).
    async fn media_chunk(&self, id: MediaId, index: u32) -> StoreResult<Option<bytes::Bytes>>;
    /// Whether `user` uploaded the image.
    async fn uploaded_media(&self, id: MediaId, user: UserId) -> StoreResult<bool>;
    /// Whether `user` may see the image: it is public, or they uploaded it, or they are a member
    /// of a room whose messages show it (an append of a message with images records that with the
    /// message), or it is in a post they may see (by an author who is they, public, or followed
    /// by them).
    async fn may_see_media(&self, id: MediaId, user: UserId) -> StoreResult<bool>;
    /// Deletes up to `limit` images that no message or post shows, that are not public and that nobody
    /// uploaded since `uploaded_before_ms` (uploads never sent anywhere); returns how many.
    async fn collect_orphan_media(&self, uploaded_before_ms: i64, limit: usize) -> StoreResult<u64>;
    /// Makes a stored image readable by anyone (an avatar): for good, since whoever saw it may
    /// keep it. Idempotent.
    async fn publish_media(&self, id: MediaId) -> StoreResult<()>;
}

/// Profiles, and finding users by name.
///
/// A user is found by the keys `Profile::search_keys` gives (their username and each word on of
/// their display name), kept in an index that a change of name rewrites. A backend whose index
/// can lag the profile (ScyllaDB: no transaction spans both) checks what it finds against the
/// profile, so a search never answers a user under a name they no longer have.
#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Applies a checked change to the user's profile; `false` when the user does not exist.
    async fn change_profile(&self, user: UserId, change: ProfileChange) -> StoreResult<bool>;
    /// The profiles of those of `users` that exist, in no particular order (the defaults for a
    /// user who never set one).
    async fn profiles(&self, users: Vec<UserId>) -> StoreResult<Vec<Profile>>;
    /// Up to `limit` users with a search key that starts with `prefix` (a `search_key` of at least
    /// `SEARCH_MIN_CHARS` characters), in the order of their matching keys.
    async fn search_profiles(&self, prefix: String, limit: usize) -> StoreResult<Vec<Profile>>;
}

/// The follow graph and blocks.
///
/// Counts are exact: a follow's change and the counts it moves are one step (SQLite: one
/// transaction; ScyllaDB: conditional writes that change an edge and its partition's count together,
/// with the follower's side first and the followed's side mirroring it, resumed after a crash).
#[async_trait]
pub trait GraphStore: Send + Sync {
    /// `from`'s follow of `to`.
    async fn follow_state(&self, from: UserId, to: UserId) -> StoreResult<FollowState>;
    /// Those of `users` who follow `followee` (approved), in the order given.
    async fn followers_among(&self, followee: UserId, users: Vec<UserId>) -> StoreResult<Vec<UserId>>;
    /// Moves `from`'s follow of `to` to `state` if it is one of `when` now (any state when `when`
    /// is empty), with both users' counts; returns the state it had. Idempotent: a retry finds the
    /// change made and changes nothing.
    async fn set_follow(
        &self,
        from: UserId,
        to: UserId,
        state: FollowState,
        when: &[FollowState],
    ) -> StoreResult<FollowState>;
    /// The counts of each of `users`.
    async fn follow_counts(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, FollowCounts)>>;
    /// Up to `limit` users of `user`'s list, in the list's order, after `after` (from the start when
    /// `None`).
    async fn follow_list(
        &self,
        user: UserId,
        list: FollowList,
        after: Option<UserId>,
        limit: usize,
    ) -> StoreResult<Vec<UserId>>;
    /// `blocker` blocks (or, with `on` false, unblocks) `blocked`. Ending the follows between them
    /// is the caller's (`set_follow`).
    async fn set_block(&self, blocker: UserId, blocked: UserId, on: bool) -> StoreResult<()>;
    /// Those of `others` who blocked `user`.
    async fn blockers_of(&self, user: UserId, others: Vec<UserId>) -> StoreResult<Vec<UserId>>;
    /// Whether either of the two blocked the other.
    async fn blocked_between(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let (a_blocked, b_blocked) =
            futures_util::try_join!(self.blockers_of(b, vec![a]), self.blockers_of(a, vec![b]))?;
        Ok(!a_blocked.is_empty() || !b_blocked.is_empty())
    }
    /// Finishes up to `limit` follow changes that a stopped process left half made; returns how
    /// many it looked at. A backend that changes a follow in one transaction (SQLite) has none.
    async fn settle_follows(&self, limit: usize) -> StoreResult<u64>;
}

/// Photo posts.
#[async_trait]
pub trait PostStore: Send + Sync {
    /// Stores a post with its author's post count and its fan-out to do (`FeedStore`), and records
    /// its images as shown by its author (`may_see_media` then follows the post's visibility). A
    /// retry with the same
    /// `client_post_id` stores nothing more and returns the post made the first time.
    async fn create_post(&self, post: Post, client_post_id: String) -> StoreResult<Post>;
    async fn post(&self, id: PostId) -> StoreResult<Option<Post>>;
    /// Deletes a post with its count; `false` when there was none.
    async fn delete_post(&self, id: PostId) -> StoreResult<bool>;
    /// Up to `limit` of the author's posts, newest first, older than `before` (from the newest when
    /// `None`).
    async fn posts_of(&self, author: UserId, before: Option<PostId>, limit: usize) -> StoreResult<Vec<Post>>;
    /// How many posts each of `authors` has.
    async fn post_counts(&self, authors: Vec<UserId>) -> StoreResult<Vec<(UserId, u64)>>;
}

/// Home feeds, and the durable jobs that fill them (a post's fan-out to its author's followers).
#[async_trait]
pub trait FeedStore: Send + Sync {
    /// The post's fan-out, unless finished (or never started).
    async fn fanout_job(&self, post: PostId) -> StoreResult<Option<FanoutJob>>;
    /// Up to `limit` fan-outs not finished, with how far each got.
    async fn pending_fanouts(&self, limit: usize) -> StoreResult<Vec<FanoutJob>>;
    /// Puts the job's post into these followers' home feeds (each once, however often redone;
    /// unless `into_feeds` is false: a wide author's) and a post event into the streams of those of
    /// them in `live` (each once, however often redone), then moves the job past the last of
    /// them. Returns the events' positions.
    async fn fan_out_page(
        &self,
        job: FanoutJob,
        followers: &[UserId],
        into_feeds: bool,
        live: &[UserId],
    ) -> StoreResult<Positions>;
    async fn finish_fanout(&self, post: PostId) -> StoreResult<()>;
    /// Up to `limit` of the posts in the user's home feed older than `before`, newest first, with
    /// their authors.
    async fn home_feed(&self, user: UserId, before: Option<PostId>, limit: usize)
    -> StoreResult<Vec<(PostId, UserId)>>;
    /// Marks an author whose posts are merged into feeds when they are read, not written to each
    /// (more followers than fan-out on write serves). For good: their older posts are in no feed.
    async fn add_wide_author(&self, author: UserId) -> StoreResult<()>;
    async fn wide_authors(&self) -> StoreResult<Vec<UserId>>;
}

/// Likes and comments on posts, with exact counts.
#[async_trait]
pub trait ReactionStore: Send + Sync {
    /// Likes (or unlikes) a post with its count; whether that changed anything (a retry does not).
    async fn set_like(&self, post: PostId, user: UserId, on: bool) -> StoreResult<bool>;
    async fn liked(&self, post: PostId, user: UserId) -> StoreResult<bool>;
    /// Up to `limit` of the post's likers after `after`, in id order.
    async fn likers(&self, post: PostId, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>>;
    /// Stores a comment with its post's count; a retry with the same `client_comment_id` (of the
    /// same author on the same post) stores nothing more and returns the comment made the first time.
    async fn add_comment(&self, comment: Comment, client_comment_id: String) -> StoreResult<Comment>;
    async fn comment(&self, post: PostId, id: CommentId) -> StoreResult<Option<Comment>>;
    /// Deletes a comment with its count; `false` when there was none.
    async fn delete_comment(&self, post: PostId, id: CommentId) -> StoreResult<bool>;
    /// Up to `limit` of the post's comments after `after`, oldest first.
    async fn comments(&self, post: PostId, after: Option<CommentId>, limit: usize) -> StoreResult<Vec<Comment>>;
    async fn reactions(&self, posts: Vec<PostId>) -> StoreResult<Vec<(PostId, Reactions)>>;
    /// Who liked the post last (up to `LATEST_LIKERS`, newest first, each once, only those who
    /// still like it), and its newest comment.
    async fn latest_reactions(&self, post: PostId) -> StoreResult<LatestReactions>;
}

/// Notifications from the app's backend, as events in their recipients' streams.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Puts the notification into its recipient's stream, once per recipient and `dedup_key`: with
    /// the key of one recorded before, it records nothing and answers that one (`fresh` false).
    /// With `push`, the recipient's devices get a push (merged into their pending notification
    /// push: one per burst) unless a device acknowledges the stream past it first.
    async fn record_notification(
        &self,
        notification: NewNotification,
        push: Option<PushFanout>,
    ) -> StoreResult<RecordedNotification>;
}

/// Activity: what others did that concerns a user, as events in that user's stream.
#[async_trait]
pub trait ActivityStore: Send + Sync {
    /// Puts the activity into its recipient's stream, in its group (`ActivityGroup`), once: an
    /// activity with the `dedup_key` of one recorded before records nothing and returns `None`.
    /// With `push`, the recipient's devices get a push (merged into their pending activity push:
    /// one per burst) saying what happened (`describe`), with the activity.
    async fn record_activity(
        &self,
        activity: NewActivity,
        push: Option<PushFanout>,
    ) -> StoreResult<Option<(u64, Activity)>>;
    /// The user has seen their activity up to stream position `up_to_pos` (never moves back).
    async fn set_activity_seen(&self, user: UserId, up_to_pos: u64) -> StoreResult<ActivityStatus>;
    async fn activity_status(&self, user: UserId) -> StoreResult<ActivityStatus>;
}

/// Everything the server needs from a backend.
#[async_trait]
pub trait Store:
    AccountStore
    + RoomStore
    + StreamStore
    + PushPrefsStore
    + PushQueueStore
    + MediaStore
    + ProfileStore
    + GraphStore
    + PostStore
    + FeedStore
    + ReactionStore
    + ActivityStore
    + NotificationStore
{
    /// Whether the backend can serve requests now (for `/readyz`).
    async fn ready(&self) -> bool;
    /// Finishes queued writes and releases the backend. Later calls fail with `Unavailable`.
    async fn close(&self);
}

//! Home feeds on ScyllaDB: each user's feed in its own partition, newest post first; the fan-out
//! jobs in one small partition (a job lives only while its post is being fanned out); the wide
//! authors in another. A page's feed rows are written before the job moves past them, and a row
//! written twice is the same row: a job redone after a crash writes each entry once.

use async_trait::async_trait;
use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::streams::StoredEvent;
use super::{ScyllaOptions, ScyllaStore, id, prepare};
use crate::domain::{EventRef, PostId, UserId};
use crate::store::{FanoutJob, FeedStore, Positions, StoreError, StoreResult};

/// Feed rows written at once by one page of a fan-out.
const WRITES_AT_ONCE: usize = 128;

type JobRow = (i64, i64, Option<i64>, Option<i64>);

fn job_of((post, author, after, started_at_ms): JobRow) -> FanoutJob {
    FanoutJob {
        post: PostId(post as u64),
        author: UserId(author as u64),
        after: after.filter(|&a| a > 0).map(|a| UserId(a as u64)),
        started_at_ms: started_at_ms.unwrap_or(0),
    }
}

impl ScyllaStore {
    /// A new post's fan-out (before the post: a post is never without its fan-out). Not
    /// overwritten by a second start, which would move the job back to its beginning.
    pub(super) async fn start_fanout(&self, post: PostId, author: UserId, at_ms: i64) -> StoreResult<()> {
        self.execute(&self.feeds.start, (id(post.0), id(author.0), at_ms)).await?;
        Ok(())
    }
}

pub(super) struct Statements {
    start: PreparedStatement,
    job: PreparedStatement,
    pending: PreparedStatement,
    advance: PreparedStatement,
    finish: PreparedStatement,
    insert_entry: PreparedStatement,
    page: PreparedStatement,
    add_wide: PreparedStatement,
    wide: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        Ok(Self {
            start: p(
                "INSERT INTO {ks}.fanout_jobs (shard, post_id, author, after, started_at_ms) VALUES (0, ?, ?, 0, ?)
                IF NOT EXISTS",
            )
            .await?,
            job: p(
                "SELECT post_id, author, after, started_at_ms FROM {ks}.fanout_jobs WHERE shard = 0 AND post_id = ?",
            )
            .await?,
            pending: p("SELECT post_id, author, after, started_at_ms FROM {ks}.fanout_jobs WHERE shard = 0 LIMIT ?")
                .await?,
            advance: p("UPDATE {ks}.fanout_jobs SET after = ? WHERE shard = 0 AND post_id = ?").await?,
            finish: p("DELETE FROM {ks}.fanout_jobs WHERE shard = 0 AND post_id = ?").await?,
            insert_entry: p("INSERT INTO {ks}.home_feeds (user_id, post_id, author) VALUES (?, ?, ?)").await?,
            page: p("SELECT post_id, author FROM {ks}.home_feeds WHERE user_id = ? AND post_id < ? LIMIT ?").await?,
            add_wide: p("INSERT INTO {ks}.wide_authors (shard, author) VALUES (0, ?)").await?,
            wide: p("SELECT author FROM {ks}.wide_authors WHERE shard = 0").await?,
        })
    }
}

#[async_trait]
impl FeedStore for ScyllaStore {
    async fn fanout_job(&self, post: PostId) -> StoreResult<Option<FanoutJob>> {
        self.check_open()?;
        let rows = self.rows::<JobRow>(&self.feeds.job, (id(post.0),)).await?;
        Ok(rows.into_iter().next().map(job_of))
    }

    async fn pending_fanouts(&self, limit: usize) -> StoreResult<Vec<FanoutJob>> {
        self.check_open()?;
        let rows = self.rows::<JobRow>(&self.feeds.pending, (limit as i32,)).await?;
        Ok(rows.into_iter().map(job_of).collect())
    }

    async fn fan_out_page(
        &self,
        job: FanoutJob,
        followers: &[UserId],
        into_feeds: bool,
        live: &[UserId],
    ) -> StoreResult<Positions> {
        self.check_open()?;
        let f = &self.feeds;
        let (post, author) = (id(job.post.0), id(job.author.0));
        let entries: Vec<i64> = if into_feeds { followers.iter().map(|u| id(u.0)).collect() } else { Vec::new() };
        for chunk in entries.chunks(WRITES_AT_ONCE) {
            try_join_all(chunk.iter().map(|&user| self.execute(&f.insert_entry, (user, post, author)))).await?;
        }
        // Redone after a crash, a stream write finds the event there (`redo`): each once.
        let event = StoredEvent { event: EventRef::post(job.author, job.post), ref_epoch: 0 };
        let positions = if live.is_empty() { Vec::new() } else { self.write_events(live, event, true).await? };
        if let Some(last) = followers.last() {
            self.execute(&f.advance, (id(last.0), post)).await?;
        }
        Ok(positions)
    }

    async fn finish_fanout(&self, post: PostId) -> StoreResult<()> {
        self.check_open()?;
        self.execute(&self.feeds.finish, (id(post.0),)).await?;
        Ok(())
    }

    async fn home_feed(
        &self,
        user: UserId,
        before: Option<PostId>,
        limit: usize,
    ) -> StoreResult<Vec<(PostId, UserId)>> {
        self.check_open()?;
        let before = before.map_or(i64::MAX, |p| id(p.0));
        let rows = self.rows::<(i64, i64)>(&self.feeds.page, (id(user.0), before, limit as i32)).await?;
        Ok(rows.into_iter().map(|(p, a)| (PostId(p as u64), UserId(a as u64))).collect())
    }

    async fn add_wide_author(&self, author: UserId) -> StoreResult<()> {
        self.check_open()?;
        self.execute(&self.feeds.add_wide, (id(author.0),)).await?;
        Ok(())
    }

    async fn wide_authors(&self) -> StoreResult<Vec<UserId>> {
        self.check_open()?;
        let rows = self.rows::<(i64,)>(&self.feeds.wide, ()).await?;
        Ok(rows.into_iter().map(|(a,)| UserId(a as u64)).collect())
    }
}

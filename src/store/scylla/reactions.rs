//! Likes and comments on ScyllaDB: each in its post's partition with a count row (key 0), a like
//! or comment and the count changed together by one conditional batch, so counts are exact
//! whatever is retried; a client's id for a comment is claimed by a lightweight transaction, as a
//! post's is.

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare, unavailable};
use crate::domain::{Comment, CommentId, LATEST_LIKERS, LatestReactions, PostId, Reactions, UserId, now_ms};
use crate::store::{ReactionStore, StoreError, StoreResult};

/// Conditional writes tried before a change gives up.
const TRIES: usize = 32;

/// A table of rows counted by a row of key 0 in each partition.
struct Counted {
    read_count: PreparedStatement,
    init_count: PreparedStatement,
    set_count: PreparedStatement,
    counts: PreparedStatement,
}

impl Counted {
    async fn prepare(session: &Session, options: &ScyllaOptions, table: &str, key: &str) -> Result<Self, StoreError> {
        let p = |cql: &'static str| {
            let cql = cql.replace("{t}", table).replace("{k}", key);
            async move { prepare(session, options, &cql).await }
        };
        let mut read_count = p("SELECT count FROM {ks}.{t} WHERE post_id = ? AND {k} = 0").await?;
        read_count.set_consistency(Consistency::Serial);
        Ok(Self {
            read_count,
            init_count: p("INSERT INTO {ks}.{t} (post_id, {k}, count) VALUES (?, 0, 0) IF NOT EXISTS").await?,
            set_count: p("UPDATE {ks}.{t} SET count = ? WHERE post_id = ? AND {k} = 0 IF count = ?").await?,
            counts: p("SELECT count FROM {ks}.{t} WHERE post_id = ? AND {k} = 0").await?,
        })
    }
}

pub(super) struct Statements {
    like_count: Counted,
    comment_count: Counted,
    insert_like: PreparedStatement,
    delete_like: PreparedStatement,
    read_like: PreparedStatement,
    peek_like: PreparedStatement,
    likers: PreparedStatement,
    claim_client_id: PreparedStatement,
    client_id_owner: PreparedStatement,
    insert_comment: PreparedStatement,
    delete_comment: PreparedStatement,
    read_comment: PreparedStatement,
    comments: PreparedStatement,
    note_like: PreparedStatement,
    recent_likes: PreparedStatement,
    newest_comment: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        let mut client_id_owner = p("SELECT comment_id FROM {ks}.client_comments
            WHERE post_id = ? AND author = ? AND client_comment_id = ?")
        .await?;
        client_id_owner.set_consistency(Consistency::Serial);
        let mut read_like = p("SELECT user_id FROM {ks}.post_likes WHERE post_id = ? AND user_id = ?").await?;
        read_like.set_consistency(Consistency::Serial);
        let peek_like = p("SELECT user_id FROM {ks}.post_likes WHERE post_id = ? AND user_id = ?").await?;
        let mut read_comment = p("SELECT comment_id, author, text, created_at_ms FROM {ks}.post_comments
            WHERE post_id = ? AND comment_id = ?")
        .await?;
        read_comment.set_consistency(Consistency::Serial);
        Ok(Self {
            like_count: Counted::prepare(session, options, "post_likes", "user_id").await?,
            comment_count: Counted::prepare(session, options, "post_comments", "comment_id").await?,
            insert_like: p("INSERT INTO {ks}.post_likes (post_id, user_id) VALUES (?, ?) IF NOT EXISTS").await?,
            delete_like: p("DELETE FROM {ks}.post_likes WHERE post_id = ? AND user_id = ? IF EXISTS").await?,
            read_like,
            peek_like,
            likers: p("SELECT user_id FROM {ks}.post_likes WHERE post_id = ? AND user_id > ? LIMIT ?").await?,
            claim_client_id: p("INSERT INTO {ks}.client_comments (post_id, author, client_comment_id, comment_id)
                VALUES (?, ?, ?, ?) IF NOT EXISTS")
            .await?,
            client_id_owner,
            insert_comment: p("INSERT INTO {ks}.post_comments (post_id, comment_id, author, text, created_at_ms)
                VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")
            .await?,
            delete_comment: p("DELETE FROM {ks}.post_comments WHERE post_id = ? AND comment_id = ? IF EXISTS").await?,
            read_comment,
            comments: p("SELECT comment_id, author, text, created_at_ms FROM {ks}.post_comments
                WHERE post_id = ? AND comment_id > ? LIMIT ?")
            .await?,
            note_like: p("INSERT INTO {ks}.post_recent_likes (post_id, liked_at_ms, user_id) VALUES (?, ?, ?)").await?,
            recent_likes: p("SELECT user_id FROM {ks}.post_recent_likes WHERE post_id = ? LIMIT ?").await?,
            newest_comment: p("SELECT comment_id, author, text, created_at_ms FROM {ks}.post_comments
                WHERE post_id = ? AND comment_id > 0 ORDER BY comment_id DESC LIMIT 1")
            .await?,
        })
    }
}

/// How a counted row should end up: what a refused change checks to tell done from contended.
#[derive(Clone, Copy)]
enum Wanted {
    Liked(UserId, bool),
    Comment(CommentId, bool),
}

type CommentRow = (i64, Option<i64>, Option<String>, Option<i64>);

fn comment_of(post: PostId, (id, author, text, at): CommentRow) -> Comment {
    Comment {
        id: CommentId(id as u64),
        post,
        author: UserId(author.unwrap_or(0) as u64),
        text: text.unwrap_or_default(),
        created_at_ms: at.unwrap_or(0),
    }
}

impl ScyllaStore {
    async fn count_of(&self, counted: &Counted, post: PostId) -> StoreResult<i64> {
        let key = (id(post.0),);
        if let Some(&(count,)) = self.rows::<(Option<i64>,)>(&counted.read_count, key).await?.first() {
            return Ok(count.unwrap_or(0));
        }
        self.execute(&counted.init_count, key).await?;
        Ok(self.rows::<(Option<i64>,)>(&counted.read_count, key).await?.first().and_then(|(c,)| *c).unwrap_or(0))
    }

    /// Applies `change` (an insert `IF NOT EXISTS` or a delete `IF EXISTS` of one row of the post's
    /// partition) and moves the count by `delta` with it, in one conditional batch; whether it was
    /// applied (`false`: the row already was as `wanted` says).
    async fn counted_change(
        &self,
        counted: &Counted,
        post: PostId,
        delta: i64,
        change: &PreparedStatement,
        values: impl SerializeRow + Clone + Send + Sync,
        wanted: Wanted,
    ) -> StoreResult<bool> {
        for _ in 0..TRIES {
            let count = self.count_of(counted, post).await?;
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(self.options.consistency);
            batch.set_serial_consistency(Some(scylla::statement::SerialConsistency::Serial));
            batch.append_statement(counted.set_count.clone());
            batch.append_statement(change.clone());
            let result = self.session.batch(&batch, ((count + delta, id(post.0), count), values.clone())).await;
            if lwt(result.map_err(unavailable)?)?.applied {
                return Ok(true);
            }
            let done = match wanted {
                Wanted::Liked(user, on) => {
                    let rows = self.rows::<(i64,)>(&self.reactions.read_like, (id(post.0), id(user.0))).await?;
                    rows.is_empty() != on
                }
                Wanted::Comment(comment, present) => self.comment(post, comment).await?.is_some() == present,
            };
            if done {
                return Ok(false);
            }
        }
        Err(StoreError::unavailable("the post's reactions kept changing; try again"))
    }
}

#[async_trait]
impl ReactionStore for ScyllaStore {
    async fn set_like(&self, post: PostId, user: UserId, on: bool) -> StoreResult<bool> {
        self.check_open()?;
        let r = &self.reactions;
        let (change, delta) = if on { (&r.insert_like, 1) } else { (&r.delete_like, -1) };
        let values = (id(post.0), id(user.0));
        let changed = self.counted_change(&r.like_count, post, delta, change, values, Wanted::Liked(user, on)).await?;
        if on {
            // Also when unchanged (a retry after a crash between the two writes); a liker noted
            // twice is named once, and one who unliked since is not named (`latest_reactions`).
            self.execute(&r.note_like, (id(post.0), now_ms(), id(user.0))).await?;
        }
        Ok(changed)
    }

    async fn liked(&self, post: PostId, user: UserId) -> StoreResult<bool> {
        self.check_open()?;
        // Not serial: a read decides nothing here (the refused-change check reads serially).
        Ok(!self.rows::<(i64,)>(&self.reactions.peek_like, (id(post.0), id(user.0))).await?.is_empty())
    }

    async fn likers(&self, post: PostId, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>> {
        self.check_open()?;
        let values = (id(post.0), after.map_or(0, |u| id(u.0)), limit as i32);
        let rows = self.rows::<(i64,)>(&self.reactions.likers, values).await?;
        Ok(rows.into_iter().map(|(u,)| UserId(u as u64)).collect())
    }

    async fn add_comment(&self, comment: Comment, client_comment_id: String) -> StoreResult<Comment> {
        self.check_open()?;
        let r = &self.reactions;
        let (post, author) = (id(comment.post.0), id(comment.author.0));
        let claim = self.execute(&r.claim_client_id, (post, author, &client_comment_id, id(comment.id.0))).await?;
        let comment = if lwt(claim)?.applied {
            comment
        } else {
            let owner = self.rows::<(i64,)>(&r.client_id_owner, (post, author, &client_comment_id)).await?;
            let Some(&(first,)) = owner.first() else {
                return Err(StoreError::unavailable("the comment's client id changed hands; try again"));
            };
            if let Some(made) = self.comment(comment.post, CommentId(first as u64)).await? {
                return Ok(made);
            }
            Comment { id: CommentId(first as u64), ..comment }
        };
        let values = (post, id(comment.id.0), author, comment.text.clone(), comment.created_at_ms);
        self.counted_change(
            &r.comment_count,
            comment.post,
            1,
            &r.insert_comment,
            values,
            Wanted::Comment(comment.id, true),
        )
        .await?;
        Ok(comment)
    }

    async fn comment(&self, post: PostId, comment: CommentId) -> StoreResult<Option<Comment>> {
        self.check_open()?;
        let rows = self.rows::<CommentRow>(&self.reactions.read_comment, (id(post.0), id(comment.0))).await?;
        Ok(rows.into_iter().next().map(|row| comment_of(post, row)))
    }

    async fn delete_comment(&self, post: PostId, comment: CommentId) -> StoreResult<bool> {
        self.check_open()?;
        let r = &self.reactions;
        let values = (id(post.0), id(comment.0));
        self.counted_change(&r.comment_count, post, -1, &r.delete_comment, values, Wanted::Comment(comment, false))
            .await
    }

    async fn comments(&self, post: PostId, after: Option<CommentId>, limit: usize) -> StoreResult<Vec<Comment>> {
        self.check_open()?;
        let values = (id(post.0), after.map_or(0, |c| id(c.0)), limit as i32);
        let rows = self.rows::<CommentRow>(&self.reactions.comments, values).await?;
        Ok(rows.into_iter().map(|row| comment_of(post, row)).collect())
    }

    async fn latest_reactions(&self, post: PostId) -> StoreResult<LatestReactions> {
        self.check_open()?;
        let r = &self.reactions;
        // Newest first; enough rows that likers noted twice or gone since still leave a few.
        let noted = self.rows::<(i64,)>(&r.recent_likes, (id(post.0), (LATEST_LIKERS * 8) as i32)).await?;
        let mut likers: Vec<UserId> = Vec::new();
        for (user,) in noted {
            let user = UserId(user as u64);
            if likers.len() == LATEST_LIKERS || likers.contains(&user) {
                continue;
            }
            if self.liked(post, user).await? {
                likers.push(user);
            }
        }
        let comment = self.rows::<CommentRow>(&r.newest_comment, (id(post.0),)).await?;
        Ok(LatestReactions { likers, comment: comment.into_iter().next().map(|row| comment_of(post, row)) })
    }

    async fn reactions(&self, posts: Vec<PostId>) -> StoreResult<Vec<(PostId, Reactions)>> {
        self.check_open()?;
        let r = &self.reactions;
        futures_util::future::try_join_all(posts.into_iter().map(|post| async move {
            let (likes, comments) = futures_util::try_join!(
                self.rows::<(Option<i64>,)>(&r.like_count.counts, (id(post.0),)),
                self.rows::<(Option<i64>,)>(&r.comment_count.counts, (id(post.0),)),
            )?;
            let n = |rows: Vec<(Option<i64>,)>| rows.first().and_then(|(c,)| *c).unwrap_or(0).max(0) as u64;
            Ok::<_, StoreError>((post, Reactions { likes: n(likes), comments: n(comments) }))
        }))
        .await
    }
}

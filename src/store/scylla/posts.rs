//! Posts on ScyllaDB: an author's posts in the author's partition, newest first, with a count row
//! (post_id 0) changed together with each post by one conditional batch on that partition, so the
//! count is exact whatever is retried. A post id leads to its author through `posts`; a client's
//! id for a post (`client_posts`, claimed by a lightweight transaction) makes a retried creation
//! find the post, or finish making it.

use async_trait::async_trait;
use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{ScyllaOptions, ScyllaStore, id, lwt, prepare, unavailable};
use crate::domain::{Location, MediaId, Post, PostId, UserId, media_from_bytes, media_to_bytes};
use crate::store::{PostStore, StoreError, StoreErrorKind, StoreResult};

/// Conditional writes tried before a change gives up.
const TRIES: usize = 32;

pub(super) struct Statements {
    claim_client_id: PreparedStatement,
    client_id_owner: PreparedStatement,
    unclaim_client_id: PreparedStatement,
    insert_lookup: PreparedStatement,
    lookup: PreparedStatement,
    insert_post: PreparedStatement,
    delete_post: PreparedStatement,
    read_post: PreparedStatement,
    read_count: PreparedStatement,
    counts: PreparedStatement,
    init_count: PreparedStatement,
    set_count: PreparedStatement,
    page: PreparedStatement,
    pub(super) link_media: PreparedStatement,
    pub(super) media_authors: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        let mut read_count = p("SELECT count FROM {ks}.author_posts WHERE author = ? AND post_id = 0").await?;
        read_count.set_consistency(Consistency::Serial);
        let mut client_id_owner =
            p("SELECT post_id FROM {ks}.client_posts WHERE author = ? AND client_post_id = ?").await?;
        client_id_owner.set_consistency(Consistency::Serial);
        Ok(Self {
            claim_client_id: p("INSERT INTO {ks}.client_posts (author, client_post_id, post_id) VALUES (?, ?, ?)
                IF NOT EXISTS")
            .await?,
            client_id_owner,
            unclaim_client_id: p("DELETE FROM {ks}.client_posts WHERE author = ? AND client_post_id = ?").await?,
            insert_lookup: p("INSERT INTO {ks}.posts (post_id, author) VALUES (?, ?)").await?,
            lookup: p("SELECT author FROM {ks}.posts WHERE post_id = ?").await?,
            insert_post: p("INSERT INTO {ks}.author_posts (author, post_id, client_post_id, media, caption, lat, lng,
                created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
            .await?,
            delete_post: p("DELETE FROM {ks}.author_posts WHERE author = ? AND post_id = ? IF EXISTS").await?,
            read_post: p(
                "SELECT post_id, client_post_id, media, caption, lat, lng, created_at_ms FROM {ks}.author_posts
                WHERE author = ? AND post_id = ?",
            )
            .await?,
            read_count,
            counts: p("SELECT count FROM {ks}.author_posts WHERE author = ? AND post_id = 0").await?,
            init_count: p("INSERT INTO {ks}.author_posts (author, post_id, count) VALUES (?, 0, 0) IF NOT EXISTS")
                .await?,
            set_count: p("UPDATE {ks}.author_posts SET count = ? WHERE author = ? AND post_id = 0 IF count = ?")
                .await?,
            page: p("SELECT post_id, client_post_id, media, caption, lat, lng, created_at_ms FROM {ks}.author_posts
                WHERE author = ? AND post_id < ? AND post_id > 0 LIMIT ?")
            .await?,
            link_media: p("INSERT INTO {ks}.media_authors (media_id, author) VALUES (?, ?)").await?,
            media_authors: p("SELECT author FROM {ks}.media_authors WHERE media_id = ? LIMIT ?").await?,
        })
    }
}

type PostRow = (i64, Option<String>, Option<Vec<u8>>, Option<String>, Option<f64>, Option<f64>, Option<i64>);

fn post_of(author: UserId, row: PostRow) -> StoreResult<(Post, String)> {
    let (post_id, client_id, media, caption, lat, lng, created_at_ms) = row;
    let media = media_from_bytes(&media.unwrap_or_default())
        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, format!("post {post_id} has a bad media list")))?;
    let post = Post {
        id: PostId(post_id as u64),
        author,
        media,
        caption: caption.unwrap_or_default(),
        location: lat.zip(lng).map(|(lat, lng)| Location { lat, lng }),
        created_at_ms: created_at_ms.unwrap_or(0),
    };
    Ok((post, client_id.unwrap_or_default()))
}

impl ScyllaStore {
    async fn post_count(&self, author: UserId) -> StoreResult<i64> {
        let s = &self.posts;
        if let Some(&(count,)) = self.rows::<(Option<i64>,)>(&s.read_count, (id(author.0),)).await?.first() {
            return Ok(count.unwrap_or(0));
        }
        self.execute(&s.init_count, (id(author.0),)).await?;
        Ok(self.rows::<(Option<i64>,)>(&s.read_count, (id(author.0),)).await?.first().and_then(|(c,)| *c).unwrap_or(0))
    }

    async fn stored_post(&self, author: UserId, post: PostId) -> StoreResult<Option<(Post, String)>> {
        let rows = self.rows::<PostRow>(&self.posts.read_post, (id(author.0), id(post.0))).await?;
        rows.into_iter().next().map(|row| post_of(author, row)).transpose()
    }

    /// Adds (`+1`, with `insert`) or removes (`-1`) a post row and moves the count with it, in one
    /// conditional batch; `false` when the row was already so.
    async fn change_post(
        &self,
        author: UserId,
        delta: i64,
        insert: Option<(&Post, &str)>,
        post: PostId,
    ) -> StoreResult<bool> {
        let s = &self.posts;
        for _ in 0..TRIES {
            let count = self.post_count(author).await?;
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(self.options.consistency);
            batch.set_serial_consistency(Some(scylla::statement::SerialConsistency::Serial));
            batch.append_statement(s.set_count.clone());
            let count_values = (count + delta, id(author.0), count);
            let result = match insert {
                Some((new, client_id)) => {
                    batch.append_statement(s.insert_post.clone());
                    let row = (
                        id(author.0),
                        id(post.0),
                        client_id,
                        media_to_bytes(&new.media),
                        &new.caption,
                        new.location.map(|l| l.lat),
                        new.location.map(|l| l.lng),
                        new.created_at_ms,
                    );
                    self.session.batch(&batch, (count_values, row)).await
                }
                None => {
                    batch.append_statement(s.delete_post.clone());
                    self.session.batch(&batch, (count_values, (id(author.0), id(post.0)))).await
                }
            };
            let outcome = lwt(result.map_err(unavailable)?)?;
            if outcome.applied {
                return Ok(true);
            }
            // Refused: the count moved (try again), or the row already is as wanted (done).
            let present = self.stored_post(author, post).await?.is_some();
            if present == insert.is_some() {
                return Ok(false);
            }
        }
        Err(StoreError::unavailable("the author's posts kept changing; try again"))
    }

    /// The authors of posts that show the image (a few are enough to decide who may see it).
    pub(super) async fn media_authors(&self, media: MediaId) -> StoreResult<Vec<UserId>> {
        let rows = self.rows::<(i64,)>(&self.posts.media_authors, (&media.0[..], 16i32)).await?;
        Ok(rows.into_iter().map(|(a,)| UserId(a as u64)).collect())
    }
}

#[async_trait]
impl PostStore for ScyllaStore {
    async fn create_post(&self, post: Post, client_post_id: String) -> StoreResult<Post> {
        self.check_open()?;
        let s = &self.posts;
        let author = post.author;
        let claimed = self.execute(&s.claim_client_id, (id(author.0), &client_post_id, id(post.id.0))).await?;
        let post = if lwt(claimed)?.applied {
            post
        } else {
            // A retry: the post of the first try, made already or to finish now.
            let owner = self.rows::<(i64,)>(&s.client_id_owner, (id(author.0), &client_post_id)).await?;
            let Some(&(first,)) = owner.first() else {
                return Err(StoreError::unavailable("the post's client id changed hands; try again"));
            };
            if let Some((made, _)) = self.stored_post(author, PostId(first as u64)).await? {
                return Ok(made);
            }
            Post { id: PostId(first as u64), ..post }
        };
        self.execute(&s.insert_lookup, (id(post.id.0), id(author.0))).await?;
        if self.stored_post(author, post.id).await?.is_none() {
            self.start_fanout(post.id, author, post.created_at_ms).await?;
        }
        try_join_all(post.media.iter().map(|m| self.execute(&s.link_media, (&m.0[..], id(author.0))))).await?;
        self.change_post(author, 1, Some((&post, &client_post_id)), post.id).await?;
        Ok(post)
    }

    async fn post(&self, post: PostId) -> StoreResult<Option<Post>> {
        self.check_open()?;
        let Some(&(author,)) = self.rows::<(i64,)>(&self.posts.lookup, (id(post.0),)).await?.first() else {
            return Ok(None);
        };
        Ok(self.stored_post(UserId(author as u64), post).await?.map(|(p, _)| p))
    }

    async fn delete_post(&self, post: PostId) -> StoreResult<bool> {
        self.check_open()?;
        let Some(&(author,)) = self.rows::<(i64,)>(&self.posts.lookup, (id(post.0),)).await?.first() else {
            return Ok(false);
        };
        let author = UserId(author as u64);
        let Some((_, client_id)) = self.stored_post(author, post).await? else { return Ok(false) };
        let deleted = self.change_post(author, -1, None, post).await?;
        // After the post: a retry of its creation would otherwise make it again.
        self.execute(&self.posts.unclaim_client_id, (id(author.0), &client_id)).await?;
        Ok(deleted)
    }

    async fn posts_of(&self, author: UserId, before: Option<PostId>, limit: usize) -> StoreResult<Vec<Post>> {
        self.check_open()?;
        let before = before.map_or(i64::MAX, |p| id(p.0));
        let rows = self.rows::<PostRow>(&self.posts.page, (id(author.0), before, limit as i32)).await?;
        rows.into_iter().map(|row| post_of(author, row).map(|(p, _)| p)).collect()
    }

    async fn post_counts(&self, authors: Vec<UserId>) -> StoreResult<Vec<(UserId, u64)>> {
        self.check_open()?;
        try_join_all(authors.into_iter().map(|author| async move {
            let rows = self.rows::<(Option<i64>,)>(&self.posts.counts, (id(author.0),)).await?;
            Ok::<_, StoreError>((author, rows.first().and_then(|(c,)| *c).unwrap_or(0).max(0) as u64))
        }))
        .await
    }
}

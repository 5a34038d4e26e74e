//! Stored images on ScyllaDB: a record per image, its chunks in the image's own partition (so an
//! image of 20 MiB is a partition of about 80 rows of 256 KiB), and who uploaded it.

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{ScyllaOptions, ScyllaStore, corrupt, id, prepare};
use crate::domain::{ImageFormat, MediaId, MediaInfo, UserId};
use crate::store::{
    GraphStore, MediaRecord, MediaStore, NewMedia, ProfileStore, StoreError, StoreErrorKind, StoreResult,
};

const HOUR_MS: i64 = 3_600_000;

/// Chunks written at once by one upload.
const CHUNKS_AT_ONCE: usize = 8;
/// Rooms showing an image that a reader's membership is checked in (an image forwarded into more
/// rooms than this is readable through its first ones).
const ROOMS_LOOKED_AT: usize = 256;

impl ScyllaStore {
    /// A message of `room` shows these images: recorded before the message is written.
    pub(super) async fn link_media(&self, room: crate::domain::RoomId, media: &[MediaId]) -> StoreResult<()> {
        let links = media.iter().map(|m| self.execute(&self.media.insert_ref, (&m.0[..], id(room.0))));
        futures_util::future::try_join_all(links).await?;
        Ok(())
    }

    /// The image's record as written at upload (not whether it is public).
    async fn media_record(&self, media: MediaId) -> StoreResult<Option<MediaRecord>> {
        let rows = self.rows::<(i32, i32, i32, i64, i32, i32, i64)>(&self.media.record, (&media.0[..],)).await?;
        let Some((format, width, height, size, chunk_bytes, chunks, created_at_ms)) = rows.into_iter().next() else {
            return Ok(None);
        };
        let format = ImageFormat::from_code(format)
            .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, format!("unknown image format {format}")))?;
        Ok(Some(MediaRecord {
            info: MediaInfo { id: media, format, width: width as u32, height: height as u32, bytes: size as u64 },
            chunk_bytes: chunk_bytes as u32,
            chunks: chunks as u32,
            created_at_ms,
            public: false,
        }))
    }

    async fn is_public(&self, media: MediaId) -> StoreResult<bool> {
        Ok(!self.rows::<(Vec<u8>,)>(&self.media.public, (&media.0[..],)).await?.is_empty())
    }
}

pub(super) struct Statements {
    record: PreparedStatement,
    insert_record: PreparedStatement,
    chunk: PreparedStatement,
    insert_chunk: PreparedStatement,
    uploader: PreparedStatement,
    insert_uploader: PreparedStatement,
    pub(super) insert_ref: PreparedStatement,
    refs: PreparedStatement,
    member: PreparedStatement,
    list_hour: PreparedStatement,
    hour_of: PreparedStatement,
    unlist_hour: PreparedStatement,
    uploads_of: PreparedStatement,
    delete_record: PreparedStatement,
    delete_chunks: PreparedStatement,
    delete_uploaders: PreparedStatement,
    collected_up_to: PreparedStatement,
    set_collected_up_to: PreparedStatement,
    public: PreparedStatement,
    publish: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, options: &ScyllaOptions) -> Result<Self, StoreError> {
        let p = |cql: &'static str| prepare(session, options, cql);
        Ok(Self {
            record: p("SELECT format, width, height, size, chunk_bytes, chunks, created_at_ms FROM {ks}.media
                WHERE media_id = ?")
            .await?,
            insert_record: p("INSERT INTO {ks}.media (media_id, format, width, height, size, chunk_bytes, chunks,
                created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .await?,
            chunk: p("SELECT data FROM {ks}.media_chunks WHERE media_id = ? AND idx = ?").await?,
            insert_chunk: p("INSERT INTO {ks}.media_chunks (media_id, idx, data) VALUES (?, ?, ?)").await?,
            uploader: p("SELECT at_ms FROM {ks}.media_uploaders WHERE media_id = ? AND user_id = ?").await?,
            insert_uploader: p("INSERT INTO {ks}.media_uploaders (media_id, user_id, at_ms) VALUES (?, ?, ?)
                IF NOT EXISTS")
            .await?,
            insert_ref: p("INSERT INTO {ks}.media_refs (media_id, room_id) VALUES (?, ?)").await?,
            refs: p("SELECT room_id FROM {ks}.media_refs WHERE media_id = ? LIMIT ?").await?,
            member: p("SELECT role FROM {ks}.room_members WHERE room_id = ? AND user_id = ?").await?,
            list_hour: p("INSERT INTO {ks}.media_by_hour (hour, media_id) VALUES (?, ?)").await?,
            hour_of: p("SELECT media_id FROM {ks}.media_by_hour WHERE hour = ? LIMIT ?").await?,
            unlist_hour: p("DELETE FROM {ks}.media_by_hour WHERE hour = ? AND media_id = ?").await?,
            uploads_of: p("SELECT at_ms FROM {ks}.media_uploaders WHERE media_id = ?").await?,
            delete_record: p("DELETE FROM {ks}.media WHERE media_id = ?").await?,
            delete_chunks: p("DELETE FROM {ks}.media_chunks WHERE media_id = ?").await?,
            delete_uploaders: p("DELETE FROM {ks}.media_uploaders WHERE media_id = ?").await?,
            collected_up_to: p("SELECT value FROM {ks}.meta WHERE key = 'media_collected_up_to_hour'").await?,
            set_collected_up_to: p("INSERT INTO {ks}.meta (key, value) VALUES ('media_collected_up_to_hour', ?)")
                .await?,
            public: p("SELECT media_id FROM {ks}.public_media WHERE media_id = ?").await?,
            publish: p("INSERT INTO {ks}.public_media (media_id) VALUES (?)").await?,
        })
    }
}

#[async_trait]
impl MediaStore for ScyllaStore {
    async fn put_media(&self, media: NewMedia) -> StoreResult<()> {
        self.check_open()?;
        let s = &self.media;
        let key = &media.info.id.0[..];
        if self.media(media.info.id).await?.is_none() {
            for (batch, chunks) in media.chunks.chunks(CHUNKS_AT_ONCE).enumerate() {
                let writes = chunks.iter().enumerate().map(|(i, chunk)| {
                    let index = (batch * CHUNKS_AT_ONCE + i) as i32;
                    self.execute(&s.insert_chunk, (key, index, &chunk[..]))
                });
                futures_util::future::try_join_all(writes).await?;
            }
            // Written once every chunk is: an image with a record is whole. Rewriting it with the
            // same values (two uploads of the same bytes at once) changes nothing.
            let info = &media.info;
            let values = (
                key,
                info.format.code(),
                info.width as i32,
                info.height as i32,
                info.bytes as i64,
                media.chunk_bytes as i32,
                media.chunks.len() as i32,
                media.at_ms,
            );
            self.execute(&s.insert_record, values).await?;
        }
        // Listed by the hour first: the collector finds every upload, even one cut short here.
        self.execute(&s.list_hour, (media.at_ms / HOUR_MS, key)).await?;
        // Only the first upload's time is kept (a lightweight transaction: uploads are rare).
        self.execute(&s.insert_uploader, (key, id(media.uploader.0), media.at_ms)).await?;
        Ok(())
    }

    async fn collect_orphan_media(&self, uploaded_before_ms: i64, limit: usize) -> StoreResult<u64> {
        self.check_open()?;
        let s = &self.media;
        let end_hour = uploaded_before_ms.div_euclid(HOUR_MS);
        let marker = self.rows::<(String,)>(&s.collected_up_to, ()).await?;
        // A first run looks back a week.
        let mut hour = marker.first().and_then(|(v,)| v.parse::<i64>().ok()).unwrap_or(end_hour - 24 * 7);
        let mut collected = 0u64;
        // Whole hours before the cutoff's, then the cutoff's own hour (whose later uploads stay
        // listed for the next pass).
        while hour <= end_hour && (collected as usize) < limit {
            let listed = self.rows::<(Vec<u8>,)>(&s.hour_of, (hour, limit as i32)).await?;
            for (key,) in &listed {
                let Ok(bytes) = <[u8; 16]>::try_from(key.as_slice()) else { continue };
                let media = MediaId(bytes);
                let shown = !self.rows::<(i64,)>(&s.refs, (&key[..], 1i32)).await?.is_empty()
                    || self.is_public(media).await?
                    || !self.media_authors(media).await?.is_empty();
                let uploads = self.rows::<(i64,)>(&s.uploads_of, (&key[..],)).await?;
                let last_upload = uploads.into_iter().map(|(at,)| at).max();
                let recent = last_upload.is_some_and(|at| at >= uploaded_before_ms);
                if recent && hour == end_hour {
                    continue;
                }
                // Shown in a room, or uploaded again since (that upload is listed in its own hour).
                if !shown && !recent {
                    self.execute(&s.delete_record, (&key[..],)).await?;
                    futures_util::try_join!(
                        self.execute(&s.delete_chunks, (&key[..],)),
                        self.execute(&s.delete_uploaders, (&key[..],)),
                    )?;
                    tracing::debug!(%media, "collected an image never sent");
                    collected += 1;
                }
                self.execute(&s.unlist_hour, (hour, &key[..])).await?;
            }
            if hour == end_hour {
                break;
            }
            if listed.len() < limit {
                hour += 1;
                self.execute(&s.set_collected_up_to, (hour.to_string(),)).await?;
            }
        }
        Ok(collected)
    }

    async fn media(&self, media: MediaId) -> StoreResult<Option<MediaRecord>> {
        self.check_open()?;
        let (record, public) = futures_util::try_join!(self.media_record(media), self.is_public(media))?;
        Ok(record.map(|record| MediaRecord { public, ..record }))
    }

    async fn publish_media(&self, media: MediaId) -> StoreResult<()> {
        self.check_open()?;
        self.execute(&self.media.publish, (&media.0[..],)).await?;
        Ok(())
    }

    async fn media_chunk(&self, media: MediaId, index: u32) -> StoreResult<Option<bytes::Bytes>> {
        self.check_open()?;
        let Some(record) = self.media_record(media).await? else { return Ok(None) };
        if index >= record.chunks {
            return Ok(None);
        }
        let rows = self.rows::<(Vec<u8>,)>(&self.media.chunk, (&media.0[..], index as i32)).await?;
        match rows.into_iter().next() {
            Some((data,)) => Ok(Some(bytes::Bytes::from(data))),
            None => Err(corrupt(std::io::Error::other(format!("image {media} lacks chunk {index}")))),
        }
    }

    async fn may_see_media(&self, media: MediaId, user: UserId) -> StoreResult<bool> {
        if self.is_public(media).await? || self.uploaded_media(media, user).await? {
            return Ok(true);
        }
        let rooms = self.rows::<(i64,)>(&self.media.refs, (&media.0[..], ROOMS_LOOKED_AT as i32)).await?;
        for (room,) in rooms {
            if !self.rows::<(i32,)>(&self.media.member, (room, id(user.0))).await?.is_empty() {
                return Ok(true);
            }
        }
        // In a post: by the reader, by a public author, or by an author the reader follows.
        for author in self.media_authors(media).await? {
            if author == user {
                return Ok(true);
            }
            let public = self.profiles(vec![author]).await?.first().is_some_and(|p| !p.private);
            if public || self.follow_state(user, author).await? == crate::domain::FollowState::Following {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn uploaded_media(&self, media: MediaId, user: UserId) -> StoreResult<bool> {
        self.check_open()?;
        let rows = self.rows::<(i64,)>(&self.media.uploader, (&media.0[..], id(user.0))).await?;
        Ok(!rows.is_empty())
    }
}

//! Images: uploads checked and cleaned (`sanitize.rs`), received into spool files (`spool.rs`),
//! worked on by a bounded pool of threads (`work.rs`), stored content-addressed in chunks through
//! the store's `MediaStore`, and read back chunk by chunk; variants (`variant.rs`) made on first
//! request, once however many ask at the same moment, and kept in a bounded cache (`cache.rs`);
//! uploads never sent anywhere collected after a while (`collector.rs`).
//!
//! Who may read an image: whoever uploaded it (the same bytes uploaded by two people are one image
//! that both may read), and the members of every room whose messages show it.

mod cache;
mod collector;
mod sanitize;
mod spool;
mod variant;
mod work;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};

pub use collector::media_collector;
pub use sanitize::{Sanitized, sanitize};
pub use spool::Spooled;
pub use variant::{Fit, VariantSpec};

use crate::config::MediaConfig;
use crate::domain::{DomainError, DomainResult, ImageFormat, MediaId, MediaInfo, UserId, now_ms};
use crate::jws::Hs256;
use crate::metrics::METRICS;
use crate::rate_limit::PerKeyLimiter;
use crate::store::{MediaRecord, NewMedia, Store, StoreError};
use cache::VariantCache;
use work::ImageWork;

pub struct MediaService {
    store: Arc<dyn Store>,
    config: MediaConfig,
    work: ImageWork,
    spool_dir: PathBuf,
    cache: VariantCache,
    /// Per variant being made: the one maker's lock (those who ask meanwhile wait, then read the
    /// cache).
    making: dashmap::DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Signs and checks signed URLs (a key of its own, derived from the token secret).
    url_key: Hs256,
    /// Uploads per user per minute.
    uploads: PerKeyLimiter,
}

/// What a signed URL's token says: this user may read this image until then.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct UrlClaims {
    /// The media id.
    m: MediaId,
    /// The user it was signed for (who must still be allowed to see the image).
    u: u64,
    /// Expiry, seconds since the epoch.
    exp: i64,
}

impl MediaService {
    /// Spool files live in `data_dir/uploads` (what a killed process left there is removed now).
    /// `secret`: the token secret; signed URLs are signed with a key derived from it.
    pub fn new(store: Arc<dyn Store>, config: MediaConfig, data_dir: &Path, secret: &[u8]) -> std::io::Result<Self> {
        let spool_dir = data_dir.join("uploads");
        spool::clear(&spool_dir)?;
        let work = ImageWork::new(config.workers, config.queue);
        let cache_dir = match config.cache_dir.as_os_str().is_empty() {
            true => data_dir.join("media-cache"),
            false => config.cache_dir.clone(),
        };
        let cache = VariantCache::open(cache_dir, config.cache_max_bytes)?;
        let derived =
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), b"tidings media urls v1");
        let url_key = Hs256::new(derived.as_ref());
        let uploads = PerKeyLimiter::new(config.uploads_per_minute_per_user, "uploads");
        Ok(Self { store, config, work, spool_dir, cache, making: Default::default(), url_key, uploads })
    }

    /// A token for `?token=`: `reader` may read the image (and its variants) with no other
    /// credential until it expires (`media.signed_url_ttl_secs`), as long as they still may see it.
    /// For clients that cannot send headers (an `<img>` tag). The expiry, in ms.
    pub async fn sign_url(&self, reader: UserId, id: MediaId) -> DomainResult<(String, i64)> {
        self.open(reader, id).await?;
        // Rounded up to the next whole second: the URL is good for at least the configured time
        // (rounded down, one signed at x.999 s with a 1 s life would be good for 1 ms).
        let exp = (now_ms() + 999) / 1000 + self.config.signed_url_ttl_secs.max(1) as i64;
        Ok((self.url_key.sign(&UrlClaims { m: id, u: reader.0, exp }), exp * 1000))
    }

    /// Who a signed URL's token was signed for, if it is for `id` and has not expired.
    pub fn check_url(&self, id: MediaId, token: &str) -> DomainResult<UserId> {
        let refused = || DomainError::new(crate::domain::Code::Unauthenticated, "the media URL's token is not valid");
        let claims: UrlClaims = self.url_key.verify(token).map_err(|_| refused())?;
        if claims.m != id {
            return Err(refused());
        }
        if claims.exp <= now_ms() / 1000 {
            return Err(DomainError::new(
                crate::domain::Code::TokenExpired,
                "the media URL has expired: ask for a new one",
            ));
        }
        Ok(UserId(claims.u))
    }

    /// The variant a request's query asks for (`None`: the original).
    pub fn variant_spec(&self, query: &[(String, String)], original: ImageFormat) -> DomainResult<Option<VariantSpec>> {
        VariantSpec::from_query(query, original, &self.config.sizes)
    }

    /// A variant of an image: from the cache, or made now (once, however many ask at the same
    /// moment); and whether this request made it.
    pub async fn variant(&self, record: &MediaRecord, spec: &VariantSpec) -> DomainResult<(Bytes, bool)> {
        let key = spec.key(record.info.id);
        if let Some(kept) = self.cache.get(&key).await {
            METRICS.media_variants_cached_total.inc();
            return Ok((kept, false));
        }
        let lock = self.making.entry(key.clone()).or_default().clone();
        let made = async {
            let _maker = lock.lock().await;
            if let Some(kept) = self.cache.get(&key).await {
                METRICS.media_variants_cached_total.inc();
                return Ok((kept, false));
            }
            let original: Vec<Bytes> = self.bytes(record, 0..record.info.bytes).try_collect().await?;
            let original = original.concat();
            let (info, spec) = (record.info.clone(), spec.clone());
            let made = Bytes::from(self.work.run(move || variant::make(&original, &info, &spec)).await?);
            METRICS.media_variants_made_total.inc();
            self.cache.put(&key, &made).await;
            Ok::<_, DomainError>((made, true))
        }
        .await;
        self.making.remove_if(&key, |_, l| Arc::strong_count(l) <= 2);
        made
    }

    pub fn max_upload_bytes(&self) -> u64 {
        self.config.max_upload_bytes
    }

    /// Counts an upload of `user` against `media.uploads_per_minute_per_user` (before its body is
    /// read): RATE_LIMITED with the wait beyond it.
    pub fn admit_upload(&self, user: UserId) -> DomainResult<()> {
        self.uploads.take(&user.0.to_string(), std::time::Instant::now())
    }

    /// A spool file for an upload to arrive in.
    pub async fn spool(&self) -> DomainResult<Spooled> {
        Spooled::create(&self.spool_dir).await.map_err(|e| {
            tracing::error!(error = %e, dir = %self.spool_dir.display(), "creating a spool file failed");
            DomainError::internal()
        })
    }

    /// Checks, cleans and stores an upload; what was stored.
    pub async fn upload(
        &self,
        uploader: UserId,
        declared: Option<ImageFormat>,
        spooled: Spooled,
    ) -> DomainResult<MediaInfo> {
        let max_pixels = self.config.max_pixels;
        let clean = self
            .work
            .run(move || {
                let data = spooled.read_blocking().map_err(|e| {
                    tracing::error!(error = %e, "reading a spool file failed");
                    DomainError::internal()
                })?;
                drop(spooled);
                sanitize::sanitize(data, declared, max_pixels)
            })
            .await?;
        let info = MediaInfo {
            id: MediaId::of(&clean.bytes),
            format: clean.format,
            width: clean.width,
            height: clean.height,
            bytes: clean.bytes.len() as u64,
        };
        let chunk_bytes = self.config.chunk_bytes.max(1024);
        let all = Bytes::from(clean.bytes);
        let chunks = (0..all.len()).step_by(chunk_bytes as usize).map(|at| {
            let end = (at + chunk_bytes as usize).min(all.len());
            all.slice(at..end)
        });
        let media = NewMedia { info: info.clone(), uploader, at_ms: now_ms(), chunk_bytes, chunks: chunks.collect() };
        self.store.put_media(media).await?;
        tracing::debug!(media = %info.id, user = %uploader, bytes = info.bytes, "image stored");
        Ok(info)
    }

    /// The image, if `reader` may see it.
    pub async fn open(&self, reader: UserId, id: MediaId) -> DomainResult<MediaRecord> {
        let record = self.store.media(id).await?.ok_or_else(|| DomainError::not_found("no such media"))?;
        if !self.store.may_see_media(id, reader).await? {
            return Err(DomainError::forbidden("you may not see this image"));
        }
        Ok(record)
    }

    /// Bytes `range` of a stored image, read chunk by chunk as the stream is polled.
    pub fn bytes(
        &self,
        record: &MediaRecord,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + use<> {
        let store = self.store.clone();
        let (id, chunk) = (record.info.id, record.chunk_bytes.max(1) as u64);
        futures_util::stream::try_unfold(range.start, move |at| {
            let store = store.clone();
            let end = range.end;
            async move {
                if at >= end {
                    return Ok(None);
                }
                let index = (at / chunk) as u32;
                let data = store.media_chunk(id, index).await?.ok_or_else(|| {
                    StoreError::new(crate::store::StoreErrorKind::Corrupt, format!("image {id} lacks chunk {index}"))
                })?;
                let from = (at - index as u64 * chunk) as usize;
                let to = ((end - index as u64 * chunk) as usize).min(data.len());
                if from >= to {
                    return Err(StoreError::new(crate::store::StoreErrorKind::Corrupt, format!("image {id} is short")));
                }
                Ok(Some((data.slice(from..to), at + (to - from) as u64)))
            }
        })
    }
}

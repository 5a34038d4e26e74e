//! `POST /v1/media` (upload an image) and `GET /v1/media/{mediaId}` (read one back).
//!
//! An upload is the raw image as the body, with its `Content-Type`; it is received into a spool
//! file (never held whole in memory), refused as soon as it passes `media.max_upload_bytes`, then
//! checked and stored (`media::MediaService`). The answer is `MediaInfo`, as JSON, or protobuf when
//! the request's `Accept` names `application/x-protobuf`.
//!
//! `GET /v1/media/{mediaId}/url` signs a URL that reads the image with no other credential (for
//! an `<img>` tag), for `media.signed_url_ttl_secs` and while its signer may still see the image.
//!
//! A read answers the stored bytes, or with `?w=&h=&fit=&format=&q=` a variant (`media::variant`),
//! with a strong `ETag` (the id, or the variant's key: the bytes behind one never change),
//! `If-None-Match` -> 304, and one `Range` -> 206 (several ranges: the whole image, as RFC 9110
//! allows).

use std::ops::Range;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{StreamExt, TryStreamExt};
use tidings_proto::Encoding;
use tidings_proto::v1 as wire;

use super::http::{AppState, PROTOBUF, authenticate, error_response, respond};
use crate::domain::error::Code;
use crate::domain::{DomainError, DomainResult, ImageFormat, MediaId, MediaInfo};

/// Cached by clients and proxies for a year: a media id names the same bytes forever. Private:
/// who may read an image depends on who asks.
const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";
/// For public images (avatars): shared caches (a CDN) may keep them too.
const CACHE_CONTROL_PUBLIC: &str = "public, max-age=31536000, immutable";

/// The public port's image routes (beside `http::routes`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use tidings_proto::paths::MEDIA;
    cfg.route(MEDIA, web::post().to(upload))
        .route(&format!("{MEDIA}/{{media_id}}"), web::get().to(read))
        .route(&format!("{MEDIA}/{{media_id}}/url"), web::get().to(signed_url));
}

fn answer_encoding(req: &HttpRequest) -> Encoding {
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains(PROTOBUF) { Encoding::Protobuf } else { Encoding::Json }
}

pub async fn upload(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let encoding = answer_encoding(&req);
    match receive(&req, payload, &state).await {
        Ok(info) => respond(encoding, StatusCode::CREATED, &wire_info(&info)),
        Err(e) => error_response(encoding, &e),
    }
}

fn wire_info(info: &MediaInfo) -> wire::MediaInfo {
    wire::MediaInfo {
        media_id: info.id.to_string(),
        content_type: info.format.content_type().into(),
        width: info.width,
        height: info.height,
        bytes: info.bytes,
    }
}

async fn receive(req: &HttpRequest, mut payload: web::Payload, state: &AppState) -> DomainResult<MediaInfo> {
    let caller = authenticate(req, state).await?;
    state.media.admit_upload(caller.user)?;
    let declared = declared_format(req)?;
    let max = state.media.max_upload_bytes();
    let too_large = || DomainError::new(Code::PayloadTooLarge, format!("an upload is at most {max} bytes"));
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|l| l > max) {
        return Err(too_large());
    }
    let mut spooled = state.media.spool().await?;
    let spool_failed = |e: std::io::Error| {
        tracing::error!(error = %e, "writing a spool file failed");
        DomainError::internal()
    };
    loop {
        // Each piece must come within the body timeout: a stalled upload does not hold its spool.
        let next = tokio::time::timeout(state.body_read_timeout, payload.next())
            .await
            .map_err(|_| DomainError::invalid("the upload stalled"))?;
        match next {
            Some(Ok(chunk)) => {
                if spooled.len() + chunk.len() as u64 > max {
                    return Err(too_large());
                }
                spooled.write(&chunk).await.map_err(spool_failed)?;
            }
            Some(Err(e)) => return Err(DomainError::invalid(format!("reading the upload: {e}"))),
            None => break,
        }
    }
    if spooled.is_empty() {
        return Err(DomainError::invalid("the body is empty: send the image's bytes"));
    }
    spooled.finish().await.map_err(spool_failed)?;
    state.media.upload(caller.user, declared, spooled).await
}

/// The image format the request's `Content-Type` names; none for a missing or generic type; an
/// error for a type that is not an image.
fn declared_format(req: &HttpRequest) -> DomainResult<Option<ImageFormat>> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if value.trim().is_empty() || value.starts_with("application/octet-stream") {
        return Ok(None);
    }
    ImageFormat::from_content_type(value).map(Some).ok_or_else(|| {
        DomainError::invalid(format!("Content-Type {value:?} is not image/jpeg, image/png, image/webp or image/gif"))
    })
}

pub async fn read(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let encoding = answer_encoding(&req);
    match answer(&req, &path, &state).await {
        Ok(response) => response,
        Err(e) => error_response(encoding, &e),
    }
}

/// `GET /v1/media/{mediaId}/url`: a signed URL for clients that cannot send headers.
pub async fn signed_url(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let encoding = answer_encoding(&req);
    let signed = async {
        let caller = authenticate(&req, &state).await?;
        let id = MediaId::parse(&path).ok_or_else(|| DomainError::not_found("no such media"))?;
        let (token, expires_at_ms) = state.media.sign_url(caller.user, id).await?;
        let url = format!("{}/{id}?token={token}", tidings_proto::paths::MEDIA);
        Ok::<_, DomainError>(wire::SignedMediaUrl { url, expires_at_ms })
    };
    match signed.await {
        Ok(answer) => respond(encoding, StatusCode::OK, &answer),
        Err(e) => error_response(encoding, &e),
    }
}

async fn answer(req: &HttpRequest, id: &str, state: &AppState) -> DomainResult<HttpResponse> {
    let id = MediaId::parse(id).ok_or_else(|| DomainError::not_found("no such media"))?;
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| DomainError::invalid("the query does not parse"))?
        .into_inner();
    // A signed URL's token, or the caller's access token.
    let reader = match query.iter().find(|(k, _)| k == "token") {
        Some((_, token)) => state.media.check_url(id, token)?,
        None => authenticate(req, state).await?.user,
    };
    let record = state.media.open(reader, id).await?;
    let spec = state.media.variant_spec(&query, record.info.format)?;
    let etag = match &spec {
        Some(spec) => format!("\"{}\"", spec.key(id)),
        None => format!("\"{id}\""),
    };
    let response = |status: StatusCode| {
        let mut builder = HttpResponse::build(status);
        builder
            .insert_header((header::ETAG, etag.clone()))
            .insert_header((header::CACHE_CONTROL, if record.public { CACHE_CONTROL_PUBLIC } else { CACHE_CONTROL }))
            .insert_header((header::ACCEPT_RANGES, "bytes"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
        builder
    };
    if let Some(wanted) = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && wanted.split(',').any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag.as_str())
        })
    {
        return Ok(response(StatusCode::NOT_MODIFIED).finish());
    }
    let variant = match &spec {
        Some(spec) => Some((spec.format, state.media.variant(&record, spec).await?)),
        None => None,
    };
    let size = variant.as_ref().map_or(record.info.bytes, |(_, (data, _))| data.len() as u64);
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, range) = match range.map(|r| parse_range(r, size)) {
        None | Some(Ranged::Whole) => (StatusCode::OK, 0..size),
        Some(Ranged::Part(part)) => (StatusCode::PARTIAL_CONTENT, part),
        Some(Ranged::Unsatisfiable) => {
            return Ok(response(StatusCode::RANGE_NOT_SATISFIABLE)
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .finish());
        }
    };
    let mut builder = response(status);
    let format = variant.as_ref().map_or(record.info.format, |(format, _)| *format);
    builder.content_type(format.content_type()).no_chunking(range.end - range.start);
    if status == StatusCode::PARTIAL_CONTENT {
        builder.insert_header((header::CONTENT_RANGE, format!("bytes {}-{}/{size}", range.start, range.end - 1)));
    }
    if let Some((_, (data, made))) = variant {
        // As CDNs say it: whether this answer made the variant or found it made.
        builder.insert_header(("x-cache", if made { "MISS" } else { "HIT" }));
        return Ok(builder.body(data.slice(range.start as usize..range.end as usize)));
    }
    let body = state.media.bytes(&record, range).map_err(|e| {
        tracing::warn!(error = %e, "reading an image failed mid-answer");
        actix_web::error::ErrorInternalServerError("reading the image failed")
    });
    Ok(builder.streaming(body.boxed_local()))
}

/// What a `Range` header asks of an image of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No single byte range that parses: the whole image.
    Whole,
    Part(Range<u64>),
    /// The range starts past the end.
    Unsatisfiable,
}

fn parse_range(value: &str, size: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ranged::Whole };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else { return Ranged::Whole };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // The last `n` bytes.
        (true, false) => match number(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(size.saturating_sub(n)..size),
            None => Ranged::Whole,
        },
        (false, _) => {
            let Some(start) = number(first) else { return Ranged::Whole };
            let end = match last.is_empty() {
                true => size,
                false => match number(last) {
                    Some(l) if l >= start => l.saturating_add(1).min(size),
                    _ => return Ranged::Whole,
                },
            };
            if start >= size { Ranged::Unsatisfiable } else { Ranged::Part(start..end) }
        }
        (true, true) => Ranged::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ranged::Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Ranged::Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Ranged::Part(90..100));
        assert_eq!(parse_range("bytes=-500", 100), Ranged::Part(0..100));
        assert_eq!(parse_range("bytes=50-500", 100), Ranged::Part(50..100));
        assert_eq!(parse_range("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-3", 100), Ranged::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ranged::Whole);
        assert_eq!(parse_range("items=0-1", 100), Ranged::Whole);
        assert_eq!(parse_range("bytes=x-1", 100), Ranged::Whole);
    }
}

//! Images over HTTP: `POST /v1/media` and `GET /v1/media/{mediaId}` against the real server,
//! with images made here in each format.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::*;
use tidings_client::tidings_proto::v1 as wire;

/// A 40x30 picture with a gradient (so that rotations and crops show), encoded as `format`.
pub(crate) fn picture(format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 128]));
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(image).write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

fn content_type(format: ImageFormat) -> &'static str {
    format.to_mime_type()
}

pub(crate) async fn upload(server: &TestServer, token: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/media", server.addr))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn fetch(server: &TestServer, token: &str, id: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{}/v1/media/{id}", server.addr)).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("").trim_start_matches("ERROR_CODE_")
}

#[tokio::test]
pub(crate) async fn each_format_round_trips() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif] {
        let sent = picture(format);
        let (status, info) = upload(&server, &ana.auth.access_token, content_type(format), sent.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{format:?}: {info}");
        assert_eq!((info["width"].as_u64(), info["height"].as_u64()), (Some(40), Some(30)), "{format:?}");
        assert_eq!(info["contentType"], content_type(format));
        let id = info["mediaId"].as_str().unwrap();
        let response = fetch(&server, &ana.auth.access_token, id, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], content_type(format));
        let got = response.bytes().await.unwrap();
        // uint64 is a string in the proto3 JSON mapping.
        assert_eq!(got.len().to_string(), info["bytes"].as_str().unwrap());
        // Nothing to strip from these: the very bytes come back.
        assert_eq!(&got[..], &sent[..], "{format:?}");
        let decoded = image::load_from_memory(&got).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (40, 30));
    }
}

/// A JPEG with EXIF saying "rotate 90 degrees clockwise" (and so carrying EXIF, where a camera
/// puts the location): stored upright (30x40), with no EXIF left.
#[tokio::test]
pub(crate) async fn exif_orientation_is_applied_and_exif_removed() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    for (orientation, size) in [(6u16, (30, 40)), (1u16, (40, 30))] {
        let tagged = with_exif_orientation(&picture(ImageFormat::Jpeg), orientation);
        assert!(contains(&tagged, b"Exif\0\0"));
        let (status, info) = upload(&server, &ana.auth.access_token, "image/jpeg", tagged).await;
        assert_eq!(status, StatusCode::CREATED, "{info}");
        assert_eq!(
            (info["width"].as_u64().unwrap(), info["height"].as_u64().unwrap()),
            size,
            "orientation {orientation}"
        );
        let stored = fetch(&server, &ana.auth.access_token, info["mediaId"].as_str().unwrap(), &[]).await;
        let stored = stored.bytes().await.unwrap();
        assert!(!contains(&stored, b"Exif"), "orientation {orientation}: EXIF removed");
        let decoded = image::load_from_memory(&stored).unwrap();
        assert_eq!((decoded.width() as u64, decoded.height() as u64), size);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The JPEG with an APP1 EXIF segment (big-endian TIFF, one IFD entry: Orientation) after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A lying Content-Type, a file that is not an image, a truncated file, a pixel bomb and an
/// oversized upload each get their typed error, and none leaves anything stored or spooled.
#[tokio::test]
pub(crate) async fn bad_uploads_get_typed_errors_and_leave_nothing() {
    let server = TestServer::start_with(|c| c.media.max_upload_bytes = 64 * 1024);
    let ana = server.user("ana").await;
    let token = &ana.auth.access_token;
    let png = picture(ImageFormat::Png);
    let jpeg = picture(ImageFormat::Jpeg);
    let truncated = jpeg[..jpeg.len() / 2].to_vec();
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        ("lying type", "image/jpeg", png.clone(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("not an image type", "text/plain", png.clone(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("not an image", "image/png", b"<svg onload=alert(1)>".to_vec(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("truncated", "image/jpeg", truncated.clone(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("pixel bomb", "image/png", png_bomb(60_000, 60_000), StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
        ("oversized", "image/png", vec![0u8; 200 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
        ("empty", "image/png", Vec::new(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
    ];
    for (what, content_type, body, status, wire_code) in cases {
        let (got, answer) = upload(&server, token, content_type, body).await;
        assert_eq!((got, code(&answer)), (status, wire_code), "{what}: {answer}");
    }
    // Nothing of them was stored: not the PNG sent as a JPEG, not the truncated JPEG.
    for bytes in [&png, &truncated] {
        let id = tidings::domain::MediaId::of(bytes).to_string();
        let response = fetch(&server, token, &id, &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let spool = server.data_dir.path().join("uploads");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "no spool file is left");
    // Without a token: 401.
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/media", server.addr))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A PNG whose header claims `width` x `height` pixels, with almost no data: refused from its
/// header, before anything is decoded.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
    for (kind, data) in
        [(&b"IHDR"[..], ihdr), (&b"IDAT"[..], vec![0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]), (&b"IEND"[..], vec![])]
    {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(&data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG of some 100 KiB (a pattern that does not compress away).
fn noisy_png() -> Vec<u8> {
    let image = RgbImage::from_fn(300, 200, |x, y| image::Rgb([(x ^ y) as u8, (x * y) as u8, (x + y) as u8]));
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(image).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
    out
}

/// The same bytes uploaded by two people are one image, stored once, that both may read; a third
/// may not; an unknown id is not found.
#[tokio::test]
async fn the_same_bytes_are_stored_once_and_strangers_cannot_read_them() {
    let server = TestServer::start_with(|c| c.media.chunk_bytes = 1024);
    let (ana, bob, carol) = (server.user("ana").await, server.user("bob").await, server.user("carol").await);
    let big = noisy_png();
    let (_, first) = upload(&server, &ana.auth.access_token, "image/png", big.clone()).await;
    let (_, second) = upload(&server, &bob.auth.access_token, "image/png", big.clone()).await;
    assert_eq!(first["mediaId"], second["mediaId"], "content-addressed");
    let id = first["mediaId"].as_str().unwrap();
    for reader in [&ana, &bob] {
        let response = fetch(&server, &reader.auth.access_token, id, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.bytes().await.unwrap()[..], &big[..]);
    }
    let response = fetch(&server, &carol.auth.access_token, id, &[]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let unknown = tidings::domain::MediaId::of(b"nothing like it").to_string();
    for id in [unknown.as_str(), "not-an-id"] {
        assert_eq!(fetch(&server, &ana.auth.access_token, id, &[]).await.status(), StatusCode::NOT_FOUND);
    }
    // Stored once, in chunks of 1 KiB.
    let db = rusqlite::Connection::open(server.data_dir.path().join("tidings.db")).unwrap();
    let chunks: i64 = db.query_row("SELECT count(*) FROM media_chunks", [], |r| r.get(0)).unwrap();
    assert_eq!(chunks as usize, big.len().div_ceil(1024));
}

/// `If-None-Match` -> 304; one `Range` -> 206 with exactly those bytes; past the end -> 416.
#[tokio::test]
pub(crate) async fn conditional_and_range_reads() {
    let server = TestServer::start_with(|c| c.media.chunk_bytes = 1024);
    let ana = server.user("ana").await;
    let token = &ana.auth.access_token;
    let sent = noisy_png();
    assert!(sent.len() > 4096);
    let (_, info) = upload(&server, token, "image/png", sent.clone()).await;
    let id = info["mediaId"].as_str().unwrap();
    let whole = fetch(&server, token, id, &[]).await;
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{id}\""));
    assert!(whole.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(fetch(&server, token, id, &[("if-none-match", &etag)]).await.status(), StatusCode::NOT_MODIFIED);
    let size = sent.len();
    // Across a chunk boundary, the tail, and the last few bytes.
    for (range, expected) in [
        ("bytes=1000-1100".to_string(), 1000..1101),
        (format!("bytes={}-", size - 10), size - 10..size),
        ("bytes=-7".to_string(), size - 7..size),
    ] {
        let response = fetch(&server, token, id, &[("range", &range)]).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let content_range = format!("bytes {}-{}/{size}", expected.start, expected.end - 1);
        assert_eq!(response.headers()["content-range"], content_range.as_str());
        assert_eq!(&response.bytes().await.unwrap()[..], &sent[expected], "{range}");
    }
    let response = fetch(&server, token, id, &[("range", &format!("bytes={size}-"))]).await;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()["content-range"], format!("bytes */{size}").as_str());
}

/// A kill -9 in the middle of an upload leaves no image and, after the next start, no spool file.
#[tokio::test]
async fn a_kill_9_during_an_upload_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let data = tempfile::tempdir().unwrap();
    let (mut child, addr) = crate::durability::spawn_server_with(data.path(), &[]);
    let ana = tidings_client::Http::new(format!("http://{addr}")).sign_up("ana", PASSWORD, "phone").await.unwrap();
    let body = noisy_png();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: tidings\r\nAuthorization: Bearer {}\r\nContent-Type: image/png\r\n\
         Content-Length: {}\r\n\r\n",
        ana.access_token,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body[..body.len() / 2]).await.unwrap();
    socket.flush().await.unwrap();
    let spool = data.path().join("uploads");
    let spooled = || {
        std::fs::read_dir(&spool).unwrap().filter_map(Result::ok).filter(|e| e.metadata().unwrap().len() > 0).count()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while spooled() == 0 {
        assert!(std::time::Instant::now() < deadline, "the upload is being received");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.0.kill().unwrap(); // SIGKILL, mid-upload
    drop(child);
    drop(socket);
    assert_eq!(spooled(), 1, "the killed process left its spool file");

    let (_child, addr) = crate::durability::spawn_server_with(data.path(), &[]);
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "the next start removed it");
    let id = tidings::domain::MediaId::of(&body).to_string();
    let get = |token: String| {
        let url = format!("http://{addr}/v1/media/{id}");
        async move { reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().status() }
    };
    assert_eq!(get(ana.access_token.clone()).await, StatusCode::NOT_FOUND, "no partial image");
    // The same upload, whole this time, is stored.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/media"))
        .bearer_auth(&ana.access_token)
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(get(ana.access_token.clone()).await, StatusCode::OK);
}

/// A picture of `width` x `height`, encoded as `format`, with alpha when `alpha`.
fn sized(width: u32, height: u32, format: ImageFormat, alpha: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let image = match alpha {
        true => DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, if x < width / 2 { 0 } else { 255 }])
        })),
        false => DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        })),
    };
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// Variants: contain keeps the aspect within the box, cover fills it, sizes snap to the list,
/// nothing grows, the format is as asked; a variant is made once however many ask at once, then
/// served from the cache; bad parameters are INVALID_ARGUMENT.
#[tokio::test]
pub(crate) async fn variants_have_the_right_size_and_are_made_once() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let token = &ana.auth.access_token;
    let (_, info) = upload(&server, token, "image/jpeg", sized(1200, 900, ImageFormat::Jpeg, false)).await;
    let jpeg = info["mediaId"].as_str().unwrap().to_owned();
    let (_, info) = upload(&server, token, "image/png", sized(400, 200, ImageFormat::Png, true)).await;
    let png = info["mediaId"].as_str().unwrap().to_owned();
    let cases = [
        (&jpeg, "w=320&h=320", (320, 240), "image/jpeg"),
        (&jpeg, "w=320&h=320&fit=contain&format=webp&q=75", (320, 240), "image/webp"),
        (&jpeg, "w=320&h=320&fit=cover", (320, 320), "image/jpeg"),
        (&jpeg, "w=300", (320, 240), "image/jpeg"), // snapped up to 320
        (&jpeg, "h=100&format=png", (171, 128), "image/png"), // snapped up to 128
        (&jpeg, "w=5000&h=5000", (1200, 900), "image/jpeg"), // never larger
        (&png, "w=128&h=128&fit=cover&format=jpeg", (128, 128), "image/jpeg"),
        (&png, "w=128", (128, 64), "image/png"),
        (&png, "w=128&format=webp", (128, 64), "image/webp"),
    ];
    for (id, query, size, content_type) in cases {
        let response = fetch(&server, token, &format!("{id}?{query}"), &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        assert_eq!(response.headers()["content-type"], content_type, "{query}");
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with(&format!("\"{id}-")), "{query}: a variant's own ETag ({etag})");
        let image = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
        assert_eq!((image.width(), image.height()), size, "{query}");
        let again = fetch(&server, token, &format!("{id}?{query}"), &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{query}");
    }
    // Ten at once for a variant nobody asked for yet: one makes it, nine find it made.
    let url = format!("{jpeg}?w=640&h=640&fit=cover&q=55");
    let answers = futures_util::future::join_all((0..10).map(|_| fetch(&server, token, &url, &[]))).await;
    let mut made = 0;
    let mut bodies = std::collections::HashSet::new();
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::OK);
        made += (answer.headers()["x-cache"] == "MISS") as usize;
        bodies.insert(answer.bytes().await.unwrap());
    }
    assert_eq!((made, bodies.len()), (1, 1), "made once, the same bytes for all");
    let cached = std::fs::read_dir(server.data_dir.path().join("media-cache")).unwrap().count();
    assert_eq!(cached, cases.len() + 1, "one file per variant made");
    for bad in ["w=0", "w=x", "w=10&fit=fill", "fit=cover", "w=10&fit=cover", "w=10&format=bmp", "w=10&q=101"] {
        let response = fetch(&server, token, &format!("{jpeg}?{bad}"), &[]).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

fn send_images(room_id: u64, client_msg_id: &str, caption: &str, media: &[&str]) -> wire::client_frame::Request {
    wire::client_frame::Request::SendMessage(wire::SendMessageRequest {
        room_id,
        client_msg_id: client_msg_id.into(),
        text: caption.into(),
        reply_to_seq: 0,
        media_ids: media.iter().map(|m| m.to_string()).collect(),
    })
}

/// Images in chat: a message carries media ids and a caption; every member of the room may read
/// them, nobody else; only an image one may see can be sent on (forwarding it makes it readable in
/// the new room too); a deleted message shows no images.
#[tokio::test]
pub(crate) async fn chat_images_are_readable_by_the_rooms_members_only() {
    let server = TestServer::start();
    let (ana, bob, carol) = (server.user("ana").await, server.user("bob").await, server.user("carol").await);
    let (_, info) = upload(&server, &ana.auth.access_token, "image/png", picture(ImageFormat::Png)).await;
    let photo = info["mediaId"].as_str().unwrap().to_owned();
    let a = ana.connect().await;
    let group = a.create_group("trip", vec![bob.id()]).await.unwrap().room_id;
    let (mut b, _) = bob.connect_synced(0).await;
    let sent = a.request(send_images(group, "p1", "", &[&photo])).await.unwrap();
    assert!(matches!(sent, wire::reply::Result::Sent(_)), "an image with no caption");
    let event = loop {
        let event = next_event(&mut b).await;
        if matches!(&entry(&event).body, Some(wire::room_entry::Body::Text(_))) {
            break event;
        }
    };
    let Some(wire::room_entry::Body::Text(message)) = &entry(&event).body else { unreachable!() };
    assert_eq!(message.media_ids, vec![photo.clone()]);
    assert_eq!(fetch(&server, &bob.auth.access_token, &photo, &[]).await.status(), StatusCode::OK, "a member reads it");
    assert_eq!(fetch(&server, &carol.auth.access_token, &photo, &[]).await.status(), StatusCode::FORBIDDEN);

    // Carol cannot send an image she may not see; unknown and malformed ids are refused too.
    let c = carol.connect().await;
    let own = c.create_direct(ana.id()).await.unwrap().room_id;
    let refused = |r: Result<wire::reply::Result, tidings_client::ClientError>| code_of(&r.unwrap_err());
    assert_eq!(refused(c.request(send_images(own, "c1", "look", &[&photo])).await), wire::ErrorCode::Forbidden);
    let unknown = tidings::domain::MediaId::of(b"never uploaded").to_string();
    assert_eq!(refused(c.request(send_images(own, "c2", "x", &[&unknown])).await), wire::ErrorCode::NotFound);
    assert_eq!(refused(c.request(send_images(own, "c3", "x", &["nope"])).await), wire::ErrorCode::InvalidArgument);
    let eleven: Vec<&str> = vec![photo.as_str(); 11];
    assert_eq!(refused(a.request(send_images(group, "a11", "x", &eleven)).await), wire::ErrorCode::InvalidArgument);

    // Bob, who may see it, forwards it to carol: now she may read it.
    let b_c = bob.connect().await.create_direct(carol.id()).await.unwrap().room_id;
    let bob_conn = bob.connect().await;
    assert!(bob_conn.request(send_images(b_c, "fwd", "from the trip", &[&photo])).await.is_ok());
    assert_eq!(fetch(&server, &carol.auth.access_token, &photo, &[]).await.status(), StatusCode::OK);

    // Deleted: the message shows no images any more.
    let seq = match sent {
        wire::reply::Result::Sent(ack) => ack.seq,
        _ => unreachable!(),
    };
    a.request(wire::client_frame::Request::DeleteMessage(wire::DeleteMessageRequest { room_id: group, seq }))
        .await
        .unwrap();
    let history =
        a.history(wire::HistoryRequest { room_id: group, before_seq: None, after_seq: None, limit: 10 }).await.unwrap();
    let shown = history.entries.iter().find(|e| e.seq == seq).unwrap();
    let Some(wire::room_entry::Body::Text(message)) = &shown.body else { panic!("{shown:?}") };
    assert!(message.deleted && message.media_ids.is_empty());
}

/// A signed URL reads the image (and its variants) with no other credential, only that image, and
/// only until it expires; a stranger gets none.
#[tokio::test]
pub(crate) async fn signed_urls_read_one_image_until_they_expire() {
    // Three seconds: long enough for the reads below on a loaded machine (a variant is made in a
    // debug build), short enough to wait out.
    let server = TestServer::start_with(|c| c.media.signed_url_ttl_secs = 3);
    let (ana, carol) = (server.user("ana").await, server.user("carol").await);
    let (_, first) = upload(&server, &ana.auth.access_token, "image/png", picture(ImageFormat::Png)).await;
    let (_, second) = upload(&server, &ana.auth.access_token, "image/jpeg", picture(ImageFormat::Jpeg)).await;
    let (first, second) = (first["mediaId"].as_str().unwrap(), second["mediaId"].as_str().unwrap());
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let signed: Value = client
        .get(format!("{base}/v1/media/{first}/url"))
        .bearer_auth(&ana.auth.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = signed["url"].as_str().unwrap();
    // An int64: a string in protobuf's JSON.
    let expires_at_ms: i64 = signed["expiresAtMs"].as_str().unwrap().parse().unwrap();
    let signed_for_ms = expires_at_ms - tidings::domain::now_ms();
    assert!(
        (3000..=4100).contains(&signed_for_ms),
        "good for the configured 3 s at least, not much more: {signed_for_ms}"
    );
    assert!(url.starts_with(&format!("/v1/media/{first}?token=")), "{url}");
    let plain = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    let whole = plain(format!("{base}{url}")).await;
    assert_eq!(whole.status(), StatusCode::OK, "no header needed");
    assert_eq!(&whole.bytes().await.unwrap()[..], &picture(ImageFormat::Png)[..]);
    assert_eq!(plain(format!("{base}{url}&w=64")).await.status(), StatusCode::OK, "variants too");
    let token = url.split("token=").nth(1).unwrap();
    let other = plain(format!("{base}/v1/media/{second}?token={token}")).await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED, "only the image it was signed for");
    let mut forged = token.to_owned();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(plain(format!("{base}/v1/media/{first}?token={forged}")).await.status(), StatusCode::UNAUTHORIZED);
    let stranger = client.get(format!("{base}/v1/media/{first}/url")).bearer_auth(&carol.auth.access_token);
    assert_eq!(stranger.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // Expiry is checked, to the second it names.
    let left_ms = expires_at_ms - tidings::domain::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(left_ms.max(0) as u64 + 100)).await;
    let expired = plain(format!("{base}{url}")).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    let body: Value = expired.json().await.unwrap();
    assert_eq!(code(&body), "TOKEN_EXPIRED");
}

/// An image uploaded and never sent is deleted once `media.orphan_ttl_hours` have passed; one a
/// message shows stays.
#[tokio::test]
pub(crate) async fn images_never_sent_are_collected() {
    let server = TestServer::start_with(|c| {
        c.media.orphan_ttl_hours = 2.0 / 3600.0; // two seconds
        c.media.collect_every_secs = 1;
    });
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    let token = &ana.auth.access_token;
    let (_, sent) = upload(&server, token, "image/png", picture(ImageFormat::Png)).await;
    let sent = sent["mediaId"].as_str().unwrap().to_owned();
    let a = ana.connect().await;
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    a.request(send_images(room, "s1", "", &[&sent])).await.unwrap();
    let (_, kept) = upload(&server, token, "image/jpeg", picture(ImageFormat::Jpeg)).await;
    let never_sent = kept["mediaId"].as_str().unwrap().to_owned();
    let (_, avatar) = upload(&server, token, "image/gif", picture(ImageFormat::Gif)).await;
    let avatar = avatar["mediaId"].as_str().unwrap().to_owned();
    crate::profiles::set_profile(
        &a,
        wire::SetProfileRequest { avatar_media_id: Some(avatar.clone()), ..Default::default() },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while fetch(&server, token, &never_sent, &[]).await.status() == StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the image never sent is collected");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(fetch(&server, token, &never_sent, &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(fetch(&server, token, &sent, &[]).await.status(), StatusCode::OK, "the one in a message stays");
    assert_eq!(fetch(&server, &bob.auth.access_token, &sent, &[]).await.status(), StatusCode::OK);
    assert_eq!(fetch(&server, token, &avatar, &[]).await.status(), StatusCode::OK, "an avatar stays");
}

/// Uploads are limited per user (`media.uploads_per_minute_per_user`): beyond the burst, 429
/// RATE_LIMITED with Retry-After, before the body is read; another user is not affected.
#[tokio::test]
async fn uploads_beyond_the_users_rate_are_refused() {
    let server = TestServer::start_with(|c| c.media.uploads_per_minute_per_user = 2);
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    for _ in 0..2 {
        let (status, _) = upload(&server, &ana.auth.access_token, "image/png", picture(ImageFormat::Png)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/media", server.addr))
        .bearer_auth(&ana.auth.access_token)
        .header("content-type", "image/png")
        .body(picture(ImageFormat::Png))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "one upload every 30 s at 2 a minute: {wait}");
    assert_eq!(code(&response.json().await.unwrap()), "RATE_LIMITED");
    let (status, _) = upload(&server, &bob.auth.access_token, "image/png", picture(ImageFormat::Png)).await;
    assert_eq!(status, StatusCode::CREATED, "bob has his own allowance");
}

//! Profiles over the WebSocket: set, read, search; bad changes name their field; an avatar is
//! readable by anyone logged in and cached publicly, while a chat image stays private.

use image::ImageFormat;
use reqwest::StatusCode;
use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tidings_client::{ClientError, Connection};
use wire::client_frame::Request as Req;
use wire::reply::Result as Answer;

use crate::harness::*;
use crate::media::{fetch, picture, upload};

pub(crate) async fn set_profile(
    conn: &Connection,
    request: wire::SetProfileRequest,
) -> Result<wire::Profile, ClientError> {
    match conn.request(Req::SetProfile(request)).await? {
        Answer::Profile(profile) => Ok(profile),
        other => panic!("a profile answers a change: {other:?}"),
    }
}

async fn get_profiles(
    conn: &Connection,
    user_ids: Vec<u64>,
    usernames: &[&str],
) -> Result<Vec<wire::Profile>, ClientError> {
    let usernames = usernames.iter().map(|n| n.to_string()).collect();
    match conn.request(Req::GetProfiles(wire::GetProfilesRequest { user_ids, usernames })).await? {
        Answer::Profiles(list) => Ok(list.profiles),
        other => panic!("a list answers a read: {other:?}"),
    }
}

async fn search(conn: &Connection, prefix: &str) -> Result<Vec<String>, ClientError> {
    let request = wire::SearchUsersRequest { prefix: prefix.into(), limit: 0 };
    match conn.request(Req::SearchUsers(request)).await? {
        Answer::Profiles(list) => Ok(list.profiles.into_iter().map(|p| p.username).collect()),
        other => panic!("a list answers a search: {other:?}"),
    }
}

/// The error's code and field.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (wire::ErrorCode, String) {
    match result {
        Err(ClientError::Server(e)) => (wire::ErrorCode::try_from(e.code).unwrap(), e.field),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test]
pub(crate) async fn profiles_are_set_read_and_found_by_name() {
    let server = TestServer::start();
    let (ana, bob, _) = (server.user("ana_s").await, server.user("bob").await, server.user("anatole").await);
    let (a, b) = (ana.connect().await, bob.connect().await);

    // A user who never set a profile has the defaults.
    let fresh = get_profiles(&b, vec![ana.id()], &[]).await.unwrap();
    assert_eq!(fresh, vec![wire::Profile { user_id: ana.id(), username: "ana_s".into(), ..Default::default() }]);

    let change = wire::SetProfileRequest {
        display_name: Some("  Ana María Silva ".into()),
        bio: Some("photos\nand tea".into()),
        birthday: Some("1990-05-17".into()),
        ..Default::default()
    };
    let mine = set_profile(&a, change).await.unwrap();
    assert_eq!(
        (mine.display_name.as_str(), mine.bio.as_str(), mine.birthday.as_str(), mine.private),
        ("Ana María Silva", "photos\nand tea", "1990-05-17", false)
    );
    // Only the fields a change sets: the rest stay.
    let mine = set_profile(&a, wire::SetProfileRequest { private: Some(true), ..Default::default() }).await.unwrap();
    assert_eq!((mine.display_name.as_str(), mine.private), ("Ana María Silva", true));

    // Others see it by id or by username, without the birthday; unknown users are left out.
    let seen = get_profiles(&b, vec![ana.id(), 999_999], &["ana_s", "nobody"]).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].display_name.as_str(), seen[0].birthday.as_str()), ("Ana María Silva", ""));
    assert_eq!(get_profiles(&a, vec![ana.id()], &[]).await.unwrap()[0].birthday, "1990-05-17", "but she does");

    // Found by a prefix of the username or of any word of the name, whatever the case.
    assert_eq!(search(&b, "ANA").await.unwrap(), vec!["ana_s", "anatole"]);
    assert_eq!(search(&b, "ana m").await.unwrap(), vec!["ana_s"]);
    assert_eq!(search(&b, "silv").await.unwrap(), vec!["ana_s"]);
    assert_eq!(search(&b, "marí").await.unwrap(), vec!["ana_s"]);
    assert_eq!(search(&b, "zz").await.unwrap(), Vec::<String>::new());
    assert_eq!(refused(search(&b, " a ").await), (wire::ErrorCode::InvalidArgument, "prefix".into()));

    // A new name replaces the old one in searches; an empty string clears it.
    set_profile(&a, wire::SetProfileRequest { display_name: Some("Zoe".into()), ..Default::default() }).await.unwrap();
    assert_eq!(search(&b, "silv").await.unwrap(), Vec::<String>::new());
    assert_eq!(search(&b, "zo").await.unwrap(), vec!["ana_s"]);
    let cleared = set_profile(&a, wire::SetProfileRequest { display_name: Some(String::new()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(cleared.display_name, "");
    assert_eq!(search(&b, "zo").await.unwrap(), Vec::<String>::new());
    assert_eq!(search(&b, "ana_").await.unwrap(), vec!["ana_s"], "the username still finds her");

    // The JSON encoding carries the same profile.
    let json = Connection::connect(&server.ws_base(), &bob.auth.access_token, Encoding::Json).await.unwrap();
    assert_eq!(get_profiles(&json, vec![ana.id()], &[]).await.unwrap()[0].username, "ana_s");
}

#[tokio::test]
pub(crate) async fn bad_profile_changes_are_refused_naming_their_field() {
    let server = TestServer::start();
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    let a = ana.connect().await;
    let invalid = |field: &str| (wire::ErrorCode::InvalidArgument, field.to_owned());
    let with = |f: fn(&mut wire::SetProfileRequest)| {
        let mut request = wire::SetProfileRequest::default();
        f(&mut request);
        request
    };
    let cases = [
        (with(|r| r.display_name = Some("x".repeat(65))), invalid("display_name")),
        (with(|r| r.display_name = Some("tab\there".into())), invalid("display_name")),
        (with(|r| r.bio = Some("é".repeat(151))), invalid("bio")),
        (with(|r| r.birthday = Some("1990-02-30".into())), invalid("birthday")),
        (with(|r| r.birthday = Some("2999-01-01".into())), invalid("birthday")),
        (with(|r| r.avatar_media_id = Some("not-a-media-id".into())), invalid("avatar_media_id")),
        (
            with(|r| r.avatar_media_id = Some("00112233445566778899aabbccddeeff".into())),
            (wire::ErrorCode::NotFound, "avatar_media_id".into()),
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(refused(set_profile(&a, request.clone()).await), expected, "{request:?}");
    }
    // Someone else's image cannot be one's avatar.
    let (_, theirs) = upload(&server, &bob.auth.access_token, "image/png", picture(ImageFormat::Png)).await;
    let theirs = theirs["mediaId"].as_str().unwrap().to_owned();
    let taken = set_profile(&a, wire::SetProfileRequest { avatar_media_id: Some(theirs), ..Default::default() }).await;
    assert_eq!(refused(taken).0, wire::ErrorCode::Forbidden);
    // Nothing of the refused changes stuck.
    let mine = get_profiles(&a, vec![ana.id()], &[]).await.unwrap();
    assert_eq!(mine, vec![wire::Profile { user_id: ana.id(), username: "ana".into(), ..Default::default() }]);
    assert_eq!(refused(get_profiles(&a, vec![1; 101], &[]).await), invalid("user_ids"));
}

#[tokio::test]
pub(crate) async fn an_avatar_is_readable_by_anyone_and_cached_publicly_a_chat_image_is_not() {
    let server = TestServer::start();
    let (ana, bob, cy) = (server.user("ana").await, server.user("bob").await, server.user("cyd").await);
    let token = &ana.auth.access_token;
    let (_, avatar) = upload(&server, token, "image/jpeg", picture(ImageFormat::Jpeg)).await;
    let avatar = avatar["mediaId"].as_str().unwrap().to_owned();
    let (_, photo) = upload(&server, token, "image/png", picture(ImageFormat::Png)).await;
    let photo = photo["mediaId"].as_str().unwrap().to_owned();
    let stranger = &cy.auth.access_token;
    assert_eq!(fetch(&server, stranger, &avatar, &[]).await.status(), StatusCode::FORBIDDEN, "not yet an avatar");

    let a = ana.connect().await;
    let change = wire::SetProfileRequest { avatar_media_id: Some(avatar.clone()), ..Default::default() };
    assert_eq!(set_profile(&a, change).await.unwrap().avatar_media_id, avatar);
    let seen = get_profiles(&cy.connect().await, vec![ana.id()], &[]).await.unwrap();
    assert_eq!(seen[0].avatar_media_id, avatar);
    for query in ["", "?w=32&h=32&fit=cover&format=webp"] {
        let response = fetch(&server, stranger, &format!("{avatar}{query}"), &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        assert_eq!(response.headers()["cache-control"], "public, max-age=31536000, immutable", "{query}");
    }

    // A chat image: its room's members only, and never in a shared cache.
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    let send = wire::SendMessageRequest {
        room_id: room,
        client_msg_id: "p1".into(),
        text: String::new(),
        reply_to_seq: 0,
        media_ids: vec![photo.clone()],
    };
    a.request(Req::SendMessage(send)).await.unwrap();
    let response = fetch(&server, &bob.auth.access_token, &photo, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "private, max-age=31536000, immutable");
    assert_eq!(fetch(&server, stranger, &photo, &[]).await.status(), StatusCode::FORBIDDEN);

    // Clearing the avatar takes it off the profile; the image stays readable (others may have it).
    let cleared =
        set_profile(&a, wire::SetProfileRequest { avatar_media_id: Some(String::new()), ..Default::default() });
    assert_eq!(cleared.await.unwrap().avatar_media_id, "");
}

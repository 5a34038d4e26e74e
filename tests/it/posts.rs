//! Photo posts over the WebSocket: posting (retries make one post), reading, listing, deleting,
//! bad posts with their fields, and who may see a post and its photos (privacy and blocks).

use image::ImageFormat;
use reqwest::StatusCode;
use tidings_client::tidings_proto::v1 as wire;
use tidings_client::{ClientError, Connection};
use wire::client_frame::Request as Req;
use wire::reply::Result as Answer;

use crate::harness::*;
use crate::media::{fetch, picture, upload};
use crate::profiles::set_profile;

pub(crate) async fn photo(server: &TestServer, user: &TestUser, format: ImageFormat) -> String {
    let (status, info) = upload(server, &user.auth.access_token, format.to_mime_type(), picture(format)).await;
    assert_eq!(status, StatusCode::CREATED);
    info["mediaId"].as_str().unwrap().to_owned()
}

pub(crate) fn new_post(client_post_id: &str, media_ids: Vec<String>, caption: &str) -> wire::CreatePostRequest {
    wire::CreatePostRequest {
        client_post_id: client_post_id.into(),
        media_ids,
        caption: caption.into(),
        location: None,
    }
}

pub(crate) async fn create(conn: &Connection, request: wire::CreatePostRequest) -> Result<wire::Post, ClientError> {
    match conn.request(Req::CreatePost(request)).await? {
        Answer::Post(post) => Ok(post),
        other => panic!("a post answers: {other:?}"),
    }
}

async fn get(conn: &Connection, post_id: u64) -> Result<wire::Post, ClientError> {
    match conn.request(Req::GetPost(wire::GetPostRequest { post_id })).await? {
        Answer::Post(post) => Ok(post),
        other => panic!("a post answers: {other:?}"),
    }
}

async fn list(conn: &Connection, user_id: u64, cursor: &str, limit: u32) -> Result<wire::PostPage, ClientError> {
    match conn.request(Req::ListPosts(wire::ListPostsRequest { user_id, cursor: cursor.into(), limit })).await? {
        Answer::Posts(page) => Ok(page),
        other => panic!("a page answers: {other:?}"),
    }
}

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (wire::ErrorCode, String) {
    match result {
        Err(ClientError::Server(e)) => (wire::ErrorCode::try_from(e.code).unwrap(), e.field),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

async fn posts_count(conn: &Connection, user_id: u64) -> u64 {
    let request = wire::GetProfilesRequest { user_ids: vec![user_id], usernames: Vec::new() };
    match conn.request(Req::GetProfiles(request)).await.unwrap() {
        Answer::Profiles(list) => list.profiles[0].posts,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
pub(crate) async fn posts_are_made_once_read_listed_and_deleted() {
    let server = TestServer::start();
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    let (a, b) = (ana.connect().await, bob.connect().await);
    let photos = vec![photo(&server, &ana, ImageFormat::Jpeg).await, photo(&server, &ana, ImageFormat::Png).await];

    let mut request = new_post("p1", photos.clone(), "  sunset\nat the lake ");
    request.location = Some(wire::Location { lat: 46.5, lng: 6.6 });
    let first = create(&a, request.clone()).await.unwrap();
    assert_eq!(
        (first.author_id, first.media_ids.clone(), first.caption.as_str()),
        (ana.id(), photos.clone(), "sunset\nat the lake")
    );
    assert_eq!(first.location, Some(wire::Location { lat: 46.5, lng: 6.6 }));
    assert_eq!(create(&a, request).await.unwrap(), first, "a retry answers the same post");
    assert_eq!(get(&b, first.post_id).await.unwrap(), first);
    assert_eq!(posts_count(&b, ana.id()).await, 1);

    // Pages of a user's posts, newest first.
    let mut ids = vec![first.post_id];
    for i in 2..=5 {
        ids.push(create(&a, new_post(&format!("p{i}"), vec![photos[0].clone()], "")).await.unwrap().post_id);
    }
    ids.reverse();
    let page1 = list(&b, ana.id(), "", 3).await.unwrap();
    let page2 = list(&b, ana.id(), &page1.next_cursor, 3).await.unwrap();
    assert!(page2.next_cursor.is_empty());
    let listed: Vec<u64> = page1.posts.iter().chain(&page2.posts).map(|p| p.post_id).collect();
    assert_eq!(listed, ids);

    // Only the author deletes; then it is gone and counted out.
    assert_eq!(
        refused(b.request(Req::DeletePost(wire::DeletePostRequest { post_id: first.post_id })).await).0,
        wire::ErrorCode::Forbidden
    );
    a.request(Req::DeletePost(wire::DeletePostRequest { post_id: first.post_id })).await.unwrap();
    assert_eq!(refused(get(&b, first.post_id).await).0, wire::ErrorCode::NotFound);
    assert_eq!(posts_count(&b, ana.id()).await, 4);
}

#[tokio::test]
pub(crate) async fn bad_posts_are_refused_naming_their_field() {
    let server = TestServer::start();
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    let a = ana.connect().await;
    let mine = photo(&server, &ana, ImageFormat::Png).await;
    let theirs = photo(&server, &bob, ImageFormat::Gif).await;
    let invalid = |field: &str| (wire::ErrorCode::InvalidArgument, field.to_owned());
    let mut far = new_post("x", vec![mine.clone()], "");
    far.location = Some(wire::Location { lat: 91.0, lng: 0.0 });
    let cases = [
        (new_post("", vec![mine.clone()], ""), invalid("client_post_id")),
        (new_post("x", vec![], ""), invalid("media_ids")),
        (new_post("x", vec![mine.clone(); 11], ""), invalid("media_ids")),
        (new_post("x", vec!["nope".into()], ""), invalid("media_ids")),
        (
            new_post("x", vec!["00112233445566778899aabbccddeeff".into()], ""),
            (wire::ErrorCode::NotFound, "media_ids".into()),
        ),
        (new_post("x", vec![theirs], ""), (wire::ErrorCode::Forbidden, String::new())),
        (new_post("x", vec![mine.clone()], &"c".repeat(2201)), invalid("caption")),
        (far, invalid("location")),
    ];
    for (request, expected) in cases {
        assert_eq!(refused(create(&a, request.clone()).await), expected, "{request:?}");
    }
    assert_eq!(posts_count(&a, ana.id()).await, 0, "nothing was posted");
    assert_eq!(refused(get(&a, 0).await), invalid("post_id"));
    assert_eq!(refused(list(&a, ana.id(), "u12", 0).await), invalid("cursor"));
}

/// Who may see a post and its photos: anyone while the author is public; approved followers and
/// the author once private (others FORBIDDEN, photos 403); no one the author blocked (NOT_FOUND).
#[tokio::test]
pub(crate) async fn a_private_authors_posts_and_photos_are_for_followers_a_blockers_for_no_one() {
    let server = TestServer::start();
    let (ana, fan, stranger) = (server.user("ana").await, server.user("fan").await, server.user("stranger").await);
    let (a, f, s) = (ana.connect().await, fan.connect().await, stranger.connect().await);
    let media = photo(&server, &ana, ImageFormat::Jpeg).await;
    let post = create(&a, new_post("p", vec![media.clone()], "hi")).await.unwrap();
    assert_eq!(
        fetch(&server, &stranger.auth.access_token, &media, &[]).await.status(),
        StatusCode::OK,
        "public author"
    );

    set_profile(&a, wire::SetProfileRequest { private: Some(true), ..Default::default() }).await.unwrap();
    assert_eq!(refused(get(&s, post.post_id).await).0, wire::ErrorCode::Forbidden);
    assert_eq!(refused(list(&s, ana.id(), "", 0).await).0, wire::ErrorCode::Forbidden);
    assert_eq!(fetch(&server, &stranger.auth.access_token, &media, &[]).await.status(), StatusCode::FORBIDDEN);

    f.request(Req::Follow(wire::FollowRequest { user_id: ana.id() })).await.unwrap();
    assert_eq!(refused(get(&f, post.post_id).await).0, wire::ErrorCode::Forbidden, "a request is not a follow");
    let approve = wire::AnswerFollowRequest { user_id: fan.id(), approve: true };
    a.request(Req::AnswerFollowRequest(approve)).await.unwrap();
    assert_eq!(get(&f, post.post_id).await.unwrap(), post);
    assert_eq!(list(&f, ana.id(), "", 0).await.unwrap().posts, vec![post.clone()]);
    assert_eq!(fetch(&server, &fan.auth.access_token, &media, &[]).await.status(), StatusCode::OK);

    a.request(Req::Block(wire::BlockRequest { user_id: fan.id() })).await.unwrap();
    assert_eq!(refused(get(&f, post.post_id).await).0, wire::ErrorCode::NotFound);
    assert_eq!(refused(list(&f, ana.id(), "", 0).await).0, wire::ErrorCode::NotFound);
    assert_eq!(
        fetch(&server, &fan.auth.access_token, &media, &[]).await.status(),
        StatusCode::FORBIDDEN,
        "no longer a follower"
    );
}

/// Likes and comments over the WebSocket: counts exact while many like at once (twice each, as
/// retries), comments in pages, deleted by their author or the post's, and none for those who may
/// not see the post.
#[tokio::test]
pub(crate) async fn likes_and_comments_are_counted_and_follow_the_posts_visibility() {
    let server = TestServer::start();
    let (ana, bob, eve) = (server.user("ana").await, server.user("bob").await, server.user("eve").await);
    let (a, b, e) = (ana.connect().await, bob.connect().await, eve.connect().await);
    let media = photo(&server, &ana, ImageFormat::Png).await;
    let post_id = create(&a, new_post("p", vec![media], "")).await.unwrap().post_id;
    let like = |post_id| Req::LikePost(wire::LikePostRequest { post_id });
    let mut fans = Vec::new();
    for i in 0..10 {
        let fan = server.user(&format!("fan{i}")).await;
        let conn = fan.connect().await;
        fans.push((fan, conn));
    }
    let likes = fans.iter().flat_map(|(_, conn)| [conn, conn]).map(|conn| conn.request(like(post_id)));
    assert!(futures_util::future::join_all(likes).await.iter().all(|r| r.is_ok()));
    let seen = get(&b, post_id).await.unwrap();
    assert_eq!((seen.likes, seen.comments, seen.liked_by_me), (10, 0, false));
    assert!(get(&fans[0].1, post_id).await.unwrap().liked_by_me);
    fans[0].1.request(Req::UnlikePost(wire::UnlikePostRequest { post_id })).await.unwrap();
    assert_eq!(get(&b, post_id).await.unwrap().likes, 9);
    let Answer::Users(likers) =
        b.request(Req::ListLikes(wire::ListLikesRequest { post_id, cursor: String::new(), limit: 4 })).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((likers.profiles.len(), likers.next_cursor.is_empty()), (4, false));
    // The post's details name its latest likers (each once, only those who still like it), newest first.
    let latest = get(&b, post_id).await.unwrap().latest_liker_ids;
    assert_eq!(latest.len(), 3, "{latest:?}");
    assert!(latest.iter().all(|&id| id != fans[0].0.id() && fans.iter().any(|(f, _)| f.id() == id)), "{latest:?}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    b.request(like(post_id)).await.unwrap();
    assert_eq!(get(&a, post_id).await.unwrap().latest_liker_ids[0], bob.id());

    let comment = |client: &str, text: &str| {
        Req::Comment(wire::CommentRequest { post_id, client_comment_id: client.into(), text: text.into() })
    };
    let Answer::Comment(first) = b.request(comment("c1", " nice ")).await.unwrap() else { panic!() };
    assert_eq!((first.text.as_str(), first.author_id), ("nice", bob.id()));
    let Answer::Comment(again) = b.request(comment("c1", "nice")).await.unwrap() else { panic!() };
    assert_eq!(again, first, "a retry is the same comment");
    let Answer::Comment(second) = e.request(comment("c2", "meh")).await.unwrap() else { panic!() };
    assert_eq!(refused(b.request(comment("c3", "")).await), (wire::ErrorCode::InvalidArgument, "text".into()));
    let list = Req::ListComments(wire::ListCommentsRequest { post_id, cursor: String::new(), limit: 0 });
    let Answer::Comments(page) = a.request(list.clone()).await.unwrap() else { panic!() };
    assert_eq!(page.comments, vec![first.clone(), second.clone()]);
    let details = get(&a, post_id).await.unwrap();
    assert_eq!((details.comments, details.latest_comment), (2, Some(second.clone())), "the newest comment");
    let Answer::Posts(listed) = a
        .request(Req::ListPosts(wire::ListPostsRequest { user_id: ana.id(), cursor: String::new(), limit: 5 }))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(
        listed.posts[0].latest_liker_ids.is_empty() && listed.posts[0].latest_comment.is_none(),
        "only getPost names them"
    );
    // Bob may not delete eve's comment; ana (the post's author) may.
    let delete = |comment_id| Req::DeleteComment(wire::DeleteCommentRequest { post_id, comment_id });
    assert_eq!(refused(b.request(delete(second.comment_id)).await).0, wire::ErrorCode::Forbidden);
    a.request(delete(second.comment_id)).await.unwrap();
    b.request(delete(first.comment_id)).await.unwrap();
    assert_eq!(get(&a, post_id).await.unwrap().comments, 0);

    // Private now: eve, not a follower, can neither like nor comment nor read the comments.
    set_profile(&a, wire::SetProfileRequest { private: Some(true), ..Default::default() }).await.unwrap();
    assert_eq!(refused(e.request(like(post_id)).await).0, wire::ErrorCode::Forbidden);
    assert_eq!(refused(e.request(comment("c4", "hey")).await).0, wire::ErrorCode::Forbidden);
    assert_eq!(refused(e.request(list).await).0, wire::ErrorCode::Forbidden);
}

//! Activity over the WebSocket: follows, follow requests and their approval, likes and comments
//! reach the stream of whom they concern, grouped, once, never for one's own doing; they are read
//! and resumed like chat, with an unread count that seeing clears.

use image::ImageFormat;
use tidings_client::Connection;
use tidings_client::tidings_proto::v1 as wire;
use wire::client_frame::Request as Req;
use wire::reply::Result as Answer;
use wire::{ActivityKind, event::Kind};

use crate::harness::*;
use crate::posts::{create, new_post, photo};
use crate::profiles::set_profile;

/// What a test compares of an activity: kind, actor, group count and actors, text.
type Seen = (ActivityKind, u64, u32, Vec<u64>, String);

fn seen(activity: &wire::Activity) -> Seen {
    (
        ActivityKind::try_from(activity.kind).unwrap(),
        activity.actor_id,
        activity.group_count,
        activity.group_actor_ids.clone(),
        activity.text.clone(),
    )
}

fn activity(event: &wire::Event) -> &wire::Activity {
    match &event.kind {
        Some(Kind::Activity(a)) => a,
        other => panic!("expected an activity, got {other:?}"),
    }
}

/// The activities of a stream (skipping its other events), with their positions.
fn activities(events: &[wire::Event]) -> Vec<(u64, wire::Activity)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Activity(a)) => Some((e.pos, a.clone())),
            _ => None,
        })
        .collect()
}

pub(crate) async fn request(conn: &Connection, request: Req) -> Answer {
    conn.request(request).await.expect("answered")
}

pub(crate) async fn status(conn: &Connection) -> wire::ActivityStatus {
    match request(conn, Req::ActivityStatus(wire::ActivityStatusRequest {})).await {
        Answer::Activity(status) => status,
        other => panic!("an activity status answers: {other:?}"),
    }
}

pub(crate) async fn mark_seen(conn: &Connection, up_to_pos: u64) -> wire::ActivityStatus {
    match request(conn, Req::MarkActivitySeen(wire::MarkActivitySeenRequest { up_to_pos })).await {
        Answer::Activity(status) => status,
        other => panic!("an activity status answers: {other:?}"),
    }
}

#[tokio::test]
pub(crate) async fn follows_likes_and_comments_reach_the_owner_grouped_once_and_resume_like_chat() {
    let server = TestServer::start();
    let (ana, bob, cyd, dan) =
        (server.user("ana").await, server.user("bob").await, server.user("cyd").await, server.user("dan").await);
    let (mut a, _) = ana.connect_synced(0).await;
    let (b, c, d) = (bob.connect().await, cyd.connect().await, dan.connect().await);
    let (ana_id, bob_id, cyd_id, dan_id) = (ana.id(), bob.id(), cyd.id(), dan.id());
    let follow = |user_id| Req::Follow(wire::FollowRequest { user_id });
    let like = |post_id| Req::LikePost(wire::LikePostRequest { post_id });

    // Two new followers: one group, the newest actor first.
    request(&b, follow(ana_id)).await;
    let first = activity(&next_event(&mut a).await).clone();
    assert_eq!(seen(&first), (ActivityKind::Followed, bob_id, 1, vec![bob_id], String::new()));
    request(&c, follow(ana_id)).await;
    let second = activity(&next_event(&mut a).await).clone();
    assert_eq!(seen(&second), (ActivityKind::Followed, cyd_id, 2, vec![cyd_id, bob_id], String::new()));
    assert_eq!(second.group_id, first.group_id, "one group");
    assert!(second.activity_id > first.activity_id);
    // Following again, or again after unfollowing, announces nothing more.
    request(&b, follow(ana_id)).await;
    request(&b, Req::Unfollow(wire::UnfollowRequest { user_id: ana_id })).await;
    request(&b, follow(ana_id)).await;

    // Likes: a retry, an unlike and like again, and ana's own like announce nothing.
    let post_id =
        create(&a, new_post("p", vec![photo(&server, &ana, ImageFormat::Png).await], "")).await.unwrap().post_id;
    request(&b, like(post_id)).await;
    request(&b, like(post_id)).await;
    request(&b, Req::UnlikePost(wire::UnlikePostRequest { post_id })).await;
    request(&b, like(post_id)).await;
    request(&a, like(post_id)).await;
    request(&c, like(post_id)).await;
    let comment = Req::Comment(wire::CommentRequest { post_id, client_comment_id: "c".into(), text: "so good".into() });
    let Answer::Comment(made) = request(&d, comment.clone()).await else { panic!() };
    request(&d, comment).await;
    let own = Req::Comment(wire::CommentRequest { post_id, client_comment_id: "o".into(), text: "thanks".into() });
    request(&a, own).await;

    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(activity(&next_event(&mut a).await).clone());
    }
    let expected: Vec<Seen> = vec![
        (ActivityKind::Liked, bob_id, 1, vec![bob_id], String::new()),
        (ActivityKind::Liked, cyd_id, 2, vec![cyd_id, bob_id], String::new()),
        (ActivityKind::Commented, dan_id, 1, vec![dan_id], "so good".into()),
    ];
    assert_eq!(live.iter().map(seen).collect::<Vec<_>>(), expected);
    assert!(live.iter().all(|l| l.post_id == post_id));
    assert_eq!(live[2].comment_id, made.comment_id);

    // Another device resumes the stream from the start: the same activities, in the same order,
    // and nothing else was announced.
    let (_a2, events) = ana.another_device("tablet").await.connect_synced(0).await;
    let replayed = activities(&events);
    let mut all = vec![first.clone(), second.clone()];
    all.extend(live.iter().cloned());
    assert_eq!(replayed.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(), all);

    // Unread counts what is past the seen mark, which never moves back.
    assert_eq!((status(&a).await.unread, status(&a).await.seen_up_to_pos), (5, 0));
    let third_pos = replayed[2].0;
    let now = mark_seen(&a, third_pos).await;
    assert_eq!((now.unread, now.seen_up_to_pos), (2, third_pos));
    let back = mark_seen(&a, 1).await;
    assert_eq!((back.unread, back.seen_up_to_pos), (2, third_pos), "the mark never moves back");
    let all_seen = mark_seen(&a, replayed.last().unwrap().0).await;
    assert_eq!(all_seen.unread, 0);
}

#[tokio::test]
pub(crate) async fn a_private_account_is_asked_and_the_asker_told_when_it_approves() {
    let server = TestServer::start();
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    let (mut a, _) = ana.connect_synced(0).await;
    let (mut b, _) = bob.connect_synced(0).await;
    set_profile(&a, wire::SetProfileRequest { private: Some(true), ..Default::default() }).await.unwrap();

    request(&b, Req::Follow(wire::FollowRequest { user_id: ana.id() })).await;
    let asked = activity(&next_event(&mut a).await).clone();
    assert_eq!(seen(&asked), (ActivityKind::FollowRequested, bob.id(), 1, vec![bob.id()], String::new()));
    let approve = Req::AnswerFollowRequest(wire::AnswerFollowRequest { user_id: bob.id(), approve: true });
    request(&a, approve.clone()).await;
    request(&a, approve).await;
    let accepted = activity(&next_event(&mut b).await).clone();
    assert_eq!(seen(&accepted), (ActivityKind::FollowAccepted, ana.id(), 1, vec![ana.id()], String::new()));
    // The retried approval announced nothing more; neither did anything else.
    let (_b2, events) = bob.another_device("tablet").await.connect_synced(0).await;
    assert_eq!(activities(&events).len(), 1);
    let (_a2, events) = ana.another_device("tablet").await.connect_synced(0).await;
    assert_eq!(activities(&events).len(), 1, "approving announces no follow to the approver");
}

#[tokio::test]
pub(crate) async fn turning_public_approves_whoever_asked_and_tells_them() {
    let server = TestServer::start();
    let (ana, bob, cyd) = (server.user("ana").await, server.user("bob").await, server.user("cyd").await);
    let a = ana.connect().await;
    let (mut b, _) = bob.connect_synced(0).await;
    let c = cyd.connect().await;
    set_profile(&a, wire::SetProfileRequest { private: Some(true), ..Default::default() }).await.unwrap();
    for conn in [&b, &c] {
        let Answer::Follow(status) = request(conn, Req::Follow(wire::FollowRequest { user_id: ana.id() })).await else {
            panic!()
        };
        assert_eq!(status.state, wire::FollowState::Requested as i32);
    }
    let public = set_profile(&a, wire::SetProfileRequest { private: Some(false), ..Default::default() }).await.unwrap();
    assert_eq!(public.followers, 2, "both requests approved");
    let accepted = activity(&next_event(&mut b).await).clone();
    assert_eq!(seen(&accepted), (ActivityKind::FollowAccepted, ana.id(), 1, vec![ana.id()], String::new()));
    let list = wire::ListFollowsRequest {
        user_id: 0,
        list: wire::FollowList::Requests as i32,
        cursor: String::new(),
        limit: 0,
    };
    let Answer::Users(waiting) = request(&a, Req::ListFollows(list)).await else { panic!() };
    assert!(waiting.profiles.is_empty(), "no request left waiting");
}

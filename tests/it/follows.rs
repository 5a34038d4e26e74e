//! Follows and blocks over the WebSocket: public and private accounts, requests, lists in pages,
//! blocks both ways, and counts that stay exact while many follow and unfollow at once.

use tidings_client::tidings_proto::v1 as wire;
use tidings_client::{ClientError, Connection};
use wire::client_frame::Request as Req;
use wire::reply::Result as Answer;
use wire::{FollowList, FollowState};

use crate::harness::*;
use crate::profiles::set_profile;

async fn follow(conn: &Connection, user_id: u64) -> Result<FollowState, ClientError> {
    match conn.request(Req::Follow(wire::FollowRequest { user_id })).await? {
        Answer::Follow(status) => Ok(FollowState::try_from(status.state).unwrap()),
        other => panic!("a follow status answers a follow: {other:?}"),
    }
}

async fn status(conn: &Connection, request: Req) -> Result<FollowState, ClientError> {
    match conn.request(request).await? {
        Answer::Follow(status) => Ok(FollowState::try_from(status.state).unwrap()),
        other => panic!("a follow status answers: {other:?}"),
    }
}

async fn page(
    conn: &Connection,
    user_id: u64,
    list: FollowList,
    cursor: &str,
    limit: u32,
) -> Result<wire::UserPage, ClientError> {
    let request = wire::ListFollowsRequest { user_id, list: list as i32, cursor: cursor.into(), limit };
    match conn.request(Req::ListFollows(request)).await? {
        Answer::Users(page) => Ok(page),
        other => panic!("a page answers a list: {other:?}"),
    }
}

/// The usernames of a whole list, read page by page.
async fn whole_list(conn: &Connection, user_id: u64, list: FollowList, limit: u32) -> Vec<String> {
    let (mut names, mut cursor) = (Vec::new(), String::new());
    for _ in 0..100 {
        let got = page(conn, user_id, list, &cursor, limit).await.unwrap();
        names.extend(got.profiles.into_iter().map(|p| p.username));
        if got.next_cursor.is_empty() {
            return names;
        }
        cursor = got.next_cursor;
    }
    panic!("the list never ended");
}

async fn profile(conn: &Connection, user_id: u64) -> Option<wire::Profile> {
    let request = wire::GetProfilesRequest { user_ids: vec![user_id], usernames: Vec::new() };
    match conn.request(Req::GetProfiles(request)).await.unwrap() {
        Answer::Profiles(list) => list.profiles.into_iter().next(),
        other => panic!("{other:?}"),
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> wire::ErrorCode {
    match result {
        Err(e) => e.code().expect("a typed error"),
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

#[tokio::test]
pub(crate) async fn public_and_private_accounts_are_followed_as_their_owners_chose() {
    let server = TestServer::start();
    let (ana, bob, cyd) = (server.user("ana").await, server.user("bob").await, server.user("cyd").await);
    let (a, b, c) = (ana.connect().await, bob.connect().await, cyd.connect().await);

    // Public: at once, counted on both sides, seen from both sides.
    assert_eq!(follow(&a, bob.id()).await.unwrap(), FollowState::Following);
    assert_eq!(follow(&a, bob.id()).await.unwrap(), FollowState::Following, "again: no change");
    let seen = profile(&a, bob.id()).await.unwrap();
    assert_eq!(
        (seen.followers, seen.following, seen.my_follow, seen.follows_me),
        (1, 0, FollowState::Following as i32, false)
    );
    let seen = profile(&b, ana.id()).await.unwrap();
    assert_eq!((seen.following, seen.my_follow, seen.follows_me), (1, FollowState::None as i32, true));
    assert_eq!(whole_list(&c, bob.id(), FollowList::Followers, 10).await, vec!["ana"]);
    assert_eq!(whole_list(&c, ana.id(), FollowList::Following, 10).await, vec!["bob"]);
    assert_eq!(
        status(&a, Req::Unfollow(wire::UnfollowRequest { user_id: bob.id() })).await.unwrap(),
        FollowState::None
    );
    assert_eq!(profile(&c, bob.id()).await.unwrap().followers, 0);

    // Private: a request, approved or declined by the owner; the lists are for followers only.
    set_profile(&c, wire::SetProfileRequest { private: Some(true), ..Default::default() }).await.unwrap();
    assert_eq!(follow(&a, cyd.id()).await.unwrap(), FollowState::Requested);
    assert_eq!(follow(&b, cyd.id()).await.unwrap(), FollowState::Requested);
    assert_eq!(profile(&c, cyd.id()).await.unwrap().followers, 0, "a request counts for nothing");
    let mut requests = whole_list(&c, 0, FollowList::Requests, 10).await;
    requests.sort();
    assert_eq!(requests, vec!["ana", "bob"]);
    assert_eq!(code(page(&a, cyd.id(), FollowList::Followers, "", 0).await), wire::ErrorCode::Forbidden);
    assert_eq!(code(page(&a, cyd.id(), FollowList::Requests, "", 0).await), wire::ErrorCode::Forbidden);
    let approve = |user_id, approve| Req::AnswerFollowRequest(wire::AnswerFollowRequest { user_id, approve });
    assert_eq!(status(&c, approve(ana.id(), true)).await.unwrap(), FollowState::Following);
    assert_eq!(status(&c, approve(ana.id(), true)).await.unwrap(), FollowState::Following, "a retry");
    assert_eq!(status(&c, approve(bob.id(), false)).await.unwrap(), FollowState::None);
    assert_eq!(code(status(&c, approve(ana.id(), false)).await), wire::ErrorCode::NotFound, "no request pending");
    assert_eq!(whole_list(&a, cyd.id(), FollowList::Followers, 10).await, vec!["ana"], "a follower may look");
    assert_eq!(code(page(&b, cyd.id(), FollowList::Followers, "", 0).await), wire::ErrorCode::Forbidden);
    assert_eq!(whole_list(&c, 0, FollowList::Requests, 10).await, Vec::<String>::new());
    // The owner removes a follower.
    let removed = status(&c, Req::RemoveFollower(wire::RemoveFollowerRequest { user_id: ana.id() })).await;
    assert_eq!(removed.unwrap(), FollowState::None);
    assert_eq!(profile(&a, cyd.id()).await.unwrap().followers, 0);

    // Bad requests.
    assert_eq!(code(follow(&a, ana.id()).await), wire::ErrorCode::InvalidArgument, "oneself");
    assert_eq!(code(follow(&a, 987_654_321).await), wire::ErrorCode::NotFound);
    assert_eq!(code(page(&a, bob.id(), FollowList::Followers, "garbage", 0).await), wire::ErrorCode::InvalidArgument);
    assert_eq!(code(page(&a, bob.id(), FollowList::Unspecified, "", 0).await), wire::ErrorCode::InvalidArgument);
}

#[tokio::test]
pub(crate) async fn a_block_ends_follows_both_ways_and_hides_the_blocker() {
    let server = TestServer::start();
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    let (a, b) = (ana.connect().await, bob.connect().await);
    assert_eq!(follow(&a, bob.id()).await.unwrap(), FollowState::Following);
    assert_eq!(follow(&b, ana.id()).await.unwrap(), FollowState::Following);

    b.request(Req::Block(wire::BlockRequest { user_id: ana.id() })).await.unwrap();
    let seen = profile(&b, ana.id()).await.unwrap();
    assert_eq!((seen.followers, seen.following), (0, 0), "both follows ended");
    assert_eq!(whole_list(&b, 0, FollowList::Blocked, 10).await, vec!["ana"]);
    // To ana, bob no longer exists; she cannot follow him or start a chat with him.
    assert_eq!(profile(&a, bob.id()).await, None);
    let search = wire::SearchUsersRequest { prefix: "bo".into(), limit: 0 };
    let Answer::Profiles(found) = a.request(Req::SearchUsers(search.clone())).await.unwrap() else { panic!() };
    assert!(found.profiles.is_empty(), "{found:?}");
    assert_eq!(code(follow(&a, bob.id()).await), wire::ErrorCode::NotFound);
    assert_eq!(code(a.create_direct(bob.id()).await), wire::ErrorCode::Forbidden);
    // Nor can bob follow the one he blocked, until he unblocks.
    assert_eq!(code(follow(&b, ana.id()).await), wire::ErrorCode::Forbidden);
    assert_eq!(code(b.create_direct(ana.id()).await), wire::ErrorCode::Forbidden);

    b.request(Req::Unblock(wire::UnblockRequest { user_id: ana.id() })).await.unwrap();
    assert!(profile(&a, bob.id()).await.is_some());
    assert_eq!(follow(&a, bob.id()).await.unwrap(), FollowState::Following);
    a.create_direct(bob.id()).await.unwrap();
}

/// Thirty users follow one at once, then half unfollow while the others follow again (each
/// request sent twice, as a client retrying would): the counts match the lists exactly.
#[tokio::test]
pub(crate) async fn counts_stay_exact_while_many_follow_and_unfollow_at_once() {
    const FANS: usize = 30;
    let server = TestServer::start();
    let star = server.user("star").await;
    let mut fans = Vec::new();
    for i in 0..FANS {
        let fan = server.user(&format!("fan{i:02}")).await;
        let conn = fan.connect().await;
        fans.push((fan, conn));
    }
    let all = fans.iter().map(|(_, conn)| follow(conn, star.id()));
    let states = futures_util::future::join_all(all).await;
    assert!(states.iter().all(|s| matches!(s, Ok(FollowState::Following))), "{states:?}");
    let s = star.connect().await;
    assert_eq!(profile(&s, star.id()).await.unwrap().followers, FANS as u64);

    let star_id = star.id();
    let churn = fans.iter().enumerate().map(|(i, (_, conn))| async move {
        for _ in 0..2 {
            if i % 2 == 0 {
                status(conn, Req::Unfollow(wire::UnfollowRequest { user_id: star_id })).await.unwrap();
            } else {
                follow(conn, star_id).await.unwrap();
            }
        }
    });
    futures_util::future::join_all(churn).await;
    let listed = whole_list(&s, star.id(), FollowList::Followers, 7).await;
    let expected: Vec<String> = (0..FANS).filter(|i| i % 2 == 1).map(|i| format!("fan{i:02}")).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "each follower once, in pages of 7");
    assert_eq!(profile(&s, star.id()).await.unwrap().followers, (FANS / 2) as u64);
}

/// A block stops messages both ways in a direct room the two already share; lifting it lets them
/// write again. The room's history stays.
#[tokio::test]
pub(crate) async fn a_block_stops_messages_in_an_existing_direct_room_both_ways() {
    let server = TestServer::start();
    let DirectPair { a, b, room, .. } = direct_pair(&server).await;
    a.send_text(room, "m1", "hi").await.unwrap();
    b.send_text(room, "m2", "hello").await.unwrap();
    b.request(Req::Block(wire::BlockRequest { user_id: ana_id(&a).await })).await.unwrap();
    for (conn, id) in [(&a, "m3"), (&b, "m4")] {
        let refused = conn.send_text(room, id, "still there?").await.unwrap_err();
        assert_eq!(code_of(&refused), wire::ErrorCode::Forbidden);
    }
    b.request(Req::Unblock(wire::UnblockRequest { user_id: ana_id(&a).await })).await.unwrap();
    a.send_text(room, "m5", "again").await.unwrap();
}

/// Ana's user id, as anyone reads it.
async fn ana_id(conn: &Connection) -> u64 {
    let request = wire::GetProfilesRequest { user_ids: Vec::new(), usernames: vec!["ana".into()] };
    match conn.request(Req::GetProfiles(request)).await.unwrap() {
        Answer::Profiles(list) => list.profiles[0].user_id,
        other => panic!("{other:?}"),
    }
}

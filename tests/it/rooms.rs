//! Groups and their members, permissions, the room list and history paging.

use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req};

use crate::harness::*;

fn body(e: &wire::Event) -> &wire::room_entry::Body {
    entry(e).body.as_ref().unwrap()
}

#[tokio::test]
pub(crate) async fn owners_and_admins_manage_groups_members_do_not() {
    let server = TestServer::start();
    let owner = server.user("owner").await;
    let admin = server.user("admin").await;
    let member = server.user("member").await;
    let newcomer = server.user("newcomer").await;
    let (o, _) = owner.connect_synced(0).await;
    let (a, _) = admin.connect_synced(0).await;
    let (m, _) = member.connect_synced(0).await;
    let (mut n, _) = newcomer.connect_synced(0).await;
    let room = o.create_group("  crew ", vec![admin.id(), member.id()]).await.unwrap();
    assert_eq!(room.name, "crew");
    let id = room.room_id;
    let req_role =
        |user, role: wire::Role| Req::SetRole(wire::SetRoleRequest { room_id: id, user_id: user, role: role as i32 });
    let add = |users: Vec<u64>| Req::AddMembers(wire::AddMembersRequest { room_id: id, user_ids: users });
    let remove = |user| Req::RemoveMember(wire::RemoveMemberRequest { room_id: id, user_id: user });
    let rename = |name: &str| Req::RenameRoom(wire::RenameRoomRequest { room_id: id, name: name.into() });

    // Only the owner changes roles.
    assert_eq!(
        code_of(&a.request(req_role(member.id(), wire::Role::Admin)).await.unwrap_err()),
        wire::ErrorCode::Forbidden
    );
    o.request(req_role(admin.id(), wire::Role::Admin)).await.unwrap();
    assert_eq!(
        code_of(&o.request(req_role(member.id(), wire::Role::Owner)).await.unwrap_err()),
        wire::ErrorCode::InvalidArgument
    );

    // Members cannot add, rename or remove; admins can.
    assert_eq!(code_of(&m.request(add(vec![newcomer.id()])).await.unwrap_err()), wire::ErrorCode::Forbidden);
    assert_eq!(code_of(&m.request(rename("mine")).await.unwrap_err()), wire::ErrorCode::Forbidden);
    assert_eq!(code_of(&a.request(add(vec![987654321])).await.unwrap_err()), wire::ErrorCode::NotFound);
    a.request(add(vec![newcomer.id()])).await.unwrap();
    // The newcomer learns of the room through its stream.
    match body(&next_event(&mut n).await) {
        wire::room_entry::Body::MembersAdded(added) => assert_eq!(added.user_ids, [newcomer.id()]),
        other => panic!("{other:?}"),
    }
    a.request(rename("the crew")).await.unwrap();
    assert!(matches!(body(&next_event(&mut n).await), wire::room_entry::Body::Renamed(r) if r.name == "the crew"));
    // An admin cannot remove the owner or another admin.
    assert_eq!(code_of(&a.request(remove(owner.id())).await.unwrap_err()), wire::ErrorCode::Forbidden);
    a.request(remove(newcomer.id())).await.unwrap();
    assert!(
        matches!(body(&next_event(&mut n).await), wire::room_entry::Body::MemberRemoved(r) if r.user_id == newcomer.id())
    );
    // Once removed: no reading, no sending, no more events.
    let err = n.send_text(id, "x", "let me in").await.unwrap_err();
    assert_eq!(code_of(&err), wire::ErrorCode::NotAMember);
    let err = n.history(wire::HistoryRequest { room_id: id, ..Default::default() }).await.unwrap_err();
    assert_eq!(code_of(&err), wire::ErrorCode::NotAMember);
    o.send_text(id, "after", "secret").await.unwrap();
    assert!(n.next_within(std::time::Duration::from_millis(300)).await.is_err(), "removed members get nothing");

    // Leaving.
    m.request(Req::LeaveRoom(wire::LeaveRoomRequest { room_id: id })).await.unwrap();
    assert_eq!(code_of(&m.send_text(id, "y", "hi").await.unwrap_err()), wire::ErrorCode::NotAMember);
    let rooms = o.list_rooms().await.unwrap();
    let members: Vec<u64> = rooms[0].members.iter().map(|m| m.user_id).collect();
    assert_eq!(members.len(), 2);
    assert!(members.contains(&owner.id()) && members.contains(&admin.id()));
    let roles: Vec<i32> = rooms[0].members.iter().map(|m| m.role).collect();
    assert!(roles.contains(&(wire::Role::Owner as i32)) && roles.contains(&(wire::Role::Admin as i32)));

    // Direct rooms have no management.
    let direct = o.create_direct(member.id()).await.unwrap().room_id;
    let leave = Req::LeaveRoom(wire::LeaveRoomRequest { room_id: direct });
    assert_eq!(code_of(&o.request(leave).await.unwrap_err()), wire::ErrorCode::Forbidden);
}

#[tokio::test]
pub(crate) async fn strangers_can_neither_read_nor_write_nor_probe() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let eve = server.user("eve").await;
    let (a, _) = ana.connect_synced(0).await;
    let (e, _) = eve.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    a.send_text(room, "1", "private").await.unwrap();
    let denied = [
        e.send_text(room, "x", "hi").await.unwrap_err(),
        e.history(wire::HistoryRequest { room_id: room, ..Default::default() }).await.unwrap_err(),
        e.request(Req::Typing(wire::TypingRequest { room_id: room, active: true })).await.unwrap_err(),
        e.request(Req::Receipt(wire::ReceiptRequest { room_id: room, kind: 2, up_to_seq: 1 })).await.unwrap_err(),
        // A room that does not exist looks the same as one you are not in.
        e.send_text(424242, "x", "hi").await.unwrap_err(),
    ];
    for err in denied {
        assert_eq!(code_of(&err), wire::ErrorCode::NotAMember, "{err}");
    }
    assert!(e.list_rooms().await.unwrap().is_empty());
    assert_eq!(code_of(&e.create_direct(99999).await.unwrap_err()), wire::ErrorCode::NotFound);
    assert_eq!(code_of(&e.create_direct(eve.id()).await.unwrap_err()), wire::ErrorCode::InvalidArgument);
}

#[tokio::test]
pub(crate) async fn room_list_has_last_message_and_unread_counts_that_read_markers_clear() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let (b, _) = bob.connect_synced(0).await;
    let quiet = a.create_group("quiet", vec![bob.id()]).await.unwrap().room_id;
    let busy = a.create_direct(bob.id()).await.unwrap().room_id;
    for i in 0..5 {
        a.send_text(busy, &i.to_string(), &format!("msg {i}")).await.unwrap();
    }
    b.send_text(busy, "b", "mine do not count").await.unwrap();
    let rooms = b.list_rooms().await.unwrap();
    assert_eq!(rooms.len(), 2);
    assert_eq!(rooms[0].room_id, busy, "most recent first");
    assert_eq!(rooms[0].unread_count, 5);
    assert_eq!(rooms[1].room_id, quiet);
    assert_eq!(rooms[1].unread_count, 0);
    let last = rooms[0].last_entry.as_ref().unwrap();
    assert!(matches!(&last.body, Some(wire::room_entry::Body::Text(t)) if t.text == "mine do not count"));

    // Reading up to the third message leaves two unread.
    let third = rooms[0].last_seq - 3;
    b.request(Req::Receipt(wire::ReceiptRequest {
        room_id: busy,
        kind: wire::ReceiptKind::Read as i32,
        up_to_seq: third,
    }))
    .await
    .unwrap();
    let rooms = b.list_rooms().await.unwrap();
    assert_eq!(rooms[0].unread_count, 2);
    assert_eq!(rooms[0].read_up_to_seq, third);
}

#[tokio::test]
pub(crate) async fn history_pages_backwards_and_forwards() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    for i in 0..25 {
        a.send_text(room, &i.to_string(), &format!("m{i}")).await.unwrap();
    }
    // 26 entries: Created (seq 1) and messages at seqs 2..=26.
    let latest = a.history(wire::HistoryRequest { room_id: room, limit: 10, ..Default::default() }).await.unwrap();
    let seqs: Vec<u64> = latest.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (17..=26).collect::<Vec<_>>());
    assert!(latest.more);
    let older = a
        .history(wire::HistoryRequest { room_id: room, before_seq: Some(17), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(older.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (7..=16).collect::<Vec<_>>());
    let oldest = a
        .history(wire::HistoryRequest { room_id: room, before_seq: Some(7), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(oldest.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    assert!(!oldest.more);
    let newer = a
        .history(wire::HistoryRequest { room_id: room, after_seq: Some(20), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(newer.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (21..=26).collect::<Vec<_>>());
    assert!(!newer.more);
    let both = a
        .history(wire::HistoryRequest { room_id: room, after_seq: Some(2), before_seq: Some(5), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(code_of(&both), wire::ErrorCode::InvalidArgument);
}

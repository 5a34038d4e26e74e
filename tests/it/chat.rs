//! Messages in realtime: direct and group rooms, several devices, retries, edits, deletes,
//! receipts, typing and presence.

use tidings_client::Incoming;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req, reply::Result as R};

use crate::harness::*;

#[tokio::test]
pub(crate) async fn direct_chat_reaches_the_peer_and_the_senders_other_devices() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let ana_tablet = ana.another_device("tablet").await;
    let bob = server.user("bob").await;
    let (ana_phone, _) = ana.connect_synced(0).await;
    let (mut ana_tab, _) = ana_tablet.connect_synced(0).await;
    let (mut bob_conn, _) = bob.connect_synced(0).await;

    let room = ana_phone.create_direct(bob.id()).await.unwrap();
    assert_eq!(room.kind, wire::RoomKind::Direct as i32);
    assert_eq!(room.members.len(), 2);
    // Opening it again returns the same room.
    assert_eq!(ana_phone.create_direct(bob.id()).await.unwrap().room_id, room.room_id);
    assert_eq!(bob_conn.create_direct(ana.id()).await.unwrap().room_id, room.room_id);

    let created = next_event(&mut bob_conn).await;
    assert!(matches!(entry(&created).body, Some(wire::room_entry::Body::Created(_))));
    assert_eq!(created.pos, 1);
    next_event(&mut ana_tab).await; // its Created entry too

    let ack = ana_phone.send_text(room.room_id, "m1", "hi bob").await.unwrap();
    assert_eq!(ack.seq, 2);
    assert!(!ack.duplicate);
    let got = next_event(&mut bob_conn).await;
    assert_eq!(text(&got), "hi bob");
    assert_eq!(entry(&got).sender_id, ana.id());
    assert_eq!(entry(&got).seq, ack.seq);
    assert_eq!(entry(&got).id, ack.message_id);
    assert_eq!(got.pos, 2);
    let mirrored = next_event(&mut ana_tab).await;
    assert_eq!(text(&mirrored), "hi bob");

    let reply = bob_conn.send_text(room.room_id, "r1", "hi ana").await.unwrap();
    assert_eq!(reply.seq, 3);
    assert_eq!(text(&next_event(&mut ana_tab).await), "hi ana");
}

#[tokio::test]
pub(crate) async fn group_messages_have_one_order_for_every_member() {
    let server = TestServer::start();
    let users = [server.user("ana").await, server.user("bob").await, server.user("cyd").await];
    let mut conns = Vec::new();
    for u in &users {
        conns.push(u.connect_synced(0).await.0);
    }
    let room = conns[0].create_group("trip", vec![users[1].id(), users[2].id()]).await.unwrap();
    assert_eq!(room.members.len(), 3);
    // Everyone sends at once; every member must see the same sequence.
    let mut sends = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        for n in 0..20 {
            sends.push(conn.start_request(Req::SendMessage(wire::SendMessageRequest {
                room_id: room.room_id,
                client_msg_id: format!("{i}-{n}"),
                text: format!("from {i} #{n}"),
                reply_to_seq: 0,
                media_ids: Vec::new(),
            })));
        }
    }
    for send in sends {
        let answer = send.await.unwrap().await.unwrap().unwrap();
        assert!(matches!(answer, R::Sent(_)));
    }
    let mut orders = Vec::new();
    for conn in conns.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 61 {
            let e = next_event(conn).await;
            seen.push((entry(&e).seq, entry(&e).id));
        }
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "seq order");
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
}

#[tokio::test]
pub(crate) async fn a_retried_send_is_acknowledged_again_but_stored_once() {
    let server = TestServer::start();
    let DirectPair { a, mut b, room, .. } = direct_pair(&server).await;
    let first = a.send_text(room, "same-id", "once").await.unwrap();
    let retry = a.send_text(room, "same-id", "once").await.unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.seq, retry.message_id), (first.seq, first.message_id));
    let after = a.send_text(room, "next-id", "twice").await.unwrap();
    assert!(after.seq > first.seq);
    assert_eq!(text(&next_event(&mut b).await), "once");
    assert_eq!(text(&next_event(&mut b).await), "twice");
    let history = a.history(wire::HistoryRequest { room_id: room, ..Default::default() }).await.unwrap();
    assert_eq!(message_texts(&history.entries), ["once", "twice"]);
}

#[tokio::test]
pub(crate) async fn edits_and_deletes_reach_everyone_and_history_shows_tombstones() {
    let server = TestServer::start();
    let DirectPair { a, mut b, bob, room, .. } = direct_pair(&server).await;
    let m = a.send_text(room, "1", "helo").await.unwrap();
    next_event(&mut b).await;

    // Only the sender edits.
    let edit = |text: &str| Req::EditMessage(wire::EditMessageRequest { room_id: room, seq: m.seq, text: text.into() });
    let err = b.request(edit("hijack")).await.unwrap_err();
    assert_eq!(code_of(&err), wire::ErrorCode::Forbidden);
    a.request(edit("hello")).await.unwrap();
    match &entry(&next_event(&mut b).await).body {
        Some(wire::room_entry::Body::Edited(e)) => assert_eq!((e.target_seq, e.text.as_str()), (m.seq, "hello")),
        other => panic!("{other:?}"),
    }
    let delete = Req::DeleteMessage(wire::DeleteMessageRequest { room_id: room, seq: m.seq });
    assert_eq!(code_of(&b.request(delete.clone()).await.unwrap_err()), wire::ErrorCode::Forbidden);
    a.request(delete.clone()).await.unwrap();
    assert!(matches!(entry(&next_event(&mut b).await).body, Some(wire::room_entry::Body::Deleted(_))));
    // Deleting twice, or editing a deleted message: not found.
    assert_eq!(code_of(&a.request(delete).await.unwrap_err()), wire::ErrorCode::NotFound);
    assert_eq!(code_of(&a.request(edit("again")).await.unwrap_err()), wire::ErrorCode::NotFound);

    let history = b.history(wire::HistoryRequest { room_id: room, ..Default::default() }).await.unwrap();
    let original = history.entries.iter().find(|e| e.seq == m.seq).unwrap();
    match &original.body {
        Some(wire::room_entry::Body::Text(t)) => {
            assert!(t.deleted);
            assert!(t.text.is_empty(), "a tombstone keeps no text");
        }
        other => panic!("{other:?}"),
    }
    // A new device replaying the stream sees the tombstone, not the text.
    let (_, replay) = bob.another_device("laptop").await.connect_synced(0).await;
    assert!(
        replay
            .iter()
            .all(|e| !matches!(&entry(e).body, Some(wire::room_entry::Body::Text(t)) if t.text.contains("hel")))
    );
}

#[tokio::test]
pub(crate) async fn replies_name_an_existing_message() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap();
    let m = a.send_text(room.room_id, "1", "question?").await.unwrap();
    let reply = |seq| {
        Req::SendMessage(wire::SendMessageRequest {
            room_id: room.room_id,
            client_msg_id: format!("r{seq}"),
            text: "answer".into(),
            reply_to_seq: seq,
            media_ids: Vec::new(),
        })
    };
    assert!(matches!(a.request(reply(m.seq)).await.unwrap(), R::Sent(_)));
    assert_eq!(code_of(&a.request(reply(999)).await.unwrap_err()), wire::ErrorCode::NotFound);
}

#[tokio::test]
pub(crate) async fn receipts_typing_and_presence() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (mut a, _) = ana.connect_synced(0).await;
    let (mut b, _) = bob.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap();
    next_event(&mut a).await;
    next_event(&mut b).await;
    let m = a.send_text(room.room_id, "1", "seen?").await.unwrap();
    next_event(&mut a).await;
    next_event(&mut b).await;

    // Typing goes to the others, is not stored.
    b.request(Req::Typing(wire::TypingRequest { room_id: room.room_id, active: true })).await.unwrap();
    loop {
        match a.next_within(WAIT).await.unwrap() {
            Incoming::Ephemeral(wire::Ephemeral { kind: Some(wire::ephemeral::Kind::Typing(t)) }) => {
                assert_eq!((t.room_id, t.user_id, t.active), (room.room_id, bob.id(), true));
                break;
            }
            Incoming::Ephemeral(_) => {}
            other => panic!("{other:?}"),
        }
    }

    // A read receipt reaches the sender and the reader's other devices, and is stored.
    let bob_tablet = bob.another_device("tablet").await;
    let (mut bt, _) = bob_tablet.connect_synced(0).await;
    let read = Req::Receipt(wire::ReceiptRequest {
        room_id: room.room_id,
        kind: wire::ReceiptKind::Read as i32,
        up_to_seq: m.seq,
    });
    b.request(read.clone()).await.unwrap();
    for conn in [&mut a, &mut bt] {
        let e = next_event(conn).await;
        match e.kind {
            Some(wire::event::Kind::Receipt(r)) => {
                assert_eq!((r.user_id, r.up_to_seq, r.kind), (bob.id(), m.seq, wire::ReceiptKind::Read as i32));
            }
            other => panic!("{other:?}"),
        }
    }
    // The same receipt again changes nothing and sends nothing.
    b.request(read).await.unwrap();
    let rooms = a.list_rooms().await.unwrap();
    let member = rooms[0].members.iter().find(|m| m.user_id == bob.id()).unwrap();
    assert_eq!((member.read_up_to_seq, member.delivered_up_to_seq), (m.seq, m.seq));
    // A receipt for a seq the room does not have is refused.
    let bad = Req::Receipt(wire::ReceiptRequest {
        room_id: room.room_id,
        kind: wire::ReceiptKind::Read as i32,
        up_to_seq: 99,
    });
    assert_eq!(code_of(&b.request(bad).await.unwrap_err()), wire::ErrorCode::NotFound);

    // Presence: bob is online; when all his connections go, ana is told he is offline.
    let presence = a.request(Req::Presence(wire::PresenceRequest { user_ids: vec![bob.id(), 12345] })).await.unwrap();
    match presence {
        R::Presence(list) => {
            assert_eq!(list.users.len(), 1, "strangers are left out");
            assert!(list.users[0].online);
        }
        other => panic!("{other:?}"),
    }
    b.close().await;
    bt.close().await;
    loop {
        match a.next_within(WAIT).await.unwrap() {
            Incoming::Ephemeral(wire::Ephemeral { kind: Some(wire::ephemeral::Kind::Presence(p)) }) if !p.online => {
                assert_eq!(p.user_id, bob.id());
                assert!(p.last_seen_ms > 0);
                break;
            }
            Incoming::Ephemeral(_) | Incoming::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
pub(crate) async fn json_text_frames_work_end_to_end() {
    use tidings_client::tidings_proto::Encoding;
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let mut a =
        tidings_client::Connection::connect(&server.ws_base(), &ana.auth.access_token, Encoding::Json).await.unwrap();
    a.sync(0).await.unwrap();
    until_caught_up(&mut a).await;
    let (mut b, _) = bob.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap();
    a.send_text(room.room_id, "j1", "over json").await.unwrap();
    next_event(&mut b).await;
    assert_eq!(text(&next_event(&mut b).await), "over json");
    next_event(&mut a).await;
    assert_eq!(text(&next_event(&mut a).await), "over json");
}

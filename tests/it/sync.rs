//! The durable stream: resume after reconnects with no loss, duplicate or reorder, catch-up of
//! slow connections, and the edges of Sync.

use std::collections::BTreeMap;
use std::time::Duration;

use tidings_client::Incoming;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req};

use crate::harness::*;

/// Sends `count` messages to `room`, `window` at a time; returns the acknowledged seqs.
async fn send_many(conn: &tidings_client::Connection, room: u64, tag: &str, count: usize, window: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(window) {
        let mut pending = Vec::new();
        for &i in chunk {
            pending.push(
                conn.start_request(Req::SendMessage(wire::SendMessageRequest {
                    room_id: room,
                    client_msg_id: format!("{tag}-{i}"),
                    text: format!("{tag} {i}"),
                    reply_to_seq: 0,
                    media_ids: Vec::new(),
                }))
                .await
                .unwrap(),
            );
        }
        for answer in pending {
            match answer.await.unwrap().unwrap() {
                wire::reply::Result::Sent(ack) => seqs.push(ack.seq),
                other => panic!("{other:?}"),
            }
        }
    }
    seqs
}

#[tokio::test]
pub(crate) async fn reconnecting_clients_get_exactly_what_they_missed_in_order() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let cy = server.user("cyd").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let (c, _) = cy.connect_synced(0).await;
    let direct = a.create_direct(bob.id()).await.unwrap().room_id;
    let group = c.create_group("g", vec![bob.id(), ana.id()]).await.unwrap().room_id;

    const PER_SENDER: usize = 150;
    let senders = tokio::spawn(async move {
        let (x, y) =
            tokio::join!(send_many(&a, direct, "ana", PER_SENDER, 8), send_many(&c, group, "cy", PER_SENDER, 8));
        (x, y)
    });

    // Bob keeps dropping his connection after a few events and resumes from his last position.
    let mut received: Vec<wire::Event> = Vec::new();
    let mut reconnects = 0;
    let expected_total = 2 + 2 * PER_SENDER; // two Created entries and the messages
    while received.len() < expected_total {
        let after = received.last().map_or(0, |e| e.pos);
        let mut conn = bob.connect().await;
        conn.sync(after).await.unwrap();
        let take = 7 + (reconnects * 13) % 40;
        let mut got = 0;
        while got < take && received.len() < expected_total {
            match conn.next_within(WAIT).await.expect("events keep coming") {
                Incoming::Event(e) => {
                    received.push(e);
                    got += 1;
                }
                Incoming::Notice(_) | Incoming::Ephemeral(_) => {}
                other => panic!("{other:?}"),
            }
        }
        if let Some(last) = received.last() {
            conn.ack(last.pos).await.unwrap();
        }
        drop(conn); // abrupt: no close frame
        reconnects += 1;
    }
    let (ana_seqs, cy_seqs) = senders.await.unwrap();
    assert!(reconnects > 5, "the test should reconnect many times ({reconnects})");

    // No gap, no duplicate, positions in order.
    assert_contiguous(&received, 1);
    // Per room: exactly the acknowledged messages, in seq order.
    let mut per_room: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in &received {
        let en = entry(e);
        if matches!(en.body, Some(wire::room_entry::Body::Text(_))) {
            per_room.entry(en.room_id).or_default().push(en.seq);
        }
    }
    let mut ana_sorted = ana_seqs.clone();
    ana_sorted.sort_unstable();
    let mut cy_sorted = cy_seqs.clone();
    cy_sorted.sort_unstable();
    assert_eq!(per_room[&direct], ana_sorted);
    assert_eq!(per_room[&group], cy_sorted);

    // Nothing more arrives later.
    let (mut conn, rest) = bob.connect_synced(received.last().unwrap().pos).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(conn.next_within(Duration::from_millis(300)).await.is_err());
}

#[tokio::test]
pub(crate) async fn a_connection_with_a_tiny_queue_catches_up_from_the_store_without_loss() {
    let server = TestServer::start_with(|c| c.limits.outbound_queue_events = 2);
    let ana = server.user("ana").await;
    let cy = server.user("cyd").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let (c, _) = cy.connect_synced(0).await;
    let (mut b, _) = bob.connect_synced(0).await;
    let room = a.create_group("busy", vec![bob.id(), cy.id()]).await.unwrap().room_id;
    let (x, y) = tokio::join!(send_many(&a, room, "a", 120, 32), send_many(&c, room, "c", 120, 32));
    let mut events = Vec::new();
    while events.len() < 241 {
        events.push(next_event(&mut b).await);
    }
    assert_contiguous(&events, 1);
    let seqs: Vec<u64> = events.iter().map(|e| entry(e).seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(seqs.len(), 1 + x.len() + y.len());
    let (_, metrics) = server.http().get_text("/metrics").await.unwrap();
    assert!(metrics.contains("tidings_slow_consumers_total"), "{metrics}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_given_up_on_and_loses_nothing() {
    // Two connections at most: bob can reconnect only once the stalled connection's slot is free.
    let server = TestServer::start_with(|c| {
        c.limits.max_connections = 2;
        c.limits.outbound_queue_events = 4;
        c.limits.slow_consumer_grace_secs = 1;
        c.limits.write_timeout_secs = 2;
        c.limits.max_message_bytes = 64 * 1024;
    });
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap().room_id;

    // Bob connects with a raw socket, syncs, then never reads again.
    use futures_util::SinkExt;
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;
    let mut stalled = bob.raw_socket().await;
    let sync = wire::ClientFrame {
        request_id: 1,
        request: Some(Req::Sync(wire::SyncRequest { after_pos: 0, ..Default::default() })),
    };
    stalled.send(Message::Binary(sync.encode_to_vec().into())).await.unwrap();

    // Enough data to fill the socket buffers many times over.
    let big = "x".repeat(60 * 1024);
    let mut sent = 0;
    for i in 0..300 {
        a.send_text(room, &format!("m{i}"), &big).await.unwrap();
        sent += 1;
    }
    // The server gives up on the stalled connection (its queues, its actor state and its slot
    // under the connection cap are released) and bob, resuming on a new connection, misses nothing.
    let mut resumed = None;
    for _ in 0..100 {
        match tidings_client::Connection::connect(&server.ws_base(), &bob.auth.access_token, Default::default()).await {
            Ok(conn) => {
                resumed = Some(conn);
                break;
            }
            Err(e) => {
                assert_eq!(code_of(&e), wire::ErrorCode::Overloaded, "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut conn = resumed.expect("the stalled connection's slot is released");
    drop(stalled);
    conn.sync(0).await.unwrap();
    let events = until_caught_up(&mut conn).await;
    assert_contiguous(&events, 1);
    assert_eq!(events.len(), 1 + sent);
}

#[tokio::test]
pub(crate) async fn sync_edges() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, events) = ana.connect_synced(0).await;
    assert!(events.is_empty(), "a new user has an empty stream");
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    a.send_text(room, "1", "one").await.unwrap();
    a.send_text(room, "2", "two").await.unwrap();

    // Syncing again on the same connection restarts the stream from the given position.
    let mut conn = bob.connect().await;
    assert_eq!(conn.sync(0).await.unwrap(), 3);
    let first = until_caught_up(&mut conn).await;
    assert_eq!(first.len(), 3);
    conn.sync(1).await.unwrap();
    let again = until_caught_up(&mut conn).await;
    assert_eq!(again.iter().map(|e| e.pos).collect::<Vec<_>>(), [2, 3]);

    // A position from the future (say, a server whose data was wiped) is a clear error.
    let err = conn.sync(50).await.unwrap_err();
    assert_eq!(code_of(&err), wire::ErrorCode::InvalidArgument);

    // Before Sync, a connection gets no stream events, only answers.
    let mut fresh = bob.connect().await;
    a.send_text(room, "3", "three").await.unwrap();
    assert!(fresh.next_within(Duration::from_millis(300)).await.is_err());
    fresh.sync(3).await.unwrap();
    let rest = until_caught_up(&mut fresh).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(text(&rest[0]), "three");
}

/// A client resuming with positions of a stream that was started anew (the store restored from a
/// backup, then `--new-stream-epoch`) is told STREAM_RESET instead of silently missing what its
/// positions now name; a client that sends no epoch (older apps) is served as before.
#[tokio::test]
pub(crate) async fn a_client_resuming_a_stream_that_was_started_anew_is_told_to_start_over() {
    let data = tempfile::tempdir().unwrap();
    let on_data = || TestServer::start_with(|c| c.store.data_dir = data.path().to_path_buf());
    let (bob, first_epoch, stored) = {
        let server = on_data();
        let ana = server.user("ana").await;
        let bob = server.user("bob").await;
        let a = ana.connect().await;
        let room = a.create_direct(bob.id()).await.unwrap().room_id;
        a.send_text(room, "m1", "hello").await.unwrap();
        let b = bob.connect().await;
        let started = b.sync_in(0, "").await.unwrap();
        assert!(!started.epoch.is_empty(), "the answer names the stream's epoch");
        assert_eq!(b.sync_in(1, &started.epoch).await.unwrap().epoch, started.epoch, "same epoch: resumed");
        (bob, started.epoch, started.head_pos)
    };
    {
        // Restarted on the same data: the same epoch.
        let server = on_data();
        let b = server.user_from(&bob).connect().await;
        assert_eq!(b.sync_in(stored, &first_epoch).await.unwrap().epoch, first_epoch);
    }
    let store = tidings::server::open_store(&test_config(data.path())).await.unwrap();
    let rotated = store.rotate_stream_epochs().await.unwrap();
    store.close().await;
    drop(store);
    let server = on_data();
    let b = server.user_from(&bob).connect().await;
    let e = b.sync_in(stored, &first_epoch).await.unwrap_err();
    assert_eq!(code_of(&e), wire::ErrorCode::StreamReset, "{e}");
    let fresh = b.sync_in(0, "").await.unwrap();
    assert_eq!(fresh.epoch, rotated);
    assert!(b.sync_in(stored, "").await.is_ok(), "a client without epochs is served as before");
}

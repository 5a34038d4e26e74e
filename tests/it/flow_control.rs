//! What a client that reads slowly, or stops reading, costs the server and what it is told.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wire::client_frame::Request as Req;
use wire::server_frame::Frame;

use crate::harness::*;

type SmallSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket of `user` whose kernel receive buffer is a few KiB, so that the server feels at
/// once when the test stops reading it.
async fn socket_with_a_small_receive_buffer(user: &TestUser) -> SmallSocket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let addr = user.ws_base.strip_prefix("ws://").expect("a ws:// base").parse().expect("host:port");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.expect("connect");
    let mut request = format!("{}/v1/ws", user.ws_base).into_client_request().expect("ws url");
    let bearer = format!("Bearer {}", user.auth.access_token).parse().expect("header value");
    request.headers_mut().insert("authorization", bearer);
    tokio_tungstenite::client_async(request, stream).await.expect("upgrade").0
}

/// The next server frame of a raw socket, or the close frame's code.
async fn next_frame(socket: &mut SmallSocket) -> Result<Frame, Option<CloseCode>> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time");
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                return Ok(wire::ServerFrame::decode(bytes).expect("a server frame").frame.expect("a frame"));
            }
            Some(Ok(Message::Close(close))) => return Err(close.map(|c| c.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the socket failed: {e}"),
            None => return Err(None),
        }
    }
}

/// A gauge or counter from a server's `/metrics`.
pub(crate) async fn metric(http: &tidings_client::Http, name: &str) -> u64 {
    let (_, text) = http.get_text("/metrics").await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} in {text}")) as u64
}

/// A spawned server with `settings`, Ana connected, and Bob, who share a direct room.
struct AnaAndBob {
    _data: tempfile::TempDir,
    _server: crate::durability::Server,
    http: tidings_client::Http,
    ana: tidings_client::Connection,
    room: u64,
    bob: TestUser,
}

async fn ana_and_bob(settings: &[&str]) -> AnaAndBob {
    let data = tempfile::tempdir().unwrap();
    let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
    let (server, addr) = crate::durability::spawn_server_with(data.path(), &settings);
    let http = tidings_client::Http::new(format!("http://{addr}"));
    let ana = http.sign_up("ana", PASSWORD, "phone").await.unwrap();
    let bob = http.sign_up("bob", PASSWORD, "phone").await.unwrap();
    let ws = format!("ws://{addr}");
    let a = tidings_client::Connection::connect(&ws, &ana.access_token, Encoding::Protobuf).await.unwrap();
    let room = a.create_direct(bob.user_id).await.unwrap().room_id;
    let bob = TestUser { name: "bob".into(), auth: bob, ws_base: ws, http: http.clone() };
    AnaAndBob { _data: data, _server: server, http, ana: a, room, bob }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_a_bounded_queue_then_is_told_to_resync_and_closed_with_1008() {
    let AnaAndBob { http, ana: a, room, bob, .. } = &ana_and_bob(&["limits.write_timeout_secs=3"]).await;
    let (http, room) = (http, *room);

    // Bob syncs and is live; then his app stops reading.
    let mut socket = socket_with_a_small_receive_buffer(bob).await;
    let sync = wire::ClientFrame {
        request_id: 1,
        request: Some(Req::Sync(wire::SyncRequest { after_pos: 0, ..Default::default() })),
    };
    socket.send(Message::Binary(sync.encode_to_vec().into())).await.unwrap();
    let mut last_pos = 0;
    loop {
        match next_frame(&mut socket).await {
            Ok(Frame::Event(e)) => last_pos = e.pos,
            Ok(Frame::Notice(n)) if n.kind == wire::NoticeKind::CaughtUp as i32 => break,
            Ok(_) => {}
            Err(code) => panic!("closed while syncing: {code:?}"),
        }
    }

    // Ana writes on. What waits for Bob in the server's queue stays within its 128 KiB.
    let text = "x".repeat(4000);
    let (mut sent, mut peak_queued) = (0, 0);
    let started = Instant::now();
    while metric(http, "tidings_connections_fell_behind_total").await == 0 {
        assert!(sent < 3000 && started.elapsed() < Duration::from_secs(120), "never told to resync ({sent} sent)");
        for _ in 0..5 {
            a.send_text(room, &format!("m{sent}"), &text).await.unwrap();
            sent += 1;
        }
        peak_queued = peak_queued.max(metric(http, "tidings_outbound_queued_bytes").await);
    }
    eprintln!("fell behind after {sent} messages of 4,000 bytes; at most {peak_queued} bytes queued");
    assert!(peak_queued <= 128 * 1024, "{peak_queued} bytes queued for one connection");
    assert!(peak_queued > 64 * 1024, "the queue filled before the connection was given up ({peak_queued})");

    // Bob's app reads again: every event the socket held, in order, then RESYNC_REQUIRED naming
    // the last of them, then close 1008.
    let resync_at = loop {
        match next_frame(&mut socket).await {
            Ok(Frame::Event(e)) => {
                assert_eq!(e.pos, last_pos + 1, "in order, none missing");
                last_pos = e.pos;
            }
            Ok(Frame::Notice(n)) if n.kind == wire::NoticeKind::ResyncRequired as i32 => break n.pos,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(code) => panic!("closed without RESYNC_REQUIRED: {code:?}"),
        }
    };
    assert_eq!(resync_at, last_pos, "the notice names the last event sent");
    assert_eq!(next_frame(&mut socket).await.unwrap_err(), Some(CloseCode::Policy));

    // Synced again from there, he gets the rest, exactly.
    let (_b, rest) = bob.connect_synced(resync_at).await;
    let positions: Vec<u64> = rest.iter().map(|e| e.pos).collect();
    assert_eq!(positions, (resync_at + 1..=resync_at + rest.len() as u64).collect::<Vec<_>>());
    let last = entry(rest.last().expect("the rest"));
    let Some(wire::room_entry::Body::Text(message)) = &last.body else { panic!("{last:?}") };
    assert_eq!(message.client_msg_id, format!("m{}", sent - 1), "up to Ana's last message");
}

#[tokio::test]
async fn sockets_that_sync_from_zero_and_never_read_hold_two_pages_each_not_their_whole_queue() {
    // Small pages, and patience: the connections must still be open when we count.
    let settings = [
        "limits.max_message_bytes=65536",
        "limits.catch_up_page_events=16",
        "limits.write_timeout_secs=120",
        "limits.slow_consumer_grace_secs=120",
        "limits.idle_timeout_secs=120",
    ];
    let AnaAndBob { http, ana: a, room, bob, .. } = &ana_and_bob(&settings).await;
    let room = *room;
    // 18 MB of stream, several times what the kernel's socket buffers take.
    let big = "x".repeat(60 * 1024);
    for i in 0..300 {
        a.send_text(room, &format!("m{i}"), &big).await.unwrap();
    }

    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut socket = bob.raw_socket().await;
        let sync = wire::ClientFrame {
            request_id: 1,
            request: Some(Req::Sync(wire::SyncRequest { after_pos: 0, ..Default::default() })),
        };
        socket.send(Message::Binary(sync.encode_to_vec().into())).await.unwrap();
        stalled.push(socket);
    }
    // Catching up stops once the sockets' buffers and queues are full.
    let mut last = u64::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = metric(http, "tidings_events_caught_up_total").await;
        if now == last {
            break;
        }
        last = now;
    }
    let read = metric(http, "tidings_events_caught_up_total").await;
    let written = metric(http, "tidings_events_delivered_total").await;
    let queued = read - written;
    eprintln!("4 stalled sockets: {read} events read for them, {written} written, {queued} queued");
    // At most two pages per connection (one being written, one ready). Before the bound, each
    // socket queued what its 512-item queue held: every page of its stream the kernel did not take.
    assert!(queued <= 4 * 2 * 16, "{queued} events queued for 4 sockets");
    assert!(read < 4 * 301, "the test needs more stream than the socket buffers hold ({read} read)");
}

//! Every kind of bad input gets a typed error with its request id, and the connection survives
//! where it can.

use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tidings_client::{ClientError, Connection, Incoming};
use tokio_tungstenite::tungstenite::Message;
use wire::client_frame::Request as Req;

use crate::harness::*;

async fn expect_error(conn: &mut Connection) -> wire::Error {
    loop {
        match conn.next_within(WAIT).await.unwrap() {
            Incoming::Error(e) => return e,
            Incoming::Ephemeral(_) => {}
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

async fn still_alive(conn: &Connection) {
    conn.request(Req::Ping(wire::PingRequest {})).await.expect("the connection survives");
}

#[tokio::test]
async fn malformed_frames_get_typed_errors_and_the_connection_survives() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let mut conn = ana.connect().await;

    conn.send_raw(Message::Binary(vec![0xff, 0xff, 0xff, 0x0f].into())).await.unwrap();
    let e = expect_error(&mut conn).await;
    assert_eq!(e.code, wire::ErrorCode::BadFrame as i32);
    still_alive(&conn).await;

    conn.send_raw(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(expect_error(&mut conn).await.code, wire::ErrorCode::BadFrame as i32);

    // A readable request id is echoed even when the rest is wrong.
    conn.send_raw(Message::Text(r#"{"requestId":"77","sendMessage":{"roomId":"not a number"}}"#.into())).await.unwrap();
    let e = expect_error(&mut conn).await;
    assert_eq!((e.code, e.request_id), (wire::ErrorCode::BadFrame as i32, 77));

    // A frame with no request in it (or one from a newer protocol this server does not know).
    let empty = wire::ClientFrame { request_id: 5, request: None };
    let err = {
        use prost::Message as _;
        conn.send_raw(Message::Binary(empty.encode_to_vec().into())).await.unwrap();
        expect_error(&mut conn).await
    };
    assert_eq!((err.code, err.request_id), (wire::ErrorCode::UnknownRequest as i32, 5));
    still_alive(&conn).await;
}

#[tokio::test]
pub(crate) async fn invalid_arguments_and_unknown_ids() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 100);
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let conn = ana.connect().await;
    let room = conn.create_direct(bob.id()).await.unwrap().room_id;

    let too_long = conn.send_text(room, "1", &"x".repeat(101)).await.unwrap_err();
    assert_eq!(code_of(&too_long), wire::ErrorCode::PayloadTooLarge);
    let empty = conn.send_text(room, "2", "   ").await.unwrap_err();
    assert_eq!(code_of(&empty), wire::ErrorCode::InvalidArgument);
    let no_room = conn.send_text(0, "3", "hi").await.unwrap_err();
    assert_eq!(code_of(&no_room), wire::ErrorCode::InvalidArgument);
    let bad_kind =
        conn.request(Req::Receipt(wire::ReceiptRequest { room_id: room, kind: 99, up_to_seq: 1 })).await.unwrap_err();
    assert_eq!(code_of(&bad_kind), wire::ErrorCode::InvalidArgument);
    let unknown_seq = conn
        .request(Req::EditMessage(wire::EditMessageRequest { room_id: room, seq: 500, text: "x".into() }))
        .await
        .unwrap_err();
    assert_eq!(code_of(&unknown_seq), wire::ErrorCode::NotFound);
    let bad_name = conn.create_group("", vec![bob.id()]).await.unwrap_err();
    assert_eq!(code_of(&bad_name), wire::ErrorCode::InvalidArgument);
    // The request id of each error matches its request (the client matched them up above).
    match too_long {
        ClientError::Server(e) => assert!(e.request_id > 0),
        other => panic!("{other}"),
    }
    still_alive(&conn).await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_with_1009() {
    let server = TestServer::start_with(|c| c.limits.max_frame_bytes = 1024);
    let ana = server.user("ana").await;
    let mut conn = ana.connect().await;
    conn.send_raw(Message::Binary(vec![0u8; 4096].into())).await.unwrap();
    let e = expect_error(&mut conn).await;
    assert_eq!(e.code, wire::ErrorCode::PayloadTooLarge as i32);
    match conn.next_within(WAIT).await.unwrap() {
        Incoming::Closed(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_beyond_the_rate_limit_are_refused_with_a_retry_time() {
    let server = TestServer::start_with(|c| {
        c.limits.requests_per_second = 5;
        c.limits.request_burst = 5;
    });
    let ana = server.user("ana").await;
    let conn = ana.connect().await;
    let mut limited = None;
    for _ in 0..20 {
        if let Err(e) = conn.request(Req::Ping(wire::PingRequest {})).await {
            limited = Some(e);
            break;
        }
    }
    match limited.expect("the limit should bite within 20 requests") {
        ClientError::Server(e) => {
            assert_eq!(e.code, wire::ErrorCode::RateLimited as i32);
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("{other}"),
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    still_alive(&conn).await;
}

#[tokio::test]
async fn the_connection_cap_answers_overloaded() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2);
    let ana = server.user("ana").await;
    let _one = ana.connect().await;
    let _two = ana.connect().await;
    let third = Connection::connect(&server.ws_base(), &ana.auth.access_token, Encoding::Protobuf).await.err().unwrap();
    assert!(matches!(third, ClientError::Http { status: 503, .. }), "{third}");
    assert_eq!(code_of(&third), wire::ErrorCode::Overloaded);
    drop(_one);
    // The slot frees once the first connection is gone.
    let mut ok = false;
    for _ in 0..50 {
        if Connection::connect(&server.ws_base(), &ana.auth.access_token, Encoding::Protobuf).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok);
}

#[tokio::test]
async fn bad_http_bodies_are_typed_errors() {
    let server = TestServer::start();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{}/v1/auth/signup", server.addr))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: wire::HttpError = response.json().await.unwrap();
    assert_eq!(body.code, wire::ErrorCode::BadFrame as i32);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.limits.heartbeat_interval_secs = 1;
        c.limits.idle_timeout_secs = 1;
    });
    let ana = server.user("ana").await;
    use futures_util::StreamExt;
    let mut silent = ana.raw_socket().await;
    // Not reading means not answering the server's pings.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut close_code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, silent.next()).await {
        if let Message::Close(frame) = message {
            close_code = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close_code, Some(1001));
}

#[tokio::test]
async fn json_fields_the_server_does_not_know_are_ignored_and_unknown_requests_named() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let room = ana.connect().await.create_direct(bob.id()).await.unwrap().room_id;
    let url = format!("{}/v1/ws?encoding=json&access_token={}", server.ws_base(), ana.auth.access_token);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap()).await.unwrap();
    let mut answer_to = async |frame: String| -> serde_json::Value {
        socket.send(Message::Text(frame.into())).await.unwrap();
        loop {
            let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("the socket closed") };
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value.get("reply").is_some() || value.get("error").is_some() {
                return value;
            }
        }
    };
    // A newer client's frame: an extra field in the request and one beside it.
    let frame = format!(
        r#"{{"requestId":"41","sendMessage":{{"roomId":"{room}","clientMsgId":"f1","text":"hi","sticker":{{"id":7}}}},"traceId":"abc"}}"#
    );
    let answer = answer_to(frame).await;
    assert_eq!(answer["reply"]["requestId"], "41", "{answer}");
    assert!(answer["reply"]["sent"].is_object(), "{answer}");
    // A request kind from a newer protocol: UNKNOWN_REQUEST with its id; the connection stays.
    let answer = answer_to(r#"{"requestId":"42","reactToMessage":{"roomId":"1"}}"#.into()).await;
    assert_eq!(answer["error"]["code"], "ERROR_CODE_UNKNOWN_REQUEST", "{answer}");
    assert_eq!(answer["error"]["requestId"], "42", "{answer}");
    let answer = answer_to(r#"{"requestId":"43","ping":{}}"#.into()).await;
    assert_eq!(answer["reply"]["requestId"], "43", "{answer}");
}

#[tokio::test]
async fn a_send_without_a_client_message_id_is_refused() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let conn = ana.connect().await;
    let room = conn.create_direct(bob.id()).await.unwrap().room_id;
    let send = wire::SendMessageRequest {
        room_id: room,
        client_msg_id: String::new(),
        text: "hi".into(),
        reply_to_seq: 0,
        media_ids: Vec::new(),
    };
    let e = conn.request(Req::SendMessage(send)).await.unwrap_err();
    assert_eq!(code_of(&e), wire::ErrorCode::InvalidArgument);
}

/// The WebSocket layer itself (tidings frames WebSockets on actix-http's codec): a message sent in
/// continuation frames is joined, a ping is answered with its own payload, a message over the size
/// limit in total is refused with 1009, and a text message that is not UTF-8 closes with 1002.
#[tokio::test]
async fn websocket_framing_continuations_pings_and_limits() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = TestServer::start_with(|c| c.limits.max_frame_bytes = 1024);
    let ana = server.user("ana").await;
    let url = format!("{}/v1/ws?encoding=json&access_token={}", server.ws_base(), ana.auth.access_token);
    let connect =
        async || tokio_tungstenite::connect_async(url.clone().into_client_request().unwrap()).await.unwrap().0;
    let frame = |data: &[u8], opcode: Data, last: bool| {
        Message::Frame(Frame::message(data.to_vec(), OpCode::Data(opcode), last))
    };

    let mut socket = connect().await;
    let request = br#"{"requestId":"7","ping":{}}"#;
    socket.send(frame(&request[..5], Data::Text, false)).await.unwrap();
    socket.send(frame(&request[5..12], Data::Continue, false)).await.unwrap();
    socket.send(frame(&request[12..], Data::Continue, true)).await.unwrap();
    socket.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    let (mut answered, mut ponged) = (false, false);
    while !(answered && ponged) {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("an answer").expect("open").unwrap() {
            Message::Text(text) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                if value.get("reply").is_some() {
                    assert_eq!(value["reply"]["requestId"], "7", "{value}");
                    answered = true;
                }
            }
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are you there");
                ponged = true;
            }
            _ => {}
        }
    }

    // 3 x 600 bytes: each frame is within the limit, the message is not.
    let chunk = vec![b' '; 600];
    socket.send(frame(&chunk, Data::Text, false)).await.unwrap();
    socket.send(frame(&chunk, Data::Continue, false)).await.unwrap();
    socket.send(frame(&chunk, Data::Continue, true)).await.unwrap();
    let mut refused = false;
    let close = loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("an answer") {
            Some(Ok(Message::Text(text))) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                refused |= value["error"]["code"] == "ERROR_CODE_PAYLOAD_TOO_LARGE";
            }
            Some(Ok(Message::Close(close))) => break close.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert!(refused, "the client was told why");
    assert_eq!(close, Some(1009));

    let mut socket = connect().await;
    socket.send(frame(&[0xff, 0xfe, b'{'], Data::Text, true)).await.unwrap();
    let close = loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("a close") {
            Some(Ok(Message::Close(close))) => break close.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, Some(1002));
}

//! Attacks from the security review, each written as the attack (issue 16).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use tidings::auth::TokenKeys;
use tidings::config::Config;
use tidings::domain::{DeviceId, UserId, now_ms};
use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tidings_client::{Connection, Incoming};
use wire::client_frame::Request as Req;

use crate::cluster::RedisServer;
use crate::flow_control::metric;
use crate::harness::*;
use crate::prerequisites::{Prerequisite, require};

/// Starts a server on `config` in its own actix system and stops it at once; the start's error.
fn start_error(config: Config) -> Option<String> {
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match tidings::server::start(config).await {
                Ok(running) => {
                    running.run_until(async {}).await.unwrap();
                    None
                }
                Err(e) => Some(format!("{e:#}")),
            }
        })
    })
    .join()
    .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test]
async fn an_emptied_token_secret_refuses_the_start_and_a_token_forged_with_it_never_upgrades() {
    let mut server = TestServer::start();
    let ana = server.user("ana").await;
    server.stop();
    let secret_file = server.data_dir.path().join("token-secret");
    // A crash or a full disk while writing, or an attacker with write access to the file.
    std::fs::write(&secret_file, "").unwrap();
    let config = test_config(server.data_dir.path());
    let error = start_error(config.clone()).expect("the server must refuse an empty secret");
    assert!(error.contains("refusing to start") && error.contains("token-secret"), "{error}");

    // Configured secrets are held to the same length.
    let mut short = config.clone();
    short.auth.token_secret = "hunter2".into();
    let error = start_error(short).expect("the server must refuse a short secret");
    assert!(error.contains("auth.token_secret") && error.contains("7 bytes"), "{error}");

    // The operator removes the empty file: a new secret is generated and the forged token (empty
    // key, expiry in 2100) is refused, as is every token signed with the old secret.
    std::fs::remove_file(&secret_file).unwrap();
    let restarted = TestServer::start_with(|c| c.store.data_dir = server.data_dir.path().to_path_buf());
    let forged_expiry_ms = 4_102_444_800_000 - now_ms();
    let (forged, _) = TokenKeys::new(b"").issue_access(
        UserId(ana.id()),
        DeviceId(ana.auth.device_id),
        now_ms(),
        (forged_expiry_ms / 1000) as u64,
    );
    for token in [forged, ana.auth.access_token.clone()] {
        let refused = Connection::connect(&restarted.ws_base(), &token, Encoding::Json).await;
        assert!(refused.is_err(), "a token not signed with the current secret upgraded");
    }
}

#[tokio::test]
async fn the_data_directory_and_its_files_are_private() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let (conn, _) = ana.connect_synced(0).await;
    let bob = server.user("bob").await;
    let room = conn.create_direct(bob.id()).await.unwrap().room_id;
    conn.send_text(room, "m1", "written to the WAL").await.unwrap();
    let dir = server.data_dir.path();
    assert_eq!(mode(dir), 0o700, "data directory");
    for file in ["tidings.db", "tidings.db-wal", "tidings.db-shm", "token-secret"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
}

#[tokio::test]
pub(crate) async fn a_stolen_refresh_token_used_first_by_the_thief_logs_the_device_out_when_the_victim_refreshes() {
    let server = TestServer::start();
    let ana = server.user("ana").await;
    let (mut conn, _) = ana.connect_synced(0).await;
    let http = server.http();
    let stolen = ana.auth.refresh_token.clone();
    let thief = http.refresh(&stolen).await.expect("the thief trades the stolen token first");

    // The victim's app refreshes with the token it holds: reuse, and the device is logged out.
    let reused = http.refresh(&stolen).await.unwrap_err();
    assert_eq!(code_of(&reused), wire::ErrorCode::Unauthenticated);
    assert!(reused.to_string().contains("reused"), "{reused}");
    let thiefs_next = http.refresh(&thief.refresh_token).await.unwrap_err();
    assert_eq!(code_of(&thiefs_next), wire::ErrorCode::Unauthenticated, "the thief's tokens die with the device");
    for token in [&thief.access_token, &ana.auth.access_token] {
        assert!(Connection::connect(&server.ws_base(), token, Encoding::Json).await.is_err());
    }
    // The victim's open socket is closed too.
    loop {
        match conn.next_within(WAIT).await.expect("the connection closes") {
            Incoming::Closed(_) => break,
            _ => continue,
        }
    }
    // Logging in again works.
    http.log_in("ana", PASSWORD, "phone").await.unwrap();
}

async fn log_in_status(base: &str, username: &str, password: &str) -> (u16, Option<u64>) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({ "username": username, "password": password, "deviceName": "phone" }))
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    (response.status().as_u16(), retry_after)
}

#[tokio::test]
async fn a_password_guesser_gets_429_with_retry_after_per_username_and_per_address() {
    let server = TestServer::start_with(|c| {
        c.auth.attempts_per_minute_per_username = 5;
        c.auth.attempts_per_minute_per_ip = 12;
    });
    server.user("ana").await;
    let base = format!("http://{}", server.addr);
    for _ in 0..5 {
        assert_eq!(log_in_status(&base, "ana", "wrong password").await.0, 401);
    }
    let (status, retry_after) = log_in_status(&base, "ana", "wrong password").await;
    assert_eq!(status, 429, "the 6th guess on one name in a minute");
    assert!(retry_after.is_some_and(|s| (1..=12).contains(&s)), "Retry-After: {retry_after:?}");
    assert_eq!(log_in_status(&base, "ana", PASSWORD).await.0, 429, "not even the right password gets a guess in");
    // The address has used 1 sign-up + 7 log-ins of its 12; the rest go to other names, then 429.
    for name in ["bob", "cy", "dee", "eve"] {
        assert_eq!(log_in_status(&base, name, "wrong password").await.0, 401);
    }
    assert_eq!(log_in_status(&base, "fay", "wrong password").await.0, 429, "the 13th attempt from one address");
}

#[tokio::test]
async fn concurrent_logins_are_capped_and_the_servers_memory_stays_bounded() {
    let data = tempfile::tempdir().unwrap();
    // The real argon2 cost (19 MiB, 2 passes), two hashes at a time.
    let settings =
        ["auth.argon2_memory_kib=19456", "auth.argon2_iterations=2", "auth.max_concurrent_hashes=2"].map(String::from);
    let (server, addr) = crate::durability::spawn_server_with(data.path(), &settings);
    let base = format!("http://{addr}");
    tidings_client::Http::new(base.clone()).sign_up("ana", PASSWORD, "phone").await.unwrap();
    let attempts = (0..128).map(|_| {
        let base = base.clone();
        tokio::spawn(async move { log_in_status(&base, "ana", "wrong password").await.0 })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(attempts).await.into_iter().map(|s| s.unwrap()).collect();
    // Each waits up to 2 s for one of the two hashing slots, then is shed with 503.
    assert!(statuses.iter().all(|&s| s == 401 || s == 503), "{statuses:?}");
    assert!(statuses.contains(&401));
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let shed = statuses.iter().filter(|&&s| s == 503).count();
    eprintln!("128 concurrent logins: {shed} shed with 503, peak RSS {peak_kib} KiB");
    // Before the cap: 2.7 GB for 128 concurrent logins.
    assert!(peak_kib < 512 * 1024, "peak RSS {peak_kib} KiB");
}

async fn open(server: &TestServer, user: &TestUser, from: &str) -> Connection {
    let source = Some(from.parse().unwrap());
    Connection::connect_from(source, &server.ws_base(), &user.auth.access_token, Encoding::Protobuf).await.unwrap()
}

async fn refusal(server: &TestServer, user: &TestUser, from: &str) -> Option<(u16, wire::ErrorCode)> {
    let source = Some(from.parse().unwrap());
    match Connection::connect_from(source, &server.ws_base(), &user.auth.access_token, Encoding::Protobuf).await {
        Ok(_) => None,
        Err(e @ tidings_client::ClientError::Http { status, .. }) => Some((status, code_of(&e))),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn one_users_token_or_one_address_cannot_take_every_connection_slot() {
    let server = TestServer::start_with(|c| {
        c.limits.max_connections = 8;
        c.limits.max_connections_per_user = 2;
        c.limits.max_connections_per_address = 4;
    });
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let a1 = open(&server, &ana, "127.0.0.1").await;
    let _a2 = open(&server, &ana, "127.0.0.1").await;
    // Ana's stolen token, used from anywhere, gets no third slot.
    assert_eq!(refusal(&server, &ana, "127.0.0.3").await, Some((429, wire::ErrorCode::RateLimited)));
    let _b1 = open(&server, &bob, "127.0.0.1").await;
    let _b2 = open(&server, &bob, "127.0.0.1").await;
    // Four from 127.0.0.1: the address is full, for everyone on it; other addresses are not.
    assert_eq!(refusal(&server, &carol, "127.0.0.1").await, Some((429, wire::ErrorCode::RateLimited)));
    let _c1 = open(&server, &carol, "127.0.0.2").await;
    // Places come back when connections close.
    drop(a1);
    let mut reconnected = false;
    for _ in 0..50 {
        if refusal(&server, &ana, "127.0.0.2").await.is_none() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reconnected, "ana's place came back");
}

/// The next error a connection gets.
async fn next_error(conn: &mut Connection) -> wire::Error {
    loop {
        match conn.next_within(WAIT).await.unwrap() {
            Incoming::Error(e) => return e,
            Incoming::Ephemeral(_) => {}
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// A protobuf frame that names its request id and then breaks.
fn garbage(request_id: u64) -> tokio_tungstenite::tungstenite::Message {
    use prost::Message as _;
    let mut frame = wire::ClientFrame { request_id, request: None }.encode_to_vec();
    frame.extend_from_slice(&[0x12, 0x7f, 0x01]);
    tokio_tungstenite::tungstenite::Message::Binary(frame.into())
}

#[tokio::test]
async fn garbage_frames_cost_rate_tokens_and_are_answered_with_their_request_ids() {
    let server = TestServer::start_with(|c| {
        c.limits.requests_per_second = 1;
        c.limits.request_burst = 3;
        c.limits.max_consecutive_bad_frames = 0;
    });
    let ana = server.user("ana").await;
    let mut conn = ana.connect().await;
    for id in 1..=6 {
        conn.send_raw(garbage(id)).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 1..=6 {
        let e = next_error(&mut conn).await;
        answers.push((e.request_id, wire::ErrorCode::try_from(e.code).unwrap()));
    }
    // Before: all six were decoded and answered BAD_FRAME, never counting against the limit.
    use wire::ErrorCode::{BadFrame, RateLimited};
    assert_eq!(
        answers,
        [(1, BadFrame), (2, BadFrame), (3, BadFrame), (4, RateLimited), (5, RateLimited), (6, RateLimited)]
    );
}

#[tokio::test]
async fn a_connection_sending_only_garbage_is_closed_and_one_good_frame_resets_the_count() {
    let server = TestServer::start_with(|c| c.limits.max_consecutive_bad_frames = 4);
    let ana = server.user("ana").await;
    let mut conn = ana.connect().await;
    for id in 1..=3 {
        conn.send_raw(garbage(id)).await.unwrap();
        next_error(&mut conn).await;
    }
    conn.request(Req::Ping(wire::PingRequest {})).await.unwrap();
    for id in 4..=6 {
        conn.send_raw(garbage(id)).await.unwrap();
        next_error(&mut conn).await;
    }
    conn.request(Req::Ping(wire::PingRequest {})).await.unwrap();
    for id in 7..=10 {
        conn.send_raw(garbage(id)).await.unwrap();
        assert_eq!(next_error(&mut conn).await.request_id, id);
    }
    match conn.next_within(WAIT).await.unwrap() {
        Incoming::Closed(Some((code, _))) => assert_eq!(code, 1002),
        other => panic!("expected the close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_users_request_budget_is_shared_by_all_of_its_connections() {
    let server = TestServer::start_with(|c| {
        c.limits.user_requests_per_second = 1;
        c.limits.user_request_burst = 4;
    });
    let ana = server.user("ana").await;
    let tablet = ana.another_device("tablet").await;
    let (phone, tablet) = (ana.connect().await, tablet.connect().await);
    // All at once, so that no token is refilled while they go.
    let pings = [&phone, &tablet, &phone, &tablet, &phone, &tablet]
        .map(|conn| async move { conn.request(Req::Ping(wire::PingRequest {})).await.map_err(|e| code_of(&e)).err() });
    let outcomes = futures_util::future::join_all(pings).await;
    let limited = outcomes.iter().filter(|o| **o == Some(wire::ErrorCode::RateLimited)).count();
    assert_eq!((outcomes.iter().filter(|o| o.is_none()).count(), limited), (4, 2), "{outcomes:?}");
}

const NODE_KEY: &str = "a node key shared by the test's nodes, 32+ bytes";

/// A room request as one node forwards it to the room's owner.
fn forwarded_send(user: u64, room: u64, text: &str) -> Vec<u8> {
    use tidings::actors::{ActorRequest, RoomOp, RoomWrite};
    use tidings::cluster::codec::{ForwardedRequest, encode};
    use tidings::domain::{DeviceId, RoomId, UserId};
    let op = RoomOp::Write(RoomWrite::Send {
        client_msg_id: text.into(),
        text: text.into(),
        reply_to_seq: 0,
        media: Vec::new(),
    });
    let request = ActorRequest::Room { room: RoomId(room), op };
    encode(&ForwardedRequest { user: UserId(user), device: DeviceId(1), request })
}

async fn post_forward(
    addr: &str,
    body: Vec<u8>,
    signature: Option<&tidings::cluster::signing::ForwardSignature>,
) -> u16 {
    use tidings::cluster::signing::*;
    let mut request =
        reqwest::Client::new().post(format!("http://{addr}{}", tidings::cluster::FORWARD_PATH)).body(body);
    if let Some(s) = signature {
        request = request
            .header(NODE_HEADER, &s.node)
            .header(TIMESTAMP_HEADER, s.timestamp_ms.to_string())
            .header(NONCE_HEADER, s.nonce.to_string())
            .header(SIGNATURE_HEADER, &s.mac_hex);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forwarded_requests_go_only_to_the_internal_listener_signed_fresh_and_once() {
    require!(Prerequisite::Redis);
    use tidings::cluster::signing::NodeSigner;

    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let settings = |node: &str| {
        vec![
            format!("cluster.redis_url={}", redis.url()),
            format!("cluster.node_id={node}"),
            format!("cluster.node_key={NODE_KEY}"),
            "cluster.heartbeat_ms=100".into(),
        ]
    };
    let (_n1, addr1) = crate::durability::spawn_server_with(data.path(), &settings("n1"));
    let (_n2, addr2) = crate::durability::spawn_server_with(data.path(), &settings("n2"));
    crate::cluster::wait_for_members(&redis, 2).await;
    let public = |node: &str| if node == "n1" { addr1.clone() } else { addr2.clone() };

    let http = tidings_client::Http::new(format!("http://{addr1}"));
    let ana = http.sign_up("ana", PASSWORD, "phone").await.unwrap();
    let bob = http.sign_up("bob", PASSWORD, "phone").await.unwrap();
    // A room owned by one node, used from the other: the request is forwarded, and accepted.
    let mut room = None;
    for _ in 0..20 {
        let a = Connection::connect(&format!("ws://{addr1}"), &ana.access_token, Encoding::Protobuf).await.unwrap();
        let id = a.create_group("g", vec![bob.user_id]).await.unwrap().room_id;
        if tidings::cluster::owner(tidings::domain::RoomId(id), ["n1", "n2"]) == Some("n2") {
            a.send_text(id, "via-n1", "forwarded to n2").await.unwrap();
            room = Some(id);
            break;
        }
    }
    let room = room.expect("one of 20 rooms is owned by n2");
    let n1 = tidings_client::Http::new(format!("http://{addr1}"));
    let n2 = tidings_client::Http::new(format!("http://{addr2}"));
    assert!(metric(&n1, "tidings_forwarded_requests_total").await >= 1, "n1 forwarded to the owner");
    assert_eq!(metric(&n2, "tidings_forwarded_rejected_total").await, 0, "and n2 accepted its signature");

    // The endpoint is not on the public port at all.
    let signer = NodeSigner::new(NODE_KEY.as_bytes());
    let body = forwarded_send(ana.user_id, room, "replayed");
    let captured = signer.sign_forward("n1", now_ms(), 42, &body);
    assert_eq!(post_forward(&public("n2"), body.clone(), Some(&captured)).await, 404);

    let mut client = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let internal: String =
        redis::cmd("HGET").arg("{tidings}:node-addrs").arg("n2").query_async(&mut client).await.unwrap();
    assert_ne!(internal, addr2, "the internal listener is its own");
    // Unsigned (what the old shared-secret header amounted to once leaked): refused.
    assert_eq!(post_forward(&internal, body.clone(), None).await, 403);
    // A captured request passes once; replayed, it is refused.
    assert_eq!(post_forward(&internal, body.clone(), Some(&captured)).await, 200);
    assert_eq!(post_forward(&internal, body.clone(), Some(&captured)).await, 403);
    // Its signature on another body (another user, say) is refused.
    let altered = forwarded_send(bob.user_id, room, "altered");
    let fresh = signer.sign_forward("n1", now_ms(), 43, &body);
    assert_eq!(post_forward(&internal, altered, Some(&fresh)).await, 403);
    // An old one, however well signed, is refused.
    let stale = signer.sign_forward("n1", now_ms() - 120_000, 44, &body);
    assert_eq!(post_forward(&internal, body.clone(), Some(&stale)).await, 403);
    // Signed with another key: refused.
    let other =
        NodeSigner::new(b"not this cluster's node key, though long enough").sign_forward("n1", now_ms(), 45, &body);
    assert_eq!(post_forward(&internal, body, Some(&other)).await, 403);
    assert_eq!(metric(&n2, "tidings_forwarded_rejected_total").await, 5);
}

#[tokio::test]
async fn a_message_forged_into_redis_never_reaches_a_socket_nor_displaces_the_real_event() {
    require!(Prerequisite::Redis);
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| crate::cluster::cluster_config(c, &redis, "n1", data.path()));
    crate::cluster::wait_for_members(&redis, 1).await;
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (b, _) = bob.connect_synced(0).await;
    let room = b.create_direct(ana.id()).await.unwrap().room_id;
    let (mut a, caught_up) = ana.connect_synced(0).await;
    let next_pos = caught_up.last().map_or(1, |e| e.pos + 1);

    // Whoever can PUBLISH to the cluster's Redis sends ana an event at her next position, a
    // typing notice, and a logout of her device: unsigned, and with a made-up seal.
    let forged_entry = serde_json::json!({
        "k": "Event", "origin": "elsewhere", "pos": next_pos,
        "event": { "pos": next_pos.to_string(), "entry": { "roomId": room.to_string(), "seq": "2", "senderId": bob.id().to_string(),
                   "text": { "text": "forged" } } }
    });
    let forged_typing =
        serde_json::json!({ "k": "Typing", "origin": "elsewhere", "room": room, "user": bob.id(), "active": true });
    let forged_kick = serde_json::json!({ "k": "Kick", "origin": "elsewhere", "devices": [ana.auth.device_id] });
    let mut client = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let channel = format!("tidings:u:{}", ana.id());
    for envelope in [forged_entry, forged_typing, forged_kick] {
        let unsigned = envelope.to_string();
        let sealed = format!("{}.{}.{unsigned}", now_ms(), "ab".repeat(32));
        for payload in [unsigned, sealed] {
            let receivers: u64 =
                redis::cmd("PUBLISH").arg(&channel).arg(payload).query_async(&mut client).await.unwrap();
            assert_eq!(receivers, 1, "the node is subscribed to ana's channel");
        }
    }
    // Nothing arrives; ana's socket stays open.
    assert!(a.next_within(Duration::from_millis(500)).await.is_err(), "nothing forged reaches the socket");
    // The real event at that position arrives, with its real text.
    b.send_text(room, "real", "the real message").await.unwrap();
    let event = next_event(&mut a).await;
    assert_eq!((event.pos, text(&event)), (next_pos, "the real message"));
}

#[tokio::test]
async fn nodes_reach_redis_over_tls_with_a_password_and_a_wrong_one_is_a_clear_error_without_it() {
    require!(Prerequisite::Redis);
    let redis = RedisServer::start_tls(&["--requirepass", "correct horse battery staple"]);
    let ca = RedisServer::tls_dir().join("ca.crt");
    let data = tempfile::tempdir().unwrap();
    let url = |password: &str| format!("rediss://:{password}@127.0.0.1:{}", redis.port);
    let node = |name: &str, password: &str| {
        let (url, ca) = (url(password), ca.clone());
        let name = name.to_owned();
        let data = data.path().to_path_buf();
        move |c: &mut Config| {
            c.store.data_dir = data;
            c.cluster.redis_url = url;
            c.cluster.redis_ca_file = ca;
            c.cluster.node_id = name;
            c.cluster.heartbeat_ms = 100;
        }
    };
    let n1 = TestServer::start_with(node("n1", "correct horse battery staple"));
    let n2 = TestServer::start_with(node("n2", "correct horse battery staple"));
    // Both joined through the TLS Redis (the membership lists them) ...
    let tls = redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(&ca).unwrap()) };
    let client = redis::Client::build_with_tls(url("correct horse battery staple"), tls).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut listed = 0;
    for _ in 0..100 {
        let members: Vec<String> =
            redis::cmd("ZRANGE").arg("{tidings}:nodes").arg(0).arg(-1).query_async(&mut conn).await.unwrap();
        listed = members.len();
        if listed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... and the bridge carries a message from one node's user to the other's over it.
    let ana = n1.user("ana").await;
    let bob = TestUser { ws_base: n2.ws_base(), ..n1.user("bob").await };
    let (a, _) = ana.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    let (mut b, _) = bob.connect_synced(0).await;
    a.send_text(room, "tls", "over TLS").await.unwrap();
    assert_eq!(text(&next_event(&mut b).await), "over TLS");

    // A wrong password: the node refuses to start, saying why, and never prints the password.
    let mut config = test_config(data.path());
    node("n3", "wrong password")(&mut config);
    let error = start_error(config).expect("a wrong password refuses the start");
    assert!(!error.contains("wrong password"), "{error}");
    assert!(error.contains(":***@"), "{error}");
    // Without the CA, the certificate is not trusted.
    let mut config = test_config(data.path());
    node("n4", "correct horse battery staple")(&mut config);
    config.cluster.redis_ca_file = Default::default();
    let error = start_error(config).expect("an untrusted certificate refuses the start");
    assert!(!error.contains("correct horse"), "{error}");
}

/// Reads until the connection closes: it must have been sent `notice` first, and close with 1008.
async fn told_then_closed_with_1008(conn: &mut Connection, notice: wire::NoticeKind) {
    let mut told = false;
    loop {
        match conn.next_within(WAIT).await.expect("the connection is closed in time") {
            Incoming::Notice(n) if n.kind == notice as i32 => told = true,
            Incoming::Closed(Some((code, _))) => {
                assert_eq!(code, 1008);
                break;
            }
            _ => {}
        }
    }
    assert!(told, "closed without {notice:?}");
}

#[tokio::test]
async fn a_logout_while_redis_is_down_still_closes_the_device_socket_on_another_node() {
    require!(Prerequisite::Redis);
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        TestServer::start_with(|c| {
            crate::cluster::cluster_config(c, &redis, name, data.path());
            c.limits.device_recheck_secs = 1;
        })
    };
    let n1 = node("n1");
    let n2 = node("n2");
    crate::cluster::wait_for_members(&redis, 2).await;
    let ana = n1.user("ana").await;
    let tablet = TestUser { ws_base: n2.ws_base(), ..ana.another_device("tablet").await };
    let (mut socket, _) = tablet.connect_synced(0).await;

    // Redis goes away; the tablet is logged out on n1: the kick cannot cross to n2.
    redis.stop();
    tablet.http.log_out(&tablet.auth.access_token, false).await.unwrap();
    // n2's recheck finds the device logged out in the store and closes the socket anyway.
    told_then_closed_with_1008(&mut socket, wire::NoticeKind::LoggedOut).await;
}

#[tokio::test]
async fn an_expired_access_token_ends_its_socket_unless_a_fresh_one_came_in_time() {
    let server = TestServer::start_with(|c| c.auth.access_token_ttl_secs = 4);
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (mut stale, _) = ana.connect_synced(0).await;
    let (mut renewed, _) = ana.connect_synced(0).await;

    // Another device's token, or garbage, does not extend this connection.
    let other = Req::Reauthenticate(wire::ReauthenticateRequest { access_token: bob.auth.access_token.clone() });
    assert_eq!(code_of(&renewed.request(other).await.unwrap_err()), wire::ErrorCode::Forbidden);
    let garbage = Req::Reauthenticate(wire::ReauthenticateRequest { access_token: "garbage".into() });
    assert_eq!(code_of(&renewed.request(garbage).await.unwrap_err()), wire::ErrorCode::Unauthenticated);
    // Tokens carry whole seconds: refresh two seconds into the first token's life, so that the
    // new one outlives it by two seconds (with a margin either side for a loaded machine).
    let first_expiry = ana.auth.access_expires_at_ms;
    tokio::time::sleep(Duration::from_millis((first_expiry - 2000 - now_ms()).max(0) as u64)).await;
    let fresh = ana.http.refresh(&ana.auth.refresh_token).await.unwrap();
    assert!(fresh.access_expires_at_ms >= first_expiry + 2000, "{} vs {first_expiry}", fresh.access_expires_at_ms);
    let renew = Req::Reauthenticate(wire::ReauthenticateRequest { access_token: fresh.access_token });
    renewed.request(renew).await.unwrap();

    // The connection that got nothing is told why and closed once its token expires.
    told_then_closed_with_1008(&mut stale, wire::NoticeKind::TokenExpired).await;
    // The renewed one outlives the token it was opened with.
    tokio::time::sleep(Duration::from_millis(500)).await;
    renewed.request(Req::Ping(wire::PingRequest {})).await.expect("still open after the first token expired");
    while let Some(incoming) = renewed.try_next() {
        assert!(!matches!(incoming, Incoming::Closed(_) | Incoming::Notice(_)), "{incoming:?}");
    }
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.server.body_read_timeout_secs = 1);
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head =
        "POST /v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // One byte every 300 ms would take a minute; the server answers after about a second.
    for _ in 0..20 {
        if socket.write_all(b"{").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test]
async fn metrics_can_leave_the_public_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = TestServer::start_with(|c| c.server.metrics_listen = format!("127.0.0.1:{port}"));
    let (status, _) = server.http().get_text("/metrics").await.unwrap();
    assert_eq!(status, 404, "not on the public port");
    let (status, _) = server.http().get_text("/healthz").await.unwrap();
    assert_eq!(status, 200, "health stays for load balancers");
    let operations = tidings_client::Http::new(format!("http://127.0.0.1:{port}"));
    let (status, text) = operations.get_text("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("tidings_connections_open"), "{text}");
}

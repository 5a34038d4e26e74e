//! The server API (`/v1/server/*`): the app's backend, with a server API key, asks who is online,
//! lists, revokes and disconnects devices, and sees live connections. Real HTTP calls to a real
//! server, and real WebSocket clients that see the effects.

use serde_json::{Value, json};
use tidings::auth::app_identity::app_user_id;
use tidings_client::Incoming;
use tidings_client::tidings_proto::Encoding;
use tidings_client::tidings_proto::v1 as wire;
use tidings_fakes::{APP_HS256_SECRET, FakeIdentityProvider};

use crate::harness::{TestServer, TestUser, WAIT, until_caught_up};

pub(crate) const KEY: &str = "server-api-key-number-one-32-chars+";
const NEXT_KEY: &str = "server-api-key-number-two-32-chars+";

fn with_keys() -> TestServer {
    TestServer::start_with(|c| {
        c.server_api.keys = vec![KEY.into(), NEXT_KEY.into()];
        c.app_tokens.hs256_secret = APP_HS256_SECRET.into();
    })
}

/// A call as the app's backend makes it: the status and the JSON answer.
pub(crate) async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://{}/v1/server{path}", server.addr);
    let client = reqwest::Client::new();
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON answer, got {text:?}")))
}

async fn next_notice(conn: &mut tidings_client::Connection) -> wire::NoticeKind {
    loop {
        match conn.next_within(WAIT).await.expect("a notice") {
            Incoming::Notice(n) => return wire::NoticeKind::try_from(n.kind).expect("a known notice"),
            Incoming::Event(_) => continue,
            other => panic!("expected a notice, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn without_keys_the_api_is_off_and_a_wrong_key_is_refused() {
    let off = TestServer::start();
    let (status, body) = call(&off, "POST", "/presence", Some(KEY), Some(json!({ "userIds": ["1"] }))).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ERROR_CODE_NOT_FOUND")), "{body}");

    let server = with_keys();
    for key in [None, Some("wrong"), Some(&KEY[..KEY.len() - 1])] {
        let (status, body) = call(&server, "POST", "/presence", key, Some(json!({ "userIds": ["1"] }))).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("ERROR_CODE_UNAUTHENTICATED")), "{key:?}: {body}");
    }
    // Both keys work while one replaces the other.
    for key in [KEY, NEXT_KEY] {
        let (status, _) = call(&server, "POST", "/presence", Some(key), Some(json!({ "userIds": ["1"] }))).await;
        assert_eq!(status, 200);
    }
    let (status, body) = call(&server, "GET", "/no/such/call", Some(KEY), None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ERROR_CODE_NOT_FOUND")), "{body}");
    let (status, body) = call(&server, "POST", "/presence", Some(KEY), Some(json!({ "userIds": "x" }))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("ERROR_CODE_BAD_FRAME")), "{body}");
    let (status, body) = call(&server, "GET", "/users/nobody/devices", Some(KEY), None).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("user")), "{body}");
    let (status, body) = call(&server, "GET", "/users/12345/devices", Some(KEY), None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ERROR_CODE_NOT_FOUND")), "{body}");
}

#[tokio::test]
pub(crate) async fn presence_of_tidings_and_app_users() {
    let server = with_keys();
    let idp = FakeIdentityProvider::start().await;
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (_ana_conn, _) = ana.connect_synced(0).await;
    // Bob came and went: offline, with a last-seen time.
    let (bob_conn, _) = bob.connect_synced(0).await;
    bob_conn.close().await;
    drop(bob_conn);
    let now = tidings::domain::now_ms() / 1000;
    let token = idp.hs256(&json!({ "sub": "carol@app", "exp": now + 600 }));
    let carol = TestUser {
        name: "carol".into(),
        auth: wire::AuthResponse { access_token: token, user_id: app_user_id("carol@app").0, ..Default::default() },
        ws_base: server.ws_base(),
        http: server.http(),
    };
    let (_carol_conn, _) = carol.connect_synced(0).await;

    let ask = json!({ "userIds": [ana.id().to_string(), bob.id().to_string()], "subjects": ["carol@app"] });
    let deadline = tokio::time::Instant::now() + WAIT;
    let users = loop {
        let (status, body) = call(&server, "POST", "/presence", Some(KEY), Some(ask.clone())).await;
        assert_eq!(status, 200, "{body}");
        let users = body["users"].as_array().unwrap().clone();
        // Bob's close reaches his actor a moment after the client's.
        if users[1]["online"] != json!(true) || tokio::time::Instant::now() > deadline {
            break users;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let summary: Vec<(String, bool, bool)> = users
        .iter()
        .map(|u| {
            let seen = u["lastSeenMs"].as_str().is_some_and(|ms| ms != "0");
            (u["userId"].as_str().unwrap().to_owned(), u["online"].as_bool().unwrap_or(false), seen)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ana.id().to_string(), true, false),
            (bob.id().to_string(), false, true),
            (app_user_id("carol@app").0.to_string(), true, false)
        ]
    );
}

#[tokio::test]
pub(crate) async fn devices_are_listed_revoked_and_disconnected() {
    let server = with_keys();
    let ana = server.user("ana").await;
    let tablet = ana.another_device("tablet").await;
    let (mut phone_conn, _) = ana.connect_synced(0).await;
    let (mut tablet_conn, _) = tablet.connect_synced(0).await;
    let user = format!("/users/{}", ana.id());

    let (status, body) = call(&server, "GET", &format!("{user}/devices"), Some(KEY), None).await;
    assert_eq!(status, 200, "{body}");
    let mut listed: Vec<(String, u64)> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_owned(), d["connections"].as_u64().unwrap_or(0)))
        .collect();
    listed.sort();
    assert_eq!(listed, [("phone".to_owned(), 1), ("tablet".to_owned(), 1)]);

    let (status, body) = call(&server, "GET", &format!("{user}/connections"), Some(KEY), None).await;
    assert_eq!(status, 200, "{body}");
    let connections = body["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 2, "{body}");
    assert_eq!(connections[0]["node"].as_str(), Some(server.addr.to_string().as_str()));

    // Disconnect: both connections are told and closed; the devices stay logged in.
    let (status, body) = call(&server, "POST", &format!("{user}/disconnect"), Some(KEY), None).await;
    assert_eq!((status, body["connections"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(next_notice(&mut phone_conn).await, wire::NoticeKind::Disconnected);
    assert_eq!(next_notice(&mut tablet_conn).await, wire::NoticeKind::Disconnected);
    let mut tablet_conn = tablet.connect().await;
    tablet_conn.sync(0).await.unwrap();
    until_caught_up(&mut tablet_conn).await;

    // Revoking the tablet closes its connection (LOGGED_OUT) and its token stops working.
    let tablet_path = format!("{user}/devices/{}/revoke", tablet.auth.device_id);
    let (status, body) = call(&server, "POST", &tablet_path, Some(KEY), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deviceIds"], json!([tablet.auth.device_id.to_string()]));
    assert_eq!(next_notice(&mut tablet_conn).await, wire::NoticeKind::LoggedOut);
    let refused = tidings_client::Connection::connect(&server.ws_base(), &tablet.auth.access_token, Encoding::Protobuf)
        .await
        .err()
        .expect("a revoked device's token is refused");
    assert_eq!(refused.code(), Some(wire::ErrorCode::Unauthenticated));
    let (status, _) = call(&server, "POST", &format!("{user}/devices/999/revoke"), Some(KEY), None).await;
    assert_eq!(status, 404);

    // Revoking the user: every device left (the phone) is revoked.
    let (status, body) = call(&server, "POST", &format!("{user}/revoke"), Some(KEY), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deviceIds"], json!([ana.auth.device_id.to_string()]));
    let (_, body) = call(&server, "GET", &format!("{user}/devices"), Some(KEY), None).await;
    assert!(body["devices"].as_array().unwrap().iter().all(|d| d["revoked"] == json!(true)), "{body}");
}

#[tokio::test]
pub(crate) async fn a_blocked_account_is_disconnected_and_kept_out_until_unblocked() {
    let server = with_keys();
    let ana = server.user("ana").await;
    let (mut conn, _) = ana.connect_synced(0).await;
    let user = format!("/users/{}", ana.id());

    let (status, body) = call(&server, "POST", &format!("{user}/block"), Some(KEY), None).await;
    assert_eq!((status, body["connections"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(next_notice(&mut conn).await, wire::NoticeKind::Disconnected);
    let refused = tidings_client::Connection::connect(&server.ws_base(), &ana.auth.access_token, Encoding::Protobuf)
        .await
        .err()
        .expect("a blocked account cannot connect");
    assert!(matches!(refused, tidings_client::ClientError::Http { status: 403, .. }), "{refused}");
    assert_eq!(refused.code(), Some(wire::ErrorCode::Forbidden));
    let login = server.http().log_in("ana", crate::harness::PASSWORD, "laptop").await.unwrap_err();
    assert_eq!(login.code(), Some(wire::ErrorCode::Forbidden));
    let refresh = server.http().refresh(&ana.auth.refresh_token).await.unwrap_err();
    assert_eq!(refresh.code(), Some(wire::ErrorCode::Forbidden));

    let (status, _) = call(&server, "POST", &format!("{user}/unblock"), Some(KEY), None).await;
    assert_eq!(status, 200);
    ana.connect_synced(0).await;
    server.http().log_in("ana", crate::harness::PASSWORD, "laptop").await.expect("logs in again");
}

#[tokio::test]
pub(crate) async fn system_messages_reach_every_member_once_per_key() {
    let server = with_keys();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let (mut b, _) = bob.connect_synced(0).await;
    let room = a.create_group("trip", vec![bob.id()]).await.unwrap().room_id;
    crate::harness::next_event(&mut b).await;
    let path = format!("/rooms/{room}/messages");

    let url = format!("http://{}/v1/server{path}", server.addr);
    let send = |key: &'static str| {
        reqwest::Client::new()
            .post(url.clone())
            .bearer_auth(KEY)
            .header("idempotency-key", key)
            .json(&json!({ "text": "The trip was moved to Friday" }))
            .send()
    };
    let first: Value = send("move-1").await.unwrap().json().await.unwrap();
    // Proto3 JSON leaves out a false.
    assert!(!first["duplicate"].as_bool().unwrap_or(false), "{first}");
    let event = crate::harness::next_event(&mut b).await;
    let entry = crate::harness::entry(&event);
    assert_eq!(crate::harness::text(&event), "The trip was moved to Friday");
    assert_eq!(entry.sender_id.to_string(), first["senderId"].as_str().unwrap());
    assert_eq!(entry.seq.to_string(), first["seq"].as_str().unwrap());

    // A retry: the same message, stored once.
    let again: Value = send("move-1").await.unwrap().json().await.unwrap();
    assert_eq!((again["duplicate"].clone(), again["seq"].clone()), (json!(true), first["seq"].clone()));
    assert!(b.next_within(std::time::Duration::from_millis(300)).await.is_err(), "no second event");

    let (status, body) = call(&server, "POST", &path, Some(KEY), Some(json!({ "text": "no key" }))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("clientMsgId")), "{body}");
    let (status, body) =
        call(&server, "POST", "/rooms/123456789/messages", Some(KEY), Some(json!({ "text": "x", "clientMsgId": "c" })))
            .await;
    assert!(status == 404 || status == 403, "{status} {body}");
}

//! `POST /v1/server/notify`: a notification in each user's stream, shown live, resumed like
//! chat, pushed to devices with no live session unless one acknowledges it in the grace window,
//! and never twice for one idempotency key.

use std::time::Duration;

use serde_json::json;
use tidings::clock::Clock;
use tidings_client::Incoming;
use tidings_client::tidings_proto::v1 as wire;
use tidings_fakes::{FakeApns, FakeFcm};

use crate::harness::{TestServer, TestUser, WAIT};
use crate::push::{apns_token, ios, wire_push};
use crate::server_api::{KEY, call};

const GRACE: Duration = Duration::from_millis(1500);
/// Long enough for an event that should not come to have come.
const QUIET: Duration = Duration::from_millis(500);

struct Rig {
    apns: FakeApns,
    _fcm: FakeFcm,
    server: TestServer,
    _keys: tempfile::TempDir,
}

/// A server with the server API, push to the fakes, and push timing on a manual clock.
async fn rig() -> Rig {
    let apns = FakeApns::start().await;
    let fcm = FakeFcm::start().await;
    let keys = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(Clock::manual(), |c| {
        wire_push(c, &apns, &fcm, keys.path());
        c.push.grace_ms = GRACE.as_millis() as u64;
        c.server_api.keys = vec![KEY.into()];
    });
    Rig { apns, _fcm: fcm, server, _keys: keys }
}

async fn notify_call(server: &TestServer, key: Option<&str>, body: serde_json::Value) -> (u16, serde_json::Value) {
    let url = format!("http://{}/v1/server/notify", server.addr);
    let mut request = reqwest::Client::new().post(url).bearer_auth(KEY).json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Registers the device's iOS token, leaves, and waits until the server sees the user offline.
async fn register_and_leave(server: &TestServer, user: &TestUser) {
    let conn = user.connect().await;
    conn.set_push_token(ios(&apns_token(&user.name))).await.unwrap();
    conn.close().await;
    drop(conn);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) =
            call(server, "POST", "/presence", Some(KEY), Some(json!({ "userIds": [user.id().to_string()] }))).await;
        if body["users"][0]["online"] != json!(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never went offline", user.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn notifications(events: &[wire::Event]) -> Vec<&wire::Notification> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(wire::event::Kind::Notification(n)) => Some(n),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_notification_is_shown_live_resumed_pushed_offline_and_never_twice() {
    let rig = rig().await;
    let ana = rig.server.user("ana").await;
    let bob = rig.server.user("bob").await;
    register_and_leave(&rig.server, &bob).await;
    let (mut ana_conn, _) = ana.connect_synced(0).await;

    let request = json!({
        "userIds": [ana.id().to_string(), bob.id().to_string(), "999"],
        "title": "Your order shipped",
        "body": "It arrives Tuesday",
        "data": { "order": "42", "kind": "not ours" },
    });
    let (status, body) = notify_call(&rig.server, Some("order-42-shipped"), request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queued"], 2);
    assert_eq!(body["unknownUserIds"], json!(["999"]));

    // Ana sees it at once.
    let event = match ana_conn.next_within(WAIT).await.unwrap() {
        Incoming::Event(e) => e,
        other => panic!("expected the notification, got {other:?}"),
    };
    let n = notifications(std::slice::from_ref(&event))[0].clone();
    assert_eq!((n.title.as_str(), n.body.as_str()), ("Your order shipped", "It arrives Tuesday"));
    assert_eq!(n.data.get("order").map(String::as_str), Some("42"));

    // Bob, offline, is pushed once the grace window ends: the app's data beside ours.
    rig.server.advance_and_settle(GRACE).await;
    let pushes = rig.apns.accepted();
    assert_eq!(pushes.len(), 1, "one push, to bob");
    assert_eq!(pushes[0].device_token, apns_token("bob"));
    assert_eq!(pushes[0].payload["aps"]["alert"]["title"], "Your order shipped");
    assert_eq!(pushes[0].payload["aps"]["alert"]["body"], "It arrives Tuesday");
    assert_eq!(pushes[0].payload["order"], "42");
    assert_eq!(pushes[0].payload["kind"], "notification", "ours wins a clash");

    // The backend retries (it never saw the answer): the same answer, nothing new anywhere.
    let (status, again) = notify_call(&rig.server, Some("order-42-shipped"), request.clone()).await;
    assert_eq!((status, &again), (200, &body));
    assert!(ana_conn.next_within(QUIET).await.is_err(), "no second event for a retry");
    rig.server.advance_and_settle(GRACE).await;
    assert_eq!(rig.apns.accepted().len(), 1, "no second push for a retry");

    // Bob comes back: his stream has it once, where it was put; resuming after it gives nothing.
    let (bob_conn, events) = bob.connect_synced(0).await;
    assert_eq!(notifications(&events).len(), 1, "{events:?}");
    let pos = events.iter().find(|e| matches!(e.kind, Some(wire::event::Kind::Notification(_)))).unwrap().pos;
    bob_conn.close().await;
    let (_, after) = bob.connect_synced(pos).await;
    assert!(notifications(&after).is_empty());

    // Another key is another notification.
    let (_, body) = notify_call(&rig.server, Some("order-43"), request).await;
    assert_eq!(body["queued"], 2);
    assert!(matches!(ana_conn.next_within(WAIT).await.unwrap(), Incoming::Event(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn an_ack_within_the_grace_window_cancels_the_push_and_push_false_sends_none() {
    let rig = rig().await;
    let bob = rig.server.user("bob").await;
    register_and_leave(&rig.server, &bob).await;
    let users = json!([bob.id().to_string()]);

    let (status, _) = notify_call(&rig.server, None, json!({ "userIds": users, "title": "Ping" })).await;
    assert_eq!(status, 200);
    // The phone wakes by itself, syncs, stores and acknowledges, then goes away again.
    let (conn, events) = bob.connect_synced(0).await;
    conn.ack(events.last().unwrap().pos).await.unwrap();
    conn.close().await;
    drop(conn);
    register_and_leave(&rig.server, &bob).await;
    rig.server.advance_and_settle(GRACE).await;
    assert_eq!(rig.apns.attempts().len(), 0, "a notification a device acknowledged is not pushed");

    let body = json!({ "userIds": users, "title": "Quiet", "push": false });
    assert_eq!(notify_call(&rig.server, None, body).await.0, 200);
    rig.server.advance_and_settle(GRACE).await;
    assert_eq!(rig.apns.attempts().len(), 0, "push: false");

    // Without push: false, unacknowledged: pushed.
    assert_eq!(notify_call(&rig.server, None, json!({ "userIds": users, "body": "Loud" })).await.0, 200);
    rig.server.advance_and_settle(GRACE).await;
    let pushes = rig.apns.accepted();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].payload["aps"]["alert"]["body"], "Loud");
}

#[tokio::test]
async fn bad_notifications_are_refused_naming_their_field() {
    let server = TestServer::start_with(|c| c.server_api.keys = vec![KEY.into()]);
    let ana = server.user("ana").await;
    let users = json!([ana.id().to_string()]);
    let too_much: serde_json::Map<String, serde_json::Value> = (0..40).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (body, key, field) in [
        (json!({ "userIds": users }), None, "body"),
        (json!({ "userIds": users, "title": "t".repeat(201) }), None, "title"),
        (json!({ "userIds": users, "title": "t", "data": too_much }), None, "data"),
        (json!({ "userIds": users, "title": "t" }), Some("k".repeat(129)), "Idempotency-Key"),
    ] {
        let (status, answer) = notify_call(&server, key.as_deref(), body).await;
        assert_eq!((status, answer["field"].as_str()), (400, Some(field)), "{answer}");
        assert_eq!(answer["code"], "ERROR_CODE_INVALID_ARGUMENT");
    }
    // Nothing was recorded by the refused calls.
    let (_, events) = ana.connect_synced(0).await;
    assert!(notifications(&events).is_empty(), "{events:?}");
}

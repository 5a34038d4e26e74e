//! Push: a real server sends to fake APNs (HTTP/2) and fake FCM (OAuth2 + HTTP v1) servers on
//! loopback, which check credentials and headers the way the real providers do.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tidings::clock::Clock;
use tidings::config::Config;
use tidings_client::Connection;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req};
use tidings_fakes::{APNS_KEY_ID, APNS_TEAM_ID, Failure, FakeApns, FakeFcm};

use crate::harness::*;

const TOPIC: &str = "app.tidings.test";
/// Long enough for a push that should not happen to have happened.
const QUIET: Duration = Duration::from_millis(1200);

/// A server wired to both fakes.
struct PushRig {
    apns: FakeApns,
    fcm: FakeFcm,
    server: TestServer,
    _keys: TempDir,
}

pub fn wire_push(config: &mut Config, apns: &FakeApns, fcm: &FakeFcm, keys: &std::path::Path) {
    config.apns.key_file = tidings_fakes::apns_key_file();
    config.apns.key_id = APNS_KEY_ID.into();
    config.apns.team_id = APNS_TEAM_ID.into();
    config.apns.production_url = apns.url();
    config.apns.sandbox_url = apns.url();
    config.fcm.service_account_file = fcm.write_service_account(keys);
    config.fcm.base_url = fcm.url();
    config.push.grace_ms = 200;
    config.push.retry_base_ms = 100;
}

impl PushRig {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(Clock::system(), adjust).await
    }

    /// Push timing on a manual clock: nothing falls due until the test moves it
    /// (`TestServer::advance_and_settle`).
    async fn start_driven(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(Clock::manual(), adjust).await
    }

    async fn start_on(clock: Clock, adjust: impl FnOnce(&mut Config)) -> Self {
        let apns = FakeApns::start().await;
        let fcm = FakeFcm::start().await;
        let keys = tempfile::tempdir().unwrap();
        let server = TestServer::start_on(clock, |config| {
            wire_push(config, &apns, &fcm, keys.path());
            adjust(config);
        });
        Self { apns, fcm, server, _keys: keys }
    }
}

/// A 64-hex-digit APNs device token, different per name.
pub fn apns_token(name: &str) -> String {
    let seed: u64 = name.bytes().fold(1469598103934665603, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
    format!("{seed:016x}").repeat(4)
}

/// An FCM registration token's shape (a long run of URL-safe characters with a ':'), per name.
pub fn fcm_token(name: &str) -> String {
    format!("{name}:APA91b{}", apns_token(name).repeat(2))
}

pub fn ios(token: &str) -> wire::SetPushTokenRequest {
    wire::SetPushTokenRequest {
        platform: wire::PushPlatform::Ios as i32,
        token: token.into(),
        app_id: TOPIC.into(),
        locale: "en-GB".into(),
        sandbox: false,
    }
}

fn android(token: &str) -> wire::SetPushTokenRequest {
    wire::SetPushTokenRequest {
        platform: wire::PushPlatform::Android as i32,
        token: token.into(),
        app_id: "app.tidings.android".into(),
        locale: "en".into(),
        sandbox: false,
    }
}

/// Registers the device's token, then leaves: the user has no live session afterwards.
pub async fn register_and_leave(user: &TestUser, registration: wire::SetPushTokenRequest, observer: &Connection) {
    let conn = user.connect().await;
    conn.set_push_token(registration).await.expect("register push token");
    conn.close().await;
    drop(conn);
    wait_offline(observer, user.id()).await;
}

/// Waits until `observer` (who shares a room with `user`) sees `user` offline.
pub async fn wait_offline(observer: &Connection, user: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = observer.request(Req::Presence(wire::PresenceRequest { user_ids: vec![user] })).await.unwrap();
        if let wire::reply::Result::Presence(list) = reply
            && list.users.iter().all(|p| !p.online)
        {
            return;
        }
        assert!(Instant::now() < deadline, "user {user} never went offline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ana (connected) and bob, in a direct room.
async fn ana_and_bob(server: &TestServer) -> (Connection, TestUser, u64) {
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    (a, bob, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn offline_recipient_gets_exactly_one_push_with_the_right_payload() {
    let rig = PushRig::start().await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    let sent_at = Instant::now();
    a.send_text(room, "m1", "hi bob, climbing tonight?").await.unwrap();
    let pushes = rig.apns.wait_for(1, WAIT).await;
    let latency = sent_at.elapsed();
    tokio::time::sleep(QUIET).await;
    let pushes_after = rig.apns.accepted();
    assert_eq!(pushes_after.len(), 1, "exactly one push: {pushes_after:?}");
    let push = &pushes[0];
    assert_eq!(push.device_token, apns_token("bob"));
    assert_eq!(push.topic, TOPIC);
    assert_eq!(push.push_type, "alert");
    assert_eq!(push.priority, "10");
    assert_eq!(push.collapse_id, format!("room-{room}"));
    assert!(push.expiration.parse::<u64>().unwrap() > 0);
    let aps = &push.payload["aps"];
    assert_eq!(aps["alert"]["title"], "ana");
    assert_eq!(aps["alert"]["body"], "hi bob, climbing tonight?");
    assert_eq!(aps["badge"], 1);
    assert_eq!(aps["thread-id"], format!("room-{room}"));
    assert_eq!(aps["mutable-content"], 1);
    assert_eq!(push.payload["room_id"], room.to_string());
    assert_eq!(push.payload["push_id"], push.apns_id);
    assert!(latency >= Duration::from_millis(200), "the grace window is waited out ({latency:?})");
    assert!(rig.apns.refused().is_empty(), "{:?}", rig.apns.refused());

    // Metrics are per process, and tests share one: at least this test's push is counted.
    assert!(metric(&rig.server, "tidings_push_sent_total{provider=\"apns\"}").await >= 1.0);
    assert!(metric(&rig.server, "tidings_push_queued_total{provider=\"apns\"}").await >= 1.0);
    assert!(metric(&rig.server, "tidings_push_latency_seconds_count").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_recipient_gets_an_fcm_v1_message_with_oauth() {
    let rig = PushRig::start().await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    register_and_leave(&bob, android(&fcm_token("bob")), &a).await;

    a.send_text(room, "m1", "hello from ana").await.unwrap();
    let pushes = rig.fcm.wait_for(1, WAIT).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(rig.fcm.accepted_count(), 1, "exactly one push; refused: {:?}", rig.fcm.refused());
    let message = &pushes[0].message;
    assert_eq!(pushes[0].token, fcm_token("bob"));
    assert_eq!(message["notification"]["title"], "ana");
    assert_eq!(message["notification"]["body"], "hello from ana");
    assert_eq!(message["data"]["room_id"], room.to_string());
    assert_eq!(message["data"]["badge"], "1");
    assert_eq!(message["android"]["collapse_key"], format!("room-{room}"));
    assert_eq!(message["android"]["priority"], "HIGH");
    assert_eq!(rig.fcm.access_tokens_issued(), 1, "the access token is fetched once and reused");
    assert!(rig.fcm.refused().is_empty(), "{:?}", rig.fcm.refused());
    assert_eq!(rig.apns.accepted_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_recipient_gets_no_push() {
    let rig = PushRig::start().await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    let (mut b, _) = bob.connect_synced(0).await;
    b.set_push_token(ios(&apns_token("bob"))).await.unwrap();

    a.send_text(room, "m1", "you are online").await.unwrap();
    let event = next_event(&mut b).await;
    assert_eq!(text(&event), "you are online");
    tokio::time::sleep(QUIET).await;
    assert_eq!(rig.apns.attempts().len(), 0, "a connected device gets no push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn ack_within_the_grace_window_cancels_the_push() {
    let rig = PushRig::start_driven(|c| c.push.grace_ms = 1500).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    a.send_text(room, "m1", "quick, come back").await.unwrap();
    // The phone wakes up by itself, syncs, stores and acknowledges, then goes away again.
    let (b, events) = bob.connect_synced(0).await;
    let last = events.last().expect("the message").pos;
    b.ack(last).await.unwrap();
    b.close().await;
    drop(b);
    wait_offline(&a, bob.id()).await;
    rig.server.advance_and_settle(Duration::from_millis(1500)).await;
    assert_eq!(rig.apns.attempts().len(), 0, "the delivered message is not pushed");

    // A later message, not acknowledged, is pushed: when its grace window ends, not before.
    a.send_text(room, "m2", "still there?").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(1499)).await;
    assert_eq!(rig.apns.attempts().len(), 0, "not within the grace window");
    rig.server.advance_and_settle(Duration::from_millis(1)).await;
    let pushes = rig.apns.accepted();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].payload["aps"]["alert"]["body"], "still there?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn reading_on_another_device_cancels_the_push() {
    let rig = PushRig::start_driven(|c| c.push.grace_ms = 1500).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    let tablet = bob.another_device("tablet").await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    let ack = a.send_text(room, "m1", "read me").await.unwrap();
    // The tablet connects without syncing the stream, marks the room read, and leaves.
    let t = tablet.connect().await;
    let receipt = wire::ReceiptRequest { room_id: room, kind: wire::ReceiptKind::Read as i32, up_to_seq: ack.seq };
    t.request(Req::Receipt(receipt)).await.unwrap();
    t.close().await;
    drop(t);
    rig.server.advance_and_settle(Duration::from_millis(1500)).await;
    assert_eq!(rig.apns.attempts().len(), 0, "a message read elsewhere is not pushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_burst_is_coalesced_into_one_push_with_the_badge() {
    let rig = PushRig::start_with(|c| c.push.grace_ms = 800).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    let bob_android = bob.another_device("android").await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;
    register_and_leave(&bob_android, android(&fcm_token("bob")), &a).await;

    for i in 0..5 {
        a.send_text(room, &format!("m{i}"), &format!("message {i}")).await.unwrap();
    }
    let apns = rig.apns.wait_for(1, WAIT).await;
    let fcm = rig.fcm.wait_for(1, WAIT).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(rig.apns.accepted_count(), 1, "one push for the burst on iOS");
    assert_eq!(rig.fcm.accepted_count(), 1, "one push for the burst on Android");
    let aps = &apns[0].payload["aps"];
    assert_eq!(aps["alert"]["body"], "5 new messages from ana");
    assert_eq!(aps["badge"], 5);
    assert_eq!(fcm[0].message["notification"]["body"], "5 new messages from ana");
    assert_eq!(fcm[0].message["android"]["notification"]["notification_count"], 5);

    // A message in a group: the title names the group; the badge counts every room.
    let carol = rig.server.user("carol").await;
    let group = a.create_group("climbers", vec![bob.id(), carol.id()]).await.unwrap().room_id;
    tokio::time::sleep(QUIET).await;
    let before = rig.apns.accepted_count();
    a.send_text(group, "g1", "rope is packed").await.unwrap();
    let pushes = rig.apns.wait_for(before + 1, WAIT).await;
    let group_push: Vec<_> = pushes.iter().filter(|p| p.payload["aps"]["alert"]["body"] == "rope is packed").collect();
    assert_eq!(group_push.len(), 1, "{pushes:?}");
    assert_eq!(group_push[0].payload["aps"]["alert"]["title"], "ana in climbers");
    assert_eq!(group_push[0].payload["aps"]["badge"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn throttling_and_outages_are_retried_honouring_retry_after() {
    let rig = PushRig::start_driven(|_| {}).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    let bob_android = bob.another_device("android").await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;
    register_and_leave(&bob_android, android(&fcm_token("bob")), &a).await;
    rig.apns.fail_next([Failure::unavailable(Some(1)), Failure::throttled(Some(1))]);
    rig.fcm.fail_next([Failure::throttled(Some(1)), Failure::unavailable(None)]);

    a.send_text(room, "m1", "eventually").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(200)).await; // the grace window
    assert_eq!(rig.apns.attempts().len(), 1, "503 with Retry-After: 1");
    assert_eq!(rig.fcm.attempts(), 1, "429 with Retry-After: 1");
    rig.server.advance_and_settle(Duration::from_millis(999)).await;
    assert_eq!(rig.apns.attempts().len(), 1, "Retry-After is honoured");
    assert_eq!(rig.fcm.attempts(), 1, "Retry-After is honoured");
    rig.server.advance_and_settle(Duration::from_millis(1)).await;
    assert_eq!(rig.apns.attempts().len(), 2, "429 with Retry-After: 1");
    assert_eq!(rig.fcm.attempts(), 2, "503 without Retry-After: backoff");
    rig.server.advance_and_settle(Duration::from_millis(1000)).await;
    rig.server.advance_and_settle(Duration::from_secs(5)).await; // past any backoff
    let (apns, fcm) = (rig.apns.accepted(), rig.fcm.accepted());
    assert_eq!(apns.len(), 1);
    assert_eq!(fcm.len(), 1);
    let attempts = rig.apns.attempts();
    assert_eq!(attempts.len(), 3, "503, 429, then 200: {attempts:?}");
    assert!(attempts.iter().all(|id| *id == apns[0].apns_id), "every retry carries the same push id");
    assert_eq!(rig.fcm.attempts(), 3, "429, 503, then 200");
    assert!(metric(&rig.server, "tidings_push_retried_total{provider=\"apns\"}").await >= 2.0);
    assert!(metric(&rig.server, "tidings_push_retried_total{provider=\"fcm\"}").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_dead_token_is_removed_and_never_used_again() {
    let rig = PushRig::start_driven(|_| {}).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    let bob_android = bob.another_device("android").await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;
    register_and_leave(&bob_android, android(&fcm_token("bob")), &a).await;
    rig.apns.kill_token(&apns_token("bob"));
    rig.fcm.kill_token(&fcm_token("bob"));

    a.send_text(room, "m1", "anyone?").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    assert_eq!((rig.apns.attempts().len(), rig.fcm.attempts()), (1, 1), "both dead tokens were tried");
    // The tokens are forgotten as soon as the answers come back.
    a.send_text(room, "m2", "hello?").await.unwrap();
    rig.server.advance_and_settle(Duration::from_secs(60)).await;
    assert_eq!(rig.apns.attempts().len(), 1, "the dead APNs token is not used again");
    assert_eq!(rig.fcm.attempts(), 1, "the dead FCM token is not used again");
    assert_eq!(rig.apns.accepted_count() + rig.fcm.accepted_count(), 0);

    // Registering a fresh token brings pushes back.
    register_and_leave(&bob, ios(&apns_token("bob-reinstalled")), &a).await;
    a.send_text(room, "m3", "welcome back").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    let pushes = rig.apns.accepted();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].device_token, apns_token("bob-reinstalled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn mute_and_do_not_disturb_hold_pushes_back() {
    let rig = PushRig::start_driven(|_| {}).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    let far = tidings::domain::now_ms() + 3_600_000;
    {
        let b = bob.connect().await;
        b.mute_room(room, far).await.unwrap();
        let stranger_room = room + 1;
        let e = b.mute_room(stranger_room, far).await.unwrap_err();
        assert_eq!(code_of(&e), wire::ErrorCode::NotAMember);
    }
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;
    a.send_text(room, "m1", "muted").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    assert_eq!(rig.apns.attempts().len(), 0, "a muted room is not pushed");

    let b = bob.connect().await;
    b.mute_room(room, 0).await.unwrap();
    b.set_do_not_disturb(far).await.unwrap();
    drop(b);
    wait_offline(&a, bob.id()).await;
    a.send_text(room, "m2", "do not disturb").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    assert_eq!(rig.apns.attempts().len(), 0, "nothing is pushed during do-not-disturb");

    let b = bob.connect().await;
    b.set_do_not_disturb(0).await.unwrap();
    drop(b);
    wait_offline(&a, bob.id()).await;
    a.send_text(room, "m3", "now you hear me").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    let pushes = rig.apns.accepted();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].payload["aps"]["alert"]["body"], "now you hear me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_removes_the_devices_token() {
    let rig = PushRig::start_driven(|_| {}).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;
    bob.http.log_out(&bob.auth.access_token, false).await.unwrap();
    a.send_text(room, "m1", "are you there?").await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    assert_eq!(rig.apns.attempts().len(), 0, "a logged-out device gets no push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_get_typed_errors() {
    let rig = PushRig::start().await;
    let bob = rig.server.user("bob").await;
    let b = bob.connect().await;
    let cases = [
        wire::SetPushTokenRequest { platform: 0, ..ios("abc") },
        wire::SetPushTokenRequest { platform: 7, ..ios("abc") },
        ios(""),
        ios("has spaces in it"),
        ios(&"f".repeat(2000)),
        wire::SetPushTokenRequest { app_id: String::new(), ..ios("abc") },
        wire::SetPushTokenRequest { locale: "x".repeat(100), ..ios("abc") },
    ];
    for case in cases {
        let e = b.set_push_token(case.clone()).await.unwrap_err();
        assert_eq!(code_of(&e), wire::ErrorCode::InvalidArgument, "{case:?}");
    }
    // A token with no app id is fine on Android (FCM routes by token alone).
    b.set_push_token(wire::SetPushTokenRequest { app_id: String::new(), ..android(&fcm_token("tok")) }).await.unwrap();
    b.clear_push_token().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_streams_stay_within_the_servers_concurrency_limit() {
    let apns = FakeApns::start_with_streams(4).await;
    apns.set_delay(Duration::from_millis(100));
    let fcm = FakeFcm::start().await;
    let keys = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| {
        wire_push(c, &apns, &fcm, keys.path());
        c.apns.concurrency = 64;
    });
    let ana = server.user("ana").await;
    let (a, _) = ana.connect_synced(0).await;
    const USERS: usize = 24;
    let mut rooms = Vec::new();
    for i in 0..USERS {
        let user = server.user(&format!("user{i}")).await;
        let room = a.create_direct(user.id()).await.unwrap().room_id;
        register_and_leave(&user, ios(&apns_token(&format!("user{i}"))), &a).await;
        rooms.push(room);
    }
    for (i, room) in rooms.iter().enumerate() {
        a.send_text(*room, &format!("m{i}"), "hi").await.unwrap();
    }
    let pushes = apns.wait_for(USERS, WAIT).await;
    assert_eq!(pushes.len(), USERS);
    assert!(apns.peak_concurrency() <= 4, "peak {} streams over the server's limit of 4", apns.peak_concurrency());
    assert!(apns.peak_concurrency() >= 2, "requests share the connection concurrently");
    let ids: HashSet<_> = pushes.iter().map(|p| p.apns_id.clone()).collect();
    assert_eq!(ids.len(), USERS);
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let (_, text) = server.http().get_text("/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_pushes_survive_kill_9_and_go_out_once() {
    use crate::durability::spawn_server_with;
    use tidings_client::Http;
    use tidings_client::tidings_proto::Encoding;

    let apns = FakeApns::start().await;
    let fcm = FakeFcm::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut settings = tidings_fakes::server_settings(&apns, &fcm, data.path());
    settings.extend(["push.grace_ms=300".to_string(), "push.lease_secs=2".to_string()]);
    // APNs is down for the whole first run: every push is queued, tried and retried, never sent.
    apns.fail_next(std::iter::repeat_n(Failure::unavailable(Some(1)), 100_000));
    let (mut child, addr) = spawn_server_with(data.path(), &settings);
    let http = Http::new(format!("http://{addr}"));
    let ana = http.sign_up("ana", PASSWORD, "phone").await.unwrap();
    let a = Connection::connect(&format!("ws://{addr}"), &ana.access_token, Encoding::Protobuf).await.unwrap();
    const USERS: usize = 20;
    let mut rooms = Vec::new();
    for i in 0..USERS {
        let name = format!("user{i}");
        let auth = http.sign_up(&name, PASSWORD, "phone").await.unwrap();
        let room = a.create_direct(auth.user_id).await.unwrap().room_id;
        let conn = Connection::connect(&format!("ws://{addr}"), &auth.access_token, Encoding::Protobuf).await.unwrap();
        conn.set_push_token(ios(&apns_token(&name))).await.unwrap();
        conn.close().await;
        drop(conn);
        wait_offline(&a, auth.user_id).await;
        rooms.push(room);
    }
    for (i, room) in rooms.iter().enumerate() {
        for j in 0..3 {
            a.send_text(*room, &format!("m{i}-{j}"), &format!("message {j}")).await.unwrap();
        }
    }
    // Let some attempts fail first, so that jobs are in every state when the process dies.
    let deadline = Instant::now() + WAIT;
    while apns.attempts().len() < USERS / 2 {
        assert!(Instant::now() < deadline, "the first run tried to push");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.0.kill().unwrap(); // SIGKILL
    drop(child);
    // Requests the dead process had already written may still sit in the fake's socket buffers;
    // they are answered 503 too. (Had the provider accepted one just before the crash, the job
    // would go again after the restart with the same apns-id: at least once, collapsing on the
    // device. Exactly once across that window needs the provider's help, which APNs does not give.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    while apns.in_flight() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(apns.accepted_count(), 0);

    apns.clear_failures();
    let (_child, _addr) = spawn_server_with(data.path(), &settings);
    let pushes = apns.wait_for(USERS, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // past a lease: nothing is sent a second time
    let pushes_after = apns.accepted();
    assert_eq!(pushes.len(), USERS, "every queued push went out after the restart");
    let summary: Vec<(String, String, String)> = pushes_after
        .iter()
        .map(|p| (p.device_token[..8].to_owned(), p.apns_id.clone(), p.payload["aps"]["alert"]["body"].to_string()))
        .collect();
    assert_eq!(pushes_after.len(), USERS, "and none twice: {summary:?}");
    let tokens: HashSet<_> = pushes_after.iter().map(|p| p.device_token.clone()).collect();
    assert_eq!(tokens.len(), USERS);
    for push in &pushes_after {
        assert_eq!(push.payload["aps"]["alert"]["body"], "3 new messages from ana", "{push:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_message_deleted_within_the_grace_window_is_not_pushed_and_an_edited_one_is_pushed_as_edited() {
    let rig = PushRig::start_driven(|c| c.push.grace_ms = 800).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    // Sent to the wrong person, deleted at once: nothing reaches bob's lock screen.
    let oops = a.send_text(room, "m1", "my bank pin is 1234").await.unwrap();
    let delete = wire::DeleteMessageRequest { room_id: room, seq: oops.seq };
    a.request(Req::DeleteMessage(delete)).await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(800)).await;
    assert_eq!(rig.apns.attempts().len(), 0, "the deleted message is not pushed");

    // A typo fixed within the window: the push shows the fixed text.
    let typo = a.send_text(room, "m2", "see you at 9pn").await.unwrap();
    let edit = wire::EditMessageRequest { room_id: room, seq: typo.seq, text: "see you at 9pm".into() };
    a.request(Req::EditMessage(edit)).await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(800)).await;
    let pushes = rig.apns.accepted();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].payload["aps"]["alert"]["body"], "see you at 9pm");

    // Two messages, the second deleted: the push announces the first alone, without the deleted text.
    a.send_text(room, "m3", "first").await.unwrap();
    let second = a.send_text(room, "m4", "second, regretted").await.unwrap();
    a.request(Req::DeleteMessage(wire::DeleteMessageRequest { room_id: room, seq: second.seq })).await.unwrap();
    rig.server.advance_and_settle(Duration::from_millis(800)).await;
    let pushes = rig.apns.accepted();
    assert_eq!(pushes.len(), 2);
    let body = pushes[1].payload["aps"]["alert"]["body"].as_str().unwrap().to_owned();
    assert_eq!(body, "New message", "one message left to announce, and not the deleted text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_push_token_cannot_be_taken_over_and_only_allowed_apps_register() {
    let rig = PushRig::start_with(|c| c.push.allowed_app_ids = vec![TOPIC.into(), "app.tidings.android".into()]).await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    // Mallory learned bob's token and registers it as hers: refused, and bob keeps his pushes.
    let mallory = rig.server.user("mallory").await;
    let m = mallory.connect().await;
    let taken = m.set_push_token(ios(&apns_token("bob"))).await.unwrap_err();
    assert_eq!(code_of(&taken), wire::ErrorCode::Conflict);
    a.send_text(room, "m1", "for bob's eyes").await.unwrap();
    let pushes = rig.apns.wait_for(1, WAIT).await;
    assert_eq!(pushes[0].device_token, apns_token("bob"));

    // Bob's own reinstall (a new device of his) takes the token over.
    let reinstall = bob.another_device("phone again").await;
    let r = reinstall.connect().await;
    r.set_push_token(ios(&apns_token("bob"))).await.unwrap();

    // Tokens that no provider issues, and app ids this server does not serve, are refused.
    let fake_apns = m.set_push_token(ios("not-hex-at-all-but-long-enough-to-pass-the-length-check-0123456789")).await;
    assert_eq!(code_of(&fake_apns.unwrap_err()), wire::ErrorCode::InvalidArgument);
    let short = m.set_push_token(android("fcm-short")).await.unwrap_err();
    assert_eq!(code_of(&short), wire::ErrorCode::InvalidArgument);
    let other_app = wire::SetPushTokenRequest { app_id: "com.someone.else".into(), ..ios(&apns_token("mallory")) };
    assert_eq!(code_of(&m.set_push_token(other_app).await.unwrap_err()), wire::ErrorCode::InvalidArgument);
    m.set_push_token(ios(&apns_token("mallory"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_be_reached_leaves_no_device_token_in_the_recorded_error() {
    // APNs at an address where nothing listens: every attempt fails at connect, with reqwest's
    // error text (which names the URL, and the URL names the device token).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let rig = PushRig::start_with(|c| {
        c.apns.production_url = format!("http://{closed}");
        c.push.max_attempts = 1;
    })
    .await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;
    a.send_text(room, "m1", "anyone there?").await.unwrap();
    let database = rig.server.data_dir.path().join("tidings.db");
    let deadline = Instant::now() + WAIT;
    let error = loop {
        let db = rusqlite::Connection::open(&database).unwrap();
        let failed: Option<String> =
            db.query_row("SELECT last_error FROM push_jobs WHERE state = 2", [], |r| r.get(0)).ok();
        if let Some(error) = failed {
            break error;
        }
        assert!(Instant::now() < deadline, "the push never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("apns request failed"), "{error}");
    assert!(!error.contains(&apns_token("bob")), "the device token leaked into {error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_previews_hidden_a_push_names_no_sender_room_or_text() {
    let rig = PushRig::start().await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    let b = bob.connect().await;
    b.request(Req::SetHidePreviews(wire::SetHidePreviewsRequest { hide_previews: true })).await.unwrap();
    b.close().await;
    drop(b);
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    a.send_text(room, "m1", "the surprise party is on friday").await.unwrap();
    let pushes = rig.apns.wait_for(1, WAIT).await;
    let alert = &pushes[0].payload["aps"]["alert"];
    assert_eq!(alert["body"], "New message");
    assert!(alert["title"].as_str().unwrap_or_default().is_empty(), "{alert}");
    let everything = pushes[0].payload.to_string();
    assert!(!everything.contains("surprise") && !everything.contains("ana"), "{everything}");

    // Turned off again, previews come back.
    let b = bob.connect().await;
    b.request(Req::SetHidePreviews(wire::SetHidePreviewsRequest { hide_previews: false })).await.unwrap();
    b.close().await;
    drop(b);
    wait_offline(&a, bob.id()).await;
    tokio::time::sleep(QUIET).await;
    a.send_text(room, "m2", "bring snacks").await.unwrap();
    let pushes = rig.apns.wait_for(2, WAIT).await;
    assert_eq!(pushes[1].payload["aps"]["alert"]["body"], "bring snacks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_adding_you_to_a_group_pushes_nothing_and_with_contacts_only_cannot() {
    let rig = PushRig::start().await;
    let (a, bob, room) = ana_and_bob(&rig.server).await;
    // Bob has written to ana; he has never written to mallory.
    let b = bob.connect().await;
    b.send_text(room, "hello", "hi ana").await.unwrap();
    b.close().await;
    drop(b);
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    let mallory = rig.server.user("mallory").await;
    let sockpuppet = rig.server.user("sockpuppet").await;
    let (m, _) = mallory.connect_synced(0).await;
    let spam = m.create_group("FREE PRIZES, CLAIM NOW", vec![sockpuppet.id()]).await.unwrap().room_id;
    let add_bob = |room| Req::AddMembers(wire::AddMembersRequest { room_id: room, user_ids: vec![bob.id()] });
    m.request(add_bob(spam)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200) + QUIET).await;
    assert_eq!(rig.apns.attempts().len(), 0, "a stranger's group reaches no lock screen");

    // Someone bob has written to: the "added you" push goes.
    let climbers = a.create_group("climbers", vec![sockpuppet.id()]).await.unwrap().room_id;
    a.request(add_bob(climbers)).await.unwrap();
    let pushes = rig.apns.wait_for(1, WAIT).await;
    assert_eq!(pushes[0].payload["aps"]["alert"]["body"], "ana added you to climbers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_group_adds_limited_to_contacts_only_people_who_wrote_to_you_can_be_added() {
    let server = TestServer::start_with(|c| c.limits.group_adds = tidings::config::GroupAdds::Contacts);
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let (a, _) = ana.connect_synced(0).await;
    // A direct room is not enough: bob must have written to ana.
    let direct = a.create_direct(bob.id()).await.unwrap().room_id;
    let refused = a.create_group("g", vec![bob.id()]).await.unwrap_err();
    assert_eq!(code_of(&refused), wire::ErrorCode::Forbidden);
    let b = bob.connect().await;
    b.send_text(direct, "m", "hi").await.unwrap();
    let group = a.create_group("g", vec![bob.id()]).await.unwrap().room_id;
    // Adding carol, who never wrote to ana, is refused too.
    let add = Req::AddMembers(wire::AddMembersRequest { room_id: group, user_ids: vec![carol.id()] });
    assert_eq!(code_of(&a.request(add).await.unwrap_err()), wire::ErrorCode::Forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn activity_is_pushed_once_per_burst_unless_muted_or_seen() {
    use crate::activity::{mark_seen, request};
    use crate::posts::{create, new_post, photo};
    let rig = PushRig::start_driven(|_| {}).await;
    let (a, bob, _room) = ana_and_bob(&rig.server).await;
    let (cyd, dan) = (rig.server.user("cyd").await, rig.server.user("dan").await);
    let (c, d) = (cyd.connect().await, dan.connect().await);
    let post_id = {
        let b = bob.connect().await;
        let media = photo(&rig.server, &bob, image::ImageFormat::Png).await;
        create(&b, new_post("p", vec![media], "")).await.unwrap().post_id
    };
    register_and_leave(&bob, ios(&apns_token("bob")), &a).await;

    // A burst of likes while bob is away: one push, worded by the newest like's group.
    for conn in [&a, &c, &d] {
        request(conn, Req::LikePost(wire::LikePostRequest { post_id })).await;
    }
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    let pushes = rig.apns.wait_for(1, WAIT).await;
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    assert_eq!(rig.apns.accepted_count(), 1, "one push for the burst: {pushes:?}");
    let push = &pushes[0];
    assert_eq!(push.payload["aps"]["alert"]["title"], "3 new activities");
    assert_eq!(push.payload["aps"]["alert"]["body"], "dan and 2 others liked your photo");
    assert_eq!(push.payload["kind"], "activity");
    assert_eq!(push.collapse_id, "activity");

    // Muted: nothing; unmuted, the next one is pushed.
    let far = tidings::domain::now_ms() + 3_600_000;
    let mute = |until_ms| Req::MuteActivity(wire::MuteActivityRequest { until_ms });
    let b = bob.connect().await;
    request(&b, mute(far)).await;
    drop(b);
    wait_offline(&a, bob.id()).await;
    let comment =
        |id: &str| Req::Comment(wire::CommentRequest { post_id, client_comment_id: id.into(), text: "wow".into() });
    request(&c, comment("c1")).await;
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    assert_eq!(rig.apns.attempts().len(), 1, "muted activity is not pushed");
    let b = bob.connect().await;
    request(&b, mute(0)).await;
    drop(b);
    wait_offline(&a, bob.id()).await;
    request(&c, comment("c2")).await;
    rig.server.advance_and_settle(Duration::from_millis(200)).await;
    let pushes = rig.apns.wait_for(2, WAIT).await;
    assert_eq!(pushes[1].payload["aps"]["alert"]["body"], "cyd commented: wow");
    assert_eq!(pushes[1].payload["aps"]["alert"]["title"], "");

    // Seen on a device (without acknowledging the stream) before its push went out: cancelled.
    request(&d, Req::Follow(wire::FollowRequest { user_id: bob.id() })).await;
    let (b, events) = bob.connect_synced(0).await;
    let head = events.last().unwrap().pos;
    assert_eq!(mark_seen(&b, head).await.unread, 0);
    drop(b);
    wait_offline(&a, bob.id()).await;
    rig.server.advance_and_settle(Duration::from_millis(400)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.apns.attempts().len(), 2, "seen activity is not pushed: {:?}", rig.apns.accepted());
}

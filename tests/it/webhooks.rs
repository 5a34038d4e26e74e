//! Webhooks: a real server calls a fake backend on loopback, which checks every call's HMAC
//! signature and timestamp. Events come signed, each once per delivery id, through failures and
//! across a restart (the queue is on disk).

use std::time::Duration;

use tidings::config::Config;
use tidings_fakes::{Failure, FakeWebhookReceiver, WEBHOOK_SECRET};

use crate::harness::{TestServer, WAIT};

fn wire_webhooks(c: &mut Config, receiver: &FakeWebhookReceiver) {
    c.webhooks.url = receiver.url();
    c.webhooks.secret = WEBHOOK_SECRET.into();
    c.webhooks.message_sent = true;
    c.webhooks.retry_base_ms = 50;
    c.webhooks.retry_max_ms = 200;
    c.webhooks.timeout_secs = 1;
}

#[tokio::test]
async fn events_reach_the_backend_signed_through_its_failures() {
    let receiver = FakeWebhookReceiver::start().await;
    // The backend is down for the first two calls.
    receiver.fail_next([Failure::unavailable(None), Failure::unavailable(None)]);
    let server = TestServer::start_with(|c| wire_webhooks(c, &receiver));
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (conn, _) = ana.connect_synced(0).await;
    let room = conn.create_direct(bob.id()).await.unwrap().room_id;
    let sent = conn.send_text(room, "c1", "hello hooks").await.unwrap();
    conn.close().await;
    drop(conn);

    let online = receiver.wait_for("user.online", 1, WAIT).await;
    assert_eq!(online[0].body["data"]["userId"], ana.id().to_string());
    let created = receiver.wait_for("room.created", 1, WAIT).await;
    let data = &created[0].body["data"];
    assert_eq!((data["roomId"].as_str(), data["kind"].as_str()), (Some(room.to_string().as_str()), Some("direct")));
    assert_eq!(data["creatorId"], ana.id().to_string());
    let messages = receiver.wait_for("message.sent", 1, WAIT).await;
    let data = &messages[0].body["data"];
    assert_eq!(data["text"], "hello hooks");
    assert_eq!(data["seq"], sent.seq.to_string());
    assert_eq!(data["clientMsgId"], "c1");
    let offline = receiver.wait_for("user.offline", 1, WAIT).await;
    assert_eq!(offline[0].body["data"]["userId"], ana.id().to_string());

    // Every call was signed; the failed ones were tried again under the same delivery id.
    assert_eq!(receiver.forged(), 0);
    let accepted = receiver.accepted();
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), accepted.len() + 2, "two failures, each retried: {attempts:?}");
    for call in &accepted {
        assert_eq!(call.body["id"], call.delivery_id.as_str());
        assert_eq!(accepted.iter().filter(|c| c.delivery_id == call.delivery_id).count(), 1, "delivered once");
    }
    let retried: Vec<&String> = attempts.iter().filter(|id| attempts.iter().filter(|a| a == id).count() > 1).collect();
    assert!(!retried.is_empty() && retried.iter().all(|id| accepted.iter().any(|c| &c.delivery_id == *id)));
}

// Several threads: the fake backend keeps answering while the test waits for a server to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_survive_a_restart() {
    let receiver = FakeWebhookReceiver::start().await;
    // Down for longer than the first server lives.
    receiver.fail_next((0..10_000).map(|_| Failure::unavailable(None)));
    let mut server = TestServer::start_with(|c| wire_webhooks(c, &receiver));
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (conn, _) = ana.connect_synced(0).await;
    conn.create_direct(bob.id()).await.unwrap();
    // Tried and failed at least once, so it was queued.
    let deadline = tokio::time::Instant::now() + WAIT;
    while receiver.attempts().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no webhook was attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(conn);
    server.stop();
    assert!(receiver.accepted().is_empty());

    receiver.recover();
    let data_dir = server.data_dir.path().to_path_buf();
    let _again = TestServer::start_with(|c| {
        wire_webhooks(c, &receiver);
        c.store.data_dir = data_dir;
    });
    // At least once: a call the stopping server cut short may arrive too; the backend de-duplicates
    // on the delivery id, and sees one event.
    let created = receiver.wait_for("room.created", 1, WAIT).await;
    let mut ids: Vec<&str> = created.iter().map(|c| c.delivery_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1, "the queued event, sent by the restarted server: {ids:?}");
    assert_eq!(created[0].body["data"]["creatorId"], ana.id().to_string());
    assert!(!receiver.wait_for("user.online", 1, WAIT).await.is_empty());
}

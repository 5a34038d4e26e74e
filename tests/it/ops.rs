//! Operations: health, readiness, metrics, graceful shutdown.

use tidings_client::Incoming;
use tidings_client::tidings_proto::v1 as wire;

use crate::harness::*;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start();
    let http = server.http();
    assert_eq!(http.get_text("/healthz").await.unwrap().0, 200);
    assert_eq!(http.get_text("/readyz").await.unwrap().0, 200);
    let ana = server.user("ana").await;
    let _conn = ana.connect_synced(0).await;
    let (status, metrics) = http.get_text("/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in ["tidings_connections_open", "tidings_messages_committed_total", "tidings_store_batches_total"] {
        assert!(metrics.contains(&format!("# TYPE {name} ")), "{name} missing from {metrics}");
    }
}

#[tokio::test]
async fn graceful_shutdown_tells_clients_to_go_away() {
    let mut server = TestServer::start();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (mut conn, _) = ana.connect_synced(0).await;
    let room = conn.create_direct(bob.id()).await.unwrap().room_id;
    conn.send_text(room, "1", "before shutdown").await.unwrap();
    let stopper = std::thread::spawn(move || {
        server.stop();
        server
    });
    let mut going_away = false;
    let close_code = loop {
        match conn.next_within(WAIT).await.unwrap() {
            Incoming::Notice(n) if n.kind == wire::NoticeKind::GoingAway as i32 => going_away = true,
            Incoming::Closed(code) => break code.map(|(c, _)| c),
            _ => {}
        }
    };
    let server = stopper.join().unwrap();
    assert!(going_away);
    assert_eq!(close_code, Some(1001));
    // The data is intact for the next start.
    let reopened = TestServer::start_with(|c| c.store.data_dir = server.data_dir.path().to_path_buf());
    let ana_again = reopened.http().log_in("ana", PASSWORD, "phone").await.unwrap();
    let mut conn = tidings_client::Connection::connect(
        &reopened.ws_base(),
        &ana_again.access_token,
        tidings_client::tidings_proto::Encoding::Protobuf,
    )
    .await
    .unwrap();
    conn.sync(0).await.unwrap();
    let events = until_caught_up(&mut conn).await;
    assert_eq!(text(&events[1]), "before shutdown");
}

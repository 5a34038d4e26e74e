//! Accounts over HTTP and tokens on the WebSocket upgrade.

use std::time::Duration;

use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tidings_client::{ClientError, Connection, Incoming};

use crate::harness::*;

#[tokio::test]
pub(crate) async fn sign_up_log_in_refresh_and_log_out() {
    let server = TestServer::start();
    let http = server.http();
    let ana = http.sign_up("ana", PASSWORD, "phone").await.unwrap();
    assert!(ana.user_id > 0 && !ana.access_token.is_empty() && !ana.refresh_token.is_empty());

    let taken = http.sign_up("ana", PASSWORD, "phone").await.unwrap_err();
    assert_eq!(code_of(&taken), wire::ErrorCode::Conflict);
    assert!(matches!(taken, ClientError::Http { status: 409, .. }));
    let short = http.sign_up("bob", "short", "phone").await.unwrap_err();
    assert_eq!(code_of(&short), wire::ErrorCode::InvalidArgument);
    let bad_name = http.sign_up("Bad Name!", PASSWORD, "phone").await.unwrap_err();
    assert_eq!(code_of(&bad_name), wire::ErrorCode::InvalidArgument);

    let wrong = http.log_in("ana", "wrong password", "tablet").await.unwrap_err();
    assert_eq!(code_of(&wrong), wire::ErrorCode::Unauthenticated);
    let nobody = http.log_in("nobody", PASSWORD, "tablet").await.unwrap_err();
    assert_eq!(code_of(&nobody), wire::ErrorCode::Unauthenticated);
    let tablet = http.log_in("ana", PASSWORD, "tablet").await.unwrap();
    assert_eq!(tablet.user_id, ana.user_id);
    assert_ne!(tablet.device_id, ana.device_id);

    // Refresh rotates: the new token works once, the old one never again.
    let refreshed = http.refresh(&tablet.refresh_token).await.unwrap();
    assert_eq!(refreshed.device_id, tablet.device_id);
    assert_eq!(code_of(&http.refresh(&tablet.refresh_token).await.unwrap_err()), wire::ErrorCode::Unauthenticated);
    assert_eq!(code_of(&http.refresh("garbage").await.unwrap_err()), wire::ErrorCode::Unauthenticated);
    // Presenting the traded token again was reuse: the tablet was logged out, and logs in again.
    assert_eq!(code_of(&http.refresh(&refreshed.refresh_token).await.unwrap_err()), wire::ErrorCode::Unauthenticated);
    let refreshed = http.log_in("ana", PASSWORD, "tablet").await.unwrap();

    // Logging the tablet out closes its live connection and revokes its tokens; the phone stays.
    let mut tablet_conn =
        Connection::connect(&server.ws_base(), &refreshed.access_token, Encoding::Protobuf).await.unwrap();
    let phone_conn = Connection::connect(&server.ws_base(), &ana.access_token, Encoding::Protobuf).await.unwrap();
    tablet_conn.sync(0).await.unwrap();
    until_caught_up(&mut tablet_conn).await;
    http.log_out(&refreshed.access_token, false).await.unwrap();
    match tablet_conn.next_within(WAIT).await.unwrap() {
        Incoming::Notice(n) => assert_eq!(n.kind, wire::NoticeKind::LoggedOut as i32),
        other => panic!("{other:?}"),
    }
    assert!(matches!(tablet_conn.next_within(WAIT).await.unwrap(), Incoming::Closed(_)));
    let again =
        Connection::connect(&server.ws_base(), &refreshed.access_token, Encoding::Protobuf).await.err().unwrap();
    assert!(matches!(again, ClientError::Http { status: 401, .. }), "{again}");
    assert_eq!(code_of(&http.refresh(&refreshed.refresh_token).await.unwrap_err()), wire::ErrorCode::Unauthenticated);
    phone_conn.request(wire::client_frame::Request::Ping(wire::PingRequest {})).await.unwrap();

    // Logging out everywhere revokes the phone too.
    http.log_out(&ana.access_token, true).await.unwrap();
    let gone = Connection::connect(&server.ws_base(), &ana.access_token, Encoding::Protobuf).await.err().unwrap();
    assert_eq!(code_of(&gone), wire::ErrorCode::Unauthenticated);
}

#[tokio::test]
async fn the_upgrade_refuses_missing_bad_and_expired_tokens() {
    // Tokens carry whole seconds (valid through their last one), and a connection now ends with
    // its token: 2 s leaves the connection below at least 1 s to answer a ping.
    let server = TestServer::start_with(|c| c.auth.access_token_ttl_secs = 2);
    let ana = server.user("ana").await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/v1/ws", server.ws_base());

    let missing = Connection::connect_request(url.as_str().into_client_request().unwrap(), Encoding::Protobuf)
        .await
        .err()
        .unwrap();
    assert!(matches!(missing, ClientError::Http { status: 401, .. }));
    assert_eq!(code_of(&missing), wire::ErrorCode::Unauthenticated);

    let bad = Connection::connect(&server.ws_base(), "not.a.token", Encoding::Protobuf).await.err().unwrap();
    assert_eq!(code_of(&bad), wire::ErrorCode::Unauthenticated);

    // The token in the query string works too (for clients that cannot set headers).
    let query = format!("{url}?encoding=json&access_token={}", ana.auth.access_token);
    let conn = Connection::connect_request(query.into_client_request().unwrap(), Encoding::Json).await.unwrap();
    conn.request(wire::client_frame::Request::Ping(wire::PingRequest {})).await.unwrap();

    let bad_encoding = format!("{url}?encoding=xml&access_token={}", ana.auth.access_token);
    let err =
        Connection::connect_request(bad_encoding.into_client_request().unwrap(), Encoding::Json).await.err().unwrap();
    assert_eq!(code_of(&err), wire::ErrorCode::InvalidArgument);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired =
        Connection::connect(&server.ws_base(), &ana.auth.access_token, Encoding::Protobuf).await.err().unwrap();
    assert_eq!(code_of(&expired), wire::ErrorCode::TokenExpired);
    // A refresh brings it back.
    let fresh = server.http().refresh(&ana.auth.refresh_token).await.unwrap();
    Connection::connect(&server.ws_base(), &fresh.access_token, Encoding::Protobuf).await.unwrap();
}

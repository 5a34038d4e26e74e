//! Attacks from the security review, each written as the attack (issue 16).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tidings::auth::TokenKeys;
use tidings::config::Config;
use tidings::domain::{DeviceId, UserId, now_ms};
use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tidings_client::{Connection, Incoming};

use crate::harness::*;

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
async fn a_stolen_refresh_token_used_first_by_the_thief_logs_the_device_out_when_the_victim_refreshes() {
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

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

/// `tidings --check-config`: the binary itself, on a file an operator wrote.
#[test]
fn check_config_accepts_a_good_file_and_names_what_is_wrong_in_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("tidings.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg("--check-config")
            .arg("--config")
            .arg(&path)
            .env_remove("TIDINGS_CONFIG")
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tidings.example.toml")).unwrap();
    let (ok, stdout, stderr) = check(&example);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("configuration OK") && stdout.contains("store: SQLite"), "{stdout}");
    // Nothing was started: no data directory (./data, from where it ran) appeared.
    assert!(!dir.path().join("data").exists());

    let with_api = format!("{example}\n").replace("keys = []", &format!("keys = [\"{}\"]", "k".repeat(40)));
    let (ok, stdout, _) = check(&with_api);
    assert!(ok && stdout.contains("server API: on, 1 key(s)"), "{stdout}");

    for (bad, says) in [
        (example.replace("keys = []", "keys = [\"short\"]"), "server_api.keys[0]"),
        (example.replace("listen = \"127.0.0.1:8080\"", "listen = \"nowhere\""), "server.listen"),
        (example.replace("[server]", "[server]\nlisten_typo = 1"), "listen_typo"),
        (example.replace("token_secret = \"\"", "token_secret = \"too short\""), "auth.token_secret"),
        (example.replace("hs256_secret = \"\"", "hs256_secret = \"too short\""), "app_tokens.hs256_secret"),
        (
            example.replace("url = \"\"\n# Required", "url = \"http://127.0.0.1:9/hooks\"\n# Required"),
            "webhooks.secret",
        ),
    ] {
        let (ok, _, stderr) = check(&bad);
        assert!(!ok, "{says}: accepted");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
}

/// The alert rules and the dashboard in deploy/ name only metrics the server exports.
#[tokio::test]
async fn deploy_files_name_only_exported_metrics() {
    let server = TestServer::start();
    let (_, exported) = server.http().get_text("/metrics").await.unwrap();
    let exported: std::collections::HashSet<&str> =
        exported.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/");
    let dashboard = std::fs::read_to_string(format!("{deploy}grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let alerts = std::fs::read_to_string(format!("{deploy}alerts.yml")).unwrap();
    let mut named = 0;
    for text in [&dashboard, &alerts] {
        for (at, _) in text.match_indices("tidings_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            // Names that are not metrics: the dashboard's own uid.
            if name == "tidings_" {
                continue;
            }
            assert!(exported.contains(name.as_str()), "{name} is not in /metrics");
            named += 1;
        }
    }
    assert!(named > 20, "only {named} metric names found");
}

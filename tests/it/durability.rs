//! A message the server acknowledged survives `kill -9`: the real binary is started, killed in the
//! middle of a send storm, started again on the same data, and every acknowledged message is there,
//! once, in order.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tidings_client::tidings_proto::{Encoding, v1 as wire};
use tidings_client::{Connection, Http};
use wire::client_frame::Request as Req;

use crate::harness::*;

/// Kills the server process when the test ends, passed or failed.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `tidings` binary on a free port; returns it and its address.
pub fn spawn_server(data_dir: &std::path::Path) -> (Server, String) {
    spawn_server_with(data_dir, &[])
}

/// Starts the `tidings` binary with extra `--set key=value` settings (they win over the cheap
/// test defaults).
pub fn spawn_server_with(data_dir: &std::path::Path, settings: &[String]) -> (Server, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    // `TEST_SERVER_LOG=tidings=debug` shows more of the spawned servers' logs (on stderr).
    let level = std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "info".into());
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", &level])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--set", "auth.argon2_memory_kib=1024", "--set", "auth.argon2_iterations=1"])
        .args(["--set", "auth.attempts_per_minute_per_ip=0", "--set", "auth.attempts_per_minute_per_username=0"])
        .args(["--set", "limits.requests_per_second=100000", "--set", "limits.request_burst=100000"])
        .args(["--set", "limits.user_requests_per_second=100000", "--set", "limits.user_request_burst=100000"])
        .args(store_settings(data_dir).iter().chain(settings).flat_map(|s| ["--set", s.as_str()]))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the tidings binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        let echo = std::env::var_os("TEST_SERVER_LOG").is_some();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            if !sent
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v["fields"]["addr"].as_str()
            {
                let _ = tx.send(addr.to_owned());
                sent = true;
            }
        }
    });
    let server = Server(child);
    // Long enough for a first start that creates a ScyllaDB keyspace on a busy machine.
    let addr = rx.recv_timeout(Duration::from_secs(90)).expect("the server logs its address");
    (server, addr)
}

#[tokio::test]
pub(crate) async fn acknowledged_messages_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_server(data.path());
    let http = Http::new(format!("http://{addr}"));
    let ana = http.sign_up("ana", PASSWORD, "phone").await.unwrap();
    let bob = http.sign_up("bob", PASSWORD, "phone").await.unwrap();
    let conn = Connection::connect(&format!("ws://{addr}"), &ana.access_token, Encoding::Protobuf).await.unwrap();
    let room = conn.create_direct(bob.user_id).await.unwrap().room_id;

    // A storm of sends, 16 in flight at a time; the process is killed part-way.
    const TOTAL: usize = 400;
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut in_flight = Vec::new();
    let mut killed = false;
    for i in 0..TOTAL {
        let id = format!("msg-{i}");
        let send = Req::SendMessage(wire::SendMessageRequest {
            room_id: room,
            client_msg_id: id.clone(),
            text: format!("text {i}"),
            reply_to_seq: 0,
            media_ids: Vec::new(),
        });
        match conn.start_request(send).await {
            Ok(answer) => in_flight.push((id, answer)),
            Err(_) => break,
        }
        if in_flight.len() == 16 {
            for (id, answer) in in_flight.drain(..) {
                if let Ok(Ok(wire::reply::Result::Sent(ack))) = answer.await {
                    acked.push((id, ack.seq));
                }
            }
        }
        if i == TOTAL / 2 {
            child.0.kill().unwrap(); // SIGKILL: no shutdown, no flush
            killed = true;
        }
    }
    for (id, answer) in in_flight.drain(..) {
        if let Ok(Ok(wire::reply::Result::Sent(ack))) = answer.await {
            acked.push((id, ack.seq));
        }
    }
    assert!(killed);
    drop(child);
    assert!(acked.len() >= TOTAL / 4, "most of the first half should be acknowledged ({})", acked.len());

    // Start again on the same data: the token secret is kept, so the old tokens still work.
    let (_child, addr) = spawn_server(data.path());
    let mut reader = Connection::connect(&format!("ws://{addr}"), &bob.access_token, Encoding::Protobuf).await.unwrap();
    reader.sync(0).await.unwrap();
    let events = until_caught_up(&mut reader).await;
    assert_contiguous(&events, 1);
    let stored: Vec<(String, u64)> = events
        .iter()
        .filter_map(|e| match &entry(e).body {
            Some(wire::room_entry::Body::Text(t)) => Some((t.client_msg_id.clone(), entry(e).seq)),
            _ => None,
        })
        .collect();
    let stored_ids: HashSet<&String> = stored.iter().map(|(id, _)| id).collect();
    for (id, seq) in &acked {
        assert!(stored.contains(&(id.clone(), *seq)), "acknowledged {id} (seq {seq}) was lost");
    }
    assert_eq!(stored_ids.len(), stored.len(), "no message is stored twice");

    // The sender retries everything it has no acknowledgement for: each lands exactly once.
    let acked_ids: HashSet<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    let sender = Connection::connect(&format!("ws://{addr}"), &ana.access_token, Encoding::Protobuf).await.unwrap();
    for i in 0..TOTAL {
        let id = format!("msg-{i}");
        if !acked_ids.contains(&id) {
            sender.send_text(room, &id, &format!("text {i}")).await.unwrap();
        }
    }
    let history = {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = sender
                .history(wire::HistoryRequest {
                    room_id: room,
                    after_seq: Some(after),
                    limit: 200,
                    ..Default::default()
                })
                .await
                .unwrap();
            after = page.entries.last().map_or(after, |e| e.seq);
            all.extend(page.entries);
            if !page.more {
                break;
            }
        }
        all
    };
    let ids: Vec<String> = history
        .iter()
        .filter_map(|e| match &e.body {
            Some(wire::room_entry::Body::Text(t)) => Some(t.client_msg_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(message_texts(&history).len(), ids.len());
    assert_eq!(ids.len(), TOTAL, "every message exactly once after retries");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), TOTAL);
}

/// On ScyllaDB a large room's messages are acknowledged once they are in the room's log, and reach
/// the members' streams after. A kill -9 in between loses none of them: the next start finds the
/// room listed as behind and finishes its fan-out, though no one writes to the room again.
#[test]
fn a_fan_out_after_the_ack_cut_short_by_kill_9_is_finished_on_the_next_start() {
    crate::harness::on_scylla_after_ack(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(fan_out_cut_short());
    });
}

async fn fan_out_cut_short() {
    use tidings::store::{RoomStore, StreamStore};
    // Enough members that a fan-out costs several times what logging costs (about 60 of the 121
    // entries are still to fan out when the last answer comes, against 1 with 40 members), so the
    // kill finds the fan-out behind however the machine is loaded.
    const MEMBERS: usize = 200;
    const SENT: usize = 120;
    let data = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_server(data.path());
    let http = Http::new(format!("http://{addr}"));
    let mut users = Vec::new();
    for i in 0..MEMBERS {
        users.push(http.sign_up(&format!("member{i}"), PASSWORD, "phone").await.unwrap());
    }
    let ana = Connection::connect(&format!("ws://{addr}"), &users[0].access_token, Encoding::Protobuf).await.unwrap();
    let others = users[1..].iter().map(|u| u.user_id).collect();
    let room = ana.create_group("big", others).await.unwrap().room_id;

    // Every send in flight at once: each is answered once logged, long before all 40 streams
    // have it; the process dies right after the last answer.
    let mut answers = Vec::new();
    for i in 0..SENT {
        let send = Req::SendMessage(wire::SendMessageRequest {
            room_id: room,
            client_msg_id: format!("m{i}"),
            text: format!("text {i}"),
            reply_to_seq: 0,
            media_ids: Vec::new(),
        });
        answers.push(ana.start_request(send).await.unwrap());
    }
    for answer in answers {
        assert!(matches!(answer.await, Ok(Ok(wire::reply::Result::Sent(_)))), "every send is acknowledged");
    }
    child.0.kill().unwrap();
    drop(child);

    // The kill caught the fan-out part-way: the room is listed as behind.
    let store = crate::harness::scylla_store_for(data.path()).await;
    let behind = store.rooms_behind().await.unwrap();
    assert_eq!(behind.iter().map(|r| r.0).collect::<Vec<_>>(), vec![room], "the kill came mid-fan-out");
    let mut shortest = u64::MAX;
    for user in &users {
        shortest = shortest.min(store.stream_head(tidings::domain::UserId(user.user_id)).await.unwrap());
    }
    assert!(shortest < (SENT + 1) as u64, "some member's stream was not complete yet ({shortest})");

    // Started again, with no one writing to the room: the room is finished (the fan-out sweep
    // opens it, and its claim fans out what is missing) and listed as behind no more...
    let (_child, addr) = spawn_server(data.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !store.rooms_behind().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the room is still listed as behind after 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and every member gets every message once, in order (checked for three of them).
    for member in [&users[1], &users[MEMBERS / 2], users.last().unwrap()] {
        let mut conn =
            Connection::connect(&format!("ws://{addr}"), &member.access_token, Encoding::Protobuf).await.unwrap();
        conn.sync(0).await.unwrap();
        let mut events = Vec::new();
        while events.len() < SENT + 1 {
            events.push(next_event(&mut conn).await);
        }
        assert_contiguous(&events, 1);
        let seqs: Vec<u64> = events.iter().map(|e| entry(e).seq).collect();
        assert_eq!(seqs, (1..=(SENT + 1) as u64).collect::<Vec<_>>(), "every entry once, in seq order");
        let texts: Vec<&str> = events[1..].iter().map(text).collect();
        let sent: Vec<String> = (0..SENT).map(|i| format!("text {i}")).collect();
        assert_eq!(texts, sent.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

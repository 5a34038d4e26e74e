//! Nodes that share no file: three tidings processes on 127.0.0.1, .2 and .3, each with its own data
//! directory, on a three-node CQL cluster (replication 3, QUORUM) and one Redis. Mid-storm the
//! room's owner is killed with SIGKILL (and started again), a CQL node is killed with SIGKILL, and
//! Redis restarts; afterwards every acknowledged message is in every member's stream once, in the
//! order it was sent, and no send was answered INTERNAL.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tidings_client::tidings_proto::Encoding;
use tidings_client::tidings_proto::v1 as wire;
use tidings_client::{Connection, Http, Incoming};

use crate::cluster::{RedisServer, Sent, persistent_sender, texts, wait_for_members};
use crate::durability::{Server, spawn_server_with};
use crate::harness::*;
use crate::prerequisites::{CqlCluster, Prerequisite, require};

const NAMES: [&str; 3] = ["n1", "n2", "n3"];
/// Messages each of two senders sends.
const EACH: usize = 150;

/// One tidings node: its own address and data directory, the shared keyspace.
fn node_settings(i: usize, redis: &RedisServer, cql: &CqlCluster, keyspace: &str) -> Vec<String> {
    vec![
        format!("server.listen=127.0.0.{}:0", i + 1),
        "store.backend=scylla".into(),
        format!("store.scylla_nodes={}", cql.nodes.join(",")),
        format!("store.scylla_keyspace={keyspace}"),
        "store.scylla_replication_factor=3".into(),
        format!("cluster.redis_url={}", redis.url()),
        format!("cluster.node_id={}", NAMES[i]),
        "cluster.heartbeat_ms=100".into(),
        "cluster.node_ttl_ms=600".into(),
        // Shared by every node, as a deployment shares them (each has its own data directory).
        "auth.token_secret=failover-test-secret-failover-test-secret".into(),
        "cluster.node_key=failover-test-node-key-failover-test-node-key".into(),
    ]
}

/// Waits until `acked` reaches `n`.
async fn until_acked(acked: &AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "the storm stalled before {what} ({} acked)", acked.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Everything in a user's stream from the start, read on `ws`.
async fn whole_stream(ws: &str, token: &str) -> Vec<wire::Event> {
    let mut conn = Connection::connect(ws, token, Encoding::Protobuf).await.unwrap();
    conn.sync(0).await.unwrap();
    let mut events = Vec::new();
    loop {
        match conn.next_within(Duration::from_secs(20)).await.expect("the stream is read to its end") {
            Incoming::Event(e) => events.push(e),
            Incoming::Notice(n) if n.kind == wire::NoticeKind::CaughtUp as i32 => return events,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sharing_no_file_lose_nothing_when_a_node_a_cql_node_and_redis_fail() {
    require!(Prerequisite::Redis);
    require!(Prerequisite::ScyllaCluster);
    let cql = CqlCluster::from_env().expect("checked");
    let mut redis = RedisServer::start();
    let keyspace = format!("tidings_failover_{:08x}", rand::random::<u32>());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut processes: Vec<Option<Server>> = Vec::new();
    let mut addrs = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (process, addr) = spawn_server_with(dir.path(), &node_settings(i, &redis, &cql, &keyspace));
        processes.push(Some(process));
        addrs.push(addr);
    }
    for (i, addr) in addrs.iter().enumerate() {
        assert!(addr.starts_with(&format!("127.0.0.{}:", i + 1)), "node {i} listens on its own address: {addr}");
    }
    wait_for_members(&redis, 3).await;
    let http = Http::new(format!("http://{}", addrs[0]));
    let ana = http.sign_up("ana", PASSWORD, "phone").await.unwrap();
    let bob = Http::new(format!("http://{}", addrs[1])).sign_up("bob", PASSWORD, "phone").await.unwrap();
    let carol = Http::new(format!("http://{}", addrs[2])).sign_up("carol", PASSWORD, "phone").await.unwrap();
    let ws = |addrs: &[String], i: usize| format!("ws://{}", addrs[i]);
    let room = {
        let a = Connection::connect(&ws(&addrs, 0), &ana.access_token, Encoding::Protobuf).await.unwrap();
        a.create_group("failover", vec![bob.user_id, carol.user_id]).await.unwrap().room_id
    };
    let owner = tidings::cluster::owner(tidings::domain::RoomId(room), NAMES).unwrap();
    let owner_index = NAMES.iter().position(|n| *n == owner).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != owner_index).collect();

    // Carol watches live from a node that survives; bob starts on the owner, ana on another.
    let mut c = Connection::connect(&ws(&addrs, others[1]), &carol.access_token, Encoding::Protobuf).await.unwrap();
    c.sync(0).await.unwrap();
    until_caught_up(&mut c).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let bob_servers = vec![ws(&addrs, owner_index), ws(&addrs, others[0]), ws(&addrs, others[1])];
    let ana_servers = vec![ws(&addrs, others[0]), ws(&addrs, others[1])];
    let bob_task =
        tokio::spawn(persistent_sender(bob_servers, bob.access_token.clone(), room, "bob", EACH, acked.clone()));
    let ana_task =
        tokio::spawn(persistent_sender(ana_servers, ana.access_token.clone(), room, "ana", EACH, acked.clone()));
    let total = 2 * EACH;

    until_acked(&acked, total / 6, "the owner's kill").await;
    let killed_at = Instant::now();
    processes[owner_index].take().unwrap().0.kill().unwrap(); // SIGKILL: no drain, no goodbye
    until_acked(&acked, total * 2 / 6, "the owner's restart").await;
    let moved_in = killed_at.elapsed();
    let (restarted, addr) =
        spawn_server_with(dirs[owner_index].path(), &node_settings(owner_index, &redis, &cql, &keyspace));
    processes[owner_index] = Some(restarted);
    addrs[owner_index] = addr;
    eprintln!("owner restarted at {:?}", killed_at.elapsed());

    until_acked(&acked, total * 3 / 6, "the CQL node's kill").await;
    // Node 2 of the CQL cluster: replication 3 at QUORUM goes on with two.
    cql.kill(2);
    eprintln!("CQL node 2 killed at {:?}", killed_at.elapsed());
    until_acked(&acked, total * 4 / 6, "the Redis restart").await;
    redis.restart();
    eprintln!("Redis restarted at {:?}", killed_at.elapsed());
    let (bob_sent, ana_sent) = (bob_task.await.unwrap(), ana_task.await.unwrap());
    let Sent { ids: bob_ids, internal: bob_internal, longest: bob_longest } = bob_sent;
    let Sent { ids: ana_ids, internal: ana_internal, longest: ana_longest } = ana_sent;
    assert_eq!((&bob_internal, &ana_internal), (&vec![], &vec![]), "no send is answered INTERNAL");
    assert_eq!((bob_ids.len(), ana_ids.len()), (EACH, EACH));
    eprintln!(
        "failover: owner killed, sends kept being acknowledged within {:?} (longest wait for one message: \
         bob {bob_longest:?}, ana {ana_longest:?})",
        moved_in
    );

    // Carol's live connection saw every message once, in order.
    let mut live = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while texts(&live).len() < total && Instant::now() < deadline {
        if let Ok(Incoming::Event(e)) = c.next_within(Duration::from_secs(1)).await {
            live.push(e);
        }
    }
    if texts(&live).len() < total {
        let stored = whole_stream(&ws(&addrs, others[1]), &carol.access_token).await;
        let got: HashSet<String> = texts(&live).into_iter().collect();
        let kept: HashSet<String> = texts(&stored).into_iter().collect();
        let all = ["ana", "bob"].into_iter().flat_map(|p| (0..EACH).map(move |i| format!("{p} {i}")));
        let (not_live, not_stored): (Vec<String>, Vec<String>) =
            (all.clone().filter(|t| !got.contains(t)).collect(), all.filter(|t| !kept.contains(t)).collect());
        let last_live = live.last().map(|e| e.pos);
        let last_stored = stored.last().map(|e| e.pos);
        panic!(
            "carol got {} of {total} live (last position {last_live:?}), not live: {not_live:?}; \
             her stream (last position {last_stored:?}) lacks {not_stored:?}",
            got.len()
        );
    }
    assert_contiguous(&live, live[0].pos);

    // Every member's stream, read whole from a node, has every message once, in the order sent.
    for (name, token, at) in
        [("ana", &ana.access_token, 0), ("bob", &bob.access_token, 1), ("carol", &carol.access_token, 2)]
    {
        let events = whole_stream(&ws(&addrs, at), token).await;
        assert_contiguous(&events, 1);
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(wire::event::Kind::Entry(entry)) if entry.room_id == room => Some(entry.seq),
                _ => None,
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}'s stream has the room in seq order: {seqs:?}");
        let seen = texts(&events);
        assert_eq!(seen.len(), total, "{name}: each message once");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), total, "{name}: each message once");
        for prefix in ["ana", "bob"] {
            let order: Vec<&String> = seen.iter().filter(|t| t.starts_with(prefix)).collect();
            let expected: Vec<String> = (0..EACH).map(|i| format!("{prefix} {i}")).collect();
            assert_eq!(order, expected.iter().collect::<Vec<_>>(), "{name}: {prefix}'s messages in the order sent");
        }
    }
    // The room's log has each message once.
    let reader = Connection::connect(&ws(&addrs, others[0]), &carol.access_token, Encoding::Protobuf).await.unwrap();
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = reader
            .history(wire::HistoryRequest { room_id: room, after_seq: Some(after), limit: 100, ..Default::default() })
            .await
            .unwrap();
        let Some(last) = page.entries.last() else { break };
        after = last.seq;
        entries.extend(page.entries);
    }
    let mut once = HashSet::new();
    let twice: Vec<(u64, String)> = entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(wire::room_entry::Body::Text(t)) if !once.insert(t.text.clone()) => Some((e.seq, t.text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(twice, vec![], "the log has each message once");
    assert_eq!(message_texts(&entries).len(), total);

    cql.restart(2);
    drop(processes);
    // Cleanup only (a node just restarted may be slow to agree on schemas): not part of the test.
    let _ = tidings::store::scylla::ScyllaStore::drop_keyspace_on(cql.nodes.clone(), &keyspace).await;
}

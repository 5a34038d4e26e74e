//! Several nodes bridged by a private `redis-server` (started on a free port, so tests never share
//! state), sharing one store: chat, typing, presence and receipts across nodes, a node leaving,
//! Redis restarting.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tidings::config::Config;
use tidings_client::Connection;
use tidings_client::tidings_proto::v1::{self as wire, client_frame::Request as Req};

use crate::harness::*;
use crate::prerequisites::{Prerequisite, require};

/// A `redis-server` of this test's own, on a free port.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    extra: Vec<String>,
    /// Serves TLS only (`rediss://`), with the test certificate in `tests/fixtures/redis-tls`.
    tls: bool,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut server = Self { child: None, port, extra, tls: false, _dir: tempfile::tempdir().unwrap() };
        server.run();
        server
    }

    /// A TLS-only Redis (no plain port), with more arguments.
    pub fn start_tls(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut server = Self { child: None, port, extra, tls: true, _dir: tempfile::tempdir().unwrap() };
        server.run();
        server
    }

    pub fn tls_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis-tls")
    }

    fn run(&mut self) {
        let port = self.port.to_string();
        let tls = Self::tls_dir();
        let ports: Vec<std::ffi::OsString> = match self.tls {
            false => vec!["--port".into(), port.into()],
            true => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.into(),
                "--tls-cert-file".into(),
                tls.join("server.crt").into(),
                "--tls-key-file".into(),
                tls.join("server.key").into(),
                "--tls-ca-cert-file".into(),
                tls.join("ca.crt").into(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(ports)
            .args(&self.extra)
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn cluster_config(config: &mut Config, redis: &RedisServer, node: &str, data: &std::path::Path) {
    config.store.data_dir = data.to_path_buf();
    config.cluster.redis_url = redis.url();
    config.cluster.node_id = node.into();
    config.cluster.heartbeat_ms = 100;
    config.cluster.node_ttl_ms = 600;
}

/// Three nodes on one Redis and one store.
struct ThreeNodes {
    nodes: Vec<TestServer>,
    _redis: RedisServer,
    _data: TempDir,
}

async fn three_nodes() -> ThreeNodes {
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let nodes: Vec<TestServer> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|node| TestServer::start_with(|c| cluster_config(c, &redis, node, data.path())))
        .collect();
    wait_for_members(&redis, 3).await;
    ThreeNodes { nodes, _redis: redis, _data: data }
}

/// Waits until Redis lists `n` live nodes and every node had a heartbeat to see them.
pub async fn wait_for_members(redis: &RedisServer, n: usize) {
    let client = redis::Client::open(redis.url()).unwrap();
    wait_until_listed(client.get_multiplexed_async_connection().await.unwrap(), n).await;
}

/// The same on a Redis Cluster.
async fn wait_for_members_on_cluster(cluster: &RedisCluster, n: usize) {
    let seeds = cluster.seeds();
    let ca = std::fs::read(cluster_ca()).unwrap();
    let client = redis::cluster::ClusterClient::builder(seeds)
        .certs(redis::TlsCertificates { client_tls: None, root_cert: Some(ca) })
        .build()
        .unwrap();
    wait_until_listed(client.get_async_connection().await.unwrap(), n).await;
}

async fn wait_until_listed(mut conn: impl redis::aio::ConnectionLike, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = tidings::domain::now_ms();
        let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg("{tidings}:nodes")
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .unwrap();
        if live.len() == n {
            break;
        }
        assert!(Instant::now() < deadline, "expected {n} nodes, Redis lists {live:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two heartbeats: every node's view includes the others.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A user signed up on `server`, with a synced connection to it.
async fn on(server: &TestServer, name: &str) -> (TestUser, Connection) {
    let user = server.user(name).await;
    let (conn, _) = user.connect_synced(0).await;
    (user, conn)
}

pub fn texts(events: &[wire::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(wire::event::Kind::Entry(entry)) => match &entry.body {
                Some(wire::room_entry::Body::Text(t)) => Some(t.text.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Collects stream events until `n` messages arrived (skipping everything else).
async fn messages(conn: &mut Connection, n: usize) -> Vec<wire::Event> {
    let mut events = Vec::new();
    while texts(&events).len() < n {
        events.push(next_event(conn).await);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_on_different_nodes_chat_as_on_one() {
    require!(Prerequisite::Redis);
    let cluster = three_nodes().await;
    let (_ana, mut a) = on(&cluster.nodes[0], "ana").await;
    let (bob, mut b) = on(&cluster.nodes[1], "bob").await;
    let (carol, mut c) = on(&cluster.nodes[2], "carol").await;

    // Direct: the room's creation and each message cross nodes.
    let direct = a.create_direct(bob.id()).await.unwrap().room_id;
    next_event(&mut a).await;
    next_event(&mut b).await;
    a.send_text(direct, "d1", "hi bob, from node 1").await.unwrap();
    b.send_text(direct, "d2", "hi ana, from node 2").await.unwrap();
    let at_b = messages(&mut b, 2).await;
    let at_a = messages(&mut a, 2).await;
    assert_eq!(texts(&at_a), ["hi bob, from node 1", "hi ana, from node 2"]);
    assert_eq!(texts(&at_b), texts(&at_a), "one order for everyone");

    // A group across the three nodes: everyone sends, everyone sees one order.
    let group = a.create_group("three nodes", vec![bob.id(), carol.id()]).await.unwrap().room_id;
    for conn in [&mut a, &mut b, &mut c] {
        next_event(conn).await;
    }
    for i in 0..5 {
        a.send_text(group, &format!("a{i}"), &format!("ana {i}")).await.unwrap();
        b.send_text(group, &format!("b{i}"), &format!("bob {i}")).await.unwrap();
        c.send_text(group, &format!("c{i}"), &format!("carol {i}")).await.unwrap();
    }
    let seen_a = texts(&messages(&mut a, 15).await);
    let seen_b = texts(&messages(&mut b, 15).await);
    let seen_c = texts(&messages(&mut c, 15).await);
    assert_eq!(seen_a.len(), 15);
    assert_eq!(seen_a, seen_b);
    assert_eq!(seen_a, seen_c);

    // Typing, presence and receipts cross nodes too.
    a.request(Req::Typing(wire::TypingRequest { room_id: group, active: true })).await.unwrap();
    for conn in [&mut b, &mut c] {
        let typing = loop {
            match conn.next_within(WAIT).await.unwrap() {
                tidings_client::Incoming::Ephemeral(e) => match e.kind {
                    Some(wire::ephemeral::Kind::Typing(t)) => break t,
                    _ => continue,
                },
                _ => continue,
            }
        };
        assert_eq!((typing.room_id, typing.active), (group, true));
    }
    let presence = b.request(Req::Presence(wire::PresenceRequest { user_ids: vec![carol.id()] })).await.unwrap();
    let wire::reply::Result::Presence(list) = presence else { panic!("{presence:?}") };
    assert!(list.users[0].online, "carol is online on node 3, asked on node 2");

    let last_seq = c.list_rooms().await.unwrap().iter().find(|r| r.room_id == group).unwrap().last_seq;
    let read = wire::ReceiptRequest { room_id: group, kind: wire::ReceiptKind::Read as i32, up_to_seq: last_seq };
    c.request(Req::Receipt(read)).await.unwrap();
    let receipt = loop {
        let event = next_event(&mut a).await;
        if let Some(wire::event::Kind::Receipt(r)) = event.kind {
            break r;
        }
    };
    assert_eq!((receipt.user_id, receipt.up_to_seq), (carol.id(), last_seq));

    // Logging out through node 1 closes the device's connection on node 3.
    cluster.nodes[0].http().log_out(&carol.auth.access_token, false).await.unwrap();
    loop {
        match c.next_within(WAIT).await.unwrap() {
            tidings_client::Incoming::Notice(n) if n.kind == wire::NoticeKind::LoggedOut as i32 => break,
            tidings_client::Incoming::Closed(reason) => panic!("closed before LOGGED_OUT: {reason:?}"),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_its_clients_and_rooms_over_with_nothing_lost() {
    require!(Prerequisite::Redis);
    let mut cluster = three_nodes().await;
    let (ana, mut a) = on(&cluster.nodes[0], "ana").await;
    let (bob, mut b) = on(&cluster.nodes[1], "bob").await;
    let group = a.create_group("drain", vec![bob.id()]).await.unwrap().room_id;
    next_event(&mut a).await;
    next_event(&mut b).await;
    for i in 0..10 {
        a.send_text(group, &format!("before{i}"), &format!("before {i}")).await.unwrap();
    }
    let before = messages(&mut b, 10).await;
    let last_pos = before.last().unwrap().pos;

    // Node 2 drains: its clients are told to go away; bob resumes on node 3.
    cluster.nodes[1].stop();
    for i in 0..10 {
        a.send_text(group, &format!("during{i}"), &format!("during {i}")).await.unwrap();
    }
    let bob_on_3 = TestUser { ws_base: cluster.nodes[2].ws_base(), ..bob };
    let (mut b3, missed) = bob_on_3.connect_synced(last_pos).await;
    assert_contiguous(&missed, last_pos + 1);
    let mut got = texts(&missed);
    a.send_text(group, "after", "after the drain").await.unwrap();
    while got.len() < 11 {
        got.extend(texts(&[next_event(&mut b3).await]));
    }
    let expected: Vec<String> = (0..10).map(|i| format!("during {i}")).chain(["after the drain".into()]).collect();
    assert_eq!(got, expected, "exactly what bob missed, in order, then live");
    drop(ana);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_across_nodes() {
    require!(Prerequisite::Redis);
    let redis_holder;
    let (nodes, _data) = {
        let redis = RedisServer::start();
        let data = tempfile::tempdir().unwrap();
        let nodes: Vec<TestServer> = ["n1", "n2"]
            .into_iter()
            .map(|node| TestServer::start_with(|c| cluster_config(c, &redis, node, data.path())))
            .collect();
        wait_for_members(&redis, 2).await;
        redis_holder = redis;
        (nodes, data)
    };
    let mut redis = redis_holder;
    let ana = nodes[0].user("ana").await;
    let bob = nodes[0].user("bob").await;
    let room = {
        let (a, _) = ana.connect_synced(0).await;
        a.create_direct(bob.id()).await.unwrap().room_id
    };
    // Ana on the room's owner, bob elsewhere: every message reaches bob only through the bridge.
    let owner = tidings::cluster::owner(tidings::domain::RoomId(room), ["n1", "n2"]).unwrap();
    let (ana_node, bob_node) = if owner == "n1" { (&nodes[0], &nodes[1]) } else { (&nodes[1], &nodes[0]) };
    let (a, _) = TestUser { ws_base: ana_node.ws_base(), ..ana }.connect_synced(0).await;
    let (mut b, _) = TestUser { ws_base: bob_node.ws_base(), ..bob }.connect_synced(0).await;
    a.send_text(room, "m0", "before").await.unwrap();
    assert_eq!(texts(&messages(&mut b, 1).await), ["before"]);

    // Redis goes away: sends still work (forwarding is node to node, the store is shared), but
    // the bridge cannot tell bob's node.
    redis.stop();
    for i in 1..=5 {
        a.send_text(room, &format!("m{i}"), &format!("while redis was down {i}")).await.unwrap();
    }
    redis.restart();
    // Back: the bridge resubscribes and bob's node reads what it missed from the store.
    let got = texts(&messages(&mut b, 5).await);
    let expected: Vec<String> = (1..=5).map(|i| format!("while redis was down {i}")).collect();
    assert_eq!(got, expected);
    a.send_text(room, "m6", "live again").await.unwrap();
    assert_eq!(texts(&messages(&mut b, 1).await), ["live again"]);
}

/// What a `persistent_sender` did.
pub struct Sent {
    /// The client message ids, in the order sent.
    pub ids: Vec<String>,
    /// INTERNAL answers (the protocol promises UNAVAILABLE while a room moves).
    pub internal: Vec<String>,
    /// The longest a message took from its first attempt to its acknowledgement.
    pub longest: Duration,
}

/// Sends `n` messages, one at a time, through whichever of `servers` answers; a send that fails is
/// retried with the same client_msg_id (on a fresh connection if the node died).
pub async fn persistent_sender(
    servers: Vec<String>,
    token: String,
    room: u64,
    prefix: &'static str,
    n: usize,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Sent {
    use tidings_client::tidings_proto::Encoding;
    let mut node = 0;
    let mut conn = Connection::connect(&servers[node], &token, Encoding::Protobuf).await.unwrap();
    let mut sent = Vec::new();
    let mut internal = Vec::new();
    let mut longest = Duration::ZERO;
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let mut attempts = 0;
        let first_try = Instant::now();
        loop {
            attempts += 1;
            assert!(attempts < 400, "{id} never got through");
            match conn.send_text(room, &id, &format!("{prefix} {i}")).await {
                Ok(_) => break,
                Err(e) if e.code() == Some(wire::ErrorCode::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) if e.code() == Some(wire::ErrorCode::Internal) => {
                    internal.push(format!("{id}: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    // The node is gone: resume on the next one.
                    node = (node + 1) % servers.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Ok(fresh) = Connection::connect(&servers[node], &token, Encoding::Protobuf).await {
                        conn = fresh;
                    }
                }
            }
        }
        let took = first_try.elapsed();
        if took > Duration::from_secs(1) {
            eprintln!("{id} took {took:?} ({attempts} attempts)");
        }
        longest = longest.max(took);
        sent.push(id);
        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Paced, so that the storm outlasts a node's restart and its return to the membership.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    Sent { ids: sent, internal, longest }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_rooms_owner_mid_storm_loses_nothing() {
    require!(Prerequisite::Redis);
    use crate::durability::spawn_server_with;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tidings_client::Http;
    use tidings_client::tidings_proto::Encoding;

    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let settings = |node: &str| {
        vec![
            format!("cluster.redis_url={}", redis.url()),
            format!("cluster.node_id={node}"),
            "cluster.heartbeat_ms=100".into(),
            "cluster.node_ttl_ms=600".into(),
        ]
    };
    let names = ["n1", "n2", "n3"];
    let mut processes: Vec<Option<crate::durability::Server>> = Vec::new();
    let mut addrs = Vec::new();
    for node in names {
        let (process, addr) = spawn_server_with(data.path(), &settings(node));
        processes.push(Some(process));
        addrs.push(addr);
    }
    wait_for_members(&redis, 3).await;
    let http = Http::new(format!("http://{}", addrs[0]));
    let ana = http.sign_up("ana", PASSWORD, "phone").await.unwrap();
    let bob = http.sign_up("bob", PASSWORD, "phone").await.unwrap();
    let carol = http.sign_up("carol", PASSWORD, "phone").await.unwrap();
    let ws = |i: usize| format!("ws://{}", addrs[i]);
    let room = {
        let a = Connection::connect(&ws(0), &ana.access_token, Encoding::Protobuf).await.unwrap();
        a.create_group("storm", vec![bob.user_id, carol.user_id]).await.unwrap().room_id
    };
    let owner = tidings::cluster::owner(tidings::domain::RoomId(room), names).unwrap();
    let owner_index = names.iter().position(|n| *n == owner).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != owner_index).collect();

    // Carol watches from a node that survives; bob sends from the owner; ana from the other one.
    let mut c = Connection::connect(&ws(others[1]), &carol.access_token, Encoding::Protobuf).await.unwrap();
    c.sync(0).await.unwrap();
    until_caught_up(&mut c).await;
    const EACH: usize = 60;
    let acked = Arc::new(AtomicUsize::new(0));
    let bob_servers = vec![ws(owner_index), ws(others[0]), ws(others[1])];
    let ana_servers = vec![ws(others[0]), ws(others[1])];
    let bob_task =
        tokio::spawn(persistent_sender(bob_servers, bob.access_token.clone(), room, "bob", EACH, acked.clone()));
    let ana_task =
        tokio::spawn(persistent_sender(ana_servers, ana.access_token.clone(), room, "ana", EACH, acked.clone()));
    let deadline = Instant::now() + WAIT;
    while acked.load(Ordering::Relaxed) < EACH / 2 {
        assert!(Instant::now() < deadline, "the storm started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut victim = processes[owner_index].take().unwrap();
    victim.0.kill().unwrap(); // SIGKILL: no drain, no goodbye
    drop(victim);
    // Mid-storm, the owner comes back: the room moves back to it while the others' views catch up,
    // the moment two nodes may both believe they own it.
    while acked.load(Ordering::Relaxed) < EACH {
        assert!(Instant::now() < deadline + WAIT, "the storm went on without the owner");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_restarted, _) = spawn_server_with(data.path(), &settings(owner));
    let Sent { ids: bob_sent, internal: bob_internal, .. } = bob_task.await.unwrap();
    let Sent { ids: ana_sent, internal: ana_internal, .. } = ana_task.await.unwrap();
    assert_eq!((&bob_internal, &ana_internal), (&vec![], &vec![]), "no send is answered INTERNAL");

    // Carol saw every message once, in one order, with contiguous positions.
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while texts(&events).len() < 2 * EACH {
        assert!(Instant::now() < deadline, "carol got {} of {}", texts(&events).len(), 2 * EACH);
        if let Ok(tidings_client::Incoming::Event(e)) = c.next_within(Duration::from_secs(1)).await {
            events.push(e);
        }
    }
    let first = events[0].pos;
    assert_contiguous(&events, first);
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(wire::event::Kind::Entry(entry)) => Some(entry.seq),
            _ => None,
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "carol's stream has the room's entries in seq order: {seqs:?}");
    let seen = texts(&events);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 2 * EACH, "no duplicates: {seen:?}");
    for (prefix, sent) in [("ana", &ana_sent), ("bob", &bob_sent)] {
        let order: Vec<&String> = seen.iter().filter(|t| t.starts_with(prefix)).collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{prefix} {i}")).collect();
        assert_eq!(order, expected.iter().collect::<Vec<_>>(), "{prefix}'s messages in the order sent");
        assert_eq!(sent.len(), EACH);
    }
    // The room's log has each message once under one seq.
    let reader = Connection::connect(&ws(others[0]), &carol.access_token, Encoding::Protobuf).await.unwrap();
    let page = reader
        .history(wire::HistoryRequest { room_id: room, after_seq: Some(0), limit: 200, ..Default::default() })
        .await
        .unwrap();
    // Seqs are unique and increasing (a retried send answered as a duplicate may leave a number
    // unused: the protocol says seqs may be skipped).
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs are unique and increasing: {seqs:?}");
    assert_eq!(message_texts(&page.entries).len(), 2 * EACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_over_rooms_and_nothing_is_lost() {
    require!(Prerequisite::Redis);
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let n1 = TestServer::start_with(|c| cluster_config(c, &redis, "n1", data.path()));
    let n2 = TestServer::start_with(|c| cluster_config(c, &redis, "n2", data.path()));
    wait_for_members(&redis, 2).await;
    let (_ana, a) = on(&n1, "ana").await;
    let (bob, mut b) = on(&n2, "bob").await;
    let room = a.create_group("moving", vec![bob.id()]).await.unwrap().room_id;
    next_event(&mut b).await;
    // A third node whose id wins this room: ownership moves to it when it joins.
    let room_id = tidings::domain::RoomId(room);
    let newcomer = (0..)
        .map(|i| format!("n3-{i}"))
        .find(|id| tidings::cluster::owner(room_id, ["n1", "n2", id.as_str()]) == Some(id.as_str()))
        .unwrap();
    for i in 0..5 {
        a.send_text(room, &format!("x{i}"), &format!("before join {i}")).await.unwrap();
    }
    let n3 = TestServer::start_with(|c| cluster_config(c, &redis, &newcomer, data.path()));
    wait_for_members(&redis, 3).await;
    for i in 0..5 {
        a.send_text(room, &format!("y{i}"), &format!("after join {i}")).await.unwrap();
        b.send_text(room, &format!("z{i}"), &format!("bob after join {i}")).await.unwrap();
    }
    let got = texts(&messages(&mut b, 15).await);
    assert_eq!(got.len(), 15);
    assert_eq!(got.iter().collect::<std::collections::HashSet<_>>().len(), 15, "{got:?}");
    let history = a
        .history(wire::HistoryRequest { room_id: room, after_seq: Some(0), limit: 100, ..Default::default() })
        .await
        .unwrap();
    let seqs: Vec<u64> = history.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), 16);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one seq per entry across the move: {seqs:?}");
    drop(n3);
}

/// A three-master Redis Cluster of this test's own (no replicas), on free ports.
/// A Redis Cluster of three masters that speaks only TLS and requires a password (so the bridge's
/// own subscriber connections must do both, as the command connections do).
struct RedisCluster {
    masters: Vec<RedisServer>,
}

const CLUSTER_PASSWORD: &str = "cluster-secret";

/// `redis-cli` with the cluster's password, over TLS.
fn redis_cli() -> Command {
    let mut command = Command::new("redis-cli");
    command.args(["-a", CLUSTER_PASSWORD, "--no-auth-warning", "--tls", "--cacert"]);
    command.arg(cluster_ca());
    command
}

fn cluster_ca() -> std::path::PathBuf {
    RedisServer::tls_dir().join("ca.crt")
}

impl RedisCluster {
    fn start() -> Self {
        let auth = ["--requirepass", CLUSTER_PASSWORD, "--masterauth", CLUSTER_PASSWORD];
        let tls = ["--tls-cluster", "yes", "--tls-replication", "yes"];
        let masters: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_tls(&[&["--cluster-enabled", "yes"][..], &auth[..], &tls[..]].concat()))
            .collect();
        let addrs: Vec<String> = masters.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
        let created = redis_cli()
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + WAIT;
        for m in &masters {
            loop {
                let info = redis_cli().args(["-p", &m.port.to_string(), "cluster", "info"]).output().unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the Redis Cluster did not become ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { masters }
    }

    fn seeds(&self) -> Vec<String> {
        self.masters.iter().map(|m| format!("rediss://:{CLUSTER_PASSWORD}@127.0.0.1:{}", m.port)).collect()
    }

    fn urls(&self) -> String {
        self.seeds().join(",")
    }

    /// Drops every pub/sub connection on every master (the bridge must resubscribe by itself).
    fn kill_subscribers(&self) {
        for m in &self.masters {
            let killed =
                redis_cli().args(["-p", &m.port.to_string(), "client", "kill", "type", "pubsub"]).output().unwrap();
            assert!(killed.status.success());
        }
    }

    /// Which third of the slots (one master each, as `--cluster create` splits them) this channel's
    /// slot is in.
    fn master_of(&self, channel: &str) -> u16 {
        let out = redis_cli()
            .args(["-p", &self.masters[0].port.to_string(), "cluster", "keyslot", channel])
            .output()
            .unwrap();
        let slot: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        slot / 5462
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_bridge_uses_sharded_channels_and_survives_resubscription() {
    require!(Prerequisite::Redis);
    let redis = RedisCluster::start();
    let data = tempfile::tempdir().unwrap();
    let nodes: Vec<TestServer> = ["n1", "n2"]
        .into_iter()
        .map(|node| {
            TestServer::start_with(|c| {
                c.store.data_dir = data.path().to_path_buf();
                c.cluster.redis_url = redis.urls();
                c.cluster.redis_ca_file = cluster_ca();
                c.cluster.redis_cluster = true;
                c.cluster.node_id = node.into();
                c.cluster.heartbeat_ms = 100;
                c.cluster.node_ttl_ms = 600;
            })
        })
        .collect();
    wait_for_members_on_cluster(&redis, 2).await;

    // Pairs whose rooms' owners are not the receiver's node, with receivers' channels on several
    // shards: every delivery crosses the sharded bridge.
    let mut pairs = Vec::new();
    let mut shards = std::collections::HashSet::new();
    for i in 0..12 {
        let sender = nodes[0].user(&format!("sender{i}")).await;
        let receiver = nodes[0].user(&format!("receiver{i}")).await;
        let receiver_id = receiver.id();
        let room = {
            let (s, _) = sender.connect_synced(0).await;
            s.create_direct(receiver_id).await.unwrap().room_id
        };
        let owner = tidings::cluster::owner(tidings::domain::RoomId(room), ["n1", "n2"]).unwrap();
        let (own, other) = if owner == "n1" { (&nodes[0], &nodes[1]) } else { (&nodes[1], &nodes[0]) };
        let (s, _) = TestUser { ws_base: own.ws_base(), ..sender }.connect_synced(0).await;
        let (r, _) = TestUser { ws_base: other.ws_base(), ..receiver }.connect_synced(0).await;
        shards.insert(redis.master_of(&format!("tidings:u:{receiver_id}")));
        pairs.push((s, r, room));
    }
    assert!(shards.len() >= 2, "the receivers' channels should sit on several shards: {shards:?}");
    for (i, (s, r, room)) in pairs.iter_mut().enumerate() {
        s.send_text(*room, &format!("a{i}"), "over the shards").await.unwrap();
        assert_eq!(texts(&messages(r, 1).await), ["over the shards"]);
    }

    // Every subscriber connection is dropped: the bridge reconnects and resubscribes, one channel
    // per command (a batched SSUBSCRIBE across slots would be refused with CROSSSLOT), and what was
    // published meanwhile is read from the store.
    redis.kill_subscribers();
    for (i, (s, _, room)) in pairs.iter().enumerate() {
        s.send_text(*room, &format!("b{i}"), "after the drop").await.unwrap();
    }
    for (_, r, _) in pairs.iter_mut() {
        assert_eq!(texts(&messages(r, 1).await), ["after the drop"]);
    }
    for (i, (s, r, room)) in pairs.iter_mut().enumerate() {
        s.send_text(*room, &format!("c{i}"), "live again").await.unwrap();
        assert_eq!(texts(&messages(r, 1).await), ["live again"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_in_a_cluster_goes_once_and_an_ack_on_any_node_cancels_it() {
    require!(Prerequisite::Redis);
    use crate::push::{apns_token, ios, wait_offline, wire_push};
    use tidings_fakes::{FakeApns, FakeFcm};

    let apns = FakeApns::start().await;
    let fcm = FakeFcm::start().await;
    let keys = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let nodes: Vec<TestServer> = ["n1", "n2"]
        .into_iter()
        .map(|node| {
            TestServer::start_with(|c| {
                cluster_config(c, &redis, node, data.path());
                wire_push(c, &apns, &fcm, keys.path());
                c.push.grace_ms = 1500;
            })
        })
        .collect();
    wait_for_members(&redis, 2).await;
    let ana = nodes[0].user("ana").await;
    let bob = nodes[0].user("bob").await;
    let room = {
        let (a, _) = ana.connect_synced(0).await;
        a.create_direct(bob.id()).await.unwrap().room_id
    };
    // Ana on the room's owner (which queues the push); bob's phone comes back on the other node.
    let owner = tidings::cluster::owner(tidings::domain::RoomId(room), ["n1", "n2"]).unwrap();
    let (own, other) = if owner == "n1" { (&nodes[0], &nodes[1]) } else { (&nodes[1], &nodes[0]) };
    let (a, _) = TestUser { ws_base: own.ws_base(), ..ana }.connect_synced(0).await;
    let bob = TestUser { ws_base: other.ws_base(), ..bob };
    {
        let b = bob.connect().await;
        b.set_push_token(ios(&apns_token("bob"))).await.unwrap();
    }
    wait_offline(&a, bob.id()).await;

    a.send_text(room, "m1", "read me on the other node").await.unwrap();
    let (b, events) = bob.connect_synced(0).await;
    b.ack(events.last().unwrap().pos).await.unwrap();
    b.close().await;
    drop(b);
    wait_offline(&a, bob.id()).await;
    tokio::time::sleep(Duration::from_millis(1500 + 1200)).await;
    assert!(apns.attempts().is_empty(), "acked on another node: no push");

    // Not acked anywhere: exactly one push, though both nodes' workers share the queue.
    a.send_text(room, "m2", "now push me").await.unwrap();
    let pushes = apns.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(apns.accepted_count(), 1, "{pushes:?}");
    assert_eq!(pushes[0].payload["aps"]["alert"]["body"], "now push me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_leaves_the_membership_at_once_and_stays_out_until_it_exits() {
    require!(Prerequisite::Redis);
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let n1 = TestServer::start_with(|c| {
        cluster_config(c, &redis, "n1", data.path());
        c.limits.max_message_bytes = 64 * 1024;
    });
    let mut n2 = TestServer::start_with(|c| {
        cluster_config(c, &redis, "n2", data.path());
        c.server.shutdown_timeout_secs = 5;
        c.limits.write_timeout_secs = 3;
        c.limits.slow_consumer_grace_secs = 60;
        c.limits.max_message_bytes = 64 * 1024;
    });
    wait_for_members(&redis, 2).await;
    // A client that stopped reading with its socket full: n2's shutdown waits (up to the write
    // timeout) for its connection, and n2 must stay out of the membership meanwhile.
    let (_, sender) = on(&n2, "sender").await;
    let stubborn = n2.user("stubborn").await;
    let room = sender.create_direct(stubborn.id()).await.unwrap().room_id;
    let big = "x".repeat(60 * 1024);
    for i in 0..200 {
        sender.send_text(room, &format!("m{i}"), &big).await.unwrap();
    }
    let mut socket = stubborn.raw_socket().await;
    {
        use futures_util::SinkExt;
        use prost::Message as _;
        let sync = wire::ClientFrame {
            request_id: 1,
            request: Some(Req::Sync(wire::SyncRequest { after_pos: 0, ..Default::default() })),
        };
        socket.send(tokio_tungstenite::tungstenite::Message::Binary(sync.encode_to_vec().into())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(sender);
    let draining = std::thread::spawn(move || n2.stop());

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let live = |now: i64| redis::cmd("ZRANGEBYSCORE").arg("{tidings}:nodes").arg(now).arg("+inf").clone();
    let started = Instant::now();
    let mut left_after = None;
    // Watch for two seconds (twenty heartbeats of 100 ms) while n2 waits for the stubborn socket.
    while started.elapsed() < Duration::from_secs(2) {
        let members: Vec<String> = live(tidings::domain::now_ms()).query_async(&mut conn).await.unwrap();
        match (members.iter().any(|m| m == "n2"), left_after) {
            (false, None) => left_after = Some(started.elapsed()),
            (true, Some(after)) => panic!("n2 left after {after:?}, then its heartbeat put it back"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left_after = left_after.expect("n2 left the membership");
    assert!(left_after < Duration::from_millis(500), "n2 left only after {left_after:?}");
    assert!(!draining.is_finished(), "the shutdown was still waiting while we watched");
    draining.join().unwrap();
    drop(n1);
}

/// Sends `rounds` bursts to a room: each burst 8 new messages at once, pipelined, and 2 resends of
/// messages already acknowledged (answered as duplicates, which leave their seqs unused). Every
/// UNAVAILABLE is retried; returns the ids sent in order and the INTERNAL answers.
async fn pipelined_sender(
    server: String,
    token: String,
    room: u64,
    prefix: &'static str,
    rounds: usize,
) -> (usize, Vec<String>) {
    use futures_util::future::join_all;
    use tidings_client::tidings_proto::Encoding;
    let conn = Connection::connect(&server, &token, Encoding::Protobuf).await.unwrap();
    let internal = std::sync::Mutex::new(Vec::new());
    let send = |id: String| {
        let (conn, internal) = (&conn, &internal);
        async move {
            for _ in 0..200 {
                match conn.send_text(room, &id, &id).await {
                    Ok(_) => return,
                    Err(e) if e.code() == Some(wire::ErrorCode::Unavailable) => {}
                    Err(e) => internal.lock().unwrap().push(format!("{id}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{id} never got through");
        }
    };
    let mut sent = 0;
    for round in 0..rounds {
        let mut ids: Vec<String> = (0..8).map(|i| format!("{prefix} {:03}", round * 8 + i)).collect();
        if round > 0 {
            ids.extend([format!("{prefix} {:03}", round * 8 - 1), format!("{prefix} {:03}", round * 8 - 2)]);
        }
        join_all(ids.into_iter().map(send)).await;
        sent += 8;
    }
    (sent, internal.into_inner().unwrap())
}

/// Two nodes that both handle one room (two processes' servers on one store, with no cluster to
/// agree on an owner: the worst case of views disagreeing while a room moves). The store's fence
/// lets only the latest writer append: the other is answered UNAVAILABLE and retried, never
/// INTERNAL, and every stream has the room's entries once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_of_one_room_never_interleave_or_answer_internal() {
    let shared = tempfile::tempdir().unwrap();
    let start = || TestServer::start_with(|c| c.store.data_dir = shared.path().to_path_buf());
    let (one, two) = (start(), start());
    let ana = one.user("ana").await;
    let bob = one.user("bob").await;
    let carol = one.user("carol").await;
    let room = {
        let a = ana.connect().await;
        a.create_group("contested", vec![bob.id(), carol.id()]).await.unwrap().room_id
    };
    const ROUNDS: usize = 12;
    const EACH: usize = ROUNDS * 8;
    let ana_task = tokio::spawn(pipelined_sender(one.ws_base(), ana.auth.access_token.clone(), room, "ana", ROUNDS));
    let bob_task = tokio::spawn(pipelined_sender(two.ws_base(), bob.auth.access_token.clone(), room, "bob", ROUNDS));
    let (ana_sent, ana_internal) = ana_task.await.unwrap();
    let (bob_sent, bob_internal) = bob_task.await.unwrap();
    assert_eq!((&ana_internal, &bob_internal), (&vec![], &vec![]), "no send is answered INTERNAL");
    assert_eq!((ana_sent, bob_sent), (EACH, EACH));

    // Carol's stream, read whole (with no cluster, neither server tells the other's sessions of
    // its appends live: that is the bridge's job, tested above).
    let (_c, events) = carol.connect_synced(0).await;
    let events: Vec<_> = events.into_iter().filter(|e| entry(e).seq > 1).collect();
    assert_eq!(texts(&events).len(), 2 * EACH, "carol's stream has every message");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e.kind.as_ref().map(|_| entry(e).seq)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "the room's entries in seq order: {seqs:?}");
    let seen = texts(&events);
    assert_eq!(seen.iter().collect::<std::collections::HashSet<_>>().len(), 2 * EACH, "each message once");
    for prefix in ["ana", "bob"] {
        let mine: std::collections::HashSet<&String> = seen.iter().filter(|t| t.starts_with(prefix)).collect();
        assert_eq!(mine.len(), EACH, "all of {prefix}'s messages");
    }
}

/// A wide author's post reaches its online followers on every node (found among the nodes' online
/// users, not by walking the followers), and no one else's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_authors_post_reaches_online_followers_on_every_node() {
    require!(Prerequisite::Redis);
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let nodes: Vec<TestServer> = ["n1", "n2"]
        .into_iter()
        .map(|node| {
            TestServer::start_with(|c| {
                cluster_config(c, &redis, node, data.path());
                c.feed.fanout_max_followers = 1;
            })
        })
        .collect();
    wait_for_members(&redis, 2).await;
    let (star, s) = on(&nodes[0], "star").await;
    let (_here, mut h) = on(&nodes[0], "here").await;
    let there = nodes[0].user("there").await;
    let (mut t, _) = TestUser { ws_base: nodes[1].ws_base(), ..there }.connect_synced(0).await;
    let away = nodes[0].user("away").await;
    // Online on the second node, following no one.
    let (other, _o) = on(&nodes[1], "other").await;
    let follow = |user_id| Req::Follow(wire::FollowRequest { user_id });
    for conn in [&h, &t] {
        conn.request(follow(star.id())).await.unwrap();
    }
    away.connect().await.request(follow(star.id())).await.unwrap();

    let media = crate::posts::photo(&nodes[0], &star, image::ImageFormat::Png).await;
    let post_id = crate::posts::create(&s, crate::posts::new_post("p", vec![media], "")).await.unwrap().post_id;
    for conn in [&mut h, &mut t] {
        let event = next_event(conn).await;
        let Some(wire::event::Kind::Post(published)) = event.kind else { panic!("a post event: {event:?}") };
        assert_eq!(published.post_id, post_id);
    }
    let (_, away_events) = away.connect_synced(0).await;
    assert!(away_events.iter().all(|e| !matches!(e.kind, Some(wire::event::Kind::Post(_)))), "offline: no event");
    let (_, star_events) = star.connect_synced(0).await;
    assert!(star_events.iter().all(|e| !matches!(e.kind, Some(wire::event::Kind::Post(_)))), "not a follower");
    let (_, other_events) = TestUser { ws_base: nodes[1].ws_base(), ..other }.connect_synced(0).await;
    assert!(other_events.iter().all(|e| !matches!(e.kind, Some(wire::event::Kind::Post(_)))), "online, not a follower");
}

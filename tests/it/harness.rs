//! Starting servers and users for tests.

use std::time::Duration;

use tempfile::TempDir;
use tidings::clock::Clock;
use tidings::config::Config;
use tidings::config::Synchronous;
use tidings::push::{Progress, PushWorker};
use tidings_client::tidings_proto::Encoding;
use tidings_client::tidings_proto::v1::{self as wire, AuthResponse};
use tidings_client::{Connection, Http, Incoming};
use tokio::sync::{oneshot, watch};

pub const PASSWORD: &str = "correct horse battery";
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test server may take to start.
pub const START_WAIT: Duration = Duration::from_secs(90);

/// A server running in its own thread with its own actix system and data directory.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub data_dir: TempDir,
    /// The time the server's push pipeline reads (the system's unless started with a manual one).
    pub clock: Clock,
    push_progress: watch::Receiver<Progress>,
    push_worker: std::sync::Arc<PushWorker>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

thread_local! {
    /// Servers this test thread starts keep their data on the CQL node (see `on_scylla`).
    static ON_SCYLLA: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Their `store.scylla_fanout_after_ack_from` (0: the default; see `on_scylla_after_ack`).
    static FANOUT_AFTER_ACK_FROM: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The keyspaces they were given, dropped when the test ends.
    static KEYSPACES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs a test with every server it starts on the ScyllaDB store (a keyspace per data directory,
/// on the CQL node `TIDINGS_SCYLLA_NODES` names), or reports it skipped without one.
pub fn on_scylla(test: impl FnOnce()) {
    if !crate::prerequisites::check(crate::prerequisites::Prerequisite::Scylla) {
        return;
    }
    ON_SCYLLA.set(true);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(test));
    ON_SCYLLA.set(false);
    let nodes = crate::prerequisites::scylla_nodes().expect("checked above");
    for keyspace in KEYSPACES.take() {
        recycle_keyspace(nodes.clone(), keyspace);
    }
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
}

/// As `on_scylla`, with every message acknowledged before its fan-out (as large rooms' are): the
/// recipients' streams and live sessions get it after the sender's answer.
pub fn on_scylla_after_ack(test: impl FnOnce()) {
    FANOUT_AFTER_ACK_FROM.set(1);
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_scylla(test)));
    FANOUT_AFTER_ACK_FROM.set(0);
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
}

/// Where a server on `data_dir` keeps its data when this thread's servers are on ScyllaDB: the CQL
/// nodes and a keyspace named after the directory (a server started again on the same directory
/// finds its data).
fn scylla_keyspace(data_dir: &std::path::Path) -> Option<(String, String)> {
    ON_SCYLLA.get().then(|| {
        let nodes = crate::prerequisites::scylla_nodes().expect("checked by on_scylla").join(",");
        let keyspace = keyspace_for(data_dir);
        KEYSPACES.with_borrow_mut(|named| {
            if !named.contains(&keyspace) {
                named.push(keyspace.clone());
            }
        });
        (nodes, keyspace)
    })
}

/// The store's `--set` settings of a server binary on `data_dir` (none on SQLite).
pub fn store_settings(data_dir: &std::path::Path) -> Vec<String> {
    let Some((nodes, keyspace)) = scylla_keyspace(data_dir) else { return Vec::new() };
    let mut settings = vec![
        "store.backend=scylla".into(),
        format!("store.scylla_nodes={nodes}"),
        format!("store.scylla_keyspace={keyspace}"),
        "store.scylla_replication_factor=1".into(),
    ];
    if FANOUT_AFTER_ACK_FROM.get() > 0 {
        settings.push(format!("store.scylla_fanout_after_ack_from={}", FANOUT_AFTER_ACK_FROM.get()));
    }
    settings
}

/// The ScyllaDB store a server on `data_dir` uses in this thread's `on_scylla` test, opened
/// beside it (to look at what the server left).
pub async fn scylla_store_for(data_dir: &std::path::Path) -> tidings::store::scylla::ScyllaStore {
    let nodes = crate::prerequisites::scylla_nodes().expect("on ScyllaDB");
    let options = tidings::store::scylla::ScyllaOptions::new(nodes, keyspace_for(data_dir));
    tidings::store::scylla::ScyllaStore::open(options).await.expect("the CQL node answers")
}

/// Whether this thread's servers are on ScyllaDB (inside `on_scylla`).
pub fn servers_on_scylla() -> bool {
    ON_SCYLLA.get()
}

/// The store a server on `data_dir` keeps its data in, on this thread's backend (the SQLite file
/// in the directory, or the directory's keyspace), opened beside the server or before it starts.
pub async fn store_for(data_dir: &std::path::Path) -> std::sync::Arc<dyn tidings::store::Store> {
    if ON_SCYLLA.get() {
        return std::sync::Arc::new(scylla_store_for(data_dir).await);
    }
    let options = tidings::store::sqlite::SqliteOptions::new(data_dir.join("tidings.db"));
    std::sync::Arc::new(tidings::store::sqlite::SqliteStore::open(options).expect("the database opens"))
}

/// Keyspaces a test used and emptied (every table truncated; the schema and its version kept), for
/// the next test of this process: creating a keyspace's forty-odd tables takes the CQL node some
/// 6 s, one at a time whichever test asks, and was most of the ScyllaDB tests' time.
static CLEAN_KEYSPACES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The keyspace of each data directory in use: servers started again on a directory find theirs.
static KEYSPACE_OF: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, String>>> =
    std::sync::LazyLock::new(Default::default);

fn keyspace_for(data_dir: &std::path::Path) -> String {
    let mut assigned = KEYSPACE_OF.lock().unwrap();
    if let Some(keyspace) = assigned.get(data_dir) {
        return keyspace.clone();
    }
    let keyspace = pooled_keyspace();
    assigned.insert(data_dir.to_path_buf(), keyspace.clone());
    keyspace
}

/// A keyspace for a test of its own: an emptied one when there is one (the store finds its schema
/// migrated), else a new name. Give it back with `recycle_keyspace`.
pub fn pooled_keyspace() -> String {
    CLEAN_KEYSPACES.lock().unwrap().pop().unwrap_or_else(|| format!("tidings_it_{:016x}", rand::random::<u64>()))
}

/// Empties a keyspace a test's servers used (they have stopped) and keeps it for the next test;
/// drops it if it cannot be emptied.
pub fn recycle_keyspace(nodes: Vec<String>, keyspace: String) {
    KEYSPACE_OF.lock().unwrap().retain(|_, k| *k != keyspace);
    let emptied = std::thread::spawn({
        let keyspace = keyspace.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                use tidings::store::scylla::ScyllaStore;
                match ScyllaStore::truncate_keyspace_on(nodes.clone(), &keyspace).await {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("could not empty keyspace {keyspace} ({e}); dropping it");
                        let _ = ScyllaStore::drop_keyspace_on(nodes, &keyspace).await;
                        false
                    }
                }
            })
        }
    })
    .join()
    .unwrap_or(false);
    if emptied {
        CLEAN_KEYSPACES.lock().unwrap().push(keyspace);
    }
}

/// The configuration tests start from: a free port, a private data directory, cheap hashing.
pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.workers = 2;
    config.server.shutdown_timeout_secs = 5;
    config.store.data_dir = data_dir.to_path_buf();
    config.store.synchronous = Synchronous::Normal;
    config.auth.argon2_memory_kib = 1024;
    config.auth.argon2_iterations = 1;
    config.auth.attempts_per_minute_per_ip = 0;
    config.auth.attempts_per_minute_per_username = 0;
    config.limits.requests_per_second = 10_000;
    config.limits.request_burst = 10_000;
    config.limits.user_requests_per_second = 10_000;
    config.limits.user_request_burst = 10_000;
    if let Some((nodes, keyspace)) = scylla_keyspace(data_dir) {
        config.store.backend = tidings::config::StoreBackend::Scylla;
        config.store.scylla_nodes = nodes;
        config.store.scylla_keyspace = keyspace;
        config.store.scylla_replication_factor = 1;
        if FANOUT_AFTER_ACK_FROM.get() > 0 {
            config.store.scylla_fanout_after_ack_from = FANOUT_AFTER_ACK_FROM.get();
        }
    }
    config
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(Clock::system(), adjust)
    }

    /// A server whose push timing (grace windows, retries, leases) follows `clock`.
    pub fn start_on(clock: Clock, adjust: impl FnOnce(&mut Config)) -> Self {
        // `RUST_LOG=tidings=debug cargo test ...` shows the servers' logs.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(data_dir.path());
        adjust(&mut config);
        if config.store.data_dir != data_dir.path()
            && let Some((_, keyspace)) = scylla_keyspace(&config.store.data_dir)
        {
            // The test's own data directory, to start again on: the keyspace named after it.
            config.store.scylla_keyspace = keyspace;
        }
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_clock = clock.clone();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let running = tidings::server::start_with_clock(config, server_clock).await.expect("server starts");
                addr_tx.send((running.local_addr, running.push_worker.clone())).expect("test is waiting");
                running
                    .run_until(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("server runs");
            });
        });
        // A first start on ScyllaDB creates its keyspace (some thirty tables): seconds, more on a
        // busy machine.
        let (addr, push_worker) = addr_rx.recv_timeout(START_WAIT).expect("server started");
        let push_progress = push_worker.progress();
        Self { addr, data_dir, clock, push_progress, push_worker, stop: Some(stop), thread: Some(thread) }
    }

    /// Moves the server's manual clock by `by`, then waits until the push worker has looked at the
    /// queue at the new time and sent everything that was due by then: afterwards, what was not
    /// pushed was not due (or not needed), with no pause to hope it long enough.
    pub async fn advance_and_settle(&self, by: Duration) {
        self.clock.advance(by);
        let now = self.clock.now_ms();
        self.push_worker.nudge();
        let mut progress = self.push_progress.clone();
        let settled = progress.wait_for(|p| p.claimed_at_ms >= now && p.in_flight == 0);
        tokio::time::timeout(WAIT, settled).await.expect("the push worker settled").expect("the worker runs");
    }

    pub fn http(&self) -> Http {
        Http::new(format!("http://{}", self.addr))
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The same account and device on this server (one that shares the first one's data).
    pub fn user_from(&self, user: &TestUser) -> TestUser {
        TestUser { name: user.name.clone(), auth: user.auth.clone(), ws_base: self.ws_base(), http: self.http() }
    }

    /// Signs up a user with one device.
    pub async fn user(&self, name: &str) -> TestUser {
        let auth = self.http().sign_up(name, PASSWORD, "phone").await.expect("sign up");
        TestUser { name: name.into(), auth, ws_base: self.ws_base(), http: self.http() }
    }

    /// Stops the server gracefully and waits for it.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub type RawSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct TestUser {
    pub name: String,
    pub auth: AuthResponse,
    pub ws_base: String,
    pub http: Http,
}

impl TestUser {
    pub fn id(&self) -> u64 {
        self.auth.user_id
    }

    /// A connection of this device, not yet synced.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.ws_base, &self.auth.access_token, Encoding::Protobuf).await.expect("connect")
    }

    /// A connection of this device, synced from `after_pos` and caught up.
    pub async fn connect_synced(&self, after_pos: u64) -> (Connection, Vec<wire::Event>) {
        let mut conn = self.connect().await;
        conn.sync(after_pos).await.expect("sync");
        let events = until_caught_up(&mut conn).await;
        (conn, events)
    }

    /// A bare WebSocket of this device, outside the client library: it reads (and so answers
    /// pings) only when the test polls it, which is how tests play a client that stops reading.
    pub async fn raw_socket(&self) -> RawSocket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}/v1/ws", self.ws_base).into_client_request().expect("ws url");
        let bearer = format!("Bearer {}", self.auth.access_token).parse().expect("header value");
        request.headers_mut().insert("authorization", bearer);
        tokio_tungstenite::connect_async(request).await.expect("raw connect").0
    }

    /// Logs in again: another device of the same user.
    pub async fn another_device(&self, device_name: &str) -> TestUser {
        let auth = self.http.log_in(&self.name, PASSWORD, device_name).await.expect("log in");
        TestUser { name: self.name.clone(), auth, ws_base: self.ws_base.clone(), http: self.http.clone() }
    }
}

/// Collects events until the CAUGHT_UP notice; panics on anything unexpected.
pub async fn until_caught_up(conn: &mut Connection) -> Vec<wire::Event> {
    let mut events = Vec::new();
    loop {
        match conn.next_within(WAIT).await.expect("caught up in time") {
            Incoming::Event(e) => events.push(e),
            Incoming::Notice(n) if n.kind == wire::NoticeKind::CaughtUp as i32 => return events,
            Incoming::Ephemeral(_) => {}
            other => panic!("unexpected while catching up: {other:?}"),
        }
    }
}

/// The next stream event, skipping ephemeral ones.
pub async fn next_event(conn: &mut Connection) -> wire::Event {
    loop {
        match conn.next_within(WAIT).await.expect("an event in time") {
            Incoming::Event(e) => return e,
            Incoming::Ephemeral(_) => {}
            Incoming::Notice(n) if n.kind == wire::NoticeKind::CaughtUp as i32 => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// The room entry an event carries.
pub fn entry(event: &wire::Event) -> &wire::RoomEntry {
    match &event.kind {
        Some(wire::event::Kind::Entry(e)) => e,
        other => panic!("expected a room entry, got {other:?}"),
    }
}

/// The text of a message event (panics on anything else).
pub fn text(event: &wire::Event) -> &str {
    match &entry(event).body {
        Some(wire::room_entry::Body::Text(t)) => &t.text,
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Checks positions increase by one from `first`.
pub fn assert_contiguous(events: &[wire::Event], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.pos,
            first + i as u64,
            "positions must be contiguous: {:?}",
            events.iter().map(|e| e.pos).collect::<Vec<_>>()
        );
    }
}

pub fn code_of(error: &tidings_client::ClientError) -> wire::ErrorCode {
    error.code().unwrap_or_else(|| panic!("expected a typed error, got {error}"))
}

/// The texts of the messages among `entries`, in order.
pub fn message_texts(entries: &[wire::RoomEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(wire::room_entry::Body::Text(t)) => Some(t.text.clone()),
            _ => None,
        })
        .collect()
}

/// Two users, ana and bob, each with a synced connection, in a direct room that ana opened; bob's
/// connection has already taken the room's creation event.
pub struct DirectPair {
    pub bob: TestUser,
    pub a: Connection,
    pub b: Connection,
    pub room: u64,
}

pub async fn direct_pair(server: &TestServer) -> DirectPair {
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (a, _) = ana.connect_synced(0).await;
    let (mut b, _) = bob.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.expect("create direct").room_id;
    next_event(&mut b).await;
    DirectPair { bob, a, b, room }
}

/// Runs `npm ARGS` in `dir` with the server binary (`TIDINGS_BIN`) and `envs`; panics with npm's
/// output when it fails (the TypeScript client's and the browser tests).
pub fn npm(dir: &std::path::Path, args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) {
    let output = std::process::Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("TIDINGS_BIN", env!("CARGO_BIN_EXE_tidings"))
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false")
        .envs(envs.iter().copied())
        .output()
        .expect("npm runs");
    assert!(
        output.status.success(),
        "npm {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

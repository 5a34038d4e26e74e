//! Start-up and the ordered graceful shutdown.
//!
//! `start(config)` opens the store, binds the listener and starts the HTTP workers; it returns a
//! `Running` server whose `run_until(signal)` serves until the signal, then shuts down in order:
//! readiness off, the cluster left, connections told GOING_AWAY and closed, HTTP workers stopped,
//! then the background parts in reverse of their start (`lifecycle`): push sends in flight
//! finished, the cluster's tasks stopped, the store flushed and closed. Tests start servers the
//! same way, on `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use tokio::sync::{Semaphore, watch};

use crate::actors::{Hub, Peers, fanout_sweep, feed_sweep};
use crate::auth::AuthService;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::{Config, StoreBackend};
use crate::lifecycle::{Background, StoreService};
use crate::media::{MediaService, media_collector};
use crate::push::{Presence, PushWorker, gate_for, providers_from};
use crate::secrets::{SecretSource, private_dir, private_files};
use crate::store::Store;
use crate::store::scylla::{ScyllaOptions, ScyllaStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::transport::connection_caps::ConnectionCaps;
use crate::transport::http::{AppState, operations_routes, routes};
use crate::transport::internal::internal_routes;
use crate::transport::media_http::routes as media_routes;

pub struct Running {
    pub local_addr: SocketAddr,
    pub hub: Arc<Hub>,
    /// This node's membership of a cluster, when in one.
    cluster: Option<Arc<Cluster>>,
    handle: actix_web::dev::ServerHandle,
    /// The cluster's internal listener, when in a cluster.
    internal: Option<actix_web::dev::ServerHandle>,
    /// The operations listener (`server.metrics_listen`), when set.
    operations: Option<actix_web::dev::ServerHandle>,
    /// Where the operations listener is bound.
    pub operations_addr: Option<SocketAddr>,
    server_task: ServerTask,
    shutdown: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    connection_slots: Arc<Semaphore>,
    /// The store, the cluster's tasks and the push worker, stopped in reverse of their start.
    background: Background,
    pub push_worker: Arc<PushWorker>,
    config: Config,
}

/// Opens the configured store.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let dir = &config.store.data_dir;
    private_dir(dir).with_context(|| format!("creating {} (mode 0700)", dir.display()))?;
    match config.store.backend {
        StoreBackend::Sqlite => open_sqlite(config),
        StoreBackend::Scylla => open_scylla(config).await,
    }
}

async fn open_scylla(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let c = &config.store;
    let nodes: Vec<String> =
        c.scylla_nodes.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
    anyhow::ensure!(!nodes.is_empty(), "store.scylla_nodes is empty: name at least one host:port");
    let mut options = ScyllaOptions::new(nodes, &c.scylla_keyspace);
    options.replication_factor = c.scylla_replication_factor.max(1);
    options.consistency = scylla_consistency(&c.scylla_consistency)?;
    options.fanout_after_ack_from = c.scylla_fanout_after_ack_from.max(1);
    let store = ScyllaStore::open(options)
        .await
        .with_context(|| format!("opening keyspace {} on {}", c.scylla_keyspace, c.scylla_nodes))?;
    tracing::info!(nodes = %c.scylla_nodes, keyspace = %c.scylla_keyspace, "store: ScyllaDB");
    Ok(Arc::new(store))
}

fn scylla_consistency(name: &str) -> anyhow::Result<scylla::statement::Consistency> {
    use scylla::statement::Consistency;
    Ok(match name.to_ascii_lowercase().as_str() {
        "quorum" => Consistency::Quorum,
        "local_quorum" => Consistency::LocalQuorum,
        "one" => Consistency::One,
        "all" => Consistency::All,
        other => anyhow::bail!("store.scylla_consistency = {other:?}: one of quorum, local_quorum, one, all"),
    })
}

fn open_sqlite(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let mut options = SqliteOptions::new(config.store.database_path());
    options.synchronous = config.store.synchronous;
    options.max_batch = config.store.max_batch.max(1);
    options.busy_timeout = Duration::from_millis(config.store.busy_timeout_ms);
    options.max_readers = config.store.sqlite_readers.max(1);
    let store =
        SqliteStore::open(options).with_context(|| format!("opening {}", config.store.database_path().display()))?;
    // SQLite gives the WAL and shared-memory files the database file's mode.
    let database = config.store.database_path();
    let companions = ["-wal", "-shm"].map(|suffix| {
        let mut name = database.clone().into_os_string();
        name.push(suffix);
        std::path::PathBuf::from(name)
    });
    private_files(std::iter::once(database.as_path()).chain(companions.iter().map(|p| p.as_path())))
        .with_context(|| format!("making {} private (mode 0600)", database.display()))?;
    Ok(Arc::new(store))
}

/// The access-token secret: configured, from a file, or generated once beside the database.
fn token_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    crate::secrets::load(SecretSource {
        setting: "auth.token_secret",
        value: &config.auth.token_secret,
        file: &config.auth.token_secret_file,
        generated: config.store.data_dir.join("token-secret"),
    })
}

/// The cluster's node-to-node key, likewise.
fn node_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    crate::secrets::load(SecretSource {
        setting: "cluster.node_key",
        value: &config.cluster.node_key,
        file: &config.cluster.node_key_file,
        generated: config.store.data_dir.join("node-key"),
    })
}

/// Everything a start would refuse in the configuration, checked without starting: addresses,
/// secrets (their files read, their lengths), the store's settings, push providers' key files,
/// app-token and server-API settings. Touches no network and no data. Returns what it checked, for
/// people; the first problem is the error.
pub fn check_config(config: &Config) -> anyhow::Result<Vec<String>> {
    use std::net::ToSocketAddrs;
    let mut checked = Vec::new();
    let address = |setting: &str, value: &str| -> anyhow::Result<()> {
        value
            .to_socket_addrs()
            .with_context(|| format!("{setting} = {value:?} is not a host:port"))?
            .next()
            .with_context(|| format!("{setting} = {value:?} names no address"))?;
        Ok(())
    };
    address("server.listen", &config.server.listen)?;
    if !config.server.metrics_listen.is_empty() {
        address("server.metrics_listen", &config.server.metrics_listen)?;
    }
    checked.push(format!("listens on {}", config.server.listen));
    tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("log.level = {:?} is not a log filter", config.log.level))?;
    match config.store.backend {
        StoreBackend::Sqlite => checked.push(format!("store: SQLite at {}", config.store.database_path().display())),
        StoreBackend::Scylla => {
            scylla_consistency(&config.store.scylla_consistency)?;
            anyhow::ensure!(
                config.store.scylla_nodes.split(',').any(|n| !n.trim().is_empty()),
                "store.scylla_nodes is empty: name at least one host:port"
            );
            checked.push(format!(
                "store: ScyllaDB {} keyspace {}",
                config.store.scylla_nodes, config.store.scylla_keyspace
            ));
        }
    }
    let a = &config.auth;
    match crate::secrets::configured("auth.token_secret", &a.token_secret, &a.token_secret_file)? {
        Some(_) => checked.push("auth.token_secret: set".into()),
        None => checked.push("auth.token_secret: generated into the data directory on first start".into()),
    }
    if !config.cluster.redis_url.is_empty() {
        let c = &config.cluster;
        crate::secrets::configured("cluster.node_key", &c.node_key, &c.node_key_file)?;
        if !c.internal_listen.is_empty() {
            address("cluster.internal_listen", &c.internal_listen)?;
        }
        checked.push(format!("cluster: Redis at {}", c.redis_url));
    }
    let providers = providers_from(config)?;
    checked.push(format!(
        "push: APNs {}, FCM {}",
        if providers.apns.is_some() { "on" } else { "off" },
        if providers.fcm.is_some() { "on" } else { "off" }
    ));
    if crate::auth::app_identity::AppIdentity::from_config(&config.app_tokens)?.is_some() {
        checked.push("app tokens: accepted".into());
    }
    if !config.webhooks.url.is_empty() {
        let w = &config.webhooks;
        crate::secrets::configured("webhooks.secret", &w.secret, &w.secret_file)?
            .context("webhooks.url is set but webhooks.secret is not")?;
        checked.push(format!("webhooks: to {}", w.url));
    }
    if crate::auth::Admin::from_config(&config.admin)?.is_some() {
        checked.push(format!("admin dashboard: on, for {}", config.admin.username));
    }
    if crate::auth::ServerApiKeys::from_config(&config.server_api.keys)?.is_some() {
        checked.push(format!("server API: on, {} key(s)", config.server_api.keys.len()));
    }
    Ok(checked)
}

/// Raises the soft open-files limit to the hard limit: every connection is a file.
fn raise_open_files_limit() {
    #[cfg(unix)]
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < hard
        && rlimit::Resource::NOFILE.set(hard, hard).is_err()
    {
        tracing::warn!(soft, hard, "could not raise the open-files limit");
    }
}

/// Starts serving. Must run inside an actix system (`actix_web::rt::System`).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_clock(config, Clock::system()).await
}

/// Starts serving with push timing on `clock` (tests drive a manual one).
pub async fn start_with_clock(config: Config, clock: Clock) -> anyhow::Result<Running> {
    raise_open_files_limit();
    // The one TLS backend of every HTTP client (push providers): ring, never aws-lc or openssl.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = open_store(&config).await?;
    let mut background = Background::default();
    background.started(Arc::new(StoreService(store.clone())));
    let secret = token_secret(&config)?;
    let providers = providers_from(&config)?;
    let gate = Arc::new(gate_for(store.clone(), &providers, &config, clock));
    let listener = std::net::TcpListener::bind(&config.server.listen)
        .with_context(|| format!("binding {}", config.server.listen))?;
    let local_addr = listener.local_addr()?;
    let (cluster, internal_listener) = match config.cluster.redis_url.is_empty() {
        true => (None, None),
        false => {
            let internal = internal_listener(&config, local_addr)?;
            let internal_addr = internal.local_addr()?.to_string();
            (Some(Cluster::join(&config.cluster, &internal_addr, &node_key(&config)?).await?), Some(internal))
        }
    };
    let peers = cluster.clone().map(|c| c as Arc<dyn Peers>);
    let (webhooks, webhook_worker) = crate::webhooks::start(&config.webhooks, &config.store.data_dir)?;
    if let Some(worker) = webhook_worker {
        background.started(worker);
    }
    let hub = Hub::new(store.clone(), config.limits.clone(), gate.clone(), peers, &config.feed, webhooks);
    let internal = match internal_listener {
        Some(listener) => Some(serve_internal(listener, hub.clone(), cluster.clone().expect("in a cluster"), &config)?),
        None => None,
    };
    if let Some(cluster) = &cluster {
        cluster.start(hub.clone());
        background.started(cluster.clone());
    }
    // Fan-outs a crash cut short are finished before anyone is served: a client that syncs now
    // finds every acknowledged message in its stream.
    crate::actors::sweep_rooms_behind(&hub).await;
    background.started(Arc::new(fanout_sweep(hub.clone())));
    background.started(Arc::new(feed_sweep(hub.clone())));
    background.started(Arc::new(crate::services::follows::follow_settler(store.clone())));
    let online = online_anywhere(hub.clone());
    let push_worker = Arc::new(PushWorker::start(store.clone(), gate, online, providers, config.push.clone()));
    background.started(push_worker.clone());
    let media = Arc::new(
        MediaService::new(store.clone(), config.media.clone(), &config.store.data_dir, &secret)
            .context("preparing the media spool directory")?,
    );
    let collector = media_collector(
        store.clone(),
        config.media.orphan_ttl_hours,
        Duration::from_secs(config.media.collect_every_secs.max(1)),
    );
    background.started(Arc::new(collector));
    let app_identity = crate::auth::app_identity::AppIdentity::from_config(&config.app_tokens)?;
    let auth = Arc::new(AuthService::new(store, config.auth.clone(), &secret).with_app_identity(app_identity));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let connection_slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let state = web::Data::new(AppState {
        hub: hub.clone(),
        auth,
        media,
        connection_slots: connection_slots.clone(),
        connection_caps: ConnectionCaps::new(
            config.limits.max_connections_per_user,
            config.limits.max_connections_per_address,
        ),
        server_api: crate::auth::ServerApiKeys::from_config(&config.server_api.keys)?,
        admin: crate::auth::Admin::from_config(&config.admin)?,
        ready: ready.clone(),
        body_read_timeout: Duration::from_secs(config.server.body_read_timeout_secs.max(1)),
        shutdown: shutdown_rx,
    });

    let operations = match config.server.metrics_listen.as_str() {
        "" => None,
        addr => Some(serve_operations(addr, state.clone(), &config)?),
    };
    let (handle, server_task) = serve_public(listener, state, operations.is_none(), &config)?;
    ready.store(true, Ordering::Release);
    tracing::info!(addr = %local_addr, data_dir = %config.store.data_dir.display(), "tidings is listening");
    Ok(Running {
        local_addr,
        hub,
        cluster,
        handle,
        internal,
        operations_addr: operations.as_ref().map(|(_, addr)| *addr),
        operations: operations.map(|(handle, _)| handle),
        server_task,
        shutdown,
        ready,
        connection_slots,
        background,
        push_worker,
        config,
    })
}

/// Whether a user has a live session on this node or, in a cluster, on any other (push goes only
/// to users connected nowhere).
fn online_anywhere(hub: Arc<Hub>) -> Presence {
    Arc::new(move |user| {
        let hub = hub.clone();
        Box::pin(async move { hub.is_online(user).await })
    })
}

type ServerTask = actix_web::rt::task::JoinHandle<std::io::Result<()>>;

/// Serves the public routes (WebSocket, auth, and the operations endpoints unless they have their
/// own listener).
fn serve_public(
    listener: std::net::TcpListener,
    state: web::Data<AppState>,
    with_metrics: bool,
    config: &Config,
) -> anyhow::Result<(actix_web::dev::ServerHandle, ServerTask)> {
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let demo = config.server.demo;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(|cfg| routes(cfg, with_metrics))
            .configure(media_routes)
            .configure(crate::transport::server_api::routes)
            .configure(crate::admin::routes)
            .configure(|cfg| {
                if demo {
                    crate::transport::demo::routes(cfg);
                }
            })
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(config.server.shutdown_timeout_secs)
    .max_connections(config.limits.max_connections + 1024)
    // Chat frames are small and latency-bound: never hold one back waiting for an ACK (Nagle +
    // delayed ACK added ~40 ms to p90 delivery latency before this).
    .tcp_nodelay(true)
    .listen(listener)?
    .run();
    let handle = server.handle();
    Ok((handle, actix_web::rt::spawn(server)))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on their own listener; its handle and address.
fn serve_operations(
    addr: &str,
    state: web::Data<AppState>,
    config: &Config,
) -> anyhow::Result<(actix_web::dev::ServerHandle, SocketAddr)> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding server.metrics_listen {addr}"))?;
    let bound = listener.local_addr()?;
    let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(operations_routes))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(config.server.shutdown_timeout_secs)
        .listen(listener)?
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    tracing::info!(metrics_addr = %bound, "operations listener (/metrics, /healthz, /readyz)");
    Ok((handle, bound))
}

/// Binds `cluster.internal_listen`, or the public host on a free port.
fn internal_listener(config: &Config, public: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let addr = match config.cluster.internal_listen.as_str() {
        "" => SocketAddr::new(public.ip(), 0).to_string(),
        configured => configured.to_owned(),
    };
    std::net::TcpListener::bind(&addr).with_context(|| format!("binding cluster.internal_listen {addr}"))
}

/// Serves the node-to-node endpoints on their own listener.
fn serve_internal(
    listener: std::net::TcpListener,
    hub: Arc<Hub>,
    cluster: Arc<Cluster>,
    config: &Config,
) -> anyhow::Result<actix_web::dev::ServerHandle> {
    let addr = listener.local_addr()?;
    let (hub, cluster) = (web::Data::new(hub), web::Data::new(cluster));
    let server =
        HttpServer::new(move || App::new().app_data(hub.clone()).app_data(cluster.clone()).configure(internal_routes))
            .workers(std::thread::available_parallelism().map_or(1, |n| n.get()))
            .disable_signals()
            .shutdown_timeout(config.server.shutdown_timeout_secs)
            .tcp_nodelay(true)
            .listen(listener)?
            .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    tracing::info!(internal_addr = %addr, "cluster internal listener (node-to-node only)");
    Ok(handle)
}

impl Running {
    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {}
            ended = &mut self.server_task => {
                tracing::error!(?ended, "HTTP server stopped by itself");
            }
        }
        self.shutdown().await;
        Ok(())
    }

    async fn shutdown(mut self) {
        let started = Instant::now();
        tracing::info!("shutting down: readiness off");
        self.ready.store(false, Ordering::Release);
        // Rooms move to the other nodes now, before this node's clients reconnect to them.
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        let _ = self.shutdown.send(true);
        let deadline = Duration::from_secs(self.config.server.shutdown_timeout_secs);
        let all = self.config.limits.max_connections;
        while self.connection_slots.available_permits() < all && started.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = all - self.connection_slots.available_permits();
        tracing::info!(connections_left = left, "connections told to go away");
        self.handle.stop(true).await;
        // Last: other nodes may forward requests for rooms this node still owned while draining.
        if let Some(internal) = &self.internal {
            internal.stop(true).await;
        }
        if let Some(operations) = &self.operations {
            operations.stop(true).await;
        }
        self.background.stop_all().await;
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "store flushed; bye");
    }
}

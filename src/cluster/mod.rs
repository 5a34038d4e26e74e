//! Several nodes bridged by Redis: membership, presence, room ownership and the event bridge.
//!
//! - `membership` (here): each node renews `{prefix}:nodes` (a sorted set scored by expiry) every
//!   heartbeat and reads the live set back; that view decides room ownership.
//! - `ownership.rs`: rendezvous hashing of rooms over the live nodes.
//! - `bridge.rs`: one pub/sub connection per node, one channel per locally connected user; events
//!   cross it encoded once, with each recipient's position.
//! - `codec.rs`: what nodes send each other (bridge envelopes, forwarded requests), in domain terms.
//! - `forward.rs`: a request about a room owned by another node is sent to that node.
//! - Presence: `{prefix}:node-users:{node}` holds the users with a session on each node, so any
//!   node can tell whether a user is connected anywhere (push goes only to users connected nowhere).
//!
//! Redis is an accelerator, never the truth: the store is shared, every event is durable before it
//! is announced, and whatever the bridge drops is read from the store. With Redis down, each node
//! keeps serving its own connections and its last membership view.

mod bridge;
pub mod codec;
mod commands;
mod forward;
mod keys;
mod ownership;
mod resp;
mod sharded;
pub mod signing;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use bridge::Interest;
use codec::{Envelope, ForwardedRequest};
use commands::Commands;
pub use forward::FORWARD_PATH;
use keys::Keys;
pub use ownership::owner;
use signing::NodeSigner;

use crate::actors::{ActorRequest, Ephemeral, Forwarding, Hub, KickReason, Peers};
use crate::config::ClusterConfig;
use crate::domain::{ActorKey, DeviceId, StreamEvent, UserId, now_ms};
use crate::lifecycle::Stoppable;
use crate::metrics::METRICS;
use crate::store::Positions;

/// Batches of bridge messages (one per event) waiting for Redis; beyond it new ones are dropped
/// and counted.
const PUBLISH_QUEUE: usize = 8192;
/// Batches sent in one pipeline when several are waiting.
const PUBLISH_BATCHES_PER_PIPELINE: usize = 64;

/// The bridge messages of one event: (channel, sealed payload) per recipient.
type Batch = Vec<(String, Vec<u8>)>;

/// A live node: its id and where other nodes reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub addr: String,
}

pub struct Cluster {
    pub node_id: String,
    /// This cluster itself, for the tasks its `Peers` methods start.
    me: Weak<Cluster>,
    advertise: String,
    keys: Keys,
    client: Option<redis::Client>,
    redis: Commands,
    config: ClusterConfig,
    /// The live nodes as of the last heartbeat (this one included), sorted by id.
    view: RwLock<Arc<Vec<Node>>>,
    redis_up: AtomicBool,
    bridge_up: AtomicBool,
    interest: mpsc::UnboundedSender<Interest>,
    interest_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Interest>>>,
    /// Events waiting to be published (`PUBLISH_QUEUE` batches at most), and the task's end of it
    /// until `start` runs it.
    outbox: mpsc::Sender<Batch>,
    outbox_rx: std::sync::Mutex<Option<mpsc::Receiver<Batch>>>,
    /// The membership heartbeat, stopped by `leave` before it removes this node: a beat after
    /// that would put a draining node back into the membership.
    heartbeat_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The bridge and the publisher, stopped when the node stops.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Signs and checks what nodes send each other (forwarded requests, bridge messages).
    signer: NodeSigner,
    /// From the Redis URL, for the sharded subscriber's own connections.
    credentials: resp::Credentials,
    transport: resp::Transport,
    http: reqwest::Client,
}

/// How to reach Redis, from `cluster.redis_url` (one URL, or a Redis Cluster's seed list) and
/// `cluster.redis_ca_file`.
struct RedisSettings {
    urls: Vec<String>,
    credentials: resp::Credentials,
    ca: Option<Vec<u8>>,
    transport: resp::Transport,
}

impl RedisSettings {
    fn from(config: &ClusterConfig) -> anyhow::Result<Self> {
        let urls: Vec<String> =
            config.redis_url.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        anyhow::ensure!(!urls.is_empty(), "cluster.redis_url names no Redis");
        let credentials = {
            use redis::IntoConnectionInfo;
            let info =
                urls[0].as_str().into_connection_info().map_err(|e| anyhow::anyhow!("cluster.redis_url: {e}"))?;
            let settings = info.redis_settings();
            resp::Credentials {
                username: settings.username().map(str::to_owned),
                password: settings.password().map(str::to_owned),
            }
        };
        let ca = match config.redis_ca_file.as_os_str().is_empty() {
            true => None,
            false => Some(std::fs::read(&config.redis_ca_file).map_err(|e| {
                anyhow::anyhow!("reading cluster.redis_ca_file {}: {e}", config.redis_ca_file.display())
            })?),
        };
        let tls = urls.iter().any(|u| u.starts_with("rediss://"));
        anyhow::ensure!(
            urls.iter().all(|u| u.starts_with("rediss://") == tls),
            "cluster.redis_url mixes redis:// and rediss://"
        );
        let transport = if tls { resp::Transport::tls(ca.as_deref())? } else { resp::Transport::Plain };
        Ok(Self { urls, credentials, ca, transport })
    }
}

impl Cluster {
    /// Connects to Redis and joins the cluster (the first heartbeat runs before this returns, so
    /// the node is in the view when it starts serving).
    pub async fn join(config: &ClusterConfig, listen: &str, node_key: &[u8]) -> anyhow::Result<Arc<Self>> {
        let RedisSettings { urls, credentials, ca, transport } = RedisSettings::from(config)?;
        let redis = Commands::connect(&urls, config.redis_cluster, ca.as_deref()).await?;
        // The single-Redis bridge subscribes through redis-rs; the sharded one speaks RESP itself.
        let client = match config.redis_cluster {
            true => None,
            false => Some(commands::client(&urls[0], ca.as_deref())?),
        };
        let node_id = if config.node_id.is_empty() {
            format!("node-{:08x}", rand::random::<u32>())
        } else {
            config.node_id.clone()
        };
        let advertise = if config.advertise.is_empty() { listen.to_owned() } else { config.advertise.clone() };
        if advertise.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified()) {
            tracing::warn!(%advertise, "other nodes cannot reach an unspecified address: set cluster.advertise");
        }
        let (interest, interest_rx) = mpsc::unbounded_channel();
        let (outbox, outbox_rx) = mpsc::channel(PUBLISH_QUEUE);
        // A dead owner refuses connections at once; a hung one costs its clients at most this.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .build()?;
        let cluster = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            node_id,
            advertise,
            keys: Keys::new(&config.key_prefix),
            client,
            redis,
            config: config.clone(),
            view: RwLock::new(Arc::new(Vec::new())),
            redis_up: AtomicBool::new(false),
            bridge_up: AtomicBool::new(false),
            interest,
            interest_rx: std::sync::Mutex::new(Some(interest_rx)),
            heartbeat_task: std::sync::Mutex::new(None),
            tasks: std::sync::Mutex::new(Vec::new()),
            outbox,
            outbox_rx: std::sync::Mutex::new(Some(outbox_rx)),
            signer: NodeSigner::new(node_key),
            credentials,
            transport,
            http,
        });
        // A node that restarts under the same id starts with no sessions.
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(cluster.keys.node_users(&cluster.node_id))
            .query_async(&mut cluster.redis.clone())
            .await;
        cluster.heartbeat().await?;
        tracing::info!(node = %cluster.node_id, advertise = %cluster.advertise, nodes = cluster.view().len(), "joined the cluster");
        Ok(cluster)
    }

    /// Starts the heartbeat, the bridge and the publisher (stopped by `Stoppable::stop`).
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>) {
        let mut tasks = Vec::new();
        let interest = self.interest_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(interest) = interest {
            tasks.push(match self.redis.is_cluster() {
                true => tokio::spawn(sharded::run(self.clone(), hub.clone(), interest)),
                false => tokio::spawn(bridge::run(self.clone(), hub.clone(), interest)),
            });
        }
        if let Some(queue) = self.outbox_rx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tasks.push(tokio::spawn(self.clone().run_publisher(queue)));
        }
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend(tasks);
        let cluster = self.clone();
        let heartbeat = tokio::spawn(async move {
            let every = Duration::from_millis(cluster.config.heartbeat_ms.max(50));
            loop {
                tokio::time::sleep(every).await;
                let before = cluster.view();
                let beat = cluster.heartbeat().await;
                if !Arc::ptr_eq(&before, &cluster.view()) {
                    let released = hub.registry.release(|key| cluster.remote_owner(key).is_none());
                    if released > 0 {
                        tracing::info!(actors = released, "released actors whose keys other nodes now own");
                    }
                }
                if let Err(e) = beat
                    && cluster.redis_up.swap(false, Ordering::AcqRel)
                {
                    tracing::warn!(error = %e, "cluster: Redis unreachable; serving local connections only");
                }
            }
        });
        *self.heartbeat_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(heartbeat);
    }

    /// Renews this node's membership and reads the live nodes back.
    async fn heartbeat(&self) -> anyhow::Result<()> {
        let now = now_ms();
        let mut redis = self.redis.clone();
        let (ids, addrs): (Vec<String>, Vec<Option<String>>) = {
            let (_, _, _, ids): ((), (), (), Vec<String>) = redis::pipe()
                .cmd("ZADD")
                .arg(self.keys.nodes())
                .arg(now + self.config.node_ttl_ms as i64)
                .arg(&self.node_id)
                .cmd("HSET")
                .arg(self.keys.node_addrs())
                .arg(&self.node_id)
                .arg(&self.advertise)
                .cmd("ZREMRANGEBYSCORE")
                .arg(self.keys.nodes())
                .arg("-inf")
                .arg(now)
                .cmd("ZRANGEBYSCORE")
                .arg(self.keys.nodes())
                .arg(now)
                .arg("+inf")
                .query_async(&mut redis)
                .await?;
            let addrs: Vec<Option<String>> = if ids.is_empty() {
                Vec::new()
            } else {
                redis::cmd("HMGET").arg(self.keys.node_addrs()).arg(&ids).query_async(&mut redis).await?
            };
            (ids, addrs)
        };
        let mut nodes: Vec<Node> =
            ids.into_iter().zip(addrs).filter_map(|(id, addr)| addr.map(|addr| Node { id, addr })).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let previous = self.view();
        if *previous != nodes {
            let joined: Vec<&str> = nodes.iter().filter(|n| !previous.contains(n)).map(|n| n.id.as_str()).collect();
            let left: Vec<&str> = previous.iter().filter(|n| !nodes.contains(n)).map(|n| n.id.as_str()).collect();
            if !previous.is_empty() {
                tracing::info!(?joined, ?left, nodes = nodes.len(), "cluster membership changed; rooms move");
                METRICS.ownership_changes_total.inc();
            }
            *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(nodes);
        }
        if !self.redis_up.swap(true, Ordering::AcqRel) {
            tracing::info!("cluster: Redis reachable");
        }
        Ok(())
    }

    pub fn view(&self) -> Arc<Vec<Node>> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node that owns `key`, unless it is this one (or no view is known yet).
    pub fn remote_owner(&self, key: ActorKey) -> Option<Node> {
        let view = self.view();
        let owner = ownership::owner(key, view.iter().map(|n| n.id.as_str()))?;
        if owner == self.node_id { None } else { view.iter().find(|n| n.id == owner).cloned() }
    }

    fn set_bridge_up(&self, up: bool) {
        self.bridge_up.store(up, Ordering::Release);
    }

    fn presence_change(&self, command: &'static str, user: UserId) {
        let Some(cluster) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let key = cluster.keys.node_users(&cluster.node_id);
            let result: redis::RedisResult<()> =
                redis::cmd(command).arg(key).arg(user.0).query_async(&mut cluster.redis.clone()).await;
            if let Err(e) = result {
                tracing::debug!(%user, error = %e, "cluster: presence not recorded");
            }
        });
    }

    /// Records these users as present on this node (after Redis came back, possibly empty).
    async fn record_presence(&self, users: Vec<UserId>) {
        if users.is_empty() {
            return;
        }
        let key = self.keys.node_users(&self.node_id);
        let ids: Vec<u64> = users.iter().map(|u| u.0).collect();
        let result: redis::RedisResult<()> =
            redis::cmd("SADD").arg(key).arg(ids).query_async(&mut self.redis.clone()).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cluster: could not record presence again");
        }
    }

    fn publish(&self, messages: Vec<(String, Vec<u8>)>) {
        if messages.is_empty() {
            return;
        }
        // Sealed here, each for its own channel, so that none can be moved to another user's.
        let now = now_ms();
        let messages: Vec<(String, Vec<u8>)> = messages
            .into_iter()
            .map(|(channel, payload)| {
                let sealed = self.signer.seal_bridge(&channel, now, &payload);
                (channel, sealed)
            })
            .collect();
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outbox.try_send(messages) {
            // Redis is slower than the events: this one is not bridged (receivers catch up from
            // the store) rather than queued without bound.
            METRICS.bridge_publish_dropped_total.inc();
        }
    }

    /// Publishes what `publish` queued, in order: every batch waiting is sent in one pipeline.
    async fn run_publisher(self: Arc<Self>, mut queue: mpsc::Receiver<Batch>) {
        let mut batches = Vec::new();
        while queue.recv_many(&mut batches, PUBLISH_BATCHES_PER_PIPELINE).await > 0 {
            let messages: Vec<(String, Vec<u8>)> = batches.drain(..).flatten().collect();
            let count = messages.len() as u64;
            match self.send(&messages).await {
                Ok(()) => METRICS.bridge_published_total.add(count),
                Err(e) => {
                    METRICS.bridge_publish_failures_total.inc();
                    tracing::debug!(error = %e, "bridge: publish failed (receivers catch up from the store)");
                }
            }
        }
    }

    /// Publishes sealed messages, one per channel.
    async fn send(&self, messages: &[(String, Vec<u8>)]) -> redis::RedisResult<()> {
        if self.redis.is_cluster() {
            // Sharded: each channel goes to the master of its slot, one command each.
            let sends = messages.iter().map(|(channel, payload)| {
                let mut redis = self.redis.clone();
                async move {
                    redis::cmd("SPUBLISH").arg(channel).arg(payload.as_slice()).query_async::<()>(&mut redis).await
                }
            });
            futures_util::future::join_all(sends).await.into_iter().collect()
        } else {
            let mut pipe = redis::pipe();
            for (channel, payload) in messages {
                pipe.cmd("PUBLISH").arg(channel).arg(payload.as_slice()).ignore();
            }
            pipe.query_async::<()>(&mut self.redis.clone()).await
        }
    }

    /// Whether `user` has a live session on another live node.
    async fn present_elsewhere(&self, user: UserId) -> bool {
        let others: Vec<Node> = self.view().iter().filter(|n| n.id != self.node_id).cloned().collect();
        if others.is_empty() {
            return false;
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("SISMEMBER").arg(self.keys.node_users(&node.id)).arg(user.0);
        }
        let answers: redis::RedisResult<Vec<bool>> = pipe.query_async(&mut self.redis.clone()).await;
        answers.is_ok_and(|a| a.into_iter().any(|present| present))
    }

    /// The users in the other live nodes' presence sets, a page at a time (SSCAN: never one huge
    /// answer). A node Redis cannot answer for adds nobody: its users miss a live event, not data.
    async fn present_users_elsewhere(&self) -> Vec<UserId> {
        let mut users = Vec::new();
        for node in self.view().iter().filter(|n| n.id != self.node_id) {
            let key = self.keys.node_users(&node.id);
            let mut cursor: u64 = 0;
            loop {
                let page: redis::RedisResult<(u64, Vec<u64>)> = redis::cmd("SSCAN")
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(&mut self.redis.clone())
                    .await;
                match page {
                    Ok((next, ids)) => {
                        users.extend(ids.into_iter().map(UserId));
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    Err(e) => {
                        tracing::warn!(node = %node.id, error = %e, "cluster: could not list a node's users");
                        break;
                    }
                }
            }
        }
        users.sort_unstable();
        users.dedup();
        users
    }

    fn stop_heartbeat(&self) {
        if let Some(heartbeat) = self.heartbeat_task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            heartbeat.abort();
        }
    }

    /// Leaves the cluster at once (graceful drain): rooms move to the other nodes now rather than
    /// when the membership would expire, and the node stays out until it exits.
    pub async fn leave(&self) {
        // First the heartbeat, so that no beat re-adds this node. A beat already sent went on the
        // same connection as what follows, so Redis applies it before the removal.
        self.stop_heartbeat();
        let mut redis = self.redis.clone();
        let result: redis::RedisResult<()> = redis::pipe()
            .cmd("ZREM")
            .arg(self.keys.nodes())
            .arg(&self.node_id)
            .ignore()
            .cmd("DEL")
            .arg(self.keys.node_users(&self.node_id))
            .ignore()
            .query_async(&mut redis)
            .await;
        match result {
            Ok(()) => tracing::info!(node = %self.node_id, "left the cluster"),
            Err(e) => tracing::warn!(error = %e, "could not leave the cluster cleanly; membership expires by itself"),
        }
    }
}

impl Peers for Cluster {
    /// Sends a durable event to the recipients' sessions on other nodes: encoded once, then one
    /// message per recipient with its position (fire and forget: the stream makes a loss good).
    fn publish_event(&self, positions: &Positions, event: &StreamEvent) {
        if positions.is_empty() {
            return;
        }
        let encoded = codec::encode_event(event);
        let origin = serde_json::to_string(&self.node_id).expect("strings serialise");
        let messages: Vec<(String, Vec<u8>)> = positions
            .iter()
            .map(|&(user, pos)| (self.keys.user_channel(user), codec::event_envelope(&origin, pos, &encoded)))
            .collect();
        self.publish(messages);
    }

    fn publish_ephemeral(&self, users: &[UserId], event: &Ephemeral) {
        let payload = serde_json::to_vec(&Envelope::ephemeral(&self.node_id, event)).expect("envelopes serialise");
        self.publish(users.iter().map(|u| (self.keys.user_channel(*u), payload.clone())).collect());
    }

    /// Tells the nodes holding these devices' sockets to close them. Retried while Redis fails
    /// (for about a minute); beyond that, each node's device recheck closes them anyway.
    fn publish_kick(&self, user: UserId, devices: &[DeviceId], reason: KickReason) {
        let devices = devices.iter().map(|d| d.0).collect();
        let envelope = Envelope::Kick { origin: self.node_id.clone(), devices, reason };
        let channel = self.keys.user_channel(user);
        let payload = serde_json::to_vec(&envelope).expect("serialises");
        let Some(cluster) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(250);
            for attempt in 1.. {
                // Sealed anew each time: a seal is only good for so long.
                let sealed = vec![(channel.clone(), cluster.signer.seal_bridge(&channel, now_ms(), &payload))];
                match cluster.send(&sealed).await {
                    Ok(()) => return METRICS.bridge_published_total.inc(),
                    Err(e) if attempt < 8 => {
                        tracing::warn!(%user, attempt, error = %e, "bridge: logout not published yet; retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(e) => {
                        METRICS.bridge_publish_failures_total.inc();
                        return tracing::warn!(%user, error = %e, "bridge: logout not published; the device recheck will close its sockets");
                    }
                }
            }
        });
    }

    /// A user's first session on this node opened: subscribe to its channel, mark it present.
    fn user_arrived(&self, user: UserId) {
        let _ = self.interest.send(Interest::Subscribe(user));
        self.presence_change("SADD", user);
    }

    /// A user's last session on this node closed.
    fn user_left(&self, user: UserId) {
        let _ = self.interest.send(Interest::Unsubscribe(user));
        self.presence_change("SREM", user);
    }

    /// Whether `user` has a live session on another live node.
    fn online_elsewhere(&self, user: UserId) -> BoxFuture<'_, bool> {
        Box::pin(self.present_elsewhere(user))
    }

    fn online_users_elsewhere(&self) -> BoxFuture<'_, Vec<UserId>> {
        Box::pin(self.present_users_elsewhere())
    }

    fn forward(&self, user: UserId, device: DeviceId, request: &ActorRequest) -> Option<Forwarding<'_>> {
        let owner = self.remote_owner(request.key())?;
        let body = codec::encode(&ForwardedRequest { user, device, request: request.clone() });
        Some(Box::pin(async move { self.send_forwarded(&owner, body).await }))
    }

    fn owns(&self, key: ActorKey) -> bool {
        let view = self.view();
        ownership::owner(key, view.iter().map(|n| n.id.as_str())) == Some(self.node_id.as_str())
    }

    /// Redis answers and the bridge is subscribed (for `/readyz`).
    fn healthy(&self) -> bool {
        self.redis_up.load(Ordering::Acquire) && self.bridge_up.load(Ordering::Acquire)
    }

    fn live_nodes(&self) -> Vec<(String, String)> {
        let view = self.view.read().expect("the view's lock").clone();
        view.iter().map(|n| (n.id.clone(), n.addr.clone())).collect()
    }
}

#[async_trait::async_trait]
impl Stoppable for Cluster {
    fn name(&self) -> &'static str {
        "cluster"
    }

    /// Stops the heartbeat (if `leave` has not), the bridge and the publisher: what they would
    /// still carry, receivers read from the store.
    async fn stop(&self) {
        self.stop_heartbeat();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

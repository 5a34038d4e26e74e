//! The bridge on a Redis Cluster: sharded pub/sub (SSUBSCRIBE / SPUBLISH), so each user's channel
//! lives on the master that owns its slot and publishing spreads over the shards.
//!
//! One subscriber connection per master. Every subscription is its own SSUBSCRIBE on the master
//! that owns the channel's slot: channels of different slots in one command are refused with
//! CROSSSLOT, which is how a batched resubscription silently leaves rooms dead. After any
//! disconnect, or when Redis moves a slot we listen on (it then sends `sunsubscribe` on its own),
//! the shard map is read again and everything is resubscribed, one channel per command, and every
//! local user re-reads its stream from the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;

use super::Cluster;
use super::bridge::{Interest, LocalUsers, receive};
use super::resp::{self, slot};
use crate::actors::Hub;
use crate::domain::UserId;

/// Slot ranges and the address of the master serving each.
struct ShardMap(Vec<(u16, u16, String)>);

impl ShardMap {
    fn master_of(&self, channel: &str) -> Option<&str> {
        let slot = slot(channel.as_bytes());
        self.0.iter().find(|(start, end, _)| (*start..=*end).contains(&slot)).map(|(_, _, addr)| addr.as_str())
    }
}

enum Incoming {
    Message(Vec<u8>, Vec<u8>),
    /// Redis dropped a subscription by itself (a slot moved) or confirmed one of ours.
    Unsubscribed(Vec<u8>),
    /// A subscriber connection ended.
    Gone(String),
}

async fn shard_map(cluster: &Cluster) -> anyhow::Result<ShardMap> {
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut cluster.redis.clone()).await?;
    let Value::Array(ranges) = slots else { anyhow::bail!("CLUSTER SLOTS: unexpected {slots:?}") };
    let mut map = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else { continue };
        map.push((*start as u16, *end as u16, format!("{host}:{port}")));
    }
    anyhow::ensure!(!map.is_empty(), "CLUSTER SLOTS listed no masters");
    Ok(ShardMap(map))
}

pub(super) async fn run(cluster: Arc<Cluster>, hub: Arc<Hub>, mut interest: mpsc::UnboundedReceiver<Interest>) {
    let mut local = LocalUsers::default();
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if !first {
            if !local.pause(&mut interest, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        let was_first = std::mem::replace(&mut first, false);
        cluster.set_bridge_up(false);
        let map = match shard_map(&cluster).await {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(error = %e, "bridge: cannot read the Redis Cluster's shards");
                continue;
            }
        };
        let Some(mut subscribers) = Subscribers::connect(&cluster, &map).await else { continue };
        let mut resubscribed = true;
        for user in local.users() {
            if subscribers.subscribe(&map, &cluster, user, b"SSUBSCRIBE").await.is_err() {
                resubscribed = false;
                break;
            }
        }
        if !resubscribed {
            continue;
        }
        backoff = Duration::from_millis(100);
        cluster.set_bridge_up(true);
        if !was_first {
            local.resync(&cluster, &hub).await;
        }
        let listening = Listening { cluster: &cluster, hub: &hub, map: &map };
        if let Ended::Stopping = listening.serve(&mut subscribers, &mut local, &mut interest).await {
            return;
        }
    }
}

enum Ended {
    /// Reconnect and resubscribe everything.
    Reconnect,
    /// The node is stopping.
    Stopping,
}

/// The subscriber connections for one shard map, one per master. Their readers stop when this is
/// dropped (a reconnect, or the bridge stopping).
struct Subscribers {
    writers: HashMap<String, resp::Writer>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

impl Subscribers {
    /// Connects to (and authenticates with) every master; `None` if any fails.
    async fn connect(cluster: &Cluster, map: &ShardMap) -> Option<Self> {
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let mut subscribers = Subscribers { writers: HashMap::new(), incoming, readers: Vec::new() };
        let mut masters: Vec<&str> = map.0.iter().map(|(_, _, addr)| addr.as_str()).collect();
        masters.sort_unstable();
        masters.dedup();
        for addr in masters {
            let (mut reader, mut writer) = match resp::connect(addr, &cluster.transport).await {
                Ok(halves) => halves,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "bridge: cannot reach a Redis Cluster master");
                    return None;
                }
            };
            if let Err(e) = resp::authenticate(&mut reader, &mut writer, &cluster.credentials).await {
                tracing::warn!(%addr, error = %e, "bridge: a Redis Cluster master refused our credentials");
                return None;
            }
            subscribers.writers.insert(addr.to_owned(), writer);
            subscribers.readers.push(tokio::spawn(read_pushes(reader, addr.to_owned(), incoming_tx.clone())));
        }
        Some(subscribers)
    }

    /// One SSUBSCRIBE or SUNSUBSCRIBE, for one channel, on the master that owns its slot.
    async fn subscribe(
        &mut self,
        map: &ShardMap,
        cluster: &Cluster,
        user: UserId,
        command: &[u8],
    ) -> std::io::Result<()> {
        let channel = cluster.keys.user_channel(user);
        let Some(writer) = map.master_of(&channel).and_then(|addr| self.writers.get_mut(addr)) else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        resp::send(writer, &[command, channel.as_bytes()]).await
    }
}

/// Reads one master's pushes until its connection ends (then says so).
async fn read_pushes(mut reader: resp::Reader, addr: String, tx: mpsc::UnboundedSender<Incoming>) {
    loop {
        let reply = match resp::read(&mut reader).await {
            Ok(reply) => reply,
            Err(_) => {
                let _ = tx.send(Incoming::Gone(addr));
                return;
            }
        };
        let Some((kind, channel, payload)) = reply.pubsub() else { continue };
        let event = match kind {
            b"smessage" => match payload.and_then(|p| p.bytes()) {
                Some(payload) => Incoming::Message(channel.to_vec(), payload.to_vec()),
                None => continue,
            },
            b"sunsubscribe" => Incoming::Unsubscribed(channel.to_vec()),
            _ => continue,
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

/// The bridge while subscribed: interest changes and what the masters push.
struct Listening<'a> {
    cluster: &'a Cluster,
    hub: &'a Hub,
    map: &'a ShardMap,
}

impl Listening<'_> {
    async fn serve(
        &self,
        subscribers: &mut Subscribers,
        local: &mut LocalUsers,
        interest: &mut mpsc::UnboundedReceiver<Interest>,
    ) -> Ended {
        loop {
            tokio::select! {
                change = interest.recv() => {
                    let Some(change) = change else { return Ended::Stopping };
                    if let Some((user, on)) = local.apply(change) {
                        let command: &[u8] = if on { b"SSUBSCRIBE" } else { b"SUNSUBSCRIBE" };
                        if subscribers.subscribe(self.map, self.cluster, user, command).await.is_err() {
                            return Ended::Reconnect;
                        }
                    }
                }
                event = subscribers.incoming.recv() => match event {
                    Some(Incoming::Message(channel, payload)) => {
                        if let Ok(channel) = std::str::from_utf8(&channel) {
                            receive(self.cluster, self.hub, channel, &payload);
                        }
                    }
                    Some(Incoming::Unsubscribed(channel)) => {
                        let keys = &self.cluster.keys;
                        let user = std::str::from_utf8(&channel).ok().and_then(|c| keys.user_of_channel(c));
                        if user.is_some_and(|u| local.contains(u)) {
                            tracing::info!("bridge: Redis dropped a subscription (a slot moved); resubscribing");
                            return Ended::Reconnect;
                        }
                    }
                    Some(Incoming::Gone(addr)) => {
                        tracing::warn!(%addr, "bridge: a Redis Cluster subscriber connection ended; reconnecting");
                        return Ended::Reconnect;
                    }
                    None => return Ended::Reconnect,
                },
            }
        }
    }
}

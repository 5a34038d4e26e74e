//! The bridge: one Redis pub/sub connection per node, one channel per user with a live session on
//! the node. Subscriptions follow local interest (a user's actor starting and stopping here).
//!
//! It carries stream events (encoded once by the node that wrote them, in the cluster's own codec
//! `codec.rs`, with each recipient's position), ephemeral typing and presence, and logouts. Pub/sub is at-most-once, which the stream
//! makes good: a user actor that sees a position skipped catches up from the store, as it does for
//! any missing event. After any
//! disconnect the task reconnects with backoff, resubscribes one channel per command (a cluster's
//! sharded channels may live in different slots, and a multi-channel SUBSCRIBE across slots is
//! refused with CROSSSLOT), and every local user re-reads its stream from the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Cluster;
use super::codec::{Envelope, Opaque, decode};
use crate::actors::{Hub, Kick};
use crate::domain::{DeviceId, UserId};
use crate::metrics::METRICS;

pub enum Interest {
    Subscribe(UserId),
    Unsubscribe(UserId),
}

/// The users with an actor on this node, counted (an actor may start before the last one's stop
/// arrives here): the channels the bridge must listen on. Shared by both bridges.
#[derive(Default)]
pub(super) struct LocalUsers(HashMap<UserId, usize>);

impl LocalUsers {
    /// Records a change; returns the subscription it calls for: `(user, true)` to subscribe the
    /// user's channel, `(user, false)` to unsubscribe it, or nothing.
    pub(super) fn apply(&mut self, change: Interest) -> Option<(UserId, bool)> {
        match change {
            Interest::Subscribe(user) => {
                let n = self.0.entry(user).or_default();
                *n += 1;
                (*n == 1).then_some((user, true))
            }
            Interest::Unsubscribe(user) => {
                let n = self.0.get_mut(&user)?;
                *n -= 1;
                if *n > 0 {
                    return None;
                }
                self.0.remove(&user);
                Some((user, false))
            }
        }
    }

    pub(super) fn users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.0.keys().copied()
    }

    pub(super) fn contains(&self, user: UserId) -> bool {
        self.0.contains_key(&user)
    }

    /// Waits out a reconnect pause, keeping the set current. False when the node is stopping.
    pub(super) async fn pause(&mut self, interest: &mut mpsc::UnboundedReceiver<Interest>, pause: Duration) -> bool {
        let pause = tokio::time::sleep(pause);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => return true,
                change = interest.recv() => match change {
                    Some(change) => {
                        self.apply(change);
                    }
                    None => return false,
                },
            }
        }
    }

    /// After a reconnect: whatever was published while the bridge was away is lost, so every local
    /// user re-reads its stream from the store; Redis may have restarted empty, so presence is
    /// recorded again.
    pub(super) async fn resync(&self, cluster: &Cluster, hub: &Hub) {
        tracing::info!(users = self.0.len(), "bridge: resubscribed; local users catch up from the store");
        for user in self.users() {
            hub.registry.mark_missed(user);
        }
        cluster.record_presence(self.users().collect()).await;
    }
}

/// A message that arrived on a user's channel.
pub(super) fn receive(cluster: &Cluster, hub: &Hub, channel: &str, payload: &[u8]) {
    let Some(user) = cluster.keys.user_of_channel(channel) else { return };
    let payload = match cluster.signer.open_bridge(channel, payload, crate::domain::now_ms()) {
        Ok(envelope) => envelope,
        Err(refused) => {
            // Not from a node of this cluster (or too old): whoever can publish to Redis cannot
            // speak for the nodes. If it stood for a real event, the stream has it.
            METRICS.bridge_rejected_total.inc();
            tracing::warn!(%user, %refused, "bridge: message refused");
            return;
        }
    };
    match decode::<Envelope>(payload) {
        Ok(envelope) => deliver(cluster, hub, user, envelope),
        // From a node of another version. If it stood for a stream event, the store has it.
        Err(e) => match decode::<Opaque>(payload) {
            Ok(Opaque { origin, pos: Some(pos) }) if origin != cluster.node_id => {
                tracing::warn!(%user, pos, "bridge: an event this node does not understand; reading the store");
                hub.registry.mark_missed(user);
            }
            _ => tracing::warn!(error = %e, "bridge: undecodable message"),
        },
    }
}

/// Runs until the node stops: keeps the subscriptions, hands what arrives to local actors.
pub(super) async fn run(cluster: Arc<Cluster>, hub: Arc<Hub>, mut interest: mpsc::UnboundedReceiver<Interest>) {
    let mut local = LocalUsers::default();
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    let Some(client) = cluster.client.clone() else { return };
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                cluster.set_bridge_up(false);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "bridge: cannot reach Redis");
                if !local.pause(&mut interest, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = true;
        for user in local.users() {
            if let Err(e) = sink.subscribe(cluster.keys.user_channel(user)).await {
                tracing::warn!(error = %e, "bridge: resubscribing failed");
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        backoff = Duration::from_millis(100);
        cluster.set_bridge_up(true);
        if !first {
            local.resync(&cluster, &hub).await;
        }
        first = false;
        loop {
            tokio::select! {
                change = interest.recv() => {
                    let Some(change) = change else { return };
                    let result = match local.apply(change) {
                        Some((user, true)) => sink.subscribe(cluster.keys.user_channel(user)).await,
                        Some((user, false)) => sink.unsubscribe(cluster.keys.user_channel(user)).await,
                        None => Ok(()),
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "bridge: subscription change failed; reconnecting");
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        tracing::warn!("bridge: Redis connection lost; reconnecting");
                        break;
                    };
                    receive(&cluster, &hub, message.get_channel_name(), message.get_payload_bytes());
                }
            }
        }
        cluster.set_bridge_up(false);
    }
}

/// Hands an envelope to the user's actor on this node (our own publications were delivered
/// locally already).
fn deliver(cluster: &Cluster, hub: &Hub, user: UserId, envelope: Envelope) {
    if envelope.origin() == cluster.node_id {
        return;
    }
    METRICS.bridge_received_total.inc();
    match envelope {
        Envelope::StreamEvent { pos, event, .. } => hub.registry.deliver(&[(user, pos)], &event),
        Envelope::Typing { .. } | Envelope::Presence { .. } => {
            if let Some(event) = envelope.to_ephemeral() {
                hub.registry.send_ephemeral([user], event);
            }
        }
        Envelope::Kick { devices, reason, .. } => {
            if let Some(entry) = hub.registry.user(user) {
                entry.addr.do_send(Kick { devices: devices.into_iter().map(DeviceId).collect(), reason });
            }
        }
    }
}

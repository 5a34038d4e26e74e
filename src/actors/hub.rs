use std::sync::Arc;

use super::{Ephemeral, Peers, Registry};
use crate::config::{FeedConfig, LimitsConfig};
use crate::domain::{StreamEvent, UserId};
use crate::push::PushGate;
use crate::store::{Positions, Store};

/// What every actor and connection of a node shares.
pub struct Hub {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub limits: LimitsConfig,
    pub push: Arc<PushGate>,
    /// The other nodes, when this node is part of a cluster.
    pub peers: Option<Arc<dyn Peers>>,
    /// The feed actors of this node.
    pub feeds: super::feed::Feeds,
}

impl Hub {
    pub fn new(
        store: Arc<dyn Store>,
        limits: LimitsConfig,
        push: Arc<PushGate>,
        peers: Option<Arc<dyn Peers>>,
        feed: &FeedConfig,
    ) -> Arc<Self> {
        let feeds = super::feed::Feeds::new(feed.fanout_max_followers);
        Arc::new(Self { store, registry: Registry::default(), limits, push, peers, feeds })
    }

    /// A durable event reaches its recipients' sessions: here directly, on other nodes through the
    /// bridge.
    pub fn deliver(&self, positions: &Positions, event: &StreamEvent) {
        self.registry.deliver(positions, event);
        if let Some(peers) = &self.peers {
            peers.publish_event(positions, event);
        }
    }

    /// An ephemeral event (typing, presence) for these users' sessions, here and elsewhere.
    pub fn send_ephemeral(&self, users: &[UserId], event: Ephemeral) {
        self.registry.send_ephemeral(users.iter().copied(), event);
        if let Some(peers) = &self.peers {
            peers.publish_ephemeral(users, &event);
        }
    }
}

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
    /// Activities of one kind about one thing within this window of the first are one group.
    pub activity_window_ms: i64,
    /// Events for the app's backend (a no-op without `webhooks.url`).
    pub webhooks: crate::webhooks::Webhooks,
    /// Moves whenever a block is made or lifted here: direct rooms read blocks again.
    blocks_generation: std::sync::atomic::AtomicU64,
}

impl Hub {
    pub fn new(
        store: Arc<dyn Store>,
        limits: LimitsConfig,
        push: Arc<PushGate>,
        peers: Option<Arc<dyn Peers>>,
        feed: &FeedConfig,
        webhooks: crate::webhooks::Webhooks,
    ) -> Arc<Self> {
        let feeds = super::feed::Feeds::new(feed.fanout_max_followers);
        let activity_window_ms = (feed.activity_window_secs as i64).saturating_mul(1000);
        Arc::new(Self {
            store,
            registry: Registry::default(),
            limits,
            push,
            peers,
            feeds,
            activity_window_ms,
            webhooks,
            blocks_generation: Default::default(),
        })
    }

    /// A durable event reaches its recipients' sessions: here directly, on other nodes through the
    /// bridge.
    pub fn deliver(&self, positions: &Positions, event: &StreamEvent) {
        self.registry.deliver(positions, event);
        if let Some(peers) = &self.peers {
            peers.publish_event(positions, event);
        }
    }

    /// A block was made or lifted: direct rooms on this node read blocks again before their next send.
    pub fn blocks_changed(&self) {
        self.blocks_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn blocks_generation(&self) -> u64 {
        self.blocks_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `user` has a live session: here, or (in a cluster) on another node.
    pub async fn is_online(&self, user: UserId) -> bool {
        if self.registry.is_online(user) {
            return true;
        }
        match &self.peers {
            Some(peers) => peers.online_elsewhere(user).await,
            None => false,
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

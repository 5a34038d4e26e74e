use std::sync::Arc;

use super::{Ephemeral, Registry};
use crate::cluster::Cluster;
use crate::config::LimitsConfig;
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
    pub cluster: Option<Arc<Cluster>>,
}

impl Hub {
    pub fn new(
        store: Arc<dyn Store>,
        limits: LimitsConfig,
        push: Arc<PushGate>,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        Arc::new(Self { store, registry: Registry::default(), limits, push, cluster })
    }

    /// A durable event reaches its recipients' sessions: here directly, on other nodes through the
    /// bridge.
    pub fn deliver(&self, positions: &Positions, event: &StreamEvent) {
        self.registry.deliver(positions, event);
        if let Some(cluster) = &self.cluster {
            cluster.publish_event(positions, event);
        }
    }

    /// An ephemeral event (typing, presence) for these users' sessions, here and elsewhere.
    pub fn send_ephemeral(&self, users: &[UserId], event: Ephemeral) {
        self.registry.send_ephemeral(users.iter().copied(), event);
        if let Some(cluster) = &self.cluster {
            cluster.publish_ephemeral(users, &event);
        }
    }
}

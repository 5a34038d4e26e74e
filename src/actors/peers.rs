//! What actors and services need of the other nodes of a cluster. The actors own this trait and
//! the cluster implements it (`cluster::Cluster`), so that the layers below the cluster never
//! depend on it and a node without one simply has no `Peers`.

use futures_util::future::BoxFuture;

use super::{ActorRequest, Ephemeral, KickReason, ReplyBody};
use crate::domain::{ActorKey, DeviceId, DomainResult, StreamEvent, UserId};
use crate::store::Positions;

/// A request on its way to the node that owns its key: the answer, or `None` when the owner could
/// not be reached (the request is then handled here; the store's seq fence keeps that safe).
pub type Forwarding<'a> = BoxFuture<'a, Option<DomainResult<ReplyBody>>>;

pub trait Peers: Send + Sync {
    /// A durable event for its recipients' sessions on other nodes. Fire and forget: a receiver
    /// that misses it catches up from the store.
    fn publish_event(&self, positions: &Positions, event: &StreamEvent);

    /// An ephemeral event (typing, presence) for these users' sessions on other nodes.
    fn publish_ephemeral(&self, users: &[UserId], event: &Ephemeral);

    /// These devices logged out: the nodes holding their sockets close them.
    fn publish_kick(&self, user: UserId, devices: &[DeviceId], reason: KickReason);

    /// A user's first session on this node opened.
    fn user_arrived(&self, user: UserId);

    /// A user's last session on this node closed.
    fn user_left(&self, user: UserId);

    /// Whether `user` has a live session on another node.
    fn online_elsewhere(&self, user: UserId) -> BoxFuture<'_, bool>;

    /// Every user with a live session on another node (read from the nodes' presence sets).
    fn online_users_elsewhere(&self) -> BoxFuture<'_, Vec<UserId>>;

    /// Sends a request to the node that owns its key; `None` when this node owns it.
    fn forward(&self, user: UserId, device: DeviceId, request: &ActorRequest) -> Option<Forwarding<'_>>;

    /// Whether this node owns `key` in its current view of the cluster (false while it has none).
    fn owns(&self, key: ActorKey) -> bool;

    /// The cluster's connections are up (for `/readyz`).
    fn healthy(&self) -> bool;

    /// The live nodes as this node last saw them: (id, internal address), this one included.
    fn live_nodes(&self) -> Vec<(String, String)>;
}

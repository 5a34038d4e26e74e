//! Redis key and channel names, all under the configured prefix.

use crate::domain::UserId;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    // Membership and presence keys share one hash tag, so on a Redis Cluster they live in one slot
    // and can go in one pipeline; user channels have none, so they spread over the shards.

    /// Sorted set: node id -> when its membership expires (Unix ms).
    pub fn nodes(&self) -> String {
        format!("{{{}}}:nodes", self.prefix)
    }

    /// Hash: node id -> the address other nodes reach it at.
    pub fn node_addrs(&self) -> String {
        format!("{{{}}}:node-addrs", self.prefix)
    }

    /// Set: the users with a live session on `node`.
    pub fn node_users(&self, node: &str) -> String {
        format!("{{{}}}:node-users:{node}", self.prefix)
    }

    /// Channel: events for one user's sessions, wherever they are.
    pub fn user_channel(&self, user: UserId) -> String {
        format!("{}:u:{}", self.prefix, user.0)
    }

    pub fn user_of_channel(&self, channel: &str) -> Option<UserId> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix(":u:")?;
        rest.parse().ok().map(UserId)
    }
}

//! Forwarding a room request to the node that owns the room, over HTTP between nodes.
//!
//! The owner answers with the `ServerFrame` it would have sent its own client; the node the client
//! is on relays it. If the owner cannot be reached (it just died and the view has not caught up),
//! the request is handled here: the store's seq fence keeps two nodes from ever writing the same
//! seq of a room, so a brief overlap of owners costs a retry, never an inconsistency.

use prost::Message;
use sha2::{Digest, Sha256};
use tidings_proto::v1::{ClientFrame, ForwardedRequest, ServerFrame};

use super::{Cluster, Node};
use crate::domain::{DeviceId, UserId};
use crate::metrics::METRICS;

pub const FORWARD_PATH: &str = "/internal/v1/forward";
pub const NODE_SECRET_HEADER: &str = "x-tidings-node-secret";

/// What nodes show each other: derived from the cluster's node key (not the token secret, so
/// that the key that signs users' tokens is never a node credential), never the key itself.
pub(super) fn node_secret(node_key: &[u8]) -> String {
    let digest = Sha256::new().chain_update(b"tidings node secret\0").chain_update(node_key).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cluster {
    /// Whether a forwarded request carries this cluster's node secret.
    pub fn is_node_secret(&self, presented: &str) -> bool {
        // Constant time: a timing difference must not reveal how much of a guess was right.
        let expected = self.node_secret.as_bytes();
        let presented = presented.as_bytes();
        expected.len() == presented.len() && expected.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Sends a client's frame to `owner`; `None` when the owner could not be reached.
    pub async fn forward(
        &self,
        owner: &Node,
        user: UserId,
        device: DeviceId,
        frame: ClientFrame,
    ) -> Option<ServerFrame> {
        let body = ForwardedRequest { user_id: user.0, device_id: device.0, frame: Some(frame) }.encode_to_vec();
        let url = format!("http://{}{FORWARD_PATH}", owner.addr);
        let response = self
            .http
            .post(url)
            .header(NODE_SECRET_HEADER, &self.node_secret)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await;
        let bytes = match response {
            Ok(r) if r.status().is_success() => r.bytes().await.ok()?,
            Ok(r) => {
                tracing::warn!(owner = %owner.id, status = %r.status(), "forwarding refused");
                return None;
            }
            Err(e) => {
                tracing::info!(owner = %owner.id, error = %e, "owner unreachable; handling the request here");
                return None;
            }
        };
        METRICS.forwarded_requests_total.inc();
        ServerFrame::decode(bytes).ok()
    }
}

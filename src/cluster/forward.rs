//! Forwarding a room request to the node that owns the room, over HTTP between the nodes'
//! internal listeners (`cluster.internal_listen`), each request signed (`signing.rs`) and encoded
//! in the cluster's own codec (`codec.rs`).
//!
//! The owner answers with what its room actor answered; the node the client is on passes it on.
//! If the owner cannot be reached (it just died and the view has not caught up), or refuses (a
//! node of another version), the request is handled here: the store's seq fence keeps two nodes
//! from ever writing the same seq of a room, so a brief overlap of owners costs a retry, never an
//! inconsistency.

use super::codec::{self, ForwardedAnswer};
use super::signing::{ForwardSignature, NODE_HEADER, NONCE_HEADER, Refused, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::{Cluster, Node};
use crate::domain::now_ms;
use crate::metrics::METRICS;

/// Version 2: the cluster's own codec (version 1 carried the client protocol's frames).
pub const FORWARD_PATH: &str = "/internal/v2/forward";

impl Cluster {
    /// Checks a forwarded request's signature headers (looked up with `header`) against its body.
    pub fn verify_forwarded<'a>(&self, header: impl Fn(&str) -> Option<&'a str>, body: &[u8]) -> Result<(), Refused> {
        let signature = ForwardSignature {
            node: header(NODE_HEADER).ok_or(Refused::Malformed)?.to_owned(),
            timestamp_ms: header(TIMESTAMP_HEADER).and_then(|t| t.parse().ok()).ok_or(Refused::Malformed)?,
            nonce: header(NONCE_HEADER).and_then(|n| n.parse().ok()).ok_or(Refused::Malformed)?,
            mac_hex: header(SIGNATURE_HEADER).ok_or(Refused::Malformed)?.to_owned(),
        };
        self.signer.verify_forward(&signature, body, now_ms())
    }

    /// Sends a request (encoded with `codec::encode`) to `owner`; `None` when the owner could not
    /// be reached or did not answer with an answer.
    pub(super) async fn send_forwarded(&self, owner: &Node, body: Vec<u8>) -> Option<ForwardedAnswer> {
        let url = format!("http://{}{FORWARD_PATH}", owner.addr);
        let signature = self.signer.sign_forward(&self.node_id, now_ms(), rand::random(), &body);
        let response = self
            .http
            .post(url)
            .header(NODE_HEADER, signature.node)
            .header(TIMESTAMP_HEADER, signature.timestamp_ms.to_string())
            .header(NONCE_HEADER, signature.nonce.to_string())
            .header(SIGNATURE_HEADER, signature.mac_hex)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let bytes = match response {
            Ok(r) if r.status().is_success() => r.bytes().await.ok()?,
            Ok(r) => {
                tracing::warn!(owner = %owner.id, status = %r.status(), "forwarding refused; handling the request here");
                return None;
            }
            Err(e) => {
                tracing::info!(owner = %owner.id, error = %e, "owner unreachable; handling the request here");
                return None;
            }
        };
        METRICS.forwarded_requests_total.inc();
        codec::decode(&bytes).ok()
    }
}

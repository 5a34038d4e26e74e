//! The cluster's internal listener (`cluster.internal_listen`): what the nodes of a cluster ask
//! each other, never served on the public port. Today one endpoint: a room request forwarded to
//! the room's owner, in the cluster's own codec (`cluster::codec`), answered with what the room's
//! actor answered.
//!
//! Every request must carry a valid signature by a node of this cluster (`cluster::signing`):
//! fresh, never seen before, over exactly this body. Anything else gets 403 before its body is
//! decoded; the listener should still be reachable only from the other nodes.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::actors::Hub;
use crate::cluster::Cluster;
use crate::cluster::codec::{self, ForwardedAnswer, ForwardedRequest};
use crate::metrics::METRICS;
use crate::services;

/// Forwarded request bodies are one room request; the client frame limit applies, with room for
/// the envelope.
const MAX_FORWARDED_BODY_BYTES: usize = 256 * 1024;

pub fn internal_routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_FORWARDED_BODY_BYTES))
        .route(crate::cluster::FORWARD_PATH, web::post().to(forwarded));
}

async fn forwarded(
    req: HttpRequest,
    body: web::Bytes,
    hub: web::Data<Arc<Hub>>,
    cluster: web::Data<Arc<Cluster>>,
) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Err(refused) = cluster.verify_forwarded(header, &body) {
        METRICS.forwarded_rejected_total.inc();
        tracing::warn!(peer = ?req.peer_addr(), %refused, "forwarded request refused");
        return HttpResponse::Forbidden().finish();
    }
    let Ok(ForwardedRequest { user, request, .. }) = codec::decode(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let answer: ForwardedAnswer = services::rooms::forwarded(&hub, user, request).await;
    HttpResponse::Ok().content_type("application/json").body(codec::encode(&answer))
}

//! The cluster's internal listener (`cluster.internal_listen`): what the nodes of a cluster ask
//! each other, never served on the public port. Today one endpoint: a room request forwarded to
//! the room's owner, answered with the frame the client gets.
//!
//! Every request must carry a valid signature by a node of this cluster (`cluster::signing`):
//! fresh, never seen before, over exactly this body. Anything else gets 403 before its body is
//! decoded; the listener should still be reachable only from the other nodes.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use prost::Message;
use tidings_proto::v1::ForwardedRequest;
use tokio::sync::Semaphore;

use super::decode::to_request;
use super::dispatch::room_request;
use super::encode::{answer_frame, error_frame};
use crate::actors::{Hub, Replier, Request};
use crate::domain::UserId;
use crate::error::ApiError;
use crate::metrics::METRICS;

/// Forwarded request bodies are one client frame; the client limit applies, with room for the
/// envelope.
const MAX_FORWARDED_BODY_BYTES: usize = 256 * 1024;

pub fn internal_routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_FORWARDED_BODY_BYTES))
        .route(crate::cluster::FORWARD_PATH, web::post().to(forwarded));
}

async fn forwarded(req: HttpRequest, body: web::Bytes, hub: web::Data<Arc<Hub>>) -> HttpResponse {
    let Some(cluster) = &hub.cluster else { return HttpResponse::NotFound().finish() };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Err(refused) = cluster.verify_forwarded(header, &body) {
        METRICS.forwarded_rejected_total.inc();
        tracing::warn!(peer = ?req.peer_addr(), %refused, "forwarded request refused");
        return HttpResponse::Forbidden().finish();
    }
    let Ok(forwarded) = ForwardedRequest::decode(body) else { return HttpResponse::BadRequest().finish() };
    let user = UserId(forwarded.user_id);
    let frame = forwarded.frame.unwrap_or_default();
    let answer = match to_request(frame, hub.limits.max_history_page) {
        Ok((request_id, Request::Room { room, op })) => {
            let (answers, mut answer) = tokio::sync::mpsc::channel(1);
            let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a fresh permit");
            room_request(&hub, user, room, op, Replier::new(request_id, answers, permit)).await;
            match answer.recv().await {
                Some(answer) => answer_frame(&answer),
                None => error_frame(request_id, &ApiError::internal()),
            }
        }
        Ok((request_id, _)) => error_frame(request_id, &ApiError::invalid("only room requests are forwarded")),
        Err((request_id, e)) => error_frame(request_id, &e),
    };
    HttpResponse::Ok().content_type("application/x-protobuf").body(answer.encode_to_vec())
}

//! HTTP endpoints: the WebSocket upgrade, `/v1/auth/*`, `/healthz`, `/readyz`, `/metrics`. (Images
//! have their routes in `media_http.rs`; the cluster's node-to-node endpoint is on its own
//! listener: `internal.rs`.)
//!
//! Auth bodies are the protocol's messages, as JSON (proto3 mapping) by default or protobuf when the
//! request's `Content-Type` is `application/x-protobuf`; the answer uses the same encoding.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use prost::Message;
use serde::de::DeserializeOwned;
use tidings_proto::Encoding;
use tidings_proto::v1::{AuthResponse, HttpError, LogInRequest, LogOutRequest, RefreshRequest, SignUpRequest};
use tokio::sync::{Semaphore, watch};

use super::codes::{http_status, wire_code};
use super::connection::{self, ConnectionSetup};
use super::connection_caps::{CapReached, ConnectionCaps};
use super::websocket;
use crate::actors::{Hub, Kick, KickReason};
use crate::auth::{AuthService, Authenticated, Refreshed, Session};
use crate::domain::error::{Code, DomainError};
use crate::domain::{DeviceId, UserId};
use crate::metrics::METRICS;

pub(super) const PROTOBUF: &str = "application/x-protobuf";
/// Auth and server API request bodies are small; anything bigger is refused before parsing.
const MAX_SMALL_BODY_BYTES: usize = 16 * 1024;

/// Shared by every HTTP worker.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub auth: Arc<AuthService>,
    pub media: Arc<crate::media::MediaService>,
    /// One permit per open WebSocket: the node's connection cap.
    pub connection_slots: Arc<Semaphore>,
    /// Open WebSockets per user and per client address.
    pub connection_caps: Arc<ConnectionCaps>,
    /// The admin dashboard; `None`: off.
    pub admin: Option<Arc<crate::auth::Admin>>,
    /// The server API's keys; `None`: the API is off.
    pub server_api: Option<Arc<crate::auth::ServerApiKeys>>,
    /// False while starting and once shutdown began.
    pub ready: Arc<AtomicBool>,
    /// How long an auth request's body may take to arrive (`server.body_read_timeout_secs`).
    pub body_read_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// The public port's routes; `/metrics` among them unless it has a listener of its own.
pub fn routes(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    use tidings_proto::paths;
    cfg.route(paths::WEBSOCKET, web::get().to(websocket))
        .route(paths::SIGN_UP, web::post().to(sign_up))
        .route(paths::LOG_IN, web::post().to(log_in))
        .route(paths::REFRESH, web::post().to(refresh))
        .route(paths::LOG_OUT, web::post().to(log_out))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
    if with_metrics {
        cfg.route("/metrics", web::get().to(metrics));
    }
}

/// The operations listener's routes (`server.metrics_listen`).
pub fn operations_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

fn body_encoding(req: &HttpRequest) -> Encoding {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with(PROTOBUF) { Encoding::Protobuf } else { Encoding::Json }
}

pub(super) fn respond<T: Message + serde::Serialize>(
    encoding: Encoding,
    status: actix_web::http::StatusCode,
    body: &T,
) -> HttpResponse {
    match encoding {
        Encoding::Protobuf => HttpResponse::build(status).content_type(PROTOBUF).body(body.encode_to_vec()),
        Encoding::Json => HttpResponse::build(status).json(body),
    }
}

pub(super) fn error_response(encoding: Encoding, error: &DomainError) -> HttpResponse {
    let body =
        HttpError { code: wire_code(error.code) as i32, message: error.message.clone(), field: error.field.clone() };
    let mut response = respond(encoding, http_status(error.code), &body);
    if error.retry_after_ms > 0 {
        let secs = error.retry_after_ms.div_ceil(1000).to_string();
        if let Ok(value) = header::HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// A small request's body (auth, server API), read with a size cap (`MAX_SMALL_BODY_BYTES`, refused as soon as it is
/// passed) and a deadline: a client trickling a byte at a time holds a worker no longer than
/// `body_read_timeout` (then 408).
pub struct SmallBody(pub web::Bytes);

impl actix_web::FromRequest for SmallBody {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        use futures_util::StreamExt;
        let mut payload = payload.take();
        let deadline = req.app_data::<web::Data<AppState>>().map_or(Duration::from_secs(10), |s| s.body_read_timeout);
        let encoding = body_encoding(req);
        Box::pin(async move {
            let read = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk =
                        chunk.map_err(|e| DomainError::new(Code::BadFrame, format!("reading the body: {e}")))?;
                    if body.len() + chunk.len() > MAX_SMALL_BODY_BYTES {
                        return Err(DomainError::new(Code::PayloadTooLarge, "request body too large"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body.freeze())
            };
            let refuse = |response: HttpResponse| actix_web::error::InternalError::from_response("", response).into();
            match tokio::time::timeout(deadline, read).await {
                Ok(Ok(body)) => Ok(SmallBody(body)),
                Ok(Err(e)) => Err(refuse(error_response(encoding, &e))),
                Err(_) => {
                    let e = DomainError::invalid("the request body did not arrive in time");
                    let mut response = error_response(encoding, &e);
                    *response.status_mut() = actix_web::http::StatusCode::REQUEST_TIMEOUT;
                    Err(refuse(response))
                }
            }
        })
    }
}

pub(super) fn parse<T: Message + Default + DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
) -> Result<T, DomainError> {
    if body.len() > MAX_SMALL_BODY_BYTES {
        return Err(DomainError::new(Code::PayloadTooLarge, "request body too large"));
    }
    match encoding {
        Encoding::Protobuf => {
            T::decode(body).map_err(|e| DomainError::new(Code::BadFrame, format!("bad protobuf body: {e}")))
        }
        Encoding::Json => {
            serde_json::from_slice(body).map_err(|e| DomainError::new(Code::BadFrame, format!("bad JSON body: {e}")))
        }
    }
}

fn session_response(encoding: Encoding, s: Session) -> HttpResponse {
    let body = AuthResponse {
        user_id: s.user.0,
        device_id: s.device.0,
        access_token: s.access_token,
        refresh_token: s.refresh_token,
        access_expires_at_ms: s.access_expires_at_ms,
    };
    respond(encoding, actix_web::http::StatusCode::OK, &body)
}

/// Parses an auth request, runs `call`, and answers with the tokens or the error.
async fn session_call<R, Fut>(req: &HttpRequest, body: &[u8], call: impl FnOnce(R) -> Fut) -> HttpResponse
where
    R: Message + Default + DeserializeOwned,
    Fut: Future<Output = Result<Session, DomainError>>,
{
    let encoding = body_encoding(req);
    let result = match parse::<R>(encoding, body) {
        Ok(request) => call(request).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(session) => session_response(encoding, session),
        Err(e) => error_response(encoding, &e),
    }
}

async fn sign_up(req: HttpRequest, body: SmallBody, state: web::Data<AppState>) -> HttpResponse {
    let client = client_ip(&req);
    session_call(&req, &body.0, |r: SignUpRequest| async move {
        state.auth.sign_up(client, &r.username, &r.password, &r.device_name).await
    })
    .await
}

async fn log_in(req: HttpRequest, body: SmallBody, state: web::Data<AppState>) -> HttpResponse {
    let client = client_ip(&req);
    session_call(&req, &body.0, |r: LogInRequest| async move {
        state.auth.log_in(client, &r.username, &r.password, &r.device_name).await
    })
    .await
}

async fn refresh(req: HttpRequest, body: SmallBody, state: web::Data<AppState>) -> HttpResponse {
    let client = client_ip(&req);
    session_call(&req, &body.0, |r: RefreshRequest| async move {
        match state.auth.refresh(client, &r.refresh_token).await? {
            Refreshed::Session(session) => Ok(session),
            Refreshed::Reused { user, revoked } => {
                close_devices(&state, user, &revoked).await;
                Err(DomainError::new(Code::Unauthenticated, "refresh token reused; this device was logged out"))
            }
        }
    })
    .await
}

/// Closes the live connections of logged-out devices, on this node and on the others.
pub(crate) async fn close_devices(state: &AppState, user: UserId, devices: &[DeviceId]) {
    kick(state, user, devices, KickReason::LoggedOut).await;
}

/// Closes the live connections of these devices, on this node (how many) and on the others.
pub(super) async fn kick(state: &AppState, user: UserId, devices: &[DeviceId], reason: KickReason) -> usize {
    let mut closed = 0;
    if let Some(actor) = state.hub.registry.user(user) {
        closed = actor.addr.send(Kick { devices: devices.to_vec(), reason }).await.unwrap_or(0);
    }
    if let Some(peers) = &state.hub.peers {
        peers.publish_kick(user, devices, reason);
    }
    closed
}

/// The address the request came from (the TCP peer: a proxy in front must do its own limiting or
/// be given its own limits).
fn client_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

/// The access token of a request: `Authorization: Bearer …`, or `access_token=` in the query (for
/// WebSocket clients that cannot set headers).
fn access_token(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    query_param(req, "access_token")
}

fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

pub(super) async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Authenticated, DomainError> {
    let token =
        access_token(req).ok_or_else(|| DomainError::new(Code::Unauthenticated, "an access token is required"))?;
    state.auth.authenticate(&token).await
}

async fn log_out(req: HttpRequest, body: SmallBody, state: web::Data<AppState>) -> HttpResponse {
    let encoding = body_encoding(&req);
    let result = async {
        let r: LogOutRequest = if body.0.is_empty() { LogOutRequest::default() } else { parse(encoding, &body.0)? };
        let caller = authenticate(&req, &state).await?;
        let devices = state.auth.log_out(caller, r.all_devices).await?;
        close_devices(&state, caller.user, &devices).await;
        Ok::<_, DomainError>(())
    }
    .await;
    match result {
        Ok(()) => respond(encoding, actix_web::http::StatusCode::OK, &tidings_proto::v1::Success {}),
        Err(e) => error_response(encoding, &e),
    }
}

async fn websocket(req: HttpRequest, body: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let encoding = match query_param(&req, "encoding") {
        None => Encoding::Protobuf,
        Some(value) => match Encoding::from_query_value(&value) {
            Some(encoding) => encoding,
            None => return error_response(Encoding::Json, &DomainError::invalid("encoding must be proto or json")),
        },
    };
    if !state.ready.load(Ordering::Acquire) {
        return error_response(Encoding::Json, &DomainError::overloaded(1000));
    }
    let auth = match authenticate(&req, &state).await {
        Ok(auth) => auth,
        Err(e) => return error_response(Encoding::Json, &e),
    };
    let caps = match state.connection_caps.admit(auth.user, client_ip(&req)) {
        Ok(caps) => caps,
        Err(reached) => {
            METRICS.connections_refused_total.inc();
            let message = match reached {
                CapReached::User => "too many open connections for this user",
                CapReached::Address => "too many open connections from this address",
            };
            let e = DomainError { retry_after_ms: 1000, ..DomainError::new(Code::RateLimited, message) };
            return error_response(Encoding::Json, &e);
        }
    };
    let Ok(slot) = state.connection_slots.clone().try_acquire_owned() else {
        METRICS.connections_refused_total.inc();
        return error_response(Encoding::Json, &DomainError::overloaded(1000));
    };
    let max_frame_bytes = state.hub.limits.max_frame_bytes;
    let (response, outbox, inbox) = match websocket::accept(&req, body, max_frame_bytes, connection::OUTBOX_BYTES) {
        Ok(parts) => parts,
        Err(e) => return e.error_response(),
    };
    let setup = ConnectionSetup {
        hub: state.hub.clone(),
        auth,
        auth_service: state.auth.clone(),
        encoding,
        shutdown: state.shutdown.clone(),
        slot,
        caps,
    };
    actix_web::rt::spawn(connection::run(setup, outbox, inbox));
    response
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if !state.ready.load(Ordering::Acquire) {
        return HttpResponse::ServiceUnavailable().content_type("text/plain").body("shutting down or starting\n");
    }
    if !state.hub.store.ready().await {
        return HttpResponse::ServiceUnavailable().content_type("text/plain").body("store unavailable\n");
    }
    if let Some(peers) = &state.hub.peers
        && !peers.healthy()
    {
        return HttpResponse::ServiceUnavailable().content_type("text/plain").body("redis unavailable\n");
    }
    HttpResponse::Ok().content_type("text/plain").body("ready\n")
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(METRICS.render())
}

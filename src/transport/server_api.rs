//! The server API: what the app's backend calls, under `/v1/server/`, with
//! `Authorization: Bearer <server API key>` (`server_api.keys`). Bodies and answers are the
//! protocol's `Server*` messages, as JSON by default or protobuf (`Content-Type` / `Accept:
//! application/x-protobuf`), like `/v1/auth/*`. No key configured: every call answers 404.
//!
//! A user in a path is a tidings id (`/users/42/...`) or the app's own id, the `sub` of its tokens
//! (`/users/app:ana@example.com/...`, percent-encoded as a path segment needs).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use tidings_proto::Encoding;
use tidings_proto::v1 as wire;

use super::http::{AppState, SmallBody, error_response, kick, parse, respond};
use crate::actors::{KickReason, ListConnections, LiveConnection};
use crate::auth::app_identity::app_user_id;
use crate::domain::error::{Code, DomainError};
use crate::domain::{DeviceId, UserId};

/// Users one presence call may ask about.
const MAX_USERS_PER_CALL: usize = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    use tidings_proto::paths::SERVER_API;
    cfg.service(
        web::scope(SERVER_API)
            .route("/notify", web::post().to(notify))
            .route("/presence", web::post().to(presence))
            .route("/rooms/{room}/messages", web::post().to(system_message))
            .route("/users/{user}/devices", web::get().to(devices))
            .route("/users/{user}/devices/{device}/revoke", web::post().to(revoke_device))
            .route("/users/{user}/revoke", web::post().to(revoke_user))
            .route("/users/{user}/disconnect", web::post().to(disconnect))
            .route("/users/{user}/block", web::post().to(block))
            .route("/users/{user}/unblock", web::post().to(unblock))
            .route("/users/{user}/connections", web::get().to(connections))
            .default_service(web::to(unknown_call)),
    );
}

fn encoding(req: &HttpRequest) -> Encoding {
    let says_protobuf =
        |name| req.headers().get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(super::http::PROTOBUF));
    if says_protobuf(header::CONTENT_TYPE) || says_protobuf(header::ACCEPT) {
        Encoding::Protobuf
    } else {
        Encoding::Json
    }
}

/// Runs a call once its key checks out, answering its result in the request's encoding.
async fn call<T, F>(req: &HttpRequest, state: &AppState, run: F) -> HttpResponse
where
    T: prost::Message + serde::Serialize,
    F: Future<Output = Result<T, DomainError>>,
{
    let encoding = encoding(req);
    if let Err(e) = admit(req, state) {
        return error_response(encoding, &e);
    }
    match run.await {
        Ok(answer) => respond(encoding, StatusCode::OK, &answer),
        Err(e) => error_response(encoding, &e),
    }
}

fn admit(req: &HttpRequest, state: &AppState) -> Result<(), DomainError> {
    let Some(keys) = &state.server_api else {
        return Err(DomainError::new(Code::NotFound, "the server API is off: set server_api.keys"));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            DomainError::new(Code::Unauthenticated, "a server API key is required (Authorization: Bearer)")
        })?;
    if keys.admits(presented.trim()) {
        Ok(())
    } else {
        tracing::warn!(peer = ?req.peer_addr(), "server API call with a wrong key");
        Err(DomainError::new(Code::Unauthenticated, "wrong server API key"))
    }
}

async fn unknown_call(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async { Err::<wire::Success, _>(DomainError::new(Code::NotFound, "no such server API call")) })
        .await
}

/// A user named in a path: `42` or `app:<sub>`.
fn path_user(raw: &str) -> Result<UserId, DomainError> {
    match raw.strip_prefix("app:") {
        Some("") => Err(DomainError::invalid_field("user", "app: needs the app's user id after it")),
        Some(subject) => Ok(app_user_id(subject)),
        None => raw
            .parse::<u64>()
            .map(UserId)
            .map_err(|_| DomainError::invalid_field("user", "a user is a tidings id or app:<the app's user id>")),
    }
}

/// The user of a path, if they exist.
async fn existing_user(state: &AppState, raw: &str) -> Result<UserId, DomainError> {
    let user = path_user(raw)?;
    if state.hub.store.existing_users(vec![user]).await?.is_empty() {
        return Err(DomainError::new(Code::NotFound, "no such user"));
    }
    Ok(user)
}

/// The users a body names, in order, without repeats.
fn named_users(users: wire::ServerUsers) -> Result<Vec<UserId>, DomainError> {
    let mut named: Vec<UserId> = users.user_ids.into_iter().map(UserId).collect();
    named.extend(users.subjects.iter().map(|s| app_user_id(s)));
    let mut seen = std::collections::HashSet::new();
    named.retain(|u| seen.insert(*u));
    if named.len() > MAX_USERS_PER_CALL {
        return Err(DomainError::invalid(format!("at most {MAX_USERS_PER_CALL} users per call")));
    }
    Ok(named)
}

async fn presence(req: HttpRequest, body: SmallBody, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let users = named_users(parse(encoding(&req), &body.0)?)?;
        let last_seen = state.hub.store.last_seen(users.clone()).await?;
        let mut answer = wire::ServerPresence::default();
        for user in users {
            answer.users.push(wire::ServerUserPresence {
                user_id: user.0,
                online: state.hub.is_online(user).await,
                last_seen_ms: last_seen.iter().find(|(u, _)| *u == user).map_or(0, |(_, at)| *at),
            });
        }
        Ok(answer)
    })
    .await
}

async fn notify(req: HttpRequest, body: SmallBody, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let request: wire::ServerNotifyRequest = parse(encoding(&req), &body.0)?;
        let users = named_users(wire::ServerUsers { user_ids: request.user_ids, subjects: request.subjects })?;
        let idempotency_key = idempotency_key(&req)?;
        let notified = crate::services::notify::notify(
            &state.hub,
            crate::services::notify::Notify {
                users,
                title: request.title,
                body: request.body,
                data: request.data.into_iter().collect(),
                push: request.push.unwrap_or(true),
                idempotency_key,
            },
        )
        .await?;
        Ok(wire::ServerNotified {
            queued: notified.queued.len() as u32,
            user_ids: notified.queued.iter().map(|u| u.0).collect(),
            unknown_user_ids: notified.unknown.iter().map(|u| u.0).collect(),
        })
    })
    .await
}

/// A message from the app into a room, from its system user (`SYSTEM_USER`).
async fn system_message(
    req: HttpRequest,
    path: web::Path<u64>,
    body: SmallBody,
    state: web::Data<AppState>,
) -> HttpResponse {
    call(&req, &state, async {
        let request: wire::ServerMessageRequest = parse(encoding(&req), &body.0)?;
        let client_msg_id = match request.client_msg_id.as_str() {
            "" => idempotency_key(&req)?.unwrap_or_default(),
            given => given.to_owned(),
        };
        if client_msg_id.is_empty() {
            return Err(DomainError::invalid_field("clientMsgId", "a clientMsgId (or an Idempotency-Key) is required"));
        }
        let room = crate::domain::RoomId(path.into_inner());
        let ack = crate::services::rooms::system_message(&state.hub, room, request.text, client_msg_id).await?;
        Ok(wire::ServerMessageSent {
            room_id: ack.room.0,
            seq: ack.seq,
            message_id: ack.message_id,
            sent_at_ms: ack.sent_at_ms,
            duplicate: ack.duplicate,
            sender_id: crate::domain::SYSTEM_USER.0,
        })
    })
    .await
}

/// The `Idempotency-Key` header, if sent.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, DomainError> {
    req.headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| DomainError::invalid_field("Idempotency-Key", "Idempotency-Key must be visible ASCII"))
}

async fn live_connections(state: &AppState, user: UserId) -> Vec<LiveConnection> {
    match state.hub.registry.user(user) {
        Some(actor) => actor.addr.send(ListConnections).await.unwrap_or_default(),
        None => Vec::new(),
    }
}

async fn devices(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let user = existing_user(&state, &path).await?;
        let live = live_connections(&state, user).await;
        let devices = state.hub.store.devices_of(user).await?;
        let devices = devices
            .into_iter()
            .map(|d| wire::ServerDevice {
                device_id: d.device.0,
                name: d.name,
                created_at_ms: d.created_at_ms,
                revoked: d.revoked,
                connections: live.iter().filter(|c| c.device == d.device).count() as u32,
            })
            .collect();
        Ok(wire::ServerDevices { devices })
    })
    .await
}

/// Revokes devices (one, or all the user's) and closes their connections everywhere.
async fn revoke(state: &AppState, user: UserId, only: Option<DeviceId>) -> Result<wire::ServerRevoked, DomainError> {
    let revoked = state.hub.store.revoke_devices(user, only).await?;
    kick(state, user, &revoked, KickReason::LoggedOut).await;
    tracing::info!(%user, devices = revoked.len(), "devices revoked through the server API");
    Ok(wire::ServerRevoked { device_ids: revoked.into_iter().map(|d| d.0).collect() })
}

async fn revoke_device(req: HttpRequest, path: web::Path<(String, u64)>, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let user = existing_user(&state, &path.0).await?;
        let device = DeviceId(path.1);
        if state.hub.store.device(user, device).await?.is_none() {
            return Err(DomainError::new(Code::NotFound, "no such device"));
        }
        revoke(&state, user, Some(device)).await
    })
    .await
}

async fn revoke_user(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let user = existing_user(&state, &path).await?;
        revoke(&state, user, None).await
    })
    .await
}

/// Closes every connection of the user's devices (`DISCONNECTED`), here and on the other nodes;
/// how many were here.
async fn disconnect_all(state: &AppState, user: UserId) -> Result<usize, DomainError> {
    let devices: Vec<DeviceId> = state.hub.store.devices_of(user).await?.into_iter().map(|d| d.device).collect();
    Ok(kick(state, user, &devices, KickReason::Disconnected).await)
}

async fn disconnect(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let user = existing_user(&state, &path).await?;
        let closed = disconnect_all(&state, user).await?;
        Ok(wire::ServerDisconnected { connections: closed as u32 })
    })
    .await
}

/// Blocks the account (it may not log in, refresh or connect) and closes its connections.
async fn block(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let user = existing_user(&state, &path).await?;
        state.hub.store.set_account_blocked(user, crate::domain::now_ms()).await?;
        let closed = disconnect_all(&state, user).await?;
        tracing::info!(%user, connections = closed, "account blocked through the server API");
        Ok(wire::ServerDisconnected { connections: closed as u32 })
    })
    .await
}

async fn unblock(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let user = existing_user(&state, &path).await?;
        state.hub.store.set_account_blocked(user, 0).await?;
        Ok(wire::Success {})
    })
    .await
}

async fn connections(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    call(&req, &state, async {
        let user = existing_user(&state, &path).await?;
        let node = req.app_config().local_addr().to_string();
        let connections = live_connections(&state, user)
            .await
            .into_iter()
            .map(|c| wire::ServerConnection {
                connection_id: c.conn.0,
                device_id: c.device.0,
                connected_at_ms: c.connected_at_ms,
                node: node.clone(),
            })
            .collect();
        Ok(wire::ServerConnections { connections })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_in_paths_are_ids_or_the_apps_own() {
        assert_eq!(path_user("42").unwrap(), UserId(42));
        assert_eq!(path_user("app:ana").unwrap(), app_user_id("ana"));
        assert_eq!(path_user("app:").unwrap_err().code, Code::InvalidArgument);
        assert_eq!(path_user("ana").unwrap_err().field, "user");
    }
}

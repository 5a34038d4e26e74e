//! The admin dashboard at `/admin`, for the people who run the server: a live overview, user
//! lookup (devices, rooms, last seen, push tokens masked) and revoking a device, and the push
//! queue (pending and failed jobs with their last error; retry or drop one). Off (404) until
//! `[admin]` names a user and a password.
//!
//! - `mod.rs`: the routes, and who may call them (`Admin`: the credentials, the sessions).
//! - `auth/admin_session.rs`: logins: a random session id in an `HttpOnly`, `SameSite=Strict` cookie, a CSRF
//!   token per session that every form carries, logins limited per address.
//! - `pages.rs`: the HTML (no script from elsewhere: everything is in the binary).

mod pages;

use std::sync::Arc;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

pub use crate::auth::Admin;
use crate::auth::admin_session as session;

use crate::domain::{DeviceId, UserId};
use crate::metrics::{METRICS, PUSH_METRICS};
use crate::store::PushJobsListed;
use crate::transport::http::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .route("", web::get().to(overview))
            .route("/", web::get().to(overview))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(log_in))
            .route("/logout", web::post().to(log_out))
            .route("/api/overview", web::get().to(overview_json))
            .route("/users", web::get().to(user_lookup))
            .route("/users/{user}/devices/{device}/revoke", web::post().to(revoke_device))
            .route("/pushes", web::get().to(push_queue))
            .route("/pushes/{user}/{job}/retry", web::post().to(retry_push))
            .route("/pushes/{user}/{job}/drop", web::post().to(drop_push))
            .default_service(web::to(not_found)),
    );
}

fn admin(state: &AppState) -> Option<&Arc<Admin>> {
    state.admin.as_ref()
}

async fn not_found() -> HttpResponse {
    not_found_page()
}

fn not_found_page() -> HttpResponse {
    HttpResponse::NotFound().content_type("text/plain").body("not found\n")
}

/// Why a posted form is not acted on.
enum FormRefusal {
    /// The dashboard is off.
    Off,
    Refused(session::FormRefused),
}

impl FormRefusal {
    fn response(self) -> HttpResponse {
        match self {
            FormRefusal::Off => not_found_page(),
            FormRefusal::Refused(refused) => refused.response(),
        }
    }
}

/// The admin behind a posted form: the dashboard is on, and the form comes with the session's
/// cookie and its CSRF token.
fn form_admin<'a>(state: &'a AppState, req: &HttpRequest, csrf: &str) -> Result<&'a Arc<Admin>, FormRefusal> {
    let admin = admin(state).ok_or(FormRefusal::Off)?;
    admin.check_form(req, csrf).map_err(FormRefusal::Refused)?;
    Ok(admin)
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, to)).finish()
}

/// The page, or the way to the login form.
async fn overview(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(admin) = admin(&state) else { return not_found().await };
    let Some(session) = admin.session_of(&req) else { return see_other("/admin/login") };
    let nodes = match &state.hub.peers {
        Some(peers) => peers.live_nodes(),
        None => Vec::new(),
    };
    pages::overview(&session.csrf, &nodes, state.hub.store.ready().await)
}

async fn login_form(state: web::Data<AppState>) -> HttpResponse {
    if admin(&state).is_none() {
        return not_found().await;
    }
    pages::login(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn log_in(req: HttpRequest, form: web::Form<Credentials>, state: web::Data<AppState>) -> HttpResponse {
    let Some(admin) = admin(&state) else { return not_found().await };
    match admin.log_in(req.peer_addr().map(|a| a.ip()), &form.username, &form.password) {
        Ok(cookie) => {
            let mut response = see_other("/admin");
            if let Ok(value) = header::HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(session::Refused::Wrong) => pages::login(StatusCode::UNAUTHORIZED, Some("Wrong username or password.")),
        Err(session::Refused::TooMany) => {
            pages::login(StatusCode::TOO_MANY_REQUESTS, Some("Too many attempts; wait a minute."))
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn log_out(req: HttpRequest, form: web::Form<CsrfForm>, state: web::Data<AppState>) -> HttpResponse {
    let admin = match form_admin(&state, &req, &form.csrf) {
        Ok(admin) => admin,
        Err(refused) => return refused.response(),
    };
    admin.log_out(&req);
    let mut response = see_other("/admin/login");
    if let Ok(value) = header::HeaderValue::from_str(&admin.clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The numbers the overview page polls.
async fn overview_json(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(admin) = admin(&state) else { return not_found().await };
    if admin.session_of(&req).is_none() {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "log in first" }));
    }
    let providers: serde_json::Map<String, serde_json::Value> = crate::domain::Platform::ALL
        .iter()
        .map(|&platform| {
            let m = PUSH_METRICS.of(platform);
            let counts = serde_json::json!({
                "queued": m.queued.get(), "sent": m.sent.get(), "retried": m.retried.get(),
                "failed": m.failed.get(), "dropped": m.dropped.get(),
            });
            (platform.provider_name().to_owned(), counts)
        })
        .collect();
    let pending_push_users = state.hub.store.users_with_pending_pushes().await.map(|u| u.len()).ok();
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(serde_json::json!({
        "connections": METRICS.connections_open.get(),
        "usersOnline": METRICS.users_online.get(),
        "roomsActive": METRICS.rooms_active.get(),
        "messagesCommitted": METRICS.messages_committed_total.get(),
        "eventsDelivered": METRICS.events_delivered_total.get(),
        "push": providers,
        "usersWithPendingPushes": pending_push_users,
        "outboundQueuedBytes": METRICS.outbound_queued_bytes.get(),
        "webhooksPending": METRICS.webhooks_pending.get(),
        "webhooksGivenUp": METRICS.webhooks_given_up.get(),
        "storeReady": state.hub.store.ready().await,
        "clusterHealthy": state.hub.peers.as_ref().is_none_or(|p| p.healthy()),
    }))
}

#[derive(Deserialize)]
struct Lookup {
    #[serde(default)]
    q: String,
}

/// A user by id, `app:<sub>` or username: devices, rooms, last seen, push tokens masked.
async fn user_lookup(req: HttpRequest, query: web::Query<Lookup>, state: web::Data<AppState>) -> HttpResponse {
    let Some(admin) = admin(&state) else { return not_found().await };
    let Some(session) = admin.session_of(&req) else { return see_other("/admin/login") };
    let q = query.q.trim();
    if q.is_empty() {
        return pages::lookup(&session.csrf, q, None);
    }
    let found = find_user(&state, q).await;
    let Ok(Some(user)) = found else { return pages::lookup(&session.csrf, q, None) };
    let store = &state.hub.store;
    let details = async {
        let devices = store.devices_of(user).await?;
        let mut tokens = Vec::new();
        for device in &devices {
            tokens.push(store.push_token(user, device.device).await?.map(|r| (r.platform, mask(&r.token))));
        }
        let rooms = store.rooms_of(user).await?;
        let last_seen = store.last_seen(vec![user]).await?.first().map_or(0, |(_, at)| *at);
        let blocked = store.account_blocked(user).await?;
        Ok::<_, crate::store::StoreError>(pages::UserDetails { user, devices, tokens, rooms, last_seen, blocked })
    }
    .await;
    match details {
        Ok(details) => pages::lookup(&session.csrf, q, Some(&details)),
        Err(e) => store_failed(&e),
    }
}

async fn find_user(state: &AppState, q: &str) -> crate::store::StoreResult<Option<UserId>> {
    let candidate = match q.strip_prefix("app:") {
        Some(subject) => Some(crate::auth::app_identity::app_user_id(subject)),
        None => q.parse::<u64>().ok().map(UserId),
    };
    if let Some(user) = candidate
        && !state.hub.store.existing_users(vec![user]).await?.is_empty()
    {
        return Ok(Some(user));
    }
    Ok(state.hub.store.user_by_name(q).await?.map(|r| r.id))
}

/// A push token shown as its start and end only.
fn mask(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() <= 10 {
        return "…".into();
    }
    format!("{}…{}", chars[..6].iter().collect::<String>(), chars[chars.len() - 4..].iter().collect::<String>())
}

async fn revoke_device(
    req: HttpRequest,
    path: web::Path<(u64, u64)>,
    form: web::Form<CsrfForm>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(refused) = form_admin(&state, &req, &form.csrf) {
        return refused.response();
    }
    let (user, device) = (UserId(path.0), DeviceId(path.1));
    match state.hub.store.revoke_devices(user, Some(device)).await {
        Ok(revoked) => {
            crate::transport::http::close_devices(&state, user, &revoked).await;
            tracing::info!(%user, %device, "device revoked from the admin dashboard");
            see_other(&format!("/admin/users?q={}", user.0))
        }
        Err(e) => store_failed(&e),
    }
}

/// How many jobs of each kind the push queue page lists.
const PUSH_JOBS_LISTED: usize = 100;

#[derive(Deserialize)]
struct Done {
    #[serde(default)]
    done: String,
}

/// The push queue: failed jobs (newest first) and queued ones (due first).
async fn push_queue(req: HttpRequest, query: web::Query<Done>, state: web::Data<AppState>) -> HttpResponse {
    let Some(admin) = admin(&state) else { return not_found().await };
    let Some(session) = admin.session_of(&req) else { return see_other("/admin/login") };
    let store = &state.hub.store;
    let listed = async {
        let failed = store.list_push_jobs(PushJobsListed::Failed, PUSH_JOBS_LISTED).await?;
        let queued = store.list_push_jobs(PushJobsListed::Queued, PUSH_JOBS_LISTED).await?;
        Ok::<_, crate::store::StoreError>((failed, queued))
    };
    match listed.await {
        Ok((failed, queued)) => pages::push_queue(&session.csrf, &query.done, &failed, &queued, PUSH_JOBS_LISTED),
        Err(e) => store_failed(&e),
    }
}

fn store_failed(e: &crate::store::StoreError) -> HttpResponse {
    HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("the store failed: {e}\n"))
}

async fn retry_push(
    req: HttpRequest,
    path: web::Path<(u64, u64)>,
    form: web::Form<CsrfForm>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(refused) = form_admin(&state, &req, &form.csrf) {
        return refused.response();
    }
    let (user, job) = (UserId(path.0), path.1);
    let now = state.hub.push.now_ms();
    match state.hub.store.retry_failed_push(user, job, now).await {
        Ok(true) => {
            // Due now: the worker may be asleep until a later job.
            state.hub.push.job_due_at(now);
            tracing::info!(%user, job, "failed push retried from the admin dashboard");
            see_other("/admin/pushes?done=retried")
        }
        Ok(false) => see_other("/admin/pushes?done=gone"),
        Err(e) => store_failed(&e),
    }
}

async fn drop_push(
    req: HttpRequest,
    path: web::Path<(u64, u64)>,
    form: web::Form<CsrfForm>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(refused) = form_admin(&state, &req, &form.csrf) {
        return refused.response();
    }
    let (user, job) = (UserId(path.0), path.1);
    match state.hub.store.drop_push_job(user, job).await {
        Ok(true) => {
            tracing::info!(%user, job, "push dropped from the admin dashboard");
            see_other("/admin/pushes?done=dropped")
        }
        Ok(false) => see_other("/admin/pushes?done=gone"),
        Err(e) => store_failed(&e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_masked() {
        assert_eq!(super::mask("abcdef0123456789wxyz"), "abcdef…wxyz");
        assert_eq!(super::mask("short"), "…");
    }
}

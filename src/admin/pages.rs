//! The dashboard's pages: plain HTML with its style and (on the overview) a small script inline,
//! allowed by a per-response nonce in the Content-Security-Policy; nothing is loaded from
//! elsewhere. Everything shown is escaped.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

use crate::domain::{ACTIVITY_PUSH_ROOM, Birthday, NOTIFICATION_PUSH_ROOM, Platform, RoomKind, RoomSummary, UserId};
use crate::store::{DeviceInfo, PushJobState, PushJobSummary};

/// What the user lookup shows of one user.
pub struct UserDetails {
    pub user: UserId,
    pub devices: Vec<DeviceInfo>,
    /// Each device's push token (masked), in the order of `devices`.
    pub tokens: Vec<Option<(Platform, String)>>,
    pub rooms: Vec<RoomSummary>,
    pub last_seen: i64,
    pub blocked: Option<i64>,
}

fn escape(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
        out
    })
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}\
header{display:flex;gap:1.5em;align-items:center;padding:.8em 1.5em;background:#1d2330;color:#fff}\
header a{color:#fff}header form{margin-left:auto}main{padding:1.5em;max-width:70em}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(13em,1fr));gap:1em}\
.card{background:#fff;border-radius:6px;padding:1em;box-shadow:0 1px 2px #0002}\
.card b{display:block;font-size:1.8em;margin-top:.2em}.card b.detail{font-size:1.05em;font-weight:600}table{border-collapse:collapse;background:#fff;width:100%}\
td,th{padding:.4em .8em;border-bottom:1px solid #e3e5e9;text-align:left}.error{color:#b00020}\
.ok{color:#137333}.bad{color:#b00020}td form{display:inline;margin-right:.4em}";

fn page(status: StatusCode, title: &str, csrf: Option<&str>, body: &str, script: Option<&str>) -> HttpResponse {
    let nonce = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 16]>());
    let nav = match csrf {
        Some(csrf) => format!(
            "<header><strong>tidings</strong><a href=\"/admin\">Overview</a><a href=\"/admin/users\">Users</a>\
             <a href=\"/admin/pushes\">Push queue</a>\
             <form method=\"post\" action=\"/admin/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button>Log out</button></form></header>",
            escape(csrf)
        ),
        None => "<header><strong>tidings</strong></header>".to_owned(),
    };
    let script = script.map_or(String::new(), |s| format!("<script nonce=\"{nonce}\">{s}</script>"));
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · tidings</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style nonce=\"{nonce}\">{STYLE}</style></head>\
         <body>{nav}<main>{body}</main>{script}</body></html>",
        escape(title)
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "content-security-policy",
            format!(
                "default-src 'none'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                 script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'"
            ),
        ))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("cache-control", "no-store"))
        .body(html)
}

pub fn login(status: StatusCode, error: Option<&str>) -> HttpResponse {
    let error = error.map_or(String::new(), |e| format!("<p class=\"error\" id=\"error\">{}</p>", escape(e)));
    let body = format!(
        "<h1>Log in</h1>{error}<form method=\"post\" action=\"/admin/login\">\
         <p><label>Username <input name=\"username\" autocomplete=\"username\" required></label></p>\
         <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
         <p><button id=\"log-in\">Log in</button></p></form>"
    );
    page(status, "Log in", None, &body, None)
}

const OVERVIEW_SCRIPT: &str = r#"
let last = null;
const set = (id, text) => { document.getElementById(id).textContent = text; };
async function refresh() {
  const response = await fetch("/admin/api/overview", { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/admin/login"; return; }
  const now = await response.json();
  const at = performance.now();
  set("connections", now.connections);
  set("users-online", now.usersOnline);
  set("rooms-active", now.roomsActive);
  if (last) {
    const secs = (at - last.at) / 1000;
    set("messages-rate", ((now.messagesCommitted - last.now.messagesCommitted) / secs).toFixed(1));
    set("deliveries-rate", ((now.eventsDelivered - last.now.eventsDelivered) / secs).toFixed(1));
  }
  for (const [provider, m] of Object.entries(now.push)) {
    set("push-" + provider, `${m.sent} sent · ${m.failed} failed · ${m.retried} retried · ${m.dropped} not needed`);
  }
  set("pending-pushes", now.usersWithPendingPushes ?? "?");
  set("queued-bytes", now.outboundQueuedBytes);
  set("webhooks", `${now.webhooksPending} pending · ${now.webhooksGivenUp} given up`);
  set("store", now.storeReady ? "ready" : "UNAVAILABLE");
  document.getElementById("store").className = now.storeReady ? "ok" : "bad";
  set("cluster", now.clusterHealthy ? "healthy" : "Redis unreachable");
  last = { now, at };
}
refresh();
setInterval(refresh, 2000);
"#;

pub fn overview(csrf: &str, nodes: &[(String, String)], store_ready: bool) -> HttpResponse {
    let card = |label: &str, id: &str, initial: &str| {
        format!("<div class=\"card\">{label}<b id=\"{id}\">{}</b></div>", escape(initial))
    };
    let detail =
        |label: &str, id: &str| format!("<div class=\"card\">{label}<b class=\"detail\" id=\"{id}\">…</b></div>");
    let nodes_html = match nodes {
        [] => "<p>One node (not in a cluster).</p>".to_owned(),
        nodes => {
            let rows: String = nodes
                .iter()
                .map(|(id, addr)| {
                    format!("<tr><td>{}</td><td>{}</td><td class=\"ok\">live</td></tr>", escape(id), escape(addr))
                })
                .collect();
            format!("<table><tr><th>Node</th><th>Internal address</th><th>State</th></tr>{rows}</table>")
        }
    };
    let body = format!(
        "<h1>Overview</h1><div class=\"cards\">{}{}{}{}{}{}{}{}</div>\
         <h2>Push</h2><div class=\"cards\">{}{}</div><h2>Nodes</h2>{nodes_html}",
        card("Connections", "connections", "…"),
        card("Users online", "users-online", "…"),
        card("Rooms active", "rooms-active", "…"),
        card("Messages / s", "messages-rate", "…"),
        card("Deliveries / s", "deliveries-rate", "…"),
        card("Store", "store", if store_ready { "ready" } else { "UNAVAILABLE" }),
        card("Cluster", "cluster", "…"),
        card("Queued for sockets (bytes)", "queued-bytes", "…"),
        detail("APNs", "push-apns"),
        detail("FCM", "push-fcm"),
    ) + &format!(
        "<h2>Queues</h2><div class=\"cards\">{}{}</div>",
        card("Users with pushes pending", "pending-pushes", "…"),
        detail("Webhooks", "webhooks")
    );
    page(StatusCode::OK, "Overview", Some(csrf), &body, Some(OVERVIEW_SCRIPT))
}

pub fn lookup(csrf: &str, q: &str, details: Option<&UserDetails>) -> HttpResponse {
    let form = format!(
        "<h1>Users</h1><form method=\"get\" action=\"/admin/users\"><input name=\"q\" value=\"{}\" \
         placeholder=\"id, app:&lt;sub&gt; or username\" autofocus> <button>Find</button></form>",
        escape(q)
    );
    let found = match details {
        None if q.is_empty() => String::new(),
        None => format!("<p id=\"not-found\">No user {}.</p>", escape(q)),
        Some(d) => {
            let devices: String = d
                .devices
                .iter()
                .zip(&d.tokens)
                .map(|(device, token)| {
                    let token = token.as_ref().map_or("none".to_owned(), |(platform, masked)| {
                        format!("{} {}", platform.provider_name(), escape(masked))
                    });
                    let action = match device.revoked {
                        true => "revoked".to_owned(),
                        false => button(
                            &format!("/admin/users/{}/devices/{}/revoke", d.user.0, device.device.0),
                            csrf,
                            "Revoke",
                        ),
                    };
                    format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        device.device.0,
                        escape(&device.name),
                        token,
                        action
                    )
                })
                .collect();
            let rooms: String = d
                .rooms
                .iter()
                .map(|r| {
                    let kind = match r.meta.kind {
                        RoomKind::Direct => "direct",
                        RoomKind::Group => "group",
                    };
                    format!(
                        "<tr><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        r.meta.id.0,
                        escape(&r.meta.name),
                        r.members.len(),
                        r.last_seq
                    )
                })
                .collect();
            let blocked =
                d.blocked.map_or(String::new(), |at| format!("<p class=\"bad\">Blocked since {}.</p>", utc(at)));
            format!(
                "<h2 id=\"user\">User {}</h2>{blocked}<p>Last seen: {}</p>\
                 <h3>Devices</h3><table id=\"devices\"><tr><th>Device</th><th>Name</th><th>Push token</th><th></th></tr>{devices}</table>\
                 <h3>Rooms</h3><table id=\"rooms\"><tr><th>Room</th><th>Kind</th><th>Name</th><th>Members</th><th>Last seq</th></tr>{rooms}</table>",
                d.user.0,
                if d.last_seen == 0 { "never (or online)".to_owned() } else { utc(d.last_seen) },
            )
        }
    };
    page(StatusCode::OK, "Users", Some(csrf), &(form + &found), None)
}

/// A time as UTC, to the second (`1970-01-01 00:00:00 UTC`); "never" for 0.
fn utc(ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let secs = ms.rem_euclid(86_400_000) / 1000;
    let date = Birthday::of_time_ms(ms);
    format!("{date} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A form that posts to `action` with the session's CSRF token: one button.
fn button(action: &str, csrf: &str, label: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button>{}</button></form>",
        escape(action),
        escape(csrf),
        escape(label)
    )
}

/// The push queue: failed jobs with their last error (retry or drop), then queued ones (drop).
pub fn push_queue(
    csrf: &str,
    done: &str,
    failed: &[PushJobSummary],
    queued: &[PushJobSummary],
    limit: usize,
) -> HttpResponse {
    let notice = match done {
        "retried" => "<p class=\"ok\" id=\"notice\">Retried: the job is due now.</p>",
        "dropped" => "<p class=\"ok\" id=\"notice\">Dropped.</p>",
        "gone" => "<p class=\"bad\" id=\"notice\">That job is not there any more (sent, dropped or changed).</p>",
        _ => "",
    };
    let room = |job: &PushJobSummary| match job.room {
        ACTIVITY_PUSH_ROOM => "activity".to_owned(),
        NOTIFICATION_PUSH_ROOM => "notifications".to_owned(),
        room => room.0.to_string(),
    };
    let row = |job: &PushJobSummary, when: String, actions: String| {
        format!(
            "<tr data-job=\"{id}\"><td>{id}</td><td><a href=\"/admin/users?q={user}\">{user}</a></td><td>{}</td>\
             <td>{}</td><td>{} × {}</td><td>{}</td><td>{when}</td><td class=\"error\">{}</td><td>{actions}</td></tr>",
            job.device.0,
            escape(&room(job)),
            escape(job.kind.name()),
            job.count,
            job.attempts,
            escape(&job.last_error),
            id = job.id,
            user = job.user.0,
        )
    };
    let action = |job: &PushJobSummary, what: &str| format!("/admin/pushes/{}/{}/{what}", job.user.0, job.id);
    let failed_rows: String = failed
        .iter()
        .map(|job| {
            let actions = button(&action(job, "retry"), csrf, "Retry") + &button(&action(job, "drop"), csrf, "Drop");
            row(job, format!("failed {}", utc(job.due_ms)), actions)
        })
        .collect();
    let queued_rows: String = queued
        .iter()
        .map(|job| {
            let when = match (job.state, job.attempts) {
                (PushJobState::Pending, _) => format!("due {} (grace window)", utc(job.due_ms)),
                (_, 0) => format!("being sent (lease until {})", utc(job.due_ms)),
                _ => format!("retry at {} (or being sent)", utc(job.due_ms)),
            };
            row(job, when, button(&action(job, "drop"), csrf, "Drop"))
        })
        .collect();
    let head = "<tr><th>Job</th><th>User</th><th>Device</th><th>Room</th><th>What</th><th>Failed attempts</th>\
                <th>When</th><th>Last error</th><th></th></tr>";
    let table = |id: &str, rows: &str, count: usize, empty: &str| match count {
        0 => format!("<p id=\"{id}\">{empty}</p>"),
        n => {
            let more = if n >= limit { format!("<p>The first {limit}.</p>") } else { String::new() };
            format!("<table id=\"{id}\">{head}{rows}</table>{more}")
        }
    };
    let body = format!(
        "<h1>Push queue</h1>{notice}<h2>Failed</h2><p>Given up after the last error shown; kept for \
         <code>push.keep_failed_days</code>. A retry sends it again now unless it is no longer needed \
         (read, muted, left the room).</p>{}<h2>Queued</h2>{}",
        table("failed", &failed_rows, failed.len(), "No failed pushes."),
        table("queued", &queued_rows, queued.len(), "Nothing queued."),
    );
    page(StatusCode::OK, "Push queue", Some(csrf), &body, None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(super::utc(0), "never");
        assert_eq!(super::utc(1), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_796_660_431_999), "2026-12-07 16:20:31 UTC");
        assert_eq!(super::utc(-1000), "1969-12-31 23:59:59 UTC");
    }
}

//! The dashboard's pages: plain HTML with its style and (on the overview) a small script inline,
//! allowed by a per-response nonce in the Content-Security-Policy; nothing is loaded from
//! elsewhere. Everything shown is escaped.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

use crate::domain::{Platform, RoomKind, RoomSummary, UserId};
use crate::store::DeviceInfo;

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
.ok{color:#137333}.bad{color:#b00020}";

fn page(status: StatusCode, title: &str, csrf: Option<&str>, body: &str, script: Option<&str>) -> HttpResponse {
    let nonce = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 16]>());
    let nav = match csrf {
        Some(csrf) => format!(
            "<header><strong>tidings</strong><a href=\"/admin\">Overview</a><a href=\"/admin/users\">Users</a>\
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
                        false => format!(
                            "<form method=\"post\" action=\"/admin/users/{}/devices/{}/revoke\">\
                             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Revoke</button></form>",
                            d.user.0,
                            device.device.0,
                            escape(csrf)
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
                d.blocked.map_or(String::new(), |at| format!("<p class=\"bad\">Blocked since {at} (ms).</p>"));
            format!(
                "<h2 id=\"user\">User {}</h2>{blocked}<p>Last seen: {}</p>\
                 <h3>Devices</h3><table id=\"devices\"><tr><th>Device</th><th>Name</th><th>Push token</th><th></th></tr>{devices}</table>\
                 <h3>Rooms</h3><table id=\"rooms\"><tr><th>Room</th><th>Kind</th><th>Name</th><th>Members</th><th>Last seq</th></tr>{rooms}</table>",
                d.user.0,
                if d.last_seen == 0 {
                    "never (or online)".to_owned()
                } else {
                    format!("{} (ms since the epoch)", d.last_seen)
                },
            )
        }
    };
    page(StatusCode::OK, "Users", Some(csrf), &(form + &found), None)
}

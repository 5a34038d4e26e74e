//! The admin dashboard over real HTTP: off until configured; a login with a session cookie
//! (HttpOnly, SameSite=Strict, Secure); a wrong password, a request without the cookie and a form
//! without its CSRF token refused; the overview's numbers; a user looked up and a device revoked,
//! which closes its connection; the push queue, with a push dropped and one retried.

use std::time::Duration;

use reqwest::redirect::Policy;
use tidings::clock::Clock;
use tidings_client::Incoming;
use tidings_client::tidings_proto::v1 as wire;
use tidings_fakes::{Failure, FakeApns, FakeFcm};

use crate::harness::{TestServer, WAIT};

const PASSWORD: &str = "a long admin password";

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

fn dashboard() -> TestServer {
    TestServer::start_with(|c| {
        c.admin.username = "ops".into();
        c.admin.password = PASSWORD.into();
    })
}

async fn log_in(server: &TestServer, username: &str, password: &str) -> reqwest::Response {
    client()
        .post(format!("http://{}/admin/login", server.addr))
        .form(&[("username", username), ("password", password)])
        .send()
        .await
        .unwrap()
}

/// The session cookie (`name=value`) a good login sets, and the whole Set-Cookie header.
async fn session(server: &TestServer) -> (String, String) {
    let response = log_in(server, "ops", PASSWORD).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/admin");
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    (cookie, set_cookie)
}

async fn get(server: &TestServer, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut request = client().get(format!("http://{}{path}", server.addr));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_dashboard_is_off_until_configured() {
    let server = TestServer::start();
    assert_eq!(get(&server, "/admin", None).await.0, 404);
    assert_eq!(log_in(&server, "ops", PASSWORD).await.status(), 404);
}

#[tokio::test]
async fn logins_cookies_and_csrf() {
    let server = dashboard();
    // Without a session: to the login form; the API answers 401.
    let response = client().get(format!("http://{}/admin", server.addr)).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.headers()["location"].to_str().unwrap()), (303, "/admin/login"));
    assert_eq!(get(&server, "/admin/api/overview", None).await.0, 401);

    let wrong = log_in(&server, "ops", "not the password").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("Wrong username or password"));

    let (cookie, set_cookie) = session(&server).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Secure"] {
        assert!(set_cookie.contains(attribute), "{attribute} missing from {set_cookie}");
    }
    let (status, page) = get(&server, "/admin", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(page.contains("Overview") && page.contains("id=\"connections\""));

    // The overview's numbers.
    let ana = server.user("ana").await;
    let (_conn, _) = ana.connect_synced(0).await;
    let (status, json) = get(&server, "/admin/api/overview", Some(&cookie)).await;
    assert_eq!(status, 200);
    let overview: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(overview["connections"].as_i64().unwrap() >= 1, "{overview}");
    assert_eq!(overview["storeReady"], true);
    assert!(overview["push"]["apns"]["sent"].is_u64());

    // A form posted without the cookie, or without the session's CSRF token, is refused.
    let logout = format!("http://{}/admin/logout", server.addr);
    let csrf = csrf_of(&page);
    let no_cookie = client().post(&logout).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(no_cookie.status(), 401);
    let no_csrf = client().post(&logout).header("cookie", &cookie).form(&[("csrf", "forged")]).send().await.unwrap();
    assert_eq!(no_csrf.status(), 403);
    let out = client().post(&logout).header("cookie", &cookie).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(get(&server, "/admin/api/overview", Some(&cookie)).await.0, 401, "logged out");

    // Logins are limited per address: a few wrong ones, then 429 even for the right password.
    for _ in 0..6 {
        log_in(&server, "ops", "guess").await;
    }
    assert_eq!(log_in(&server, "ops", PASSWORD).await.status(), 429);
}

#[tokio::test]
async fn a_user_is_looked_up_and_a_device_revoked() {
    let server = dashboard();
    let ana = server.user("ana").await;
    let bob = server.user("bob").await;
    let (mut conn, _) = ana.connect_synced(0).await;
    conn.create_direct(bob.id()).await.unwrap();
    let (cookie, _) = session(&server).await;

    let (status, page) = get(&server, "/admin/users?q=ana", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("User {}", ana.id())), "{page}");
    assert!(page.contains("phone") && page.contains("id=\"rooms\""));
    let (_, by_id) = get(&server, &format!("/admin/users?q={}", ana.id()), Some(&cookie)).await;
    assert!(by_id.contains(&format!("User {}", ana.id())));
    let (_, missing) = get(&server, "/admin/users?q=nobody", Some(&cookie)).await;
    assert!(missing.contains("No user nobody"));
    let (_, escaped) = get(&server, "/admin/users?q=%3Cscript%3E", Some(&cookie)).await;
    assert!(!escaped.contains("<script>") && escaped.contains("&lt;script&gt;"));

    let revoke = format!("http://{}/admin/users/{}/devices/{}/revoke", server.addr, ana.id(), ana.auth.device_id);
    let csrf = csrf_of(&page);
    let forged = client().post(&revoke).header("cookie", &cookie).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    let done = client().post(&revoke).header("cookie", &cookie).form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(done.status(), 303);
    loop {
        match conn.next_within(WAIT).await.unwrap() {
            Incoming::Notice(n) => {
                assert_eq!(n.kind, wire::NoticeKind::LoggedOut as i32);
                break;
            }
            Incoming::Event(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    let (_, after) = get(&server, "/admin/users?q=ana", Some(&cookie)).await;
    assert!(after.contains("revoked"));
}

/// One of the push queue page's sections (`failed` or `queued`): from its table (or its "none"
/// line) to the next heading.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let at = page.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no {id} section in {page}"));
    let rest = &page[at..];
    &rest[..rest.find("<h2>").unwrap_or(rest.len())]
}

/// The first form in `html` whose action ends with `/{what}`.
fn action_of(html: &str, what: &str) -> String {
    let suffix = format!("/{what}\"");
    let end = html.find(&suffix).unwrap_or_else(|| panic!("no {what} form in {html}")) + suffix.len() - 1;
    let start = html[..end].rfind("action=\"").unwrap() + "action=\"".len();
    html[start..end].to_owned()
}

async fn post_form(server: &TestServer, path: &str, cookie: &str, csrf: &str) -> (u16, String) {
    let url = format!("http://{}{path}", server.addr);
    let response = client().post(url).header("cookie", cookie).form(&[("csrf", csrf)]).send().await.unwrap();
    let location = response.headers().get("location").map_or("", |l| l.to_str().unwrap()).to_owned();
    (response.status().as_u16(), location)
}

/// The push queue page on a manual clock: a push still in its grace window is listed as queued
/// and, dropped, never sent; one the provider refused until it was given up is listed with its
/// error and, retried, sent once with the same push id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn the_push_queue_shows_queued_and_failed_pushes_to_drop_or_retry() {
    let (apns, fcm) = (FakeApns::start().await, FakeFcm::start().await);
    let keys = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(Clock::manual(), |c| {
        crate::push::wire_push(c, &apns, &fcm, keys.path());
        c.push.max_attempts = 1;
        c.admin.username = "ops".into();
        c.admin.password = PASSWORD.into();
    });
    let (cookie, _) = session(&server).await;
    let (ana, bob) = (server.user("ana").await, server.user("bob").await);
    let (a, _) = ana.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.unwrap().room_id;
    crate::push::register_and_leave(&bob, crate::push::ios(&crate::push::apns_token("bob")), &a).await;
    let (status, page) = get(&server, "/admin/pushes", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(section(&page, "failed").contains("No failed pushes."), "{page}");
    assert!(section(&page, "queued").contains("Nothing queued."), "{page}");

    // In its grace window: queued. Dropped (not with a forged form), never sent.
    a.send_text(room, "m1", "never pushed").await.unwrap();
    let (_, page) = get(&server, "/admin/pushes", Some(&cookie)).await;
    let queued = section(&page, "queued");
    assert!(queued.contains("grace window") && queued.contains(&format!("?q={}", bob.id())), "{queued}");
    let drop = action_of(queued, "drop");
    assert_eq!(post_form(&server, &drop, &cookie, "forged").await.0, 403);
    assert_eq!(post_form(&server, &drop, &cookie, &csrf_of(&page)).await, (303, "/admin/pushes?done=dropped".into()));
    let (_, page) = get(&server, "/admin/pushes?done=dropped", Some(&cookie)).await;
    assert!(page.contains("id=\"notice\">Dropped.") && section(&page, "queued").contains("Nothing queued."));
    server.advance_and_settle(Duration::from_secs(1)).await;
    assert!(apns.attempts().is_empty(), "a dropped push is not sent");

    // Refused, and given up at once (push.max_attempts = 1): failed, with the error.
    apns.fail_next([Failure::unavailable(None)]);
    a.send_text(room, "m2", "pushed on the second try").await.unwrap();
    server.advance_and_settle(Duration::from_secs(1)).await;
    let first_try = apns.attempts();
    assert_eq!(first_try.len(), 1);
    let (_, page) = get(&server, "/admin/pushes", Some(&cookie)).await;
    let failed = section(&page, "failed");
    let error = "<td class=\"error\">gave up after 1 attempts: ServiceUnavailable</td>";
    assert!(failed.contains(error), "the provider's reason, as the worker recorded it: {failed}");
    assert!(section(&page, "queued").contains("Nothing queued."));
    // Retried: due now, and sent.
    let retry = action_of(failed, "retry");
    assert_eq!(post_form(&server, &retry, &cookie, &csrf_of(&page)).await, (303, "/admin/pushes?done=retried".into()));
    let sent = apns.wait_for(1, WAIT).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload["aps"]["alert"]["body"], "pushed on the second try");
    assert_eq!(apns.attempts(), [first_try[0].clone(), sent[0].apns_id.clone()]);
    assert_eq!(sent[0].apns_id, first_try[0], "the same push id: a provider that did get the first try shows it once");
    let (_, page) = get(&server, "/admin/pushes", Some(&cookie)).await;
    assert!(section(&page, "failed").contains("No failed pushes."), "{page}");
    // Again: the job is not there any more.
    assert_eq!(post_form(&server, &retry, &cookie, &csrf_of(&page)).await, (303, "/admin/pushes?done=gone".into()));
}

//! docs/openapi.yaml against a running server: every documented call exists and answers, with
//! and without credentials, only with a status the document lists for it (an error body with a
//! `code` where the document says `HttpError`); and every route of the server is documented.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::harness::TestServer;
use crate::server_api::KEY;

const DOC: &str = include_str!("../../docs/openapi.yaml");

/// A documented operation: its path, method and the statuses it may answer.
#[derive(Debug)]
struct Operation {
    path: String,
    method: String,
    statuses: Vec<u16>,
}

/// The operations, read from the document's regular layout (two spaces a level): paths at level
/// one, methods at two, `responses` at three, statuses at four.
fn operations() -> Vec<Operation> {
    let mut found: Vec<Operation> = Vec::new();
    let (mut in_paths, mut path, mut in_responses) = (false, String::new(), false);
    for line in DOC.lines() {
        let indent = line.len() - line.trim_start().len();
        let key = line.trim().trim_end_matches(':');
        match indent {
            0 => in_paths = key == "paths",
            2 if in_paths => path = key.to_owned(),
            4 if in_paths && ["get", "post", "put", "delete"].contains(&key) => {
                found.push(Operation { path: path.clone(), method: key.to_owned(), statuses: Vec::new() });
                in_responses = false;
            }
            6 if in_paths => in_responses = key == "responses",
            8 if in_paths && in_responses => {
                if let Ok(status) = key.trim_matches('"').parse() {
                    found.last_mut().expect("an operation").statuses.push(status);
                }
            }
            _ => {}
        }
    }
    found
}

fn concrete(path: &str) -> String {
    let values = BTreeMap::from([
        ("{user}", "42"),
        ("{device}", "7"),
        ("{job}", "9"),
        ("{room}", "123"),
        ("{mediaId}", "0".repeat(32).leak() as &str),
    ]);
    values.iter().fold(path.to_owned(), |p, (name, value)| p.replace(name, value))
}

async fn answer(server: &TestServer, op: &Operation, key: Option<&str>) -> (u16, String) {
    let url = format!("http://{}{}", server.addr, concrete(&op.path));
    let client = reqwest::Client::new();
    let mut request = match op.method.as_str() {
        "get" => client.get(url),
        _ => client.post(url).header("content-type", "application/json").body("{}"),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("the server answers");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn every_documented_call_answers_as_documented() {
    let operations = operations();
    assert!(operations.len() >= 20, "{operations:?}");
    let server = TestServer::start_with(|c| {
        c.server_api.keys = vec![KEY.into()];
        c.admin.username = "ops".into();
        c.admin.password = "a long admin password".into();
        c.server.demo = true;
    });
    let mut checked = 0;
    for op in &operations {
        assert!(!op.statuses.is_empty(), "{} {} documents no status", op.method, op.path);
        let keys: &[Option<&str>] = if op.path.starts_with("/v1/server/") { &[None, Some(KEY)] } else { &[None] };
        for &key in keys {
            let (status, body) = answer(&server, op, key).await;
            assert!(
                op.statuses.contains(&status),
                "{} {} (key: {}) answered {status}, documented {:?}: {body}",
                op.method.to_uppercase(),
                op.path,
                key.is_some(),
                op.statuses
            );
            // The API's errors are `HttpError`s (the dashboard's pages are HTML).
            if status >= 400 && status != 416 && op.path.starts_with("/v1/") {
                let error: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                assert!(
                    error["code"].as_str().is_some_and(|c| c.starts_with("ERROR_CODE_")),
                    "{} {}: {body}",
                    op.method,
                    op.path
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} calls checked");
}

#[test]
fn every_route_is_documented() {
    use tidings_client::tidings_proto::paths;
    let documented: Vec<(String, String)> = operations().into_iter().map(|o| (o.method, o.path)).collect();
    let is_documented = |method: &str, path: &str| documented.iter().any(|(m, p)| m == method && p == path);
    for (method, path) in [
        ("get", paths::WEBSOCKET),
        ("post", paths::SIGN_UP),
        ("post", paths::LOG_IN),
        ("post", paths::REFRESH),
        ("post", paths::LOG_OUT),
        ("post", paths::MEDIA),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ] {
        assert!(is_documented(method, path), "{method} {path} is not in docs/openapi.yaml");
    }
    // The server API's routes, as its source declares them.
    let source = include_str!("../../src/transport/server_api.rs");
    let mut routes = 0;
    for line in source.lines().filter(|l| l.trim_start().starts_with(".route(\"")) {
        let path = line.split('"').nth(1).expect("a quoted path");
        let method = if line.contains("web::get()") { "get" } else { "post" };
        let full = format!("{}{path}", paths::SERVER_API);
        assert!(is_documented(method, &full), "{method} {full} is not in docs/openapi.yaml");
        routes += 1;
    }
    assert!(routes >= 10, "found {routes} server API routes");
    let admin = include_str!("../../src/admin/mod.rs");
    for line in admin.lines().filter(|l| l.trim_start().starts_with(".route(\"")) {
        let path = line.split('"').nth(1).expect("a quoted path").trim_end_matches('/');
        let method = if line.contains("web::get()") { "get" } else { "post" };
        let full = format!("/admin{path}");
        assert!(is_documented(method, &full), "{method} {full} is not in docs/openapi.yaml");
    }
    let demo = include_str!("../../src/transport/demo.rs");
    for line in demo.lines().filter(|l| l.contains(".route(\"")) {
        let path = line.split('"').nth(1).expect("a quoted path");
        assert!(is_documented("get", path), "get {path} is not in docs/openapi.yaml");
    }
    let media = include_str!("../../src/transport/media_http.rs");
    assert!(media.contains("{{media_id}}/url") && is_documented("get", "/v1/media/{mediaId}/url"));
}

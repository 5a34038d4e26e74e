//! `/demo`: a small chat page built on the TypeScript client (`clients/ts/demo/`), for trying
//! tidings in a browser. Off unless `server.demo = true`. Its script is the client's bundle,
//! committed (`npm run build:demo`; a test checks it is current) and compiled into the binary:
//! `cargo run` needs no Node.

use actix_web::{HttpResponse, web};

const SCRIPT: &str = include_str!("../../clients/ts/demo/dist/demo.js");

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width">
<title>tidings demo</title>
<link rel="stylesheet" href="/demo/demo.css">
</head>
<body>
<h1>tidings demo</h1>
<p id="status">signed out</p>
<section id="signed-out">
  <p><label>Username <input id="username" autocomplete="username"></label></p>
  <p><label>Password <input id="password" type="password" autocomplete="current-password"></label></p>
  <p><button id="signup">Sign up</button> <button id="login">Log in</button></p>
</section>
<section id="signed-in" hidden>
  <p>Signed in as <strong id="me"></strong></p>
  <p><label>Chat with <input id="peer" placeholder="a username"></label> <button id="open-chat">Open</button></p>
  <ul id="messages"></ul>
  <p><input id="message" placeholder="a message"> <button id="send">Send</button></p>
</section>
<script type="module" src="/demo/demo.js"></script>
</body>
</html>
"#;

const STYLE: &str = "body{font:15px system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}\
#messages{list-style:none;padding:0;border:1px solid #ddd;min-height:8em;max-height:24em;overflow:auto}\
#messages li{padding:.3em .6em;border-bottom:1px solid #eee}#status{color:#666}";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/demo", web::get().to(page))
        .route("/demo/demo.js", web::get().to(script))
        .route("/demo/demo.css", web::get().to(style));
}

/// Only this origin's own script, style and socket.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'";

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("content-security-policy", CSP))
        .body(PAGE)
}

async fn script() -> HttpResponse {
    HttpResponse::Ok().content_type("text/javascript; charset=utf-8").body(SCRIPT)
}

async fn style() -> HttpResponse {
    HttpResponse::Ok().content_type("text/css; charset=utf-8").body(STYLE)
}

//! A fake FCM: the OAuth2 token endpoint (`POST /token`, JWT-bearer grant) and the HTTP v1 send
//! endpoint (`POST /v1/projects/{project}/messages:send`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::public_key::PublicKey;
use crate::serve::{Protocol, Received, Reply, header, reply, serve, wait_until};
use crate::{Failure, keys_dir};

pub const PROJECT_ID: &str = "tidings-fake";
const CLIENT_EMAIL: &str = "push@tidings-fake.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// A message the fake accepted (the `message` object of the request).
#[derive(Debug, Clone)]
pub struct FcmPush {
    pub token: String,
    pub message: Value,
    pub accepted_at: std::time::Instant,
}

#[derive(Default)]
struct State {
    accepted: Vec<FcmPush>,
    refused: Vec<String>,
    /// Send requests received with a valid access token, accepted or not.
    attempts: usize,
    access_tokens: HashSet<String>,
    tokens_issued: usize,
    dead_tokens: HashSet<String>,
    script: VecDeque<Failure>,
    token_endpoint_down: bool,
}

pub struct FakeFcm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for FakeFcm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeFcm {
    pub async fn start() -> Self {
        let public = std::fs::read(keys_dir().join("fcm-test-key.pub.pem")).expect("reading the FCM test key");
        let key = Arc::new(PublicKey::rs256(&public).expect("the FCM test public key"));
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        // The assertion's audience is the token URL, which needs the port: set once bound.
        let token_url = Arc::new(Mutex::new(String::new()));
        let handler = {
            let (state, changed, token_url) = (state.clone(), changed.clone(), token_url.clone());
            move |request: Received| {
                let (state, changed, key) = (state.clone(), changed.clone(), key.clone());
                let token_url = token_url.lock().unwrap().clone();
                async move {
                    let answer = handle(&state, &key, &token_url, request);
                    changed.notify_waiters();
                    answer
                }
            }
        };
        let (addr, task) = serve(Protocol::Auto, handler).await;
        *token_url.lock().unwrap() = format!("http://{addr}/token");
        Self { addr, state, changed, task }
    }

    /// The base URL to configure as `fcm.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Writes a service-account key file for this fake (its token_uri points here) into `dir`.
    pub fn write_service_account(&self, dir: &Path) -> PathBuf {
        let private_key = std::fs::read_to_string(keys_dir().join("fcm-test-key.pem")).expect("the FCM test key");
        let account = json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": "fake-key-1",
            "private_key": private_key,
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": self.token_url(),
        });
        let path = dir.join("fcm-service-account.json");
        std::fs::write(&path, account.to_string()).expect("writing the service account file");
        path
    }

    pub fn kill_token(&self, token: &str) {
        self.state.lock().unwrap().dead_tokens.insert(token.to_owned());
    }

    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        self.state.lock().unwrap().script.extend(failures);
    }

    /// The token endpoint answers 503 while set.
    pub fn set_token_endpoint_down(&self, down: bool) {
        self.state.lock().unwrap().token_endpoint_down = down;
    }

    pub fn accepted(&self) -> Vec<FcmPush> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.state.lock().unwrap().accepted.len()
    }

    pub fn refused(&self) -> Vec<String> {
        self.state.lock().unwrap().refused.clone()
    }

    /// Send requests that passed authentication, accepted or not.
    pub fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts
    }

    pub fn access_tokens_issued(&self) -> usize {
        self.state.lock().unwrap().tokens_issued
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<FcmPush> {
        wait_until(&self.changed, timeout, || self.accepted_count() >= n).await;
        self.accepted()
    }
}

fn handle(state: &Mutex<State>, key: &PublicKey, token_url: &str, request: Received) -> Reply {
    if request.method != hyper::Method::POST {
        return google_error(405, "METHOD_NOT_ALLOWED", "", "POST only");
    }
    if request.path == "/token" {
        return issue_token(state, key, token_url, &request);
    }
    let expected = format!("/v1/projects/{PROJECT_ID}/messages:send");
    if request.path != expected {
        state.lock().unwrap().refused.push(format!("path {}", request.path));
        return google_error(404, "NOT_FOUND", "", "no such project or method");
    }
    let bearer = header(&request.headers, "authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
    if !bearer.is_some_and(|b| state.lock().unwrap().access_tokens.contains(&b)) {
        state.lock().unwrap().refused.push("bad access token".into());
        return google_error(401, "UNAUTHENTICATED", "", "Request had invalid authentication credentials.");
    }
    state.lock().unwrap().attempts += 1;
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let message = &body["message"];
    let Some(token) = message["token"].as_str().filter(|t| !t.is_empty()) else {
        state.lock().unwrap().refused.push("no token".into());
        return google_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "message.token is required");
    };
    // FCM data values must be strings.
    if message["data"].as_object().is_some_and(|d| d.values().any(|v| !v.is_string())) {
        state.lock().unwrap().refused.push("non-string data".into());
        return google_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "data values must be strings");
    }
    let mut s = state.lock().unwrap();
    if s.dead_tokens.contains(token) {
        return google_error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.");
    }
    if let Some(failure) = s.script.pop_front() {
        let (status, code) = if failure.status == 429 {
            ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
        } else {
            ("UNAVAILABLE", "UNAVAILABLE")
        };
        let mut answer = google_error(failure.status, status, code, "try again later");
        if let Some(after) = failure.retry_after {
            answer.headers_mut().insert("retry-after", after.to_string().parse().unwrap());
        }
        return answer;
    }
    s.accepted.push(FcmPush {
        token: token.to_owned(),
        message: message.clone(),
        accepted_at: std::time::Instant::now(),
    });
    let name = format!("projects/{PROJECT_ID}/messages/{}", s.accepted.len());
    reply(200, &[], json!({ "name": name }))
}

/// The OAuth2 JWT-bearer grant: checks the service account's RS256 assertion like Google does.
fn issue_token(state: &Mutex<State>, key: &PublicKey, token_url: &str, request: &Received) -> Reply {
    let oauth_error = |status: u16, error: &str, description: &str| {
        state.lock().unwrap().refused.push(format!("token: {description}"));
        reply(status, &[], json!({ "error": error, "error_description": description }))
    };
    if state.lock().unwrap().token_endpoint_down {
        return oauth_error(503, "temporarily_unavailable", "token endpoint is down");
    }
    let form: HashMap<String, String> = form_pairs(&request.body);
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error(400, "unsupported_grant_type", "expected the JWT-bearer grant");
    }
    let Some(assertion) = form.get("assertion") else { return oauth_error(400, "invalid_request", "no assertion") };
    let claims = match check_assertion(assertion, key, token_url) {
        Ok(claims) => claims,
        Err(e) => return oauth_error(400, "invalid_grant", &format!("bad assertion: {e}")),
    };
    let scopes = claims.get("scope").and_then(Value::as_str).unwrap_or_default();
    if !scopes.split(' ').any(|s| s == SCOPE) {
        return oauth_error(400, "invalid_scope", "the firebase.messaging scope is required");
    }
    let mut s = state.lock().unwrap();
    s.tokens_issued += 1;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let access_token = format!("fake-access-{}-{now}", s.tokens_issued);
    s.access_tokens.insert(access_token.clone());
    reply(200, &[], json!({ "access_token": access_token, "expires_in": 3599, "token_type": "Bearer" }))
}

/// Verifies an RS256 assertion the way Google does: base64url segments with or without padding
/// (gcp_auth pads), the signature over the segments as sent, then issuer, audience and expiry.
fn check_assertion(assertion: &str, key: &PublicKey, token_url: &str) -> Result<HashMap<String, Value>, String> {
    use base64::Engine;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else { return Err("not a JWT".into()) };
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
    let header: Value = serde_json::from_slice(&b64(header).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {} is not RS256", header["alg"]));
    }
    let message = format!("{}.{}", parts[0], parts[1]);
    if !key.verifies(message.as_bytes(), signature) {
        return Err("InvalidSignature".into());
    }
    let claims: HashMap<String, Value> =
        serde_json::from_slice(&b64(claims).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if claims.get("iss").and_then(Value::as_str) != Some(CLIENT_EMAIL) {
        return Err("wrong issuer".into());
    }
    if claims.get("aud").and_then(Value::as_str) != Some(token_url) {
        return Err(format!("audience {:?} is not {token_url}", claims.get("aud")));
    }
    if !claims.get("exp").and_then(Value::as_u64).is_some_and(|exp| exp > now && exp <= now + 3600 + 60) {
        return Err("expired, or valid for more than an hour".into());
    }
    Ok(claims)
}

fn google_error(status: u16, rpc_status: &str, fcm_code: &str, message: &str) -> Reply {
    let mut details = vec![];
    if !fcm_code.is_empty() {
        details.push(json!({ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code }));
    }
    reply(
        status,
        &[],
        json!({ "error": { "code": status, "message": message, "status": rpc_status, "details": details } }),
    )
}

/// `application/x-www-form-urlencoded` pairs (the grant's values need only %-decoding of `:`).
fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

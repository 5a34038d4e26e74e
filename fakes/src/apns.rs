//! A fake APNs: `POST /3/device/{token}` over cleartext HTTP/2, checked the way Apple checks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::public_key::PublicKey;
use crate::serve::{Protocol, Received, Reply, header, reply, serve, wait_until};
use crate::{APNS_KEY_ID, APNS_TEAM_ID, Failure, keys_dir};

/// A notification the fake accepted.
#[derive(Debug, Clone)]
pub struct ApnsPush {
    pub device_token: String,
    pub apns_id: String,
    pub topic: String,
    pub push_type: String,
    pub priority: String,
    pub collapse_id: String,
    pub expiration: String,
    pub payload: Value,
    pub accepted_at: std::time::Instant,
}

#[derive(Default)]
struct State {
    accepted: Vec<ApnsPush>,
    /// Requests refused for a bad provider token or bad headers: (reason, device token).
    refused: Vec<(String, String)>,
    dead_tokens: HashSet<String>,
    script: VecDeque<Failure>,
    /// Every request's apns-id, accepted or not.
    attempts: Vec<String>,
    delay: Duration,
}

pub struct FakeApns {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApns {
    /// Starts on 127.0.0.1:0 with Apple's usual 500 concurrent streams.
    pub async fn start() -> Self {
        Self::start_with_streams(500).await
    }

    pub async fn start_with_streams(max_concurrent_streams: u32) -> Self {
        let public = std::fs::read(keys_dir().join("apns-test-key.pub.pem")).expect("reading the APNs test key");
        let key = Arc::new(ProviderKey {
            key: PublicKey::es256(&public).expect("the APNs test public key"),
            verified: Mutex::new(HashSet::new()),
        });
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (state, changed, in_flight, peak) = (state.clone(), changed.clone(), in_flight.clone(), peak.clone());
            move |request: Received| {
                let (state, changed, key) = (state.clone(), changed.clone(), key.clone());
                let (in_flight, peak) = (in_flight.clone(), peak.clone());
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let answer = handle(&state, &key, request).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    changed.notify_waiters();
                    answer
                }
            }
        };
        let (addr, task) = serve(Protocol::Http2 { max_concurrent_streams }, handler).await;
        Self { addr, state, changed, in_flight, peak, task }
    }

    /// The base URL to configure as `apns.production_url` / `apns.sandbox_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers 410 Unregistered for this token from now on.
    pub fn kill_token(&self, token: &str) {
        self.state.lock().unwrap().dead_tokens.insert(token.to_owned());
    }

    /// The next requests (one per failure) get these answers instead of success.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        self.state.lock().unwrap().script.extend(failures);
    }

    /// Forgets the scripted failures not used yet.
    pub fn clear_failures(&self) {
        self.state.lock().unwrap().script.clear();
    }

    /// Every accepted request waits this long before its answer (to measure concurrency).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn accepted(&self) -> Vec<ApnsPush> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.state.lock().unwrap().accepted.len()
    }

    /// apns-id of every request received, accepted or not, in arrival order.
    pub fn attempts(&self) -> Vec<String> {
        self.state.lock().unwrap().attempts.clone()
    }

    pub fn refused(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().refused.clone()
    }

    /// Most requests that were in flight at once.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` notifications were accepted, or `timeout` passes; returns them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ApnsPush> {
        wait_until(&self.changed, timeout, || self.accepted_count() >= n).await;
        self.accepted()
    }
}

/// The team's public key, and the provider tokens whose signatures it already verified: a token
/// is sent with every request for up to an hour, and verifying ES256 each time would make the
/// fake, not the client, what a throughput benchmark measures. Claims are still checked each time.
struct ProviderKey {
    key: PublicKey,
    verified: Mutex<HashSet<String>>,
}

impl ProviderKey {
    fn verifies(&self, jwt: &str, signing_input: &str, signature: &str) -> bool {
        if self.verified.lock().unwrap().contains(jwt) {
            return true;
        }
        let good = self.key.verifies(signing_input.as_bytes(), signature);
        if good {
            self.verified.lock().unwrap().insert(jwt.to_owned());
        }
        good
    }
}

async fn handle(state: &Mutex<State>, key: &ProviderKey, request: Received) -> Reply {
    let refuse = |status: u16, reason: &str, token: &str| {
        state.lock().unwrap().refused.push((reason.to_owned(), token.to_owned()));
        reply(status, &[], json!({ "reason": reason }))
    };
    let Some(token) = request.path.strip_prefix("/3/device/").map(str::to_owned) else {
        return refuse(404, "BadPath", "");
    };
    if request.method != hyper::Method::POST {
        return refuse(405, "MethodNotAllowed", &token);
    }
    let h = |name| header(&request.headers, name);
    let apns_id = h("apns-id").unwrap_or_default();
    state.lock().unwrap().attempts.push(apns_id.clone());
    if let Err(reason) = check_provider_token(key, h("authorization")) {
        return refuse(403, reason, &token);
    }
    let Some(topic) = h("apns-topic") else { return refuse(400, "MissingTopic", &token) };
    let push_type = h("apns-push-type").unwrap_or_default();
    if !["alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity"]
        .contains(&push_type.as_str())
    {
        return refuse(400, "InvalidPushType", &token);
    }
    let priority = h("apns-priority").unwrap_or_else(|| "10".into());
    if !["5", "10", "1"].contains(&priority.as_str()) {
        return refuse(400, "BadPriority", &token);
    }
    if !apns_id.is_empty() && !is_uuid(&apns_id) {
        return refuse(400, "BadMessageId", &token);
    }
    let collapse_id = h("apns-collapse-id").unwrap_or_default();
    if collapse_id.len() > 64 {
        return refuse(400, "BadCollapseId", &token);
    }
    let expiration = h("apns-expiration").unwrap_or_default();
    if !expiration.is_empty() && expiration.parse::<u64>().is_err() {
        return refuse(400, "BadExpirationDate", &token);
    }
    if request.body.len() > 4096 {
        return refuse(413, "PayloadTooLarge", &token);
    }
    let payload: Value = match serde_json::from_slice(&request.body) {
        Ok(payload @ Value::Object(_)) if payload.get("aps").is_some() => payload,
        _ => return refuse(400, "PayloadEmpty", &token),
    };
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse(400, "BadDeviceToken", &token);
    }
    let (failure, dead, delay) = {
        let mut s = state.lock().unwrap();
        let dead = s.dead_tokens.contains(&token);
        let failure = if dead { None } else { s.script.pop_front() };
        (failure, dead, s.delay)
    };
    if dead {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        return reply(410, &[("apns-id", apns_id)], json!({ "reason": "Unregistered", "timestamp": timestamp }));
    }
    if let Some(failure) = failure {
        let reason = if failure.status == 429 { "TooManyRequests" } else { "ServiceUnavailable" };
        let mut headers = vec![("apns-id", apns_id)];
        if let Some(after) = failure.retry_after {
            headers.push(("retry-after", after.to_string()));
        }
        return reply(failure.status, &headers, json!({ "reason": reason }));
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let push = ApnsPush {
        device_token: token,
        apns_id: apns_id.clone(),
        topic,
        push_type,
        priority,
        collapse_id,
        expiration,
        payload,
        accepted_at: std::time::Instant::now(),
    };
    state.lock().unwrap().accepted.push(push);
    reply(200, &[("apns-id", apns_id)], Value::Null)
}

/// Apple's checks of a provider token: ES256, the right key id and team, issued within the hour.
fn check_provider_token(key: &ProviderKey, authorization: Option<String>) -> Result<(), &'static str> {
    let Some(jwt) = authorization.as_deref().and_then(|a| a.strip_prefix("bearer ").or(a.strip_prefix("Bearer ")))
    else {
        return Err("MissingProviderToken");
    };
    let [header, claims, signature] = jwt.split('.').collect::<Vec<_>>()[..] else {
        return Err("InvalidProviderToken");
    };
    let json = |segment: &str| -> Result<HashMap<String, Value>, &'static str> {
        let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| "InvalidProviderToken")?;
        serde_json::from_slice(&bytes).map_err(|_| "InvalidProviderToken")
    };
    let fields = json(header)?;
    if fields.get("alg").and_then(Value::as_str) != Some("ES256")
        || fields.get("kid").and_then(Value::as_str) != Some(APNS_KEY_ID)
    {
        return Err("InvalidProviderToken");
    }
    let signing_input = &jwt[..header.len() + 1 + claims.len()];
    if !key.verifies(jwt, signing_input, signature) {
        return Err("InvalidProviderToken");
    }
    let claims = json(claims)?;
    if claims.get("iss").and_then(Value::as_str) != Some(APNS_TEAM_ID) {
        return Err("InvalidProviderToken");
    }
    let iat = claims.get("iat").and_then(Value::as_u64).ok_or("InvalidProviderToken")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if iat + 3600 < now || iat > now + 60 {
        return Err("ExpiredProviderToken");
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

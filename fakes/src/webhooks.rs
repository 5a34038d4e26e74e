//! A fake webhook receiver: the app's backend as tidings calls it. It checks each call's signature
//! the way a backend should (HMAC-SHA256 of "<timestamp>.<body>" under the shared secret, the
//! timestamp recent), records the events it accepted, and answers failures as a test scripts them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::Failure;
use crate::serve::{Protocol, Received, header, reply, serve, wait_until};

/// The shared secret, to configure as `webhooks.secret`.
pub const WEBHOOK_SECRET: &str = "the webhook secret both sides know, 32+ bytes";

/// An accepted call.
#[derive(Debug, Clone)]
pub struct WebhookCall {
    pub delivery_id: String,
    pub event: String,
    /// The body: `id`, `atMs`, `type`, `data`.
    pub body: Value,
}

#[derive(Default)]
struct State {
    accepted: Vec<WebhookCall>,
    /// Calls refused for a bad signature or a stale timestamp.
    forged: usize,
    /// Every call's delivery id, in arrival order.
    attempts: Vec<String>,
    script: VecDeque<Failure>,
}

pub struct FakeWebhookReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for FakeWebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn signed(received: &Received) -> bool {
    let (Some(timestamp), Some(signature)) =
        (header(&received.headers, "x-tidings-timestamp"), header(&received.headers, "x-tidings-signature"))
    else {
        return false;
    };
    let Ok(at) = timestamp.parse::<u64>() else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(at) > 300 {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(&received.body);
    let Some(hex) = signature.strip_prefix("v1=") else { return false };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    ring::hmac::verify(&key, &message, &tag).is_ok()
}

impl FakeWebhookReceiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let handler = {
            let (state, changed) = (state.clone(), changed.clone());
            move |received: Received| {
                let (state, changed) = (state.clone(), changed.clone());
                async move {
                    let answer = {
                        let mut s = state.lock().unwrap();
                        let delivery = header(&received.headers, "x-tidings-delivery").unwrap_or_default();
                        s.attempts.push(delivery.clone());
                        if let Some(failure) = s.script.pop_front() {
                            let headers: Vec<(&str, String)> =
                                failure.retry_after.map(|s| ("retry-after", s.to_string())).into_iter().collect();
                            reply(failure.status, &headers, Value::Null)
                        } else if !signed(&received) {
                            s.forged += 1;
                            reply(401, &[], Value::Null)
                        } else {
                            let body: Value = serde_json::from_slice(&received.body).unwrap_or(Value::Null);
                            let event = header(&received.headers, "x-tidings-event").unwrap_or_default();
                            s.accepted.push(WebhookCall { delivery_id: delivery, event, body });
                            reply(204, &[], Value::Null)
                        }
                    };
                    changed.notify_waiters();
                    answer
                }
            }
        };
        let (addr, task) = serve(Protocol::Auto, handler).await;
        Self { addr, state, changed, task }
    }

    /// To configure as `webhooks.url`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/tidings", self.addr)
    }

    /// The next calls answer these failures, in order, before any succeeds.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        self.state.lock().unwrap().script.extend(failures);
    }

    /// Forgets the failures still scripted: the backend is back.
    pub fn recover(&self) {
        self.state.lock().unwrap().script.clear();
    }

    pub fn accepted(&self) -> Vec<WebhookCall> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn attempts(&self) -> Vec<String> {
        self.state.lock().unwrap().attempts.clone()
    }

    pub fn forged(&self) -> usize {
        self.state.lock().unwrap().forged
    }

    /// Waits until `count` calls of `event` were accepted (or `timeout` passed); those calls.
    pub async fn wait_for(&self, event: &str, count: usize, timeout: Duration) -> Vec<WebhookCall> {
        let of_event = || self.accepted().into_iter().filter(|c| c.event == event).collect::<Vec<_>>();
        wait_until(&self.changed, timeout, || of_event().len() >= count).await;
        of_event()
    }
}

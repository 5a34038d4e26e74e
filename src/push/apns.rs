//! A small APNs client: HTTP/2 with token authentication, on one long-lived connection per host.
//!
//! Why not `a2`: it only ever talks to Apple's two hosts, so nothing but Apple could test it. This
//! one takes its base URLs from config (production, sandbox, or a test server on loopback).
//! The HTTP/2 connection is shared by every request; h2 honours the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS (Apple's is 500, dropping to 1 after a rejected token), and
//! `concurrency` bounds our own streams in flight on top of that.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::notification::Notification;
use super::provider::{Delivery, retry_after};
use crate::config::ApnsConfig;
use crate::jws::Es256;
use crate::store::PushJob;

/// Apple accepts a provider token for an hour and refuses one renewed more often than every 20
/// minutes (TooManyProviderTokenUpdates): renew at 50 minutes.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

pub struct ApnsClient {
    http: reqwest::Client,
    production_url: String,
    sandbox_url: String,
    key: Es256,
    key_id: String,
    team_id: String,
    ttl: Duration,
    token: Mutex<Option<(String, Instant)>>,
}

impl ApnsClient {
    /// Reads the .p8 key; fails with a readable message when it is missing or not a P-256 key.
    pub fn new(config: &ApnsConfig, request_timeout: Duration, ttl: Duration) -> anyhow::Result<Self> {
        let pem = std::fs::read(&config.key_file)
            .map_err(|e| anyhow::anyhow!("reading apns.key_file {}: {e}", config.key_file.display()))?;
        let key = Es256::from_pem(&pem).map_err(|e| {
            anyhow::anyhow!("apns.key_file {} is not a .p8 (EC P-256) key: {e}", config.key_file.display())
        })?;
        if config.key_id.is_empty() || config.team_id.is_empty() {
            anyhow::bail!("apns.key_id and apns.team_id are required with apns.key_file");
        }
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(request_timeout)
            .pool_idle_timeout(None)
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true)
            .build()?;
        Ok(Self {
            http,
            production_url: config.production_url.trim_end_matches('/').to_owned(),
            sandbox_url: config.sandbox_url.trim_end_matches('/').to_owned(),
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            ttl,
            token: Mutex::new(None),
        })
    }

    /// The current provider token (ES256 JWT), signed anew when it is old or `renew` is set.
    fn provider_token(&self, renew: bool) -> anyhow::Result<String> {
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, at)) = cached.as_ref()
            && !renew
            && at.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let claims = json!({ "iss": self.team_id, "iat": unix_now() });
        let token = self.key.sign(&self.key_id, &claims)?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    pub async fn send(&self, job: &PushJob, n: &Notification) -> Delivery {
        let first = self.attempt(job, n, false).await;
        match &first {
            // Our token was refused as stale (clock skew, key rotation): sign a new one, once.
            Delivery::Rejected { reason } if reason == "ExpiredProviderToken" || reason == "InvalidProviderToken" => {
                self.attempt(job, n, true).await
            }
            _ => first,
        }
    }

    async fn attempt(&self, job: &PushJob, n: &Notification, renew_token: bool) -> Delivery {
        let token = match self.provider_token(renew_token) {
            Ok(token) => token,
            Err(e) => return Delivery::Rejected { reason: format!("signing the provider token: {e}") },
        };
        let base = if job.sandbox { &self.sandbox_url } else { &self.production_url };
        let url = format!("{base}/3/device/{}", job.token);
        let expiration = unix_now() + self.ttl.as_secs();
        let request = self
            .http
            .post(url)
            .bearer_auth(token)
            .header("apns-topic", &job.app_id)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", &n.collapse_id)
            .header("apns-id", &n.push_id)
            .json(&payload(n));
        let response = match request.send().await {
            Ok(response) => response,
            // Without the URL: it carries the device token, which must not reach logs or the store.
            Err(e) => {
                return Delivery::Retry { after: None, reason: format!("apns request failed: {}", e.without_url()) };
            }
        };
        let status = response.status().as_u16();
        if status == 200 {
            return Delivery::Accepted;
        }
        let after = retry_after(response.headers());
        let reason = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|body| body.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        classify(status, reason, after)
    }
}

/// Apple's documented answers (Handling notification responses from APNs).
fn classify(status: u16, reason: String, after: Option<Duration>) -> Delivery {
    match (status, reason.as_str()) {
        (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => Delivery::TokenDead { reason },
        (429, _) | (500..=599, _) => Delivery::Retry { after, reason },
        _ => Delivery::Rejected { reason },
    }
}

fn payload(n: &Notification) -> serde_json::Value {
    let mut payload = json!({
        "aps": {
            "alert": { "title": n.title, "body": n.body },
            "badge": n.badge,
            "sound": "default",
            "thread-id": n.thread_id,
            // Lets a notification service extension decrypt or enrich the notification.
            "mutable-content": 1,
        },
        "push_id": n.push_id,
        "room_id": n.room_id.to_string(),
        "seq": n.seq.to_string(),
        "kind": n.kind.name(),
    });
    if let Some(fields) = payload.as_object_mut() {
        for (key, value) in &n.data {
            fields.entry(key.clone()).or_insert_with(|| value.clone().into());
        }
    }
    payload
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_reasons_map_to_what_the_pipeline_does() {
        let dead = |s, r: &str| matches!(classify(s, r.into(), None), Delivery::TokenDead { .. });
        assert!(dead(410, "Unregistered"));
        assert!(dead(400, "BadDeviceToken"));
        assert!(dead(400, "DeviceTokenNotForTopic"));
        assert!(matches!(classify(429, "TooManyRequests".into(), None), Delivery::Retry { .. }));
        assert!(matches!(classify(503, "ServiceUnavailable".into(), None), Delivery::Retry { .. }));
        assert!(matches!(classify(400, "PayloadTooLarge".into(), None), Delivery::Rejected { .. }));
        assert!(matches!(classify(403, "InvalidProviderToken".into(), None), Delivery::Rejected { .. }));
    }
}

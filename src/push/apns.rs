//! A small APNs client: HTTP/2 with token authentication, on one long-lived connection per host.
//!
//! Why not `a2`: it only ever talks to Apple's two hosts, so nothing but Apple could test it. This
//! one takes its base URLs from config (production, sandbox, or a test server on loopback).
//! The HTTP/2 connection is shared by every request; h2 honours the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS (Apple's is 500, dropping to 1 after a rejected token), and
//! `concurrency` bounds our own streams in flight on top of that.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::json;

use super::notification::{Notification, TitleAndBody};
use super::provider::{Delivery, base_url, retry_after};
use crate::config::ApnsConfig;
use crate::jws::Es256;
use crate::store::PushJob;

/// Apple accepts a provider token for an hour and refuses one renewed more often than every 20
/// minutes (TooManyProviderTokenUpdates): renew at 50 minutes.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

pub struct ApnsClient {
    http: reqwest::Client,
    production_url: Url,
    sandbox_url: Url,
    key: Es256,
    key_id: String,
    team_id: String,
    ttl: Duration,
    /// The provider token as an `authorization` value, and when it was signed.
    token: Mutex<Option<(HeaderValue, Instant)>>,
}

const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

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
            production_url: base_url("apns.production_url", &config.production_url)?,
            sandbox_url: base_url("apns.sandbox_url", &config.sandbox_url)?,
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            ttl,
            token: Mutex::new(None),
        })
    }

    /// The current provider token (ES256 JWT), signed anew when it is old or `renew` is set.
    fn provider_token(&self, renew: bool) -> anyhow::Result<HeaderValue> {
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, at)) = cached.as_ref()
            && !renew
            && at.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let claims = json!({ "iss": self.team_id, "iat": unix_now() });
        let mut token = HeaderValue::try_from(format!("bearer {}", self.key.sign(&self.key_id, &claims)?))?;
        token.set_sensitive(true);
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// `{base}/3/device/{token}`, from the base parsed once (a URL parsed per request was a visible
    /// part of the pipeline's CPU).
    fn device_url(&self, job: &PushJob) -> Url {
        let mut url = if job.sandbox { self.sandbox_url.clone() } else { self.production_url.clone() };
        let path = format!("{}/3/device/{}", url.path().trim_end_matches('/'), job.token);
        url.set_path(&path);
        url
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
        let body = match serde_json::to_vec(&Payload(n)) {
            Ok(body) => body,
            Err(e) => return Delivery::Rejected { reason: format!("encoding the payload: {e}") },
        };
        let expiration = unix_now() + self.ttl.as_secs();
        let request = self
            .http
            .post(self.device_url(job))
            .header(AUTHORIZATION, token)
            .header(APNS_TOPIC, &job.app_id)
            .header(APNS_PUSH_TYPE, HeaderValue::from_static("alert"))
            .header(APNS_PRIORITY, HeaderValue::from_static("10"))
            .header(APNS_EXPIRATION, expiration)
            .header(APNS_COLLAPSE_ID, &n.collapse_id)
            .header(APNS_ID, &n.push_id)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
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

/// The JSON body: Apple's `aps` dictionary, our fields beside it, then the app's own pairs.
struct Payload<'a>(&'a Notification);

#[derive(Serialize)]
struct Aps<'a> {
    alert: TitleAndBody<'a>,
    badge: u32,
    sound: &'static str,
    #[serde(rename = "thread-id")]
    thread_id: &'a str,
    /// Lets a notification service extension decrypt or enrich the notification.
    #[serde(rename = "mutable-content")]
    mutable_content: u8,
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        let mut map = serializer.serialize_map(None)?;
        let alert = TitleAndBody { title: &n.title, body: &n.body };
        let aps = Aps { alert, badge: n.badge, sound: "default", thread_id: &n.thread_id, mutable_content: 1 };
        map.serialize_entry("aps", &aps)?;
        n.serialize_ids_and_app_data(&mut map, &["aps"])?;
        map.end()
    }
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

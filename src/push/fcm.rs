//! A small FCM HTTP v1 client: `POST {base}/v1/projects/{project}/messages:send` with an OAuth2
//! access token of the project's service account.
//!
//! Why not the `fcm` crate: it speaks the legacy API (server keys), which Google shut down in 2024.
//! Access tokens come from `gcp_auth` (it signs the service-account assertion and caches the token
//! until shortly before it expires); the base URL and the token endpoint come from config, so tests
//! and staging can point both at servers of their own.

use std::time::Duration;

use gcp_auth::{CustomServiceAccount, TokenProvider};
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::notification::{AsText, Notification, TitleAndBody};
use super::provider::{Delivery, base_url, retry_after};
use crate::config::FcmConfig;
use crate::store::PushJob;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

pub struct FcmClient {
    http: reqwest::Client,
    send_url: Url,
    account: CustomServiceAccount,
    /// The message lifetime as FCM spells it ("3600s").
    ttl: String,
}

impl FcmClient {
    pub fn new(config: &FcmConfig, request_timeout: Duration, ttl: Duration) -> anyhow::Result<Self> {
        let file = &config.service_account_file;
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("reading fcm.service_account_file {}: {e}", file.display()))?;
        let mut key: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("fcm.service_account_file {} is not JSON: {e}", file.display()))?;
        if !config.token_url.is_empty() {
            key["token_uri"] = Value::String(config.token_url.clone());
        }
        let project = match (&config.project_id, key.get("project_id").and_then(Value::as_str)) {
            (configured, _) if !configured.is_empty() => configured.clone(),
            (_, Some(from_file)) => from_file.to_owned(),
            _ => anyhow::bail!("fcm.project_id is empty and {} has no project_id", file.display()),
        };
        let account = CustomServiceAccount::from_json(&key.to_string())
            .map_err(|e| anyhow::anyhow!("fcm.service_account_file {}: {e}", file.display()))?;
        let http = reqwest::Client::builder().timeout(request_timeout).pool_idle_timeout(None).build()?;
        let send_url = format!("{}/v1/projects/{project}/messages:send", config.base_url.trim_end_matches('/'));
        let send_url = base_url("fcm.base_url", &send_url)?;
        Ok(Self { http, send_url, account, ttl: format!("{}s", ttl.as_secs()) })
    }

    pub async fn send(&self, job: &PushJob, n: &Notification) -> Delivery {
        let token = match self.account.token(&[SCOPE]).await {
            Ok(token) => token,
            // The token endpoint is down or refusing: nothing can be sent now, try again later.
            Err(e) => return Delivery::Retry { after: None, reason: format!("fcm access token: {e}") },
        };
        let body = match serde_json::to_vec(&self.message(job, n)) {
            Ok(body) => body,
            Err(e) => return Delivery::Rejected { reason: format!("encoding the message: {e}") },
        };
        let request = self
            .http
            .post(self.send_url.clone())
            .bearer_auth(token.as_str())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Delivery::Retry { after: None, reason: format!("fcm request failed: {}", e.without_url()) };
            }
        };
        let status = response.status().as_u16();
        if status == 200 {
            return Delivery::Accepted;
        }
        let after = retry_after(response.headers());
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        classify(status, &body, after)
    }

    fn message<'a>(&'a self, job: &'a PushJob, n: &'a Notification) -> SendBody<'a> {
        let tag = n.collapse_id.as_str();
        SendBody {
            message: Message {
                token: &job.token,
                notification: TitleAndBody { title: &n.title, body: &n.body },
                data: Data(n),
                android: Android {
                    priority: "HIGH",
                    ttl: &self.ttl,
                    collapse_key: tag,
                    notification: AndroidNotification { tag, notification_count: n.badge },
                },
            },
        }
    }
}

/// The body of `messages:send`.
#[derive(Serialize)]
struct SendBody<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    notification: TitleAndBody<'a>,
    data: Data<'a>,
    android: Android<'a>,
}

#[derive(Serialize)]
struct Android<'a> {
    priority: &'static str,
    ttl: &'a str,
    collapse_key: &'a str,
    notification: AndroidNotification<'a>,
}

#[derive(Serialize)]
struct AndroidNotification<'a> {
    tag: &'a str,
    notification_count: u32,
}

/// FCM's `data`: string values only; ours first, then the app's own pairs.
struct Data<'a>(&'a Notification);

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("badge", &AsText(n.badge))?;
        n.serialize_ids_and_app_data(&mut map, &["badge"])?;
        map.end()
    }
}

fn classify(status: u16, body: &Value, after: Option<Duration>) -> Delivery {
    let error = &body["error"];
    let rpc_status = error["status"].as_str().unwrap_or_default();
    let details = error["details"].as_array().map(Vec::as_slice).unwrap_or_default();
    let fcm_code = details.iter().find_map(|d| d["errorCode"].as_str()).unwrap_or_default();
    let message = error["message"].as_str().unwrap_or_default();
    let reason = match (fcm_code, rpc_status) {
        ("", "") => format!("HTTP {status}"),
        ("", s) => format!("{s}: {message}"),
        (c, _) => format!("{c}: {message}"),
    };
    // INVALID_ARGUMENT is about the token only when the violation names the token field.
    let token_field = details.iter().any(|d| {
        d["fieldViolations"].as_array().is_some_and(|v| v.iter().any(|f| f["field"].as_str() == Some("message.token")))
    });
    match (status, fcm_code, rpc_status) {
        (_, "UNREGISTERED" | "SENDER_ID_MISMATCH", _) | (404, _, _) => Delivery::TokenDead { reason },
        (400, _, "INVALID_ARGUMENT") if token_field || fcm_code == "INVALID_ARGUMENT" && mentions_token(message) => {
            Delivery::TokenDead { reason }
        }
        (429 | 500..=599, _, _) | (_, "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL", _) => {
            Delivery::Retry { after, reason }
        }
        // An access token that expired between fetch and use: the next attempt fetches a new one.
        (401, _, _) => Delivery::Retry { after: None, reason },
        _ => Delivery::Rejected { reason },
    }
}

fn mentions_token(message: &str) -> bool {
    message.to_ascii_lowercase().contains("registration token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(status: u16, rpc: &str, code: &str, extra: Value) -> Value {
        let mut details =
            vec![json!({ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code })];
        if !extra.is_null() {
            details.push(extra);
        }
        json!({ "error": { "code": status, "status": rpc, "message": "m", "details": details } })
    }

    #[test]
    fn google_errors_map_to_what_the_pipeline_does() {
        let c = |s, body: Value| classify(s, &body, None);
        assert!(matches!(c(404, error(404, "NOT_FOUND", "UNREGISTERED", Value::Null)), Delivery::TokenDead { .. }));
        assert!(matches!(
            c(403, error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", Value::Null)),
            Delivery::TokenDead { .. }
        ));
        let token_violation = json!({ "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": "message.token", "description": "Invalid registration token" }] });
        assert!(matches!(
            c(400, error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", token_violation)),
            Delivery::TokenDead { .. }
        ));
        assert!(matches!(
            c(400, error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", Value::Null)),
            Delivery::Rejected { .. }
        ));
        assert!(matches!(
            c(429, error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", Value::Null)),
            Delivery::Retry { .. }
        ));
        assert!(matches!(c(503, Value::Null), Delivery::Retry { .. }));
        assert!(matches!(c(401, Value::Null), Delivery::Retry { .. }));
    }
}

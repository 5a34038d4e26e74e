//! Fake push providers for tests and benchmarks, on 127.0.0.1, speaking the real protocols:
//!
//! - [`FakeApns`]: HTTP/2 only (h2c), `POST /3/device/{token}`; verifies the ES256 provider token
//!   and the APNs headers the way Apple documents them, and answers 200, 410 Unregistered, 429 or
//!   503 with Retry-After, as a test scripts it. It honours a configurable
//!   SETTINGS_MAX_CONCURRENT_STREAMS and records the peak of streams in flight.
//! - [`FakeFcm`]: the OAuth2 token endpoint (JWT-bearer grant, RS256 assertion verified) and the
//!   FCM HTTP v1 `messages:send` endpoint (bearer checked), with the same failure modes.
//!
//! Both record what they accepted, so a test can check every notification's payload.
//!
//! And the app's backend: [`FakeIdentityProvider`] publishes a JWKS and signs its users' tokens,
//! [`FakeWebhookReceiver`] takes tidings' signed webhook calls.

mod apns;
mod fcm;
mod identity;
mod public_key;
mod serve;
mod webhooks;

use std::path::PathBuf;

pub use apns::{ApnsPush, FakeApns};
pub use fcm::{FakeFcm, FcmPush};
pub use identity::{APP_HS256_SECRET, FakeIdentityProvider};
pub use webhooks::{FakeWebhookReceiver, WEBHOOK_SECRET, WebhookCall};

/// A scripted answer for the next request(s), instead of success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl Failure {
    pub fn unavailable(retry_after: Option<u64>) -> Self {
        Self { status: 503, retry_after }
    }

    pub fn throttled(retry_after: Option<u64>) -> Self {
        Self { status: 429, retry_after }
    }
}

/// The directory of the test-only keys (`keys/README.md`).
pub fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("keys")
}

/// The APNs .p8 test key, to configure a server that talks to [`FakeApns`].
pub fn apns_key_file() -> PathBuf {
    keys_dir().join("apns-test-key.p8")
}

/// `section.key=value` settings (for `tidings --set`) that point a tidings server at these fakes;
/// the FCM service-account file is written into `dir`.
pub fn server_settings(apns: &FakeApns, fcm: &FakeFcm, dir: &std::path::Path) -> Vec<String> {
    vec![
        format!("apns.key_file={}", apns_key_file().display()),
        format!("apns.key_id={APNS_KEY_ID}"),
        format!("apns.team_id={APNS_TEAM_ID}"),
        format!("apns.production_url={}", apns.url()),
        format!("apns.sandbox_url={}", apns.url()),
        format!("fcm.service_account_file={}", fcm.write_service_account(dir).display()),
        format!("fcm.base_url={}", fcm.url()),
    ]
}

pub const APNS_KEY_ID: &str = "FAKEKEY001";
pub const APNS_TEAM_ID: &str = "FAKETEAM01";

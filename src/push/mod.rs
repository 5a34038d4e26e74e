//! Push: reaching users with no live session through APNs (iOS) and FCM (Android).
//!
//! - `gate.rs`: on the append path, picks the recipients to push to (no live session); the append
//!   queues their jobs in the store atomically with the entry. Acks cancel pending pushes.
//! - `worker.rs`: claims due jobs (after the grace window), drops those no longer needed (delivered,
//!   read, online, muted, do-not-disturb), sends the rest, retries with backoff, forgets dead tokens.
//! - `notification.rs`: what a push says (coalesced bursts, badge = unread count).
//! - `apns.rs`, `fcm.rs`: the two provider clients, each with a configurable base URL.
//! - `provider.rs`: provider answers in the pipeline's terms; retry backoff.
//!
//! Its counters per provider and its latency are in `crate::metrics` (the store counts into them).

mod apns;
mod fcm;
mod gate;
mod notification;
mod provider;
mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use apns::ApnsClient;
pub use fcm::FcmClient;
pub use gate::PushGate;
pub use worker::{Presence, Progress, Providers, PushWorker};

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::Platform;
use crate::store::Store;

/// The providers `config` configures. One log line per provider that is not configured (not an
/// error per message); a provider that is configured wrongly stops the start with its reason.
pub fn providers_from(config: &Config) -> anyhow::Result<Providers> {
    let timeout = Duration::from_secs(config.push.request_timeout_secs.max(1));
    let ttl = Duration::from_secs(config.push.ttl_secs);
    let apns = if config.apns.key_file.as_os_str().is_empty() {
        tracing::info!("APNs is not configured (apns.key_file is empty): iOS devices get no push");
        None
    } else {
        Some(ApnsClient::new(&config.apns, timeout, ttl)?)
    };
    let fcm = if config.fcm.service_account_file.as_os_str().is_empty() {
        tracing::info!("FCM is not configured (fcm.service_account_file is empty): Android devices get no push");
        None
    } else {
        Some(FcmClient::new(&config.fcm, timeout, ttl)?)
    };
    if (apns.is_some() || fcm.is_some()) && config.push.allowed_app_ids.is_empty() {
        tracing::warn!("push.allowed_app_ids is empty: devices may register push tokens for any app id");
    }
    Ok(Providers { apns, fcm, apns_concurrency: config.apns.concurrency, fcm_concurrency: config.fcm.concurrency })
}

/// The gate for the providers that are configured.
pub fn gate_for(store: Arc<dyn Store>, providers: &Providers, config: &Config, clock: Clock) -> PushGate {
    let mut platforms = Vec::new();
    if providers.apns.is_some() {
        platforms.push(Platform::Ios);
    }
    if providers.fcm.is_some() {
        platforms.push(Platform::Android);
    }
    PushGate::new(store, platforms, &config.push, clock)
}

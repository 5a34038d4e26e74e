//! The account operations behind `/v1/auth/*` and the WebSocket upgrade.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::app_identity::{AppIdentity, app_username};
use super::hashing::HashingPool;
use super::tokens::{hash_refresh_token, new_refresh_token, parse_refresh_token};
use super::{PasswordHasher, TokenKeys};
use crate::config::AuthConfig;
use crate::domain::error::{Code, DomainError, DomainResult};
use crate::domain::{DeviceId, UserId, new_random_id, now_ms};
use crate::rate_limit::PerKeyLimiter;
use crate::store::{DeviceRecord, NewUser, RefreshRotation, Store};

const MAX_PASSWORD_BYTES: usize = 1024;
const MAX_DEVICE_NAME_CHARS: usize = 64;

/// Tokens handed to a device after sign-up, log-in or refresh.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: UserId,
    pub device: DeviceId,
    pub access_token: String,
    pub refresh_token: String,
    pub access_expires_at_ms: i64,
}

/// What a refresh gave.
#[derive(Debug, Clone)]
pub enum Refreshed {
    Session(Session),
    /// The token had been traded before: these devices (the one it names) are logged out.
    Reused {
        user: UserId,
        revoked: Vec<DeviceId>,
    },
}

/// Who is calling, once their access token checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserId,
    pub device: DeviceId,
    /// When the access token it was proven with expires (ms since the epoch).
    pub expires_at_ms: i64,
}

pub struct AuthService {
    store: Arc<dyn Store>,
    /// Every password hash and check runs here, a few at a time (`auth.max_concurrent_hashes`).
    hashing: HashingPool,
    per_ip: PerKeyLimiter,
    per_username: PerKeyLimiter,
    keys: TokenKeys,
    /// The app's own tokens, when configured (`app_tokens`).
    app_identity: Option<AppIdentity>,
    config: AuthConfig,
}

impl AuthService {
    pub fn new(store: Arc<dyn Store>, config: AuthConfig, secret: &[u8]) -> Self {
        let hashes = match config.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Self {
            store,
            hashing: HashingPool::new(hashes, PasswordHasher::new(config.argon2_memory_kib, config.argon2_iterations)),
            per_ip: PerKeyLimiter::new(config.attempts_per_minute_per_ip, "attempts"),
            per_username: PerKeyLimiter::new(config.attempts_per_minute_per_username, "attempts"),
            keys: TokenKeys::new(secret),
            app_identity: None,
            config,
        }
    }

    /// Accepts the app's own tokens too.
    pub fn with_app_identity(mut self, app_identity: Option<AppIdentity>) -> Self {
        self.app_identity = app_identity;
        self
    }

    /// Counts an attempt from `client` (and, for log-in, on `username`) against the limits.
    fn admit(&self, client: Option<IpAddr>, username: Option<&str>) -> DomainResult<()> {
        let now = Instant::now();
        if let Some(ip) = client {
            self.per_ip.take(&format!("ip:{ip}"), now)?;
        }
        if let Some(name) = username {
            self.per_username.take(&format!("user:{name}"), now)?;
        }
        Ok(())
    }

    pub async fn sign_up(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> DomainResult<Session> {
        self.admit(client, None)?;
        validate_username(username)?;
        if password.chars().count() < self.config.min_password_chars || password.len() > MAX_PASSWORD_BYTES {
            return Err(DomainError::invalid(format!(
                "password must be {} to {MAX_PASSWORD_BYTES} characters",
                self.config.min_password_chars
            )));
        }
        let password = password.to_owned();
        let password_hash = self.hashing.run(move |hasher| hasher.hash(&password)).await?;
        let user = UserId(new_random_id());
        self.store
            .create_user(NewUser { id: user, username: username.to_owned(), password_hash, created_at_ms: now_ms() })
            .await
            .map_err(|e| match DomainError::from(e) {
                e if e.code == Code::Conflict => DomainError::new(Code::Conflict, "username is taken"),
                e => e,
            })?;
        self.new_device(user, device_name).await
    }

    pub async fn log_in(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: &str,
        device_name: &str,
    ) -> DomainResult<Session> {
        // Only well-formed names get a bucket, so the map cannot be filled with junk keys.
        let bucket = validate_username(username).is_ok().then_some(username);
        self.admit(client, bucket)?;
        let record = self.store.user_by_name(username).await?;
        let password = password.to_owned();
        let stored = record.as_ref().map(|r| r.password_hash.clone());
        let ok = self.hashing.run(move |hasher| hasher.verify(&password, stored.as_deref())).await?;
        match record {
            Some(record) if ok => {
                self.refuse_blocked(record.id).await?;
                self.new_device(record.id, device_name).await
            }
            _ => Err(DomainError::new(Code::Unauthenticated, "wrong username or password")),
        }
    }

    async fn new_device(&self, user: UserId, device_name: &str) -> DomainResult<Session> {
        let device = DeviceId(new_random_id());
        let now = now_ms();
        let refresh_token = new_refresh_token(user, device);
        let name: String = device_name.chars().take(MAX_DEVICE_NAME_CHARS).collect();
        self.store
            .create_device(DeviceRecord {
                user,
                device,
                name,
                refresh_hash: hash_refresh_token(&refresh_token),
                refresh_expires_at_ms: now + self.refresh_ttl_ms(),
                created_at_ms: now,
                revoked: false,
            })
            .await?;
        Ok(self.session(user, device, refresh_token, now))
    }

    fn refresh_ttl_ms(&self) -> i64 {
        self.config.refresh_token_ttl_days as i64 * 24 * 3600 * 1000
    }

    fn session(&self, user: UserId, device: DeviceId, refresh_token: String, now: i64) -> Session {
        let (access_token, access_expires_at_ms) =
            self.keys.issue_access(user, device, now, self.config.access_token_ttl_secs);
        Session { user, device, access_token, refresh_token, access_expires_at_ms }
    }

    /// Trades a refresh token for new tokens; the old refresh token stops working. Presenting a
    /// device's previous token again (one of two holders stole it) revokes the device: the answer
    /// is `Reused`, and the caller closes the device's connections.
    pub async fn refresh(&self, client: Option<IpAddr>, refresh_token: &str) -> DomainResult<Refreshed> {
        self.admit(client, None)?;
        let invalid = || DomainError::new(Code::Unauthenticated, "invalid refresh token");
        let (user, device) = parse_refresh_token(refresh_token).ok_or_else(invalid)?;
        let now = now_ms();
        let record = self.store.device(user, device).await?.ok_or_else(invalid)?;
        if record.revoked {
            return Err(invalid());
        }
        self.refuse_blocked(user).await?;
        if record.refresh_expires_at_ms < now {
            return Err(DomainError::new(Code::TokenExpired, "refresh token expired; log in again"));
        }
        let old_hash = hash_refresh_token(refresh_token);
        let next = new_refresh_token(user, device);
        let rotation = self
            .store
            .rotate_refresh(user, device, old_hash, hash_refresh_token(&next), now + self.refresh_ttl_ms())
            .await?;
        match rotation {
            RefreshRotation::Rotated => Ok(Refreshed::Session(self.session(user, device, next, now))),
            RefreshRotation::Reused { revoked } => {
                tracing::warn!(%user, %device, "a refresh token was used twice; the device is logged out");
                Ok(Refreshed::Reused { user, revoked })
            }
            RefreshRotation::Unknown => Err(invalid()),
        }
    }

    /// Revokes the caller's device, or all of the user's devices; returns those revoked.
    pub async fn log_out(&self, caller: Authenticated, all_devices: bool) -> DomainResult<Vec<DeviceId>> {
        let only = (!all_devices).then_some(caller.device);
        Ok(self.store.revoke_devices(caller.user, only).await?)
    }

    /// Checks an access token (ours, or the app's own when configured) and that its device is
    /// still logged in.
    pub async fn authenticate(&self, access_token: &str) -> DomainResult<Authenticated> {
        let now = now_ms();
        let (user, device, expires_at_ms) = match (self.keys.verify_access_at(access_token, now), &self.app_identity) {
            (Ok(ours), _) => ours,
            // Not one of ours (an expired one of ours is reported as expired: its signature held).
            (Err(e), Some(app)) if e.code == Code::Unauthenticated => {
                return self.authenticate_app(app, access_token, now).await;
            }
            (Err(e), _) => return Err(e),
        };
        match self.store.device(user, device).await? {
            Some(d) if !d.revoked => {
                self.refuse_blocked(user).await?;
                Ok(Authenticated { user, device, expires_at_ms })
            }
            _ => Err(DomainError::new(Code::Unauthenticated, "this device was logged out")),
        }
    }

    /// A blocked account (server API) may not log in, refresh or connect.
    async fn refuse_blocked(&self, user: UserId) -> DomainResult<()> {
        match self.store.account_blocked(user).await? {
            Some(_) => Err(DomainError::new(Code::Forbidden, "this account is blocked")),
            None => Ok(()),
        }
    }

    /// An app token's user and device, both created on their first connect.
    async fn authenticate_app(&self, app: &AppIdentity, token: &str, now: i64) -> DomainResult<Authenticated> {
        let subject = app.verify(token, now).await?;
        let (user, device) = (subject.user, subject.device);
        let authenticated = Authenticated { user, device, expires_at_ms: subject.expires_at_ms };
        self.refuse_blocked(user).await?;
        match self.store.device(user, device).await? {
            Some(d) if d.revoked => Err(DomainError::new(Code::Unauthenticated, "this device was logged out")),
            Some(_) => Ok(authenticated),
            None => {
                // Two first connects at once: the second finds the user (and device) made.
                let new_user = NewUser {
                    id: user,
                    username: app_username(user),
                    password_hash: String::new(),
                    created_at_ms: now,
                };
                ignore_conflict(self.store.create_user(new_user).await)?;
                let record = DeviceRecord {
                    user,
                    device,
                    name: subject.device_name,
                    // App devices renew their tokens with the app, never through /v1/auth/refresh.
                    refresh_hash: Vec::new(),
                    refresh_expires_at_ms: 0,
                    created_at_ms: now,
                    revoked: false,
                };
                ignore_conflict(self.store.create_device(record).await)?;
                tracing::info!(%user, %device, "an app user connected for the first time");
                Ok(authenticated)
            }
        }
    }
}

fn ignore_conflict(result: crate::store::StoreResult<()>) -> DomainResult<()> {
    match result.map_err(DomainError::from) {
        Err(e) if e.code != Code::Conflict => Err(e),
        _ => Ok(()),
    }
}

fn validate_username(username: &str) -> DomainResult<()> {
    let ok_len = (3..=32).contains(&username.len());
    let ok_chars = username.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(DomainError::invalid("username must be 3 to 32 characters of a-z, 0-9, '_' and '.'"))
    }
}

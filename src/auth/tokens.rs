//! Access tokens (HS256 JWT) and refresh tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::error::{Code, DomainError};
use crate::domain::{DeviceId, UserId};
use crate::jws::Hs256;

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    /// The user id.
    sub: String,
    /// The device id.
    dev: String,
    iat: i64,
    exp: i64,
}

#[derive(Clone)]
pub struct TokenKeys {
    key: Hs256,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        Self { key: Hs256::new(secret) }
    }

    /// Returns the token and its expiry in milliseconds since the epoch.
    pub fn issue_access(&self, user: UserId, device: DeviceId, now_ms: i64, ttl_secs: u64) -> (String, i64) {
        let exp = now_ms / 1000 + ttl_secs as i64;
        let claims = AccessClaims { sub: user.0.to_string(), dev: device.0.to_string(), iat: now_ms / 1000, exp };
        (self.key.sign(&claims), exp * 1000)
    }

    pub fn verify_access(&self, token: &str) -> Result<(UserId, DeviceId), DomainError> {
        self.verify_access_at(token, crate::domain::now_ms()).map(|(user, device, _)| (user, device))
    }

    /// Checks the signature first, then expiry: an expired token is reported as expired only when
    /// we issued it. The server that checks tokens is the one that issues them, so no clock skew is
    /// allowed for.
    /// The user, the device and the token's expiry (ms since the epoch).
    pub fn verify_access_at(&self, token: &str, now_ms: i64) -> Result<(UserId, DeviceId, i64), DomainError> {
        let invalid = || DomainError::new(Code::Unauthenticated, "invalid access token");
        let claims: AccessClaims = self.key.verify(token).map_err(|_| invalid())?;
        // RFC 7519: not accepted "on or after" exp; a connection ends at the same instant.
        if claims.exp.saturating_mul(1000) <= now_ms {
            return Err(DomainError::new(Code::TokenExpired, "access token expired; refresh it"));
        }
        let parse = |s: &str| s.parse::<u64>().map_err(|_| invalid());
        Ok((UserId(parse(&claims.sub)?), DeviceId(parse(&claims.dev)?), claims.exp.saturating_mul(1000)))
    }
}

/// A new refresh token for a device: `<user>.<device>.<32 random bytes, base64url>`.
pub fn new_refresh_token(user: UserId, device: DeviceId) -> String {
    let secret: [u8; 32] = rand::random();
    format!("{}.{}.{}", user.0, device.0, URL_SAFE_NO_PAD.encode(secret))
}

/// The user and device a refresh token names, if it is well formed.
pub fn parse_refresh_token(token: &str) -> Option<(UserId, DeviceId)> {
    let mut parts = token.splitn(3, '.');
    let user = parts.next()?.parse().ok()?;
    let device = parts.next()?.parse().ok()?;
    let secret = parts.next()?;
    (secret.len() >= 40).then_some((UserId(user), DeviceId(device)))
}

pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_round_trip_and_reject_tampering_and_expiry() {
        let keys = TokenKeys::new(b"secret");
        let now = crate::domain::now_ms();
        let (token, _) = keys.issue_access(UserId(7), DeviceId(9), now, 60);
        assert_eq!(keys.verify_access(&token).unwrap(), (UserId(7), DeviceId(9)));
        let other = TokenKeys::new(b"other");
        assert_eq!(other.verify_access(&token).unwrap_err().code, Code::Unauthenticated);
        let (old, _) = keys.issue_access(UserId(7), DeviceId(9), now - 120_000, 60);
        assert_eq!(keys.verify_access(&old).unwrap_err().code, Code::TokenExpired);
        assert_eq!(keys.verify_access("garbage").unwrap_err().code, Code::Unauthenticated);
    }

    #[test]
    fn refresh_tokens_name_their_device() {
        let t = new_refresh_token(UserId(1), DeviceId(2));
        assert_eq!(parse_refresh_token(&t), Some((UserId(1), DeviceId(2))));
        assert_eq!(parse_refresh_token("1.2.short"), None);
        assert_ne!(hash_refresh_token(&t), hash_refresh_token(&new_refresh_token(UserId(1), DeviceId(2))));
    }
}

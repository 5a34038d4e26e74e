//! Access tokens (HS256 JWT) and refresh tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{DeviceId, UserId};
use crate::error::{ApiError, Code};

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
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The server that checks tokens is the one that issues them: no clock skew to allow for.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// Returns the token and its expiry in milliseconds since the epoch.
    pub fn issue_access(&self, user: UserId, device: DeviceId, now_ms: i64, ttl_secs: u64) -> (String, i64) {
        let exp = now_ms / 1000 + ttl_secs as i64;
        let claims = AccessClaims { sub: user.0.to_string(), dev: device.0.to_string(), iat: now_ms / 1000, exp };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail");
        (token, exp * 1000)
    }

    pub fn verify_access(&self, token: &str) -> Result<(UserId, DeviceId), ApiError> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        ApiError::new(Code::TokenExpired, "access token expired; refresh it")
                    }
                    _ => ApiError::new(Code::Unauthenticated, "invalid access token"),
                }
            })?;
        let parse =
            |s: &str| s.parse::<u64>().map_err(|_| ApiError::new(Code::Unauthenticated, "invalid access token"));
        Ok((UserId(parse(&data.claims.sub)?), DeviceId(parse(&data.claims.dev)?)))
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

//! A connection's own session: a fresh access token extends it, if it is for the same device.

use crate::auth::{AuthService, Authenticated};
use crate::domain::{DomainError, DomainResult};

/// Checks a fresh token for the connection authenticated as `current`; when the new token expires.
pub async fn reauthenticate(auth: &AuthService, current: &Authenticated, access_token: &str) -> DomainResult<i64> {
    let fresh = auth.authenticate(access_token).await?;
    if fresh.user != current.user || fresh.device != current.device {
        return Err(DomainError::forbidden("that token is for another device"));
    }
    Ok(fresh.expires_at_ms)
}

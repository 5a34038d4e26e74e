//! The app's own identities: a token the app's backend issued stands in for a tidings login, so
//! that an app with its own accounts never signs its users up twice.
//!
//! A token is a JWT signed with HS256 under a secret shared with the backend
//! (`app_tokens.hs256_secret`), or with RS256 or ES256 under a key of the backend's JSON Web Key
//! Set (`app_tokens.jwks_url`, fetched and cached; a `kid` not in the cache fetches it again, so
//! that a rotated key works at once). Its claims: `sub` (the app's user id, required), `exp`
//! (required), `nbf`, `aud` and `iss` (checked when configured), and `did`, the device (optional).
//!
//! The tidings user of a subject is a pure function of it (`app_user_id`), so every node and the
//! server API agree on it without a lookup, and it is created on its first connect.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use crate::config::AppTokensConfig;
use crate::domain::error::{Code, DomainError};
use crate::domain::{DeviceId, UserId};
use crate::jws::{Hs256, JwsError, PublicKey, Unverified};

/// A subject longer than this is refused (the app's user ids are short).
const MAX_SUBJECT_BYTES: usize = 256;
/// A device name (`did`) longer than this is refused.
const MAX_DEVICE_BYTES: usize = 64;
/// A key set larger than this is refused unread.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Who a valid app token says is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSubject {
    pub user: UserId,
    pub device: DeviceId,
    /// The token's `did`, or "app" when it names none.
    pub device_name: String,
    pub expires_at_ms: i64,
}

/// The tidings user of the app's user `subject`: the same on every node, and for the server API.
pub fn app_user_id(subject: &str) -> UserId {
    UserId(hashed_id(&[b"tidings app user", subject.as_bytes()]))
}

/// The device `name` of an app user.
pub fn app_device_id(user: UserId, name: &str) -> DeviceId {
    DeviceId(hashed_id(&[b"tidings app device", &user.0.to_be_bytes(), name.as_bytes()]))
}

/// The username an app user is created with: unique because the id is, and never one a sign-up
/// could take first (sign-ups have no ':').
pub fn app_username(user: UserId) -> String {
    format!("app:{:016x}", user.0)
}

/// A 63-bit id, never 0, from a hash of its parts (each length-prefixed: no two part lists
/// collide by concatenation).
fn hashed_id(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let id = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) >> 1;
    id.max(crate::domain::RESERVED_IDS)
}

#[derive(Debug, Deserialize)]
struct AppClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    did: Option<String>,
}

/// RFC 7519: `aud` is one string or an array of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// Checks app tokens.
pub struct AppIdentity {
    hs256: Option<Hs256>,
    jwks: Option<JwksCache>,
    audience: String,
    issuer: String,
    leeway_secs: i64,
}

fn refused(message: impl Into<String>) -> DomainError {
    DomainError::new(Code::Unauthenticated, message)
}

impl AppIdentity {
    /// `None` when app tokens are off (`app_tokens` sets neither a secret nor a JWKS URL).
    pub fn from_config(config: &AppTokensConfig) -> anyhow::Result<Option<Self>> {
        if !config.enabled() {
            return Ok(None);
        }
        let secret =
            crate::secrets::configured("app_tokens.hs256_secret", &config.hs256_secret, &config.hs256_secret_file)?;
        let jwks = match config.jwks_url.as_str() {
            "" => None,
            url => Some(JwksCache::new(
                url,
                Duration::from_secs(config.jwks_cache_secs),
                Duration::from_secs(config.jwks_min_refetch_secs),
            )?),
        };
        Ok(Some(Self {
            hs256: secret.map(|s| Hs256::new(&s)),
            jwks,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway_secs: config.leeway_secs as i64,
        }))
    }

    /// The subject of a valid token, checked at `now_ms`.
    pub async fn verify(&self, token: &str, now_ms: i64) -> Result<AppSubject, DomainError> {
        let unverified = Unverified::parse(token).map_err(|_| refused("invalid app token: not a JWT"))?;
        let signature = |e: JwsError| match e {
            JwsError::BadSignature => refused("invalid app token: bad signature"),
            JwsError::WrongAlgorithm(_) => refused("invalid app token: the key is for another algorithm"),
            JwsError::Malformed => refused("invalid app token: its claims are not a JSON object"),
        };
        let claims: AppClaims = match unverified.algorithm() {
            "HS256" => {
                let key = self.hs256.as_ref().ok_or_else(|| refused("HS256 app tokens are not accepted here"))?;
                unverified.verify_hs256(key).map_err(signature)?
            }
            "RS256" | "ES256" => {
                let jwks =
                    self.jwks.as_ref().ok_or_else(|| refused("RS256 and ES256 app tokens are not accepted here"))?;
                let key = jwks.key(unverified.key_id(), unverified.algorithm()).await?;
                unverified.verify_public(&key).map_err(signature)?
            }
            other => return Err(refused(format!("app token algorithm {other:?} is not accepted"))),
        };
        self.check(claims, now_ms)
    }

    fn check(&self, claims: AppClaims, now_ms: i64) -> Result<AppSubject, DomainError> {
        let now = now_ms / 1000;
        let exp = claims.exp.ok_or_else(|| refused("invalid app token: no exp"))?;
        if exp.saturating_add(self.leeway_secs) <= now {
            return Err(DomainError::new(Code::TokenExpired, "app token expired; get a new one from the app"));
        }
        if claims.nbf.is_some_and(|nbf| nbf.saturating_sub(self.leeway_secs) > now) {
            return Err(refused("app token not valid yet (nbf)"));
        }
        if !self.audience.is_empty() && !claims.aud.as_ref().is_some_and(|aud| aud.names(&self.audience)) {
            return Err(refused("app token is for another audience (aud)"));
        }
        if !self.issuer.is_empty() && claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(refused("app token is from another issuer (iss)"));
        }
        let subject = claims.sub.unwrap_or_default();
        if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
            return Err(refused(format!("invalid app token: sub must be 1 to {MAX_SUBJECT_BYTES} bytes")));
        }
        let device_name = claims.did.unwrap_or_else(|| "app".to_owned());
        if device_name.is_empty() || device_name.len() > MAX_DEVICE_BYTES {
            return Err(refused(format!("invalid app token: did must be 1 to {MAX_DEVICE_BYTES} bytes")));
        }
        let user = app_user_id(&subject);
        Ok(AppSubject {
            user,
            device: app_device_id(user, &device_name),
            device_name,
            expires_at_ms: exp.saturating_mul(1000),
        })
    }
}

/// The backend's keys, fetched from its JWKS URL and kept for a while.
struct JwksCache {
    url: String,
    client: reqwest::Client,
    keys: RwLock<FetchedKeys>,
    /// One fetch at a time: a burst of tokens under a new `kid` fetches once.
    fetching: Mutex<()>,
    cache_for: Duration,
    min_refetch: Duration,
}

#[derive(Default)]
struct FetchedKeys {
    by_id: HashMap<String, PublicKey>,
    /// Keys without a `kid`, for tokens without one.
    unnamed: Vec<PublicKey>,
    fetched_at: Option<Instant>,
}

impl FetchedKeys {
    fn find(&self, kid: Option<&str>, algorithm: &str) -> Option<PublicKey> {
        match kid {
            Some(kid) => self.by_id.get(kid).cloned(),
            // No kid: only unambiguous when one key of the algorithm is published.
            None => {
                let mut of_alg = self.by_id.values().chain(&self.unnamed).filter(|k| k.algorithm() == algorithm);
                match (of_alg.next(), of_alg.next()) {
                    (Some(key), None) => Some(key.clone()),
                    _ => None,
                }
            }
        }
    }

    fn fresh_within(&self, age: Duration) -> bool {
        self.fetched_at.is_some_and(|at| at.elapsed() < age)
    }
}

impl JwksCache {
    fn new(url: &str, cache_for: Duration, min_refetch: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("app_tokens.jwks_url: building its HTTP client: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            keys: RwLock::new(FetchedKeys::default()),
            fetching: Mutex::new(()),
            cache_for,
            min_refetch,
        })
    }

    async fn key(&self, kid: Option<&str>, algorithm: &str) -> Result<PublicKey, DomainError> {
        {
            let keys = self.keys.read().await;
            if keys.fresh_within(self.cache_for)
                && let Some(key) = keys.find(kid, algorithm)
            {
                return Ok(key);
            }
        }
        let _one_fetch = self.fetching.lock().await;
        // Another caller may have fetched while this one waited; and a kid nobody publishes must
        // not make every token fetch.
        let recently = self.keys.read().await.fresh_within(self.min_refetch);
        if !recently {
            match self.fetch().await {
                Ok(fetched) => *self.keys.write().await = fetched,
                // Stale keys keep working while the backend's key server is down.
                Err(e) => tracing::warn!(url = %self.url, error = %e, "fetching the app's JWKS failed"),
            }
        }
        let keys = self.keys.read().await;
        keys.find(kid, algorithm).ok_or_else(|| match kid {
            Some(kid) => refused(format!("app token signed with an unknown key (kid {kid:?})")),
            None => refused("app token has no kid, and the key set has not exactly one key for its algorithm"),
        })
    }

    async fn fetch(&self) -> anyhow::Result<FetchedKeys> {
        let response = self.client.get(&self.url).send().await?.error_for_status()?;
        if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            anyhow::bail!("the key set is over {MAX_JWKS_BYTES} bytes");
        }
        let body = response.bytes().await?;
        anyhow::ensure!(body.len() <= MAX_JWKS_BYTES, "the key set is over {MAX_JWKS_BYTES} bytes");
        let set: JwkSet = serde_json::from_slice(&body)?;
        let mut fetched = FetchedKeys { fetched_at: Some(Instant::now()), ..FetchedKeys::default() };
        for jwk in set.keys {
            let Some(key) = jwk.public_key() else { continue };
            match jwk.kid {
                Some(kid) => {
                    fetched.by_id.insert(kid, key);
                }
                None => fetched.unnamed.push(key),
            }
        }
        tracing::info!(url = %self.url, keys = fetched.by_id.len() + fetched.unnamed.len(), "fetched the app's JWKS");
        Ok(fetched)
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// RFC 7517 / 7518: the members of RSA and EC public keys that matter here.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl Jwk {
    /// The key, if it is one we verify with: an RSA or P-256 signing key whose `alg`, when given,
    /// is the one its type implies. Others (encryption keys, other curves) are skipped.
    fn public_key(&self) -> Option<PublicKey> {
        use base64::Engine;
        let decode = |v: &Option<String>| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.as_deref()?.trim_end_matches('=')).ok()
        };
        if self.usage.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let key = match self.kty.as_str() {
            "RSA" => PublicKey::Rs256 { n: decode(&self.n)?, e: decode(&self.e)? },
            "EC" if self.crv.as_deref() == Some("P-256") => {
                let (x, y) = (decode(&self.x)?, decode(&self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                PublicKey::Es256 { point: [&[4u8][..], &x, &y].concat() }
            }
            _ => return None,
        };
        match &self.alg {
            Some(alg) if alg != key.algorithm() => None,
            _ => Some(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(app_user_id("alice"), app_user_id("alice"));
        assert_ne!(app_user_id("alice"), app_user_id("bob"));
        let user = app_user_id("alice");
        assert_ne!(app_device_id(user, "phone"), app_device_id(user, "tablet"));
        assert_ne!(app_device_id(user, "phone"), app_device_id(app_user_id("bob"), "phone"));
        assert!(app_user_id("alice").0 < 1 << 63);
        assert_eq!(app_username(UserId(255)), "app:00000000000000ff");
    }

    #[test]
    fn jwks_keys_of_other_uses_algorithms_and_curves_are_skipped() {
        let parse = |json: &str| serde_json::from_str::<Jwk>(json).unwrap().public_key();
        let rsa = r#"{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}"#;
        assert!(matches!(parse(rsa), Some(PublicKey::Rs256 { .. })));
        assert_eq!(parse(r#"{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}"#), None);
        assert_eq!(parse(r#"{"kty":"RSA","alg":"RS512","n":"AQAB","e":"AQAB"}"#), None);
        let x = "A".repeat(43);
        assert!(parse(&format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}"}}"#)).is_some());
        assert_eq!(parse(&format!(r#"{{"kty":"EC","crv":"P-384","x":"{x}","y":"{x}"}}"#)), None);
        assert_eq!(parse(r#"{"kty":"oct","k":"AAAA"}"#), None);
    }
}

//! Compact JWS, the wire form of a JWT (`base64url(header).base64url(claims).base64url(signature)`),
//! signed and checked with ring: HS256 for our access tokens, ES256 for APNs provider tokens, and
//! HS256, RS256 and ES256 checked for the app's own identity tokens (`auth/app_identity.rs`).
//!
//! Ours rather than `jsonwebtoken`: that crate's only pure-Rust backend pulls in `rsa` 0.9
//! (RUSTSEC-2023-0071, a timing side channel with no fix) for algorithms we never use, and ring is
//! already here for TLS. The format is small; what matters is checked below: the header's `alg`
//! must be the one the key is for (no `none`, no algorithm confusion), HMACs compare in constant
//! time, and oversized input is refused before any decoding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Longer than any token we issue by far; anything longer is refused unread.
const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwsError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("the header's algorithm is not {0}")]
    WrongAlgorithm(&'static str),
    #[error("bad signature")]
    BadSignature,
}

/// A token split and decoded, its signature not yet checked: what its header says picks the key.
pub struct Unverified<'a> {
    parts: Parts<'a>,
}

impl<'a> Unverified<'a> {
    pub fn parse(token: &'a str) -> Result<Self, JwsError> {
        Ok(Self { parts: split(token)? })
    }

    /// The header's `alg`.
    pub fn algorithm(&self) -> &str {
        &self.parts.header.alg
    }

    /// The header's `kid`, when it has one.
    pub fn key_id(&self) -> Option<&str> {
        self.parts.header.kid.as_deref()
    }

    /// The claims, if `key` signed the token (its algorithm must be the header's).
    pub fn verify_hs256<T: DeserializeOwned>(&self, key: &Hs256) -> Result<T, JwsError> {
        if self.parts.header.alg != "HS256" {
            return Err(JwsError::WrongAlgorithm("HS256"));
        }
        hmac::verify(&key.key, self.parts.signing_input.as_bytes(), &self.parts.signature)
            .map_err(|_| JwsError::BadSignature)?;
        self.claims()
    }

    /// The claims, if `key` signed the token (its algorithm must be the header's).
    pub fn verify_public<T: DeserializeOwned>(&self, key: &PublicKey) -> Result<T, JwsError> {
        if self.parts.header.alg != key.algorithm() {
            return Err(JwsError::WrongAlgorithm(key.algorithm()));
        }
        let message = self.parts.signing_input.as_bytes();
        let checked = match key {
            PublicKey::Rs256 { n, e } => ring::signature::RsaPublicKeyComponents { n, e }.verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                &self.parts.signature,
            ),
            PublicKey::Es256 { point } => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, &self.parts.signature)
            }
        };
        checked.map_err(|_| JwsError::BadSignature)?;
        self.claims()
    }

    fn claims<T: DeserializeOwned>(&self) -> Result<T, JwsError> {
        serde_json::from_slice(&self.parts.claims).map_err(|_| JwsError::Malformed)
    }
}

/// A public key that checks signatures of one algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA, PKCS#1 v1.5 with SHA-256, 2048 to 8192 bits: the modulus and exponent, big-endian.
    Rs256 { n: Vec<u8>, e: Vec<u8> },
    /// P-256 with SHA-256: the uncompressed point (`04 || x || y`).
    Es256 { point: Vec<u8> },
}

impl PublicKey {
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Rs256 { .. } => "RS256",
            PublicKey::Es256 { .. } => "ES256",
        }
    }
}

/// An HMAC-SHA256 key that signs and verifies.
#[derive(Clone)]
pub struct Hs256 {
    key: hmac::Key,
}

impl Hs256 {
    pub fn new(secret: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    pub fn sign(&self, claims: &impl Serialize) -> String {
        let signing_input = signing_input(&serde_json::json!({ "alg": "HS256", "typ": "JWT" }), claims);
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of a token this key signed; the caller checks what they say (expiry, subject).
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, JwsError> {
        Unverified::parse(token)?.verify_hs256(self)
    }
}

/// A P-256 private key that signs ES256 tokens (an APNs `.p8`).
pub struct Es256 {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Es256 {
    /// From a PEM `PRIVATE KEY` (PKCS#8, as Apple's `.p8` files are).
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let der = pem_body(pem, "PRIVATE KEY")?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow::anyhow!("not a PKCS#8 P-256 private key: {e}"))?;
        Ok(Self { key, rng })
    }

    pub fn sign(&self, key_id: &str, claims: &impl Serialize) -> anyhow::Result<String> {
        let signing_input = signing_input(&serde_json::json!({ "alg": "ES256", "kid": key_id }), claims);
        let signature =
            self.key.sign(&self.rng, signing_input.as_bytes()).map_err(|_| anyhow::anyhow!("ES256 signing failed"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }
}

/// The DER inside a PEM block with the given label.
fn pem_body(pem: &[u8], label: &str) -> anyhow::Result<Vec<u8>> {
    let text = std::str::from_utf8(pem).map_err(|_| anyhow::anyhow!("not a PEM file"))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(|| anyhow::anyhow!("no {begin} line"))? + begin.len();
    let stop = start + text[start..].find(&end).ok_or_else(|| anyhow::anyhow!("no {end} line"))?;
    let base64: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(base64).map_err(|e| anyhow::anyhow!("bad PEM base64: {e}"))
}

fn signing_input(header: &serde_json::Value, claims: &impl Serialize) -> String {
    let claims = serde_json::to_vec(claims).expect("claims serialize");
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims))
}

#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

struct Parts<'a> {
    header: Header,
    claims: Vec<u8>,
    signature: Vec<u8>,
    signing_input: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, JwsError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::Malformed);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(JwsError::Malformed)?;
    let (header, claims) = signing_input.split_once('.').ok_or(JwsError::Malformed)?;
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| JwsError::Malformed);
    let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| JwsError::Malformed)?;
    Ok(Parts { header, claims: decode(claims)?, signature: decode(signature)?, signing_input })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn hs256_round_trips_and_refuses_tampering_other_keys_and_other_algorithms() {
        let key = Hs256::new(b"a secret of at least thirty-two bytes");
        let token = key.sign(&json!({ "sub": "7" }));
        assert_eq!(key.verify::<Value>(&token).unwrap(), json!({ "sub": "7" }));

        let other = Hs256::new(b"another secret, also thirty-two bytes");
        assert_eq!(other.verify::<Value>(&token), Err(JwsError::BadSignature));

        let (header, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"8"}"#);
        assert_eq!(key.verify::<Value>(&format!("{header}.{forged_claims}.{signature}")), Err(JwsError::BadSignature));

        // alg "none" with no signature: the classic forgery.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(key.verify::<Value>(&format!("{none}.{forged_claims}.")), Err(JwsError::WrongAlgorithm("HS256")));

        for garbage in ["", "a", "a.b", "a.b.c", "...", &"x".repeat(MAX_TOKEN_BYTES + 1)] {
            assert_eq!(key.verify::<Value>(garbage), Err(JwsError::Malformed), "{garbage:.20}");
        }
    }

    #[test]
    fn es256_signs_with_the_key_id_in_the_header() {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fakes/keys/apns-test-key.p8")).unwrap();
        let key = Es256::from_pem(&pem).unwrap();
        let token = key.sign("KEY123", &json!({ "iss": "TEAM" })).unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header, json!({ "alg": "ES256", "kid": "KEY123" }));
        // A P-256 signature in JWS form is r || s, 64 bytes.
        assert_eq!(URL_SAFE_NO_PAD.decode(token.rsplit('.').next().unwrap()).unwrap().len(), 64);
        assert!(Es256::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err());
    }
}

//! A fake identity provider: the app's backend as tidings sees it. It publishes a JSON Web Key Set
//! (`GET /.well-known/jwks.json`, counted) and signs the tokens the backend would hand its users:
//! RS256 and ES256 under its published keys, HS256 under a shared secret.
//!
//! Keys rotate as a real provider's do: `rotate` publishes a new RSA key id (the same test key
//! under a new `kid`) and signs with it from then on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::keys_dir;
use crate::serve::{Protocol, Received, serve};

/// The shared secret of HS256 tokens, to configure as `app_tokens.hs256_secret`.
pub const APP_HS256_SECRET: &str = "the app backend's shared secret, 32+ bytes";

pub struct FakeIdentityProvider {
    addr: SocketAddr,
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
    /// The kid RS256 tokens are signed under now.
    rsa_kid: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeIdentityProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pkcs8(file: &str) -> Vec<u8> {
    let pem = std::fs::read_to_string(keys_dir().join(file)).expect("reading an identity test key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("PEM base64")
}

impl FakeIdentityProvider {
    pub async fn start() -> Self {
        let rsa = RsaKeyPair::from_pkcs8(&pkcs8("app-idp-rsa-test-key.pem")).expect("the RSA test key");
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8("app-idp-ec-test-key.pem"),
            &rng,
        )
        .expect("the EC test key");
        let rsa_kid = Arc::new(Mutex::new("rsa-1".to_owned()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (n, e) = {
            let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
            (URL_SAFE_NO_PAD.encode(public.n), URL_SAFE_NO_PAD.encode(public.e))
        };
        let point = ec.public_key().as_ref().to_vec();
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
        let handler = {
            let (rsa_kid, fetches) = (rsa_kid.clone(), fetches.clone());
            move |request: Received| {
                let kid = rsa_kid.lock().unwrap().clone();
                let fetches = fetches.clone();
                let jwks = json!({ "keys": [
                    { "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e },
                    { "kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256", "x": x, "y": y },
                    // One a verifier must skip: an encryption key.
                    { "kty": "RSA", "kid": "enc-1", "use": "enc", "n": n, "e": e },
                ]});
                async move {
                    let found = request.path == "/.well-known/jwks.json";
                    if found {
                        fetches.fetch_add(1, Ordering::SeqCst);
                    }
                    let (status, body) = if found { (200, jwks.to_string()) } else { (404, String::new()) };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .expect("a response")
                }
            }
        };
        let (addr, task) = serve(Protocol::Auto, handler).await;
        Self { addr, rsa, ec, rng, rsa_kid, fetches, task }
    }

    /// To configure as `app_tokens.jwks_url`.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Publishes the RSA key under a new kid and signs with that from now on.
    pub fn rotate(&self, kid: &str) {
        *self.rsa_kid.lock().unwrap() = kid.to_owned();
    }

    pub fn rs256(&self, claims: &Value) -> String {
        let kid = self.rsa_kid.lock().unwrap().clone();
        self.sign(&json!({ "alg": "RS256", "typ": "JWT", "kid": kid }), claims)
    }

    pub fn es256(&self, claims: &Value) -> String {
        self.sign(&json!({ "alg": "ES256", "typ": "JWT", "kid": "ec-1" }), claims)
    }

    pub fn hs256(&self, claims: &Value) -> String {
        self.sign(&json!({ "alg": "HS256", "typ": "JWT" }), claims)
    }

    /// The key-confusion attack: HS256 naming the RSA key, its HMAC keyed with that key's public
    /// modulus (which anyone can read from the key set).
    pub fn hs256_keyed_with_rsa_public_key(&self, claims: &Value) -> String {
        let kid = self.rsa_kid.lock().unwrap().clone();
        let header = json!({ "alg": "HS256", "kid": kid });
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let modulus = signature::RsaPublicKeyComponents::<Vec<u8>>::from(self.rsa.public()).n;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &modulus);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, input.as_bytes())))
    }

    /// A token with this header, signed as its `alg` says (`none`: no signature; an unknown
    /// algorithm: garbage).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match header["alg"].as_str() {
            Some("RS256") => {
                let mut out = vec![0; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(&signature::RSA_PKCS1_SHA256, &self.rng, input.as_bytes(), &mut out)
                    .expect("RS256 signing");
                out
            }
            Some("ES256") => self.ec.sign(&self.rng, input.as_bytes()).expect("ES256 signing").as_ref().to_vec(),
            Some("HS256") => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, APP_HS256_SECRET.as_bytes());
                ring::hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
            }
            Some("none") => Vec::new(),
            _ => b"garbage".to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

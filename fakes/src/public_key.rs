//! Public keys from PEM files, and JWS signature checks with them, the way a provider checks ours.
//!
//! A test key's `.pub.pem` is an X.509 SubjectPublicKeyInfo; ring wants the key inside it (the
//! EC point, or the PKCS#1 RSAPublicKey), which is the SPKI's BIT STRING. Enough DER is read here to
//! find it.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

pub struct PublicKey {
    key: UnparsedPublicKey<Vec<u8>>,
}

impl PublicKey {
    /// An ES256 (P-256) key from a `PUBLIC KEY` PEM.
    pub fn es256(pem: &[u8]) -> Result<Self, String> {
        Self::from_pem(pem, &signature::ECDSA_P256_SHA256_FIXED)
    }

    /// An RS256 key from a `PUBLIC KEY` PEM.
    pub fn rs256(pem: &[u8]) -> Result<Self, String> {
        Self::from_pem(pem, &signature::RSA_PKCS1_2048_8192_SHA256)
    }

    fn from_pem(pem: &[u8], algorithm: &'static dyn VerificationAlgorithm) -> Result<Self, String> {
        let spki = pem_der(pem)?;
        Ok(Self { key: UnparsedPublicKey::new(algorithm, subject_public_key(&spki)?.to_vec()) })
    }

    /// Whether `signature` (base64url, padded or not) signs `message` under this key.
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature.trim_end_matches('='))
            .is_ok_and(|signature| self.key.verify(message, &signature).is_ok())
    }
}

/// The DER of a one-block PEM file.
fn pem_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|e| e.to_string())?;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect::<Vec<_>>().concat();
    STANDARD.decode(body.trim()).map_err(|e| e.to_string())
}

/// SEQUENCE { AlgorithmIdentifier, BIT STRING key }: the key bytes, without the unused-bits octet.
fn subject_public_key(spki: &[u8]) -> Result<&[u8], String> {
    let (tag, outer, _) = der_element(spki)?;
    if tag != 0x30 {
        return Err("SubjectPublicKeyInfo is not a SEQUENCE".into());
    }
    let (_, _, rest) = der_element(outer)?;
    let (tag, bits, _) = der_element(rest)?;
    match (tag, bits.split_first()) {
        (0x03, Some((0, key))) => Ok(key),
        _ => Err("no BIT STRING public key".into()),
    }
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let short = || "truncated DER".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(short)?;
    let (&first, rest) = rest.split_first().ok_or_else(short)?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(short());
        }
        (rest[..n].iter().fold(0usize, |len, &b| (len << 8) | b as usize), &rest[n..])
    };
    if rest.len() < len {
        return Err(short());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

    #[test]
    fn the_apns_key_verifies_its_own_signatures_and_nothing_else() {
        let keys = crate::keys_dir();
        let public = PublicKey::es256(&std::fs::read(keys.join("apns-test-key.pub.pem")).unwrap()).unwrap();
        let private = pem_der(&std::fs::read(keys.join("apns-test-key.p8")).unwrap()).unwrap();
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &private, &rng).unwrap();
        let signature = URL_SAFE_NO_PAD.encode(pair.sign(&rng, b"header.claims").unwrap().as_ref());
        assert!(public.verifies(b"header.claims", &signature));
        assert!(!public.verifies(b"header.claimz", &signature));
        assert!(!public.verifies(b"header.claims", "AAAA"));
        // The RSA key is not a P-256 key.
        assert!(
            PublicKey::es256(&std::fs::read(keys.join("fcm-test-key.pub.pem")).unwrap())
                .is_ok_and(|wrong| !wrong.verifies(b"header.claims", &signature))
        );
    }
}

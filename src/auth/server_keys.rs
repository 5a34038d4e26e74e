//! Server API keys (`server_api.keys`): what the app's backend presents to call `/v1/server/*`.

use std::sync::Arc;

use ring::hmac;

use crate::secrets::MIN_SECRET_BYTES;

/// The configured keys. A presented key is compared with every one in constant time: as HMACs
/// under a key of this process, so neither a key's length nor a matching prefix shows in timing.
pub struct ServerApiKeys {
    session: hmac::Key,
    tags: Vec<hmac::Tag>,
}

impl ServerApiKeys {
    /// `None` when no key is set (the API is off); an error for a key too short to be a secret.
    pub fn from_config(keys: &[String]) -> anyhow::Result<Option<Arc<Self>>> {
        if keys.is_empty() {
            return Ok(None);
        }
        if let Some(short) = keys.iter().position(|k| k.len() < MIN_SECRET_BYTES) {
            anyhow::bail!("server_api.keys[{short}] is shorter than {MIN_SECRET_BYTES} characters: too easy to guess");
        }
        let session = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("no randomness for the server API keys"))?;
        let tags = keys.iter().map(|k| hmac::sign(&session, k.as_bytes())).collect();
        Ok(Some(Arc::new(Self { session, tags })))
    }

    pub fn admits(&self, presented: &str) -> bool {
        // Every key is checked, whichever matches.
        self.tags
            .iter()
            .fold(false, |ok, tag| hmac::verify(&self.session, presented.as_bytes(), tag.as_ref()).is_ok() | ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_admit_exactly_the_configured_ones() {
        assert!(ServerApiKeys::from_config(&[]).unwrap().is_none());
        assert!(ServerApiKeys::from_config(&["short".into()]).is_err());
        let (old, new) = ("k".repeat(32), "n".repeat(40));
        let keys = ServerApiKeys::from_config(&[old.clone(), new.clone()]).unwrap().unwrap();
        assert!(keys.admits(&old) && keys.admits(&new));
        assert!(!keys.admits(&old[..31]) && !keys.admits(&format!("{old}k")) && !keys.admits(""));
    }
}

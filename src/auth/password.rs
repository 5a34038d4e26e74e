//! Argon2id password hashes in the PHC string format.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    /// Verified against when a username does not exist, so a login takes as long either way.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(memory_kib: u32, iterations: u32) -> Self {
        let params = Params::new(memory_kib, iterations, 1, None).expect("valid argon2 parameters");
        let mut hasher = Self { params, dummy_hash: String::new() };
        hasher.dummy_hash = hasher.hash("not a real password");
        hasher
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// CPU-heavy: call from a blocking thread.
    pub fn hash(&self, password: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2().hash_password(password.as_bytes(), &salt).expect("argon2 hashing").to_string()
    }

    /// CPU-heavy: call from a blocking thread. `None` for `stored` burns the same time and fails.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let (text, real) = match stored {
            Some(s) => (s, true),
            None => (self.dummy_hash.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(text) else { return false };
        // The stored hash carries its own parameters, so raising the cost later still verifies old ones.
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        ok && real
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let h = PasswordHasher::new(1024, 1);
        let stored = h.hash("correct horse");
        assert!(stored.starts_with("$argon2id$"));
        assert!(h.verify("correct horse", Some(&stored)));
        assert!(!h.verify("wrong horse", Some(&stored)));
        assert!(!h.verify("not a real password", None));
    }
}

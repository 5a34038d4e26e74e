//! Accounts: sign up, log in, refresh, log out, and checking an access token.
//!
//! Access tokens are short-lived HS256 JWTs naming the user and the device; the WebSocket upgrade
//! checks one, and also that its device is still logged in (so logout takes effect at once, not at
//! expiry). Refresh tokens are random, one per device, stored only as a SHA-256 hash, and rotate on
//! every use.
//!
//! The app's own tokens (`app_identity`) may stand in for ours: the app's backend issues them.

pub mod admin_session;
pub mod app_identity;
mod hashing;
mod password;
mod server_keys;
mod service;
mod tokens;

pub use admin_session::Admin;
pub use password::PasswordHasher;
pub use server_keys::ServerApiKeys;
pub use service::{AuthService, Authenticated, Refreshed, Session};
pub use tokens::TokenKeys;

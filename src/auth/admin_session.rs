//! Logins to the admin dashboard (`admin/`). The credentials are compared in constant time (as HMACs under a key of
//! this process); a login is a random session id in an `HttpOnly`, `SameSite=Strict` cookie
//! scoped to `/admin` (and `Secure` unless configured otherwise), kept in memory: a restart logs
//! everyone out. Each session has a CSRF token that every form posts back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use ring::hmac;

use crate::config::AdminConfig;
use crate::rate_limit::PerKeyLimiter;

const COOKIE: &str = "tidings_admin";
const MIN_PASSWORD_CHARS: usize = 12;
/// Login attempts per client address a minute.
const ATTEMPTS_PER_MINUTE: u32 = 5;

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    expires: Instant,
}

pub enum Refused {
    Wrong,
    TooMany,
}

/// Why a form post was refused.
pub enum FormRefused {
    NoSession,
    BadCsrf,
}

impl FormRefused {
    pub fn response(self) -> HttpResponse {
        match self {
            FormRefused::NoSession => HttpResponse::Unauthorized().content_type("text/plain").body("log in first\n"),
            FormRefused::BadCsrf => {
                HttpResponse::Forbidden().content_type("text/plain").body("bad or missing CSRF token\n")
            }
        }
    }
}

pub struct Admin {
    key: hmac::Key,
    username: hmac::Tag,
    password: hmac::Tag,
    sessions: DashMap<String, Session>,
    attempts: PerKeyLimiter,
    ttl: Duration,
    secure: bool,
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl Admin {
    /// `None` while no admin user is configured (the dashboard is off).
    pub fn from_config(config: &AdminConfig) -> anyhow::Result<Option<Arc<Self>>> {
        if config.username.is_empty() {
            return Ok(None);
        }
        let password = match config.password_file.as_os_str().is_empty() {
            true => config.password.clone(),
            false => std::fs::read_to_string(&config.password_file)
                .map_err(|e| anyhow::anyhow!("reading admin.password_file {}: {e}", config.password_file.display()))?
                .trim()
                .to_owned(),
        };
        anyhow::ensure!(
            password.chars().count() >= MIN_PASSWORD_CHARS,
            "admin.password must be at least {MIN_PASSWORD_CHARS} characters"
        );
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("no randomness for the admin dashboard"))?;
        Ok(Some(Arc::new(Self {
            username: hmac::sign(&key, config.username.as_bytes()),
            password: hmac::sign(&key, password.as_bytes()),
            key,
            sessions: DashMap::new(),
            attempts: PerKeyLimiter::new(ATTEMPTS_PER_MINUTE, "login attempts"),
            ttl: Duration::from_secs(config.session_hours.max(1) * 3600),
            secure: config.secure_cookie,
        })))
    }

    /// A new session's cookie, if the credentials are right.
    pub fn log_in(&self, client: Option<IpAddr>, username: &str, password: &str) -> Result<String, Refused> {
        let bucket = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if self.attempts.take(&bucket, Instant::now()).is_err() {
            return Err(Refused::TooMany);
        }
        // Both compared whatever the first gives: the time says nothing about which was wrong.
        let user_ok = hmac::verify(&self.key, username.as_bytes(), self.username.as_ref()).is_ok();
        let password_ok = hmac::verify(&self.key, password.as_bytes(), self.password.as_ref()).is_ok();
        if !(user_ok & password_ok) {
            tracing::warn!(client = %bucket, "a wrong admin login");
            return Err(Refused::Wrong);
        }
        let now = Instant::now();
        self.sessions.retain(|_, s| s.expires > now);
        let id = random_token();
        self.sessions.insert(id.clone(), Session { csrf: random_token(), expires: now + self.ttl });
        tracing::info!(client = %bucket, "admin logged in");
        Ok(self.cookie(&id, self.ttl.as_secs()))
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }

    /// A cookie that ends the session in the browser.
    pub fn clear_cookie(&self) -> String {
        self.cookie("", 0)
    }

    fn session_id(req: &HttpRequest) -> Option<String> {
        let cookies = req.headers().get(header::COOKIE)?.to_str().ok()?;
        cookies.split(';').find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
    }

    /// The request's live session, if it has one.
    pub fn session_of(&self, req: &HttpRequest) -> Option<Session> {
        let id = Self::session_id(req)?;
        let session = self.sessions.get(&id)?.clone();
        if session.expires <= Instant::now() {
            self.sessions.remove(&id);
            return None;
        }
        Some(session)
    }

    /// A form post must come with a session and that session's CSRF token.
    pub fn check_form(&self, req: &HttpRequest, csrf: &str) -> Result<(), FormRefused> {
        let session = self.session_of(req).ok_or(FormRefused::NoSession)?;
        let expected = hmac::sign(&self.key, session.csrf.as_bytes());
        hmac::verify(&self.key, csrf.as_bytes(), expected.as_ref()).map_err(|_| FormRefused::BadCsrf)
    }

    pub fn log_out(&self, req: &HttpRequest) {
        if let Some(id) = Self::session_id(req) {
            self.sessions.remove(&id);
        }
    }
}

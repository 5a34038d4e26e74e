//! The store's error: a kind callers act on, a message, and the backend error it came from.

use std::fmt;
use std::sync::Arc;

use crate::domain::{Code, DomainError};

/// What went wrong, as callers need to tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A unique thing already exists (a username), or belongs to someone else; the message is
    /// shown to the client as it is.
    Conflict,
    /// The backend cannot serve now (closed, I/O failure, busy beyond its timeout).
    Unavailable,
    /// Stored data does not decode: a bug or corruption.
    Corrupt,
    /// The write queue is full: shed the request and let the client retry.
    Busy,
}

/// The backend's own error, kept for logs (`Error::source`); shared because one failed commit
/// fails every command of its batch.
type Source = Arc<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    pub source: Option<Source>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    /// An error of `kind` caused by the backend's `source` (its text becomes the message).
    pub fn caused_by(kind: StoreErrorKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { kind, message: source.to_string(), source: Some(Arc::new(source)) }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e.kind {
            // Conflict messages are written for the client ("username taken"); nothing internal.
            StoreErrorKind::Conflict => DomainError::new(Code::Conflict, e.message),
            StoreErrorKind::Unavailable => {
                tracing::warn!(error = %e, "store unavailable");
                DomainError {
                    retry_after_ms: 1000,
                    ..DomainError::new(Code::Unavailable, "storage is unavailable; retry later")
                }
            }
            StoreErrorKind::Busy => DomainError::overloaded(200),
            StoreErrorKind::Corrupt => {
                tracing::error!(error = %e, "store returned undecodable data");
                DomainError::internal()
            }
        }
    }
}

use std::fmt;

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

#[derive(Debug)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StoreError {}

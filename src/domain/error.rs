//! The domain's error: what services and actors answer when a request fails. Every failure a
//! client can cause or see is one of these codes; the transport maps each to the wire's stable
//! `ErrorCode` in one table (`transport::codes`). Internal details are logged where they happen
//! and never sent; a store failure becomes one of these in `store::error`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Code {
    BadFrame,
    UnknownRequest,
    PayloadTooLarge,
    InvalidArgument,
    Unauthenticated,
    TokenExpired,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    Overloaded,
    Unavailable,
    Internal,
    NotAMember,
    /// The stream a client resumes was started anew: its positions name other events now.
    StreamReset,
}

/// An error answer: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainError {
    pub code: Code,
    pub message: String,
    pub retry_after_ms: u32,
    /// For `InvalidArgument`: the request field at fault, as the wire schema names it ("" when
    /// none is, or the error is of another kind).
    #[serde(default)]
    pub field: String,
}

impl DomainError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_ms: 0, field: String::new() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// An invalid argument that one field of the request is at fault for.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_owned(), ..Self::invalid(message) }
    }

    pub fn not_a_member() -> Self {
        Self::new(Code::NotAMember, "not a member of this room")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn overloaded(retry_after_ms: u32) -> Self {
        Self { retry_after_ms, ..Self::new(Code::Overloaded, "the server is at capacity; retry later") }
    }

    pub fn internal() -> Self {
        Self::new(Code::Internal, "internal error")
    }
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for DomainError {}

pub type DomainResult<T> = Result<T, DomainError>;

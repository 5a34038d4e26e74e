//! Errors that reach clients. Every failure a client can cause or see is one of these codes; the
//! transport layer maps each to the wire's stable `ErrorCode` in one table (`transport::codes`).
//! Internal details are logged where they happen and never sent.

use std::fmt;

use crate::store::{StoreError, StoreErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

/// An error answer: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub retry_after_ms: u32,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_ms: 0 }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
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
        Self { code: Code::Overloaded, message: "the server is at capacity; retry later".into(), retry_after_ms }
    }

    pub fn internal() -> Self {
        Self::new(Code::Internal, "internal error")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e.kind {
            // Conflict messages are written for the client ("username taken"); nothing internal.
            StoreErrorKind::Conflict => ApiError::new(Code::Conflict, e.message),
            StoreErrorKind::Unavailable => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError {
                    code: Code::Unavailable,
                    message: "storage is unavailable; retry later".into(),
                    retry_after_ms: 1000,
                }
            }
            StoreErrorKind::Busy => ApiError::overloaded(200),
            StoreErrorKind::Corrupt => {
                tracing::error!(error = %e, "store returned undecodable data");
                ApiError::internal()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

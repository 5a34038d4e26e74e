//! The one table from error codes to the wire's stable `ErrorCode` numbers (and HTTP statuses).

use actix_web::http::StatusCode;
use tidings_proto::v1::ErrorCode;

use crate::domain::error::Code;

pub fn wire_code(code: Code) -> ErrorCode {
    match code {
        Code::BadFrame => ErrorCode::BadFrame,
        Code::UnknownRequest => ErrorCode::UnknownRequest,
        Code::PayloadTooLarge => ErrorCode::PayloadTooLarge,
        Code::InvalidArgument => ErrorCode::InvalidArgument,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
        Code::TokenExpired => ErrorCode::TokenExpired,
        Code::Forbidden => ErrorCode::Forbidden,
        Code::NotFound => ErrorCode::NotFound,
        Code::Conflict => ErrorCode::Conflict,
        Code::RateLimited => ErrorCode::RateLimited,
        Code::Overloaded => ErrorCode::Overloaded,
        Code::Unavailable => ErrorCode::Unavailable,
        Code::Internal => ErrorCode::Internal,
        Code::NotAMember => ErrorCode::NotAMember,
        Code::StreamReset => ErrorCode::StreamReset,
    }
}

pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::BadFrame | Code::UnknownRequest | Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unauthenticated | Code::TokenExpired => StatusCode::UNAUTHORIZED,
        Code::Forbidden | Code::NotAMember => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Conflict | Code::StreamReset => StatusCode::CONFLICT,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::Overloaded | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

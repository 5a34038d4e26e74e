//! A page request as clients send it: an opaque cursor (empty for the first page) and a limit (0
//! for the default), checked the same way by every list.

use crate::domain::{DomainError, DomainResult};

/// Where the page starts: `None` for the first; `parse` reads the list's own cursors, and any
/// other text is INVALID_ARGUMENT naming `cursor`.
pub fn after<T>(cursor: &str, parse: fn(&str) -> Option<T>) -> DomainResult<Option<T>> {
    match cursor {
        "" => Ok(None),
        text => parse(text).map(Some).ok_or_else(|| DomainError::invalid_field("cursor", "cursor is not one of ours")),
    }
}

/// How long the page is: `default` for 0, at most `most`.
pub fn limit(asked: u32, default: u32, most: u32) -> usize {
    let limit = match asked {
        0 => default,
        n => n.min(most),
    };
    limit as usize
}

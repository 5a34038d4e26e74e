//! The follow graph: who follows whom (at once for a public account, after approval for a
//! private one), and who blocked whom.

use serde::{Deserialize, Serialize};

use super::{Profile, UserId};

/// One user's follow of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum FollowState {
    #[default]
    None,
    /// Asked to follow a private account, not approved yet.
    Requested,
    Following,
}

impl FollowState {
    /// Its code in both stores.
    pub fn code(self) -> i32 {
        match self {
            FollowState::None => 0,
            FollowState::Requested => 1,
            FollowState::Following => 2,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(FollowState::None),
            1 => Some(FollowState::Requested),
            2 => Some(FollowState::Following),
            _ => None,
        }
    }
}

/// A user's exact counts of approved follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FollowCounts {
    pub followers: u64,
    pub following: u64,
}

/// The lists of users the graph keeps for each user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FollowList {
    /// Who follows the user (approved).
    Followers,
    /// Whom the user follows (approved).
    Following,
    /// Who asked to follow the user and waits.
    Requests,
    /// Whom the user blocked.
    Blocked,
}

/// A profile as one reader sees it: with its counts and the two follows between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileView {
    pub profile: Profile,
    pub counts: FollowCounts,
    /// How many posts the user has.
    pub posts: u64,
    /// The reader's follow of this user.
    pub my_follow: FollowState,
    /// Whether this user follows the reader (approved).
    pub follows_me: bool,
}

/// Where a page of a list ends, as clients hold it: opaque text (today the last user id, in hex,
/// so that the order may change without changing the protocol).
pub fn cursor_after(last: UserId) -> String {
    format!("u{:x}", last.0)
}

/// The user a cursor names; `None` for text that is not a cursor.
pub fn parse_cursor(cursor: &str) -> Option<UserId> {
    let hex = cursor.strip_prefix('u')?;
    (!hex.is_empty() && hex.len() <= 16).then(|| u64::from_str_radix(hex, 16).ok().map(UserId))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_not_one() {
        assert_eq!(parse_cursor(&cursor_after(UserId(u64::MAX))), Some(UserId(u64::MAX)));
        assert_eq!(parse_cursor(&cursor_after(UserId(42))), Some(UserId(42)));
        for bad in ["", "u", "42", "uxyz", "u11111111111111111"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }
}

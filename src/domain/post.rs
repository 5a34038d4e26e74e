//! Photo posts: a few images, a caption and perhaps a place, by one author.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{MediaId, UserId};

/// Photos a post may have.
pub const POST_MAX_PHOTOS: usize = 10;
/// The longest caption, in characters (Instagram's limit).
pub const CAPTION_MAX_CHARS: usize = 2200;

/// A post's id: time-ordered (`time_ordered_id`), so that a later post has a larger id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct PostId(pub u64);

impl fmt::Display for PostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A place on Earth, in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

/// Never NaN (`checked`, and stores keep what was checked): equality is total.
impl Eq for Location {}

impl Location {
    /// A real place: latitude -90 to 90, longitude -180 to 180.
    pub fn checked(lat: f64, lng: f64) -> Option<Self> {
        ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng)).then_some(Self { lat, lng })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    pub id: PostId,
    pub author: UserId,
    pub media: Vec<MediaId>,
    pub caption: String,
    pub location: Option<Location>,
    pub created_at_ms: i64,
}

/// The images of a post as one value for a store: their ids back to back.
pub fn media_to_bytes(media: &[MediaId]) -> Vec<u8> {
    media.iter().flat_map(|m| m.0).collect()
}

/// `None` when the bytes are not whole ids.
pub fn media_from_bytes(bytes: &[u8]) -> Option<Vec<MediaId>> {
    bytes
        .len()
        .is_multiple_of(16)
        .then(|| bytes.chunks_exact(16).map(|c| MediaId(c.try_into().expect("16 bytes"))).collect())
}

/// Where a page of posts ends, as clients hold it (opaque; today the last post's id in hex).
pub fn post_cursor_after(last: PostId) -> String {
    format!("p{:x}", last.0)
}

pub fn parse_post_cursor(cursor: &str) -> Option<PostId> {
    let hex = cursor.strip_prefix('p')?;
    (!hex.is_empty() && hex.len() <= 16).then(|| u64::from_str_radix(hex, 16).ok().map(PostId))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_checked_and_media_lists_round_trip() {
        assert!(Location::checked(90.0, -180.0).is_some());
        assert!(Location::checked(90.1, 0.0).is_none());
        assert!(Location::checked(f64::NAN, 0.0).is_none());
        let media = vec![MediaId::of(b"a"), MediaId::of(b"b")];
        assert_eq!(media_from_bytes(&media_to_bytes(&media)), Some(media));
        assert_eq!(media_from_bytes(&[1, 2, 3]), None);
        assert_eq!(parse_post_cursor(&post_cursor_after(PostId(77))), Some(PostId(77)));
        assert_eq!(parse_post_cursor("u4d"), None);
    }
}

/// A comment's id: time-ordered within its post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct CommentId(pub u64);

/// The longest comment, in characters.
pub const COMMENT_MAX_CHARS: usize = 2200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: CommentId,
    pub post: PostId,
    pub author: UserId,
    pub text: String,
    pub created_at_ms: i64,
}

/// A post's exact counts of likes and comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reactions {
    pub likes: u64,
    pub comments: u64,
}

/// Where a page of comments ends (opaque; today the last comment's id in hex).
pub fn comment_cursor_after(last: CommentId) -> String {
    format!("c{:x}", last.0)
}

pub fn parse_comment_cursor(cursor: &str) -> Option<CommentId> {
    let hex = cursor.strip_prefix('c')?;
    (!hex.is_empty() && hex.len() <= 16).then(|| u64::from_str_radix(hex, 16).ok().map(CommentId))?
}

/// A post as one reader sees it: with its counts and whether the reader likes it, and (for one
/// post read on its own) who liked it last and its newest comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostView {
    pub post: Post,
    pub reactions: Reactions,
    pub liked_by_me: bool,
    pub latest: Option<LatestReactions>,
}

/// How many of a post's latest likers its details name.
pub const LATEST_LIKERS: usize = 3;

/// The newest of a post's reactions (vangav's GetPostInfo): its latest likers, newest first, and
/// its newest comment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LatestReactions {
    pub likers: Vec<UserId>,
    pub comment: Option<Comment>,
}

//! Activity: what others did that concerns a user ("ana started following you", "ana liked your
//! photo", "ana commented: ..."), an event in that user's stream like a message.
//!
//! Activities of one kind about one thing (the likes of one post, the comments on it, new
//! followers) that fall within one window are a group: each new one carries the group's count and
//! newest actors as of then, so a client shows the newest of a group ("ana and 4 others liked your
//! photo") in place of the ones before it.

use serde::{Deserialize, Serialize};

use super::{CommentId, PostId, UserId};

/// The newest actors a group remembers.
pub const GROUP_ACTORS_MAX: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivityKind {
    /// The actor follows the user now (a public account, or a request the user approved).
    Followed,
    /// The actor asks to follow the user's private account.
    FollowRequested,
    /// The user's request to follow the actor was approved.
    FollowAccepted,
    /// The actor liked the user's post.
    Liked,
    /// The actor commented on the user's post.
    Commented,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 5] = [
        ActivityKind::Followed,
        ActivityKind::FollowRequested,
        ActivityKind::FollowAccepted,
        ActivityKind::Liked,
        ActivityKind::Commented,
    ];

    /// The stable number stored and sent on the wire.
    pub fn code(self) -> i64 {
        match self {
            ActivityKind::Followed => 1,
            ActivityKind::FollowRequested => 2,
            ActivityKind::FollowAccepted => 3,
            ActivityKind::Liked => 4,
            ActivityKind::Commented => 5,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// An activity as its recipient sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Time-ordered, unique within the recipient's activities.
    pub id: u64,
    pub recipient: UserId,
    pub kind: ActivityKind,
    pub actor: UserId,
    /// The post it is about (likes and comments), else 0.
    pub post: PostId,
    /// The comment (comments), else 0.
    pub comment: CommentId,
    /// The start of a comment's text (cut to the push preview's length), else empty.
    pub text: String,
    pub at_ms: i64,
    pub group: ActivityGroup,
}

/// The group an activity belongs to, as of that activity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActivityGroup {
    /// The id of the group's first activity: the same for every activity of the group.
    pub id: u64,
    /// How many activities the group has, this one included (for likes and follows, which are
    /// once per actor, how many people; for comments, how many comments).
    pub count: u32,
    /// The newest actors, newest first (this activity's actor first), at most `GROUP_ACTORS_MAX`.
    pub actors: Vec<UserId>,
}

impl ActivityGroup {
    /// The group after `activity` joined `previous` (the group's state before, if its window is
    /// still open at the activity's time).
    pub fn joined(previous: Option<ActivityGroup>, activity_id: u64, actor: UserId) -> ActivityGroup {
        match previous {
            None => ActivityGroup { id: activity_id, count: 1, actors: vec![actor] },
            Some(mut group) => {
                group.count = group.count.saturating_add(1);
                group.actors.retain(|&a| a != actor);
                group.actors.insert(0, actor);
                group.actors.truncate(GROUP_ACTORS_MAX);
                group
            }
        }
    }
}

/// An activity about to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    pub recipient: UserId,
    pub kind: ActivityKind,
    pub actor: UserId,
    pub post: PostId,
    pub comment: CommentId,
    pub text: String,
    pub at_ms: i64,
    /// A group whose window opened longer ago than this is closed: the activity starts a new one.
    pub window_ms: i64,
}

impl NewActivity {
    /// What makes the activity once-only: recording it again (a retried request, a like after an
    /// unlike, a follow after an unfollow) records nothing.
    pub fn dedup_key(&self) -> String {
        format!("{}:{}:{}:{}", self.kind.code(), self.actor.0, self.post.0, self.comment.0)
    }

    /// The activity as recorded: under `id`, in `group`.
    pub fn recorded(&self, id: u64, group: ActivityGroup) -> Activity {
        Activity {
            id,
            recipient: self.recipient,
            kind: self.kind,
            actor: self.actor,
            post: self.post,
            comment: self.comment,
            text: self.text.clone(),
            at_ms: self.at_ms,
            group,
        }
    }
}

/// One line saying what happened, for a push: "ana and 4 others liked your photo".
pub fn describe(activity: &Activity, actor_name: &str) -> String {
    let who = match activity.group.count {
        0 | 1 => actor_name.to_owned(),
        2 => format!("{actor_name} and 1 other"),
        n => format!("{actor_name} and {} others", n - 1),
    };
    match activity.kind {
        ActivityKind::Followed => format!("{who} started following you"),
        ActivityKind::FollowRequested => format!("{who} asked to follow you"),
        ActivityKind::FollowAccepted => format!("{actor_name} accepted your follow request"),
        ActivityKind::Liked => format!("{who} liked your photo"),
        // One person may comment many times: a comment speaks for itself, never "and N others".
        ActivityKind::Commented => format!("{actor_name} commented: {}", activity.text),
    }
}

/// Where a user stands with their activity: what they have seen, and how much is new since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActivityStatus {
    /// The stream position up to which the user has seen their activity (on any device).
    pub seen_up_to_pos: u64,
    /// Activities after that position, up to `ACTIVITY_UNREAD_CAP`.
    pub unread: u32,
}

/// The unread count stops here ("99+").
pub const ACTIVITY_UNREAD_CAP: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(kind: ActivityKind, count: u32) -> Activity {
        Activity {
            id: 9,
            recipient: UserId(1),
            kind,
            actor: UserId(2),
            post: PostId(3),
            comment: CommentId(0),
            text: "nice".into(),
            at_ms: 0,
            group: ActivityGroup { id: 9, count, actors: vec![UserId(2)] },
        }
    }

    #[test]
    fn a_group_counts_everyone_and_keeps_the_newest_actors_once() {
        let group = ActivityGroup::joined(None, 10, UserId(1));
        assert_eq!(group, ActivityGroup { id: 10, count: 1, actors: vec![UserId(1)] });
        let group = [2, 3, 1, 4].into_iter().fold(group, |g, a| ActivityGroup::joined(Some(g), 99, UserId(a)));
        assert_eq!(group.id, 10, "the group keeps its first activity's id");
        assert_eq!(group.count, 5);
        assert_eq!(group.actors, vec![UserId(4), UserId(1), UserId(3)]);
    }

    #[test]
    fn descriptions_aggregate_the_group() {
        assert_eq!(describe(&activity(ActivityKind::Liked, 1), "ana"), "ana liked your photo");
        assert_eq!(describe(&activity(ActivityKind::Liked, 2), "ana"), "ana and 1 other liked your photo");
        assert_eq!(describe(&activity(ActivityKind::Liked, 5), "ana"), "ana and 4 others liked your photo");
        assert_eq!(describe(&activity(ActivityKind::Commented, 1), "ana"), "ana commented: nice");
        assert_eq!(describe(&activity(ActivityKind::Followed, 3), "ana"), "ana and 2 others started following you");
        for kind in ActivityKind::ALL {
            assert_eq!(ActivityKind::from_code(kind.code()), Some(kind));
        }
    }
}

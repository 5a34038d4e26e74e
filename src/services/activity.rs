//! Activity: what others did that concerns a user (followed them, asked to, accepted their request,
//! liked or commented on their post), recorded into that user's stream as an event like a message:
//! read, resumed and acknowledged the same way, with an unread count past what they have seen.
//!
//! Rules: never for one's own actions; once per actor and thing (`NewActivity::dedup_key`: a
//! retried request, a like after an unlike or a follow after an unfollow announces nothing again);
//! a push only when the user has no live session, merged into their pending activity push (one per
//! burst, within the push grace window), muted by `muteActivity` and do-not-disturb, and cancelled
//! once the user has the event on any device (an ack) or marks it seen.

use std::sync::Arc;

use super::ActivityOp;
use crate::actors::{Hub, ReplyBody};
use crate::domain::{
    ACTIVITY_PUSH_ROOM, ActivityKind, CommentId, DomainResult, NewActivity, PostId, StreamEvent, UserId, now_ms,
};

pub async fn handle(hub: &Arc<Hub>, me: UserId, op: ActivityOp) -> DomainResult<ReplyBody> {
    match op {
        ActivityOp::Seen { up_to_pos } => {
            // No further than the stream goes: a mark past it would hide activity still to come.
            let up_to_pos = up_to_pos.min(hub.store.stream_head(me).await?);
            let status = hub.store.set_activity_seen(me, up_to_pos).await?;
            Ok(ReplyBody::Activity(status))
        }
        ActivityOp::Status => Ok(ReplyBody::Activity(hub.store.activity_status(me).await?)),
        ActivityOp::Mute { until_ms } => {
            hub.store.set_room_mute(me, ACTIVITY_PUSH_ROOM, until_ms).await?;
            Ok(ReplyBody::Ok)
        }
    }
}

/// What an activity is about: the post (and comment, with the start of its text), if anything.
#[derive(Debug, Clone, Default)]
pub struct About {
    pub post: PostId,
    pub comment: CommentId,
    pub text: String,
}

/// Records that `actor` did `kind` concerning `recipient`, into the recipient's stream (and their
/// devices' push queue when they are offline), and shows it to their live sessions. Nothing for
/// one's own doing, nor for something recorded before.
pub async fn record(hub: &Hub, recipient: UserId, kind: ActivityKind, actor: UserId, about: About) -> DomainResult<()> {
    if recipient == actor {
        return Ok(());
    }
    let new = NewActivity {
        recipient,
        kind,
        actor,
        post: about.post,
        comment: about.comment,
        text: hub.push.preview(&about.text),
        at_ms: now_ms(),
        window_ms: hub.activity_window_ms,
    };
    // Whether they are online is asked only when there is push to decide (in a cluster, a Redis call).
    let online = hub.push.enabled() && hub.is_online(recipient).await;
    let push = hub.push.activity(recipient, online);
    let due = push.as_ref().map(|p| p.due_at_ms);
    let Some((pos, activity)) = hub.store.record_activity(new, push).await? else { return Ok(()) };
    if let Some(due) = due {
        hub.push.queued(&[recipient], due);
    }
    hub.deliver(&vec![(recipient, pos)], &StreamEvent::Activity(Arc::new(activity)));
    Ok(())
}

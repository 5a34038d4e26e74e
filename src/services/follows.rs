//! Follows and blocks: following a public account takes effect at once, a private one is asked and
//! approved (or declined); anyone may stop following, withdraw a request, or remove a follower. A
//! block, in either direction, forbids following and ends the follows between the two; the one
//! blocked no longer finds or reads the blocker's profile. A private account's lists are for its
//! approved followers and itself.

use std::sync::Arc;
use std::time::Duration;

use super::FollowsOp;
use super::activity::{self, About};
use crate::actors::{Hub, ReplyBody};
use crate::domain::{
    ActivityKind, DomainError, DomainResult, FollowList, FollowState, UserId, cursor_after, parse_cursor,
};
use crate::lifecycle::Periodic;
use crate::store::Store;

/// How often half-made follow changes are looked for (`GraphStore::settle_follows`).
const SETTLE_EVERY: Duration = Duration::from_secs(10);
/// Half-made changes settled per pass and listing partition.
const SETTLE_AT_ONCE: usize = 1000;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;

pub async fn handle(hub: &Arc<Hub>, me: UserId, op: FollowsOp) -> DomainResult<ReplyBody> {
    let store = &hub.store;
    match op {
        FollowsOp::Follow(user) => {
            let target = other_user(hub, me, user).await?;
            if store.blocked_between(me, user).await? {
                return Err(DomainError::forbidden("you cannot follow this user"));
            }
            let (state, when): (_, &[FollowState]) = match target.private {
                true => (FollowState::Requested, &[FollowState::None]),
                false => (FollowState::Following, &[FollowState::None, FollowState::Requested]),
            };
            let before = store.set_follow(me, user, state, when).await?;
            let now = if when.contains(&before) { state } else { before };
            // A retry finds it recorded; a follow after an unfollow is not announced again.
            let kind = match now {
                FollowState::Following => Some(ActivityKind::Followed),
                FollowState::Requested => Some(ActivityKind::FollowRequested),
                FollowState::None => None,
            };
            if let Some(kind) = kind {
                activity::record(hub, user, kind, me, About::default()).await?;
            }
            Ok(ReplyBody::Follow { user, state: now })
        }
        FollowsOp::Unfollow(user) => {
            other_user(hub, me, user).await?;
            store.set_follow(me, user, FollowState::None, &[]).await?;
            Ok(ReplyBody::Follow { user, state: FollowState::None })
        }
        FollowsOp::Answer { user, approve } => {
            other_user(hub, me, user).await?;
            let state = if approve { FollowState::Following } else { FollowState::None };
            let before = store.set_follow(user, me, state, &[FollowState::Requested]).await?;
            // Answered already (a retry) is no error; no request at all is.
            if before != FollowState::Requested && before != state {
                return Err(DomainError::not_found("this user has not asked to follow you"));
            }
            if approve {
                activity::record(hub, user, ActivityKind::FollowAccepted, me, About::default()).await?;
            }
            Ok(ReplyBody::Follow { user, state })
        }
        FollowsOp::RemoveFollower(user) => {
            other_user(hub, me, user).await?;
            store.set_follow(user, me, FollowState::None, &[]).await?;
            Ok(ReplyBody::Follow { user, state: FollowState::None })
        }
        FollowsOp::Block(user) => {
            other_user(hub, me, user).await?;
            // The block first: a follow racing it is refused, or ended just below.
            store.set_block(me, user, true).await?;
            hub.blocks_changed();
            store.set_follow(me, user, FollowState::None, &[]).await?;
            store.set_follow(user, me, FollowState::None, &[]).await?;
            Ok(ReplyBody::Ok)
        }
        FollowsOp::Unblock(user) => {
            other_user(hub, me, user).await?;
            store.set_block(me, user, false).await?;
            hub.blocks_changed();
            Ok(ReplyBody::Ok)
        }
        FollowsOp::List { user, list, cursor, limit } => {
            list_page(hub, me, user.unwrap_or(me), list, &cursor, limit).await
        }
    }
}

/// Finishes, at start and then every `SETTLE_EVERY`, the follow changes a stopped process left
/// half made (on a backend whose changes are steps: ScyllaDB), so that counts and lists agree.
pub fn follow_settler(store: Arc<dyn Store>) -> Periodic {
    Periodic::start("follow settler", Duration::ZERO, SETTLE_EVERY, move || {
        let store = store.clone();
        async move {
            match store.settle_follows(SETTLE_AT_ONCE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(settled = n, "finished follow changes a stopped process left"),
                Err(e) => tracing::warn!(error = %e, "settling follow changes failed; trying again later"),
            }
        }
    })
}

/// Whether `reader` may see what `author` shares (posts, and a private account's lists): not if
/// either blocked the other (`NOT_FOUND`: to the one blocked, the blocker does not exist), nor if
/// the account is private and the reader not an approved follower (`FORBIDDEN`).
pub async fn may_see_content(hub: &Hub, reader: UserId, author: UserId) -> DomainResult<()> {
    if reader == author {
        return Ok(());
    }
    if hub.store.blocked_between(reader, author).await? {
        return Err(DomainError::not_found("no such user"));
    }
    let Some(profile) = hub.store.profiles(vec![author]).await?.pop() else {
        return Err(DomainError::not_found("no such user"));
    };
    if profile.private && hub.store.follow_state(reader, author).await? != FollowState::Following {
        return Err(DomainError::forbidden("this account is private"));
    }
    Ok(())
}

/// Another user, who exists and has not blocked the caller (to whom they do not exist).
async fn other_user(hub: &Hub, me: UserId, user: UserId) -> DomainResult<crate::domain::Profile> {
    if user == me {
        return Err(DomainError::invalid_field("user_id", "user_id is yourself"));
    }
    let profile = hub.store.profiles(vec![user]).await?.pop();
    match profile {
        Some(profile) if hub.store.blockers_of(me, vec![user]).await?.is_empty() => Ok(profile),
        _ => Err(DomainError::not_found("no such user")),
    }
}

async fn list_page(
    hub: &Arc<Hub>,
    me: UserId,
    user: UserId,
    list: FollowList,
    cursor: &str,
    limit: u32,
) -> DomainResult<ReplyBody> {
    let after = super::page::after(cursor, parse_cursor)?;
    let limit = super::page::limit(limit, DEFAULT_PAGE, MAX_PAGE);
    if user != me {
        if matches!(list, FollowList::Requests | FollowList::Blocked) {
            return Err(DomainError::forbidden("only your own requests and blocks are listed"));
        }
        may_see_content(hub, me, user).await?;
    }
    let users = hub.store.follow_list(user, list, after, limit).await?;
    let next_cursor = match users.last() {
        Some(&last) if users.len() == limit => cursor_after(last),
        _ => String::new(),
    };
    let views = super::profiles::views(hub, me, users).await?;
    Ok(ReplyBody::Users { profiles: views, next_cursor })
}

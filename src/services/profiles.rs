//! Profiles: a user changes their own (display name, bio, avatar, birthday, privacy); anyone logged
//! in reads anyone's and finds users by a prefix of their username or display name. A birthday is
//! shown to its user only. An avatar must be an image the user uploaded, and becomes readable by
//! anyone logged in (`MediaStore::publish_media`) before the profile names it.

use std::sync::Arc;

use super::activity::{self, About};
use super::{ProfileEdit, ProfilesOp};
use crate::actors::{Hub, ReplyBody};
use crate::domain::{
    ActivityKind, BIO_MAX_CHARS, Birthday, Code, DISPLAY_NAME_MAX_CHARS, DomainError, DomainResult, FollowList,
    FollowState, MediaId, ProfileChange, ProfileView, SEARCH_MIN_CHARS, UserId, now_ms, search_key,
};

/// Follow requests approved at once when an account turns public.
const REQUESTS_AT_ONCE: usize = 1000;

/// A private account turned public: whoever asked to follow it follows it now (and is told), as
/// anyone asking from now on would. Saying "public" again finishes what a stopped process left.
async fn approve_waiting_requests(hub: &Hub, me: UserId) -> DomainResult<()> {
    let mut after = None;
    loop {
        let waiting = hub.store.follow_list(me, FollowList::Requests, after, REQUESTS_AT_ONCE).await?;
        for &user in &waiting {
            let before = hub.store.set_follow(user, me, FollowState::Following, &[FollowState::Requested]).await?;
            if before == FollowState::Requested {
                activity::record(hub, user, ActivityKind::FollowAccepted, me, About::default()).await?;
            }
        }
        if waiting.len() < REQUESTS_AT_ONCE {
            return Ok(());
        }
        after = waiting.last().copied();
    }
}

/// Profiles one request may ask for.
pub const MAX_PROFILES_PER_REQUEST: usize = 100;
/// Search answers: the default and the most.
const DEFAULT_SEARCH_LIMIT: u32 = 20;
const MAX_SEARCH_LIMIT: u32 = 50;
/// The longest search prefix, in characters (no key is longer than a display name).
const SEARCH_MAX_CHARS: usize = DISPLAY_NAME_MAX_CHARS;

pub async fn handle(hub: &Arc<Hub>, me: UserId, op: ProfilesOp) -> DomainResult<ReplyBody> {
    match op {
        ProfilesOp::Set(edit) => {
            let change = check_edit(hub, me, edit).await?;
            if let Some(Some(avatar)) = change.avatar {
                hub.store.publish_media(avatar).await?;
            }
            let made_public = change.private == Some(false);
            if !hub.store.change_profile(me, change).await? {
                return Err(DomainError::not_found("no such user"));
            }
            if made_public {
                approve_waiting_requests(hub, me).await?;
            }
            let mine = views(hub, me, vec![me]).await?.pop().ok_or_else(|| DomainError::not_found("no such user"))?;
            Ok(ReplyBody::Profile(Box::new(mine)))
        }
        ProfilesOp::Get { users, usernames } => {
            if users.len() + usernames.len() > MAX_PROFILES_PER_REQUEST {
                let message = format!("at most {MAX_PROFILES_PER_REQUEST} profiles per request");
                return Err(DomainError::invalid_field("user_ids", message));
            }
            let mut ids = users;
            for name in usernames {
                if let Some(user) = hub.store.user_by_name(&name).await? {
                    ids.push(user.id);
                }
            }
            ids.sort_unstable();
            ids.dedup();
            Ok(ReplyBody::Profiles(views(hub, me, ids).await?))
        }
        ProfilesOp::Search { prefix, limit } => {
            let prefix = search_key(&prefix);
            let chars = prefix.chars().count();
            if !(SEARCH_MIN_CHARS..=SEARCH_MAX_CHARS).contains(&chars) {
                let message = format!("prefix must be {SEARCH_MIN_CHARS} to {SEARCH_MAX_CHARS} characters");
                return Err(DomainError::invalid_field("prefix", message));
            }
            let limit = match limit {
                0 => DEFAULT_SEARCH_LIMIT,
                n => n.min(MAX_SEARCH_LIMIT),
            };
            let found = hub.store.search_profiles(prefix, limit as usize).await?;
            Ok(ReplyBody::Profiles(views(hub, me, found.into_iter().map(|p| p.user).collect()).await?))
        }
    }
}

/// The profiles of `users` as `reader` sees them, in the order given: with their counts and the
/// follows between reader and each; a birthday only in the reader's own; none of those who blocked
/// the reader (to whom they do not exist).
pub async fn views(hub: &Hub, reader: UserId, users: Vec<UserId>) -> DomainResult<Vec<ProfileView>> {
    let store = &hub.store;
    let (profiles, counts, posts, blockers) = futures_util::try_join!(
        store.profiles(users.clone()),
        store.follow_counts(users.clone()),
        store.post_counts(users.clone()),
        store.blockers_of(reader, users.clone()),
    )?;
    let mut views = Vec::with_capacity(users.len());
    for user in users {
        let Some(mut profile) = profiles.iter().find(|p| p.user == user).cloned() else { continue };
        if blockers.contains(&user) {
            continue;
        }
        let (mut my_follow, mut follows_me) = (FollowState::None, false);
        if user != reader {
            profile.birthday = None;
            let (mine, theirs) =
                futures_util::try_join!(store.follow_state(reader, user), store.follow_state(user, reader))?;
            (my_follow, follows_me) = (mine, theirs == FollowState::Following);
        }
        let counts = counts.iter().find(|(u, _)| *u == user).map(|(_, c)| *c).unwrap_or_default();
        let posts = posts.iter().find(|(u, _)| *u == user).map_or(0, |(_, n)| *n);
        views.push(ProfileView { profile, counts, posts, my_follow, follows_me });
    }
    Ok(views)
}

/// Checks each field the client set; the first one at fault is named in the error.
async fn check_edit(hub: &Hub, me: UserId, edit: ProfileEdit) -> DomainResult<ProfileChange> {
    let display_name =
        edit.display_name.map(|n| check_text("display_name", &n, DISPLAY_NAME_MAX_CHARS, false)).transpose()?;
    let bio = edit.bio.map(|b| check_text("bio", &b, BIO_MAX_CHARS, true)).transpose()?;
    let birthday = match edit.birthday.as_deref() {
        None => None,
        Some("") => Some(None),
        Some(text) => {
            let birthday = Birthday::parse(text).ok_or_else(|| {
                DomainError::invalid_field("birthday", "birthday must be a date, YYYY-MM-DD, from 1900")
            })?;
            if birthday > Birthday::of_time_ms(now_ms()) {
                return Err(DomainError::invalid_field("birthday", "birthday is in the future"));
            }
            Some(Some(birthday))
        }
    };
    let avatar = match edit.avatar.as_deref() {
        None => None,
        Some("") => Some(None),
        Some(text) => {
            let id = MediaId::parse(text)
                .ok_or_else(|| DomainError::invalid_field("avatar_media_id", "avatar_media_id is not a media id"))?;
            if hub.store.media(id).await?.is_none() {
                return Err(DomainError { field: "avatar_media_id".into(), ..DomainError::not_found("no such media") });
            }
            if !hub.store.uploaded_media(id, me).await? {
                return Err(DomainError::new(Code::Forbidden, "an avatar must be an image you uploaded"));
            }
            Some(Some(id))
        }
    };
    Ok(ProfileChange { display_name, bio, avatar, birthday, private: edit.private })
}

/// Trimmed text of at most `max_chars` characters, with no control characters (but line breaks
/// where `lines` allows them).
fn check_text(field: &str, text: &str, max_chars: usize, lines: bool) -> DomainResult<String> {
    let text = text.trim();
    if text.chars().count() > max_chars {
        return Err(DomainError::invalid_field(field, format!("{field} is longer than {max_chars} characters")));
    }
    if text.chars().any(|c| c.is_control() && !(lines && c == '\n')) {
        return Err(DomainError::invalid_field(field, format!("{field} has control characters")));
    }
    Ok(text.to_owned())
}

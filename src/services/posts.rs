//! Photo posts: an author posts 1 to `POST_MAX_PHOTOS` of their own uploads with a caption and
//! perhaps a place; whoever may see the author's content (`follows::may_see_content`) reads the
//! post, its photos and the author's list of posts; only the author deletes it.

use std::sync::Arc;

use super::activity::{self, About};
use super::follows::may_see_content;
use super::{PostsOp, page};
use crate::actors::{Hub, ReplyBody};
use crate::domain::{
    ActivityKind, CAPTION_MAX_CHARS, COMMENT_MAX_CHARS, Comment, CommentId, DomainError, DomainResult, FollowState,
    Location, POST_MAX_PHOTOS, Post, PostId, PostView, Reactions, UserId, comment_cursor_after, cursor_after, now_ms,
    parse_comment_cursor, parse_cursor, parse_post_cursor, post_cursor_after, time_ordered_id,
};

const DEFAULT_PAGE: u32 = 20;
/// Likers and comments: the default page and the most.
const DEFAULT_LIST: u32 = 50;
const MAX_LIST: u32 = 100;
const MAX_PAGE: u32 = 50;
/// The longest client post id, in bytes.
const CLIENT_POST_ID_MAX_BYTES: usize = 64;

pub async fn handle(hub: &Arc<Hub>, me: UserId, op: PostsOp) -> DomainResult<ReplyBody> {
    match op {
        PostsOp::Create { client_post_id, media, caption, location } => {
            let post = check_post(hub, me, &client_post_id, media, &caption, location).await?;
            let post = hub.store.create_post(post, client_post_id).await?;
            // Its author's feed actor fans it out (a retry's post, if its job is done, is not).
            hub.feeds.fan_out(hub, me, post.id);
            let view = PostView { post, reactions: Reactions::default(), liked_by_me: false, latest: None };
            Ok(ReplyBody::Post(Box::new(view)))
        }
        PostsOp::Delete(id) => {
            let post = visible_post(hub, me, id).await?;
            if post.author != me {
                return Err(DomainError::forbidden("only its author deletes a post"));
            }
            hub.store.delete_post(id).await?;
            Ok(ReplyBody::Ok)
        }
        PostsOp::Get(id) => {
            let post = visible_post(hub, me, id).await?;
            let latest = async { Ok(hub.store.latest_reactions(id).await?) };
            let (mut views, latest) = futures_util::try_join!(views(hub, me, vec![post]), latest)?;
            let view = PostView { latest: Some(latest), ..views.remove(0) };
            Ok(ReplyBody::Post(Box::new(view)))
        }
        PostsOp::Like { post, on } => {
            let liked = visible_post(hub, me, post).await?;
            hub.store.set_like(post, me, on).await?;
            if on {
                // Also when the like was there already: a retry after a crash records it then.
                let about = About { post, ..About::default() };
                activity::record(hub, liked.author, ActivityKind::Liked, me, about).await?;
            }
            Ok(ReplyBody::Ok)
        }
        PostsOp::Comment { post, client_comment_id, text } => {
            let on = visible_post(hub, me, post).await?;
            let comment = check_comment(me, post, &client_comment_id, &text)?;
            let comment = hub.store.add_comment(comment, client_comment_id).await?;
            let about = About { post, comment: comment.id, text: comment.text.clone() };
            activity::record(hub, on.author, ActivityKind::Commented, me, about).await?;
            Ok(ReplyBody::Comment(Box::new(comment)))
        }
        PostsOp::DeleteComment { post, comment } => {
            let on = visible_post(hub, me, post).await?;
            let found =
                hub.store.comment(post, comment).await?.ok_or_else(|| DomainError::not_found("no such comment"))?;
            if found.author != me && on.author != me {
                return Err(DomainError::forbidden("only its author or the post's deletes a comment"));
            }
            hub.store.delete_comment(post, comment).await?;
            Ok(ReplyBody::Ok)
        }
        PostsOp::Likers { post, cursor, limit } => {
            visible_post(hub, me, post).await?;
            let after = page::after(&cursor, parse_cursor)?;
            let limit = page::limit(limit, DEFAULT_LIST, MAX_LIST);
            let likers = hub.store.likers(post, after, limit).await?;
            let next_cursor = match likers.last() {
                Some(&last) if likers.len() == limit => cursor_after(last),
                _ => String::new(),
            };
            let profiles = super::profiles::views(hub, me, likers).await?;
            Ok(ReplyBody::Users { profiles, next_cursor })
        }
        PostsOp::Comments { post, cursor, limit } => {
            visible_post(hub, me, post).await?;
            let after = page::after(&cursor, parse_comment_cursor)?;
            let limit = page::limit(limit, DEFAULT_LIST, MAX_LIST);
            let comments = hub.store.comments(post, after, limit).await?;
            let next_cursor = match comments.last() {
                Some(last) if comments.len() == limit => comment_cursor_after(last.id),
                _ => String::new(),
            };
            Ok(ReplyBody::Comments { comments, next_cursor })
        }
        PostsOp::Feed { cursor, limit } => home_feed(hub, me, &cursor, limit).await,
        PostsOp::List { author, cursor, limit } => {
            let (before, limit) = page_of(&cursor, limit)?;
            may_see_content(hub, me, author).await?;
            let posts = hub.store.posts_of(author, before, limit).await?;
            let next_cursor = match posts.last() {
                Some(last) if posts.len() == limit => post_cursor_after(last.id),
                _ => String::new(),
            };
            Ok(ReplyBody::Posts { posts: views(hub, me, posts).await?, next_cursor })
        }
    }
}

/// Where a page starts, and how long it is.
fn page_of(cursor: &str, limit: u32) -> DomainResult<(Option<PostId>, usize)> {
    Ok((page::after(cursor, parse_post_cursor)?, page::limit(limit, DEFAULT_PAGE, MAX_PAGE)))
}

/// A page of `me`'s home feed: the posts fanned out to it, merged with those of wide authors `me`
/// follows and `me`'s own (written once, read here), newest first; only posts that still exist,
/// by authors `me` still follows. The cursor is taken before that filter, so a page may come
/// short, never a later one lose a post.
async fn home_feed(hub: &Hub, me: UserId, cursor: &str, limit: u32) -> DomainResult<ReplyBody> {
    let store = &hub.store;
    let (before, limit) = page_of(cursor, limit)?;
    let mut found = store.home_feed(me, before, limit).await?;
    let mut merged = vec![me];
    for author in store.wide_authors().await? {
        if author != me && store.follow_state(me, author).await? == FollowState::Following {
            merged.push(author);
        }
    }
    for author in merged {
        found.extend(store.posts_of(author, before, limit).await?.into_iter().map(|p| (p.id, p.author)));
    }
    found.sort_unstable_by_key(|&(post, _)| std::cmp::Reverse(post));
    found.dedup_by_key(|(post, _)| *post);
    found.truncate(limit);
    let next_cursor = match found.last() {
        Some((last, _)) if found.len() == limit => post_cursor_after(*last),
        _ => String::new(),
    };
    // Each author's follow checked once, each post read; all at once.
    let mut authors: Vec<UserId> = found.iter().map(|(_, a)| *a).filter(|a| *a != me).collect();
    authors.sort_unstable();
    authors.dedup();
    let follows = futures_util::future::try_join_all(authors.iter().map(|&a| store.follow_state(me, a)));
    let read = futures_util::future::try_join_all(found.iter().map(|&(post, _)| store.post(post)));
    let (follows, read) = futures_util::try_join!(follows, read)?;
    let followed = |author: UserId| {
        author == me || authors.iter().zip(&follows).any(|(a, s)| *a == author && *s == FollowState::Following)
    };
    let posts: Vec<Post> = read.into_iter().flatten().filter(|p| followed(p.author)).collect();
    Ok(ReplyBody::Posts { posts: views(hub, me, posts).await?, next_cursor })
}

/// Posts as `reader` sees them: with their counts and whether the reader likes each.
async fn views(hub: &Hub, reader: UserId, posts: Vec<Post>) -> DomainResult<Vec<PostView>> {
    let ids: Vec<PostId> = posts.iter().map(|p| p.id).collect();
    let liked = futures_util::future::try_join_all(ids.iter().map(|&id| hub.store.liked(id, reader)));
    let (reactions, liked) = futures_util::try_join!(hub.store.reactions(ids.clone()), liked)?;
    Ok(posts
        .into_iter()
        .zip(liked)
        .map(|(post, liked_by_me)| {
            let reactions = reactions.iter().find(|(id, _)| *id == post.id).map(|(_, r)| *r).unwrap_or_default();
            PostView { post, reactions, liked_by_me, latest: None }
        })
        .collect())
}

/// A new comment, checked.
fn check_comment(me: UserId, post: PostId, client_comment_id: &str, text: &str) -> DomainResult<Comment> {
    if client_comment_id.trim().is_empty() || client_comment_id.len() > CLIENT_POST_ID_MAX_BYTES {
        let message = format!("client_comment_id is required (at most {CLIENT_POST_ID_MAX_BYTES} bytes)");
        return Err(DomainError::invalid_field("client_comment_id", message));
    }
    let text = text.trim();
    if text.is_empty() || text.chars().count() > COMMENT_MAX_CHARS {
        return Err(DomainError::invalid_field("text", format!("a comment has 1 to {COMMENT_MAX_CHARS} characters")));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(DomainError::invalid_field("text", "text has control characters"));
    }
    let at_ms = now_ms();
    Ok(Comment {
        id: CommentId(time_ordered_id(at_ms).max(1)),
        post,
        author: me,
        text: text.to_owned(),
        created_at_ms: at_ms,
    })
}

/// The post, if `reader` may see it (`NOT_FOUND` for none, as for an author who blocked them).
async fn visible_post(hub: &Hub, reader: UserId, id: PostId) -> DomainResult<Post> {
    let post = hub.store.post(id).await?.ok_or_else(|| DomainError::not_found("no such post"))?;
    may_see_content(hub, reader, post.author).await?;
    Ok(post)
}

/// A new post, checked field by field.
async fn check_post(
    hub: &Hub,
    me: UserId,
    client_post_id: &str,
    media: Vec<crate::domain::MediaId>,
    caption: &str,
    location: Option<(f64, f64)>,
) -> DomainResult<Post> {
    if client_post_id.trim().is_empty() || client_post_id.len() > CLIENT_POST_ID_MAX_BYTES {
        let message =
            format!("client_post_id is required (at most {CLIENT_POST_ID_MAX_BYTES} bytes): it makes retries safe");
        return Err(DomainError::invalid_field("client_post_id", message));
    }
    if media.is_empty() || media.len() > POST_MAX_PHOTOS {
        return Err(DomainError::invalid_field("media_ids", format!("a post has 1 to {POST_MAX_PHOTOS} photos")));
    }
    for &id in &media {
        if hub.store.media(id).await?.is_none() {
            return Err(DomainError {
                field: "media_ids".into(),
                ..DomainError::not_found(format!("no such media {id}"))
            });
        }
        if !hub.store.uploaded_media(id, me).await? {
            return Err(DomainError::forbidden(format!("media {id} is not an image you uploaded")));
        }
    }
    let caption = caption.trim();
    if caption.chars().count() > CAPTION_MAX_CHARS {
        return Err(DomainError::invalid_field(
            "caption",
            format!("caption is longer than {CAPTION_MAX_CHARS} characters"),
        ));
    }
    if caption.chars().any(|c| c.is_control() && c != '\n') {
        return Err(DomainError::invalid_field("caption", "caption has control characters"));
    }
    let location = match location {
        None => None,
        Some((lat, lng)) => Some(Location::checked(lat, lng).ok_or_else(|| {
            DomainError::invalid_field("location", "location: latitude -90 to 90, longitude -180 to 180")
        })?),
    };
    // Time-ordered, and after the author's latest post even within one millisecond (ids within a
    // millisecond are random): a later post of one author always has a larger id.
    let at_ms = now_ms();
    let latest = hub.store.posts_of(me, None, 1).await?.first().map_or(0, |p| p.id.0);
    let id = PostId(time_ordered_id(at_ms).max(latest + 1));
    Ok(Post { id, author: me, media, caption: caption.to_owned(), location, created_at_ms: at_ms })
}

//! The rules: what a request means, checked and carried out against the store, the actors and the
//! other nodes. The transport decodes a frame into a `Request`, routes it here by its group and
//! encodes the answer; it decides nothing. Adding an operation means the proto, one decode and
//! one encode arm, and one function here.
//!
//! - `rooms.rs`: creating and listing rooms, and handing a room's requests to its actor (here or
//!   on the node that owns the room).
//! - `presence.rs`: who may see whose presence.
//! - `activity.rs`: activity (follows, likes, comments) recorded into the stream of whom it
//!   concerns, pushed when they are offline; what they have seen.
//! - `notify.rs`: notifications from the app's backend (server API), into each user's stream.
//! - `follows.rs`: following (requests for private accounts), lists of users, blocks.
//! - `posts.rs`: photo posts: creating, deleting, reading them as privacy and blocks allow.
//! - `profiles.rs`: profiles (display name, bio, avatar, birthday, privacy) and finding users.
//! - `push_prefs.rs`: push tokens and notification preferences (mutes, do not disturb, previews).
//! - `session.rs`: a connection's own session (a fresh access token).
//! - `request.rs`: the requests, grouped by what answers them.

pub mod activity;
pub mod follows;
pub mod notify;
mod page;
pub mod posts;
pub mod presence;
pub mod profiles;
pub mod push_prefs;
mod request;
pub mod rooms;
pub mod session;

pub use request::{
    ActivityOp, FollowsOp, PostsOp, ProfileEdit, ProfilesOp, PushOp, PushTarget, Request, RoomsOp, SessionOp, StreamOp,
};

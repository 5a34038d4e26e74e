//! The actors behind the connections.
//!
//! - `UserActor` (`user.rs`): one per user with a connection on this node. Holds the user's device
//!   connections, each with its `Cursor` (`cursor.rs`: its place in the user's durable stream),
//!   and does what the cursors ask: read a page, wait for a missing event, drop a connection that
//!   fell too far behind.
//! - `RoomActor` (`room/`): one per active room. Checks each write against its plan (`plan.rs`),
//!   assigns each entry its seq, submits it to the store in seq order, and after it is durable
//!   acknowledges the sender and fans it out to the members' user actors.
//! - `Registry` (`registry.rs`): finds (or starts) the actor of a user, or of an `ActorKey`.
//! - `Peers` (`peers.rs`): what actors need of the other nodes, implemented by the cluster.
//! - `feed.rs`: feed actors, one per author with posts to fan out here (the durable, resumable
//!   fan-out of a post to its author's followers' home feeds), and the sweep that resumes them.
//! - `fanout_sweep.rs`: a periodic part that opens the rooms whose fan-out a stopped writer left
//!   unfinished (a large room's entries reach the streams after the acknowledgement).
//! - `protocol.rs`: what connections and services ask of actors, and what actors answer.
//!
//! Feed actors (post fan-out to followers) will sit beside rooms under their own `ActorKey`, with
//! the same registry, ownership and stream delivery.

mod cursor;
mod fanout_sweep;
mod feed;
mod hub;
mod outbound_budget;
mod peers;
mod protocol;
mod registry;
mod room;
mod user;

pub use fanout_sweep::{fanout_sweep, sweep as sweep_rooms_behind};
pub use feed::{Feeds, feed_sweep};
pub use hub::Hub;
pub use outbound_budget::{OutboundBudget, event_bytes};
pub use peers::{Forwarding, Peers};
pub use protocol::{
    ActorRequest, Answer, BoxedAnswer, Ephemeral, Notice, Outbound, PresenceInfo, Replier, ReplyBody, RoomOp,
    RoomWrite, SentAck,
};
pub use registry::{Registry, UserEntry};
pub use room::{RoomActor, RoomRequest};
pub use user::{Attach, Detach, Kick, KickReason, ListConnections, LiveConnection, StreamAck, SyncFrom, UserActor};

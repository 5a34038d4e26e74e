//! The actors behind the connections.
//!
//! - `UserActor` (`user.rs`): one per user with a connection on this node. Holds the user's device
//!   connections and, for each, its position in the user's durable stream; delivers live events in
//!   position order and switches a connection to catching up from the store whenever it misses or
//!   cannot take an event.
//! - `RoomActor` (`room.rs`): one per active room. Checks membership and roles, assigns each entry
//!   its seq, submits it to the store in seq order, and after it is durable acknowledges the
//!   sender and fans it out to the members' user actors.
//! - `Registry` (`registry.rs`): finds (or starts) the actor of a user or room.
//!
//! Feed actors (post fan-out to followers) will sit beside rooms, with the same registry and the
//! same stream delivery.

mod cursor;
mod hub;
mod peers;
mod protocol;
mod registry;
mod room;
mod user;

pub use hub::Hub;
pub use peers::{Forwarding, Peers};
pub use protocol::{
    ActorRequest, Answer, Ephemeral, Notice, Outbound, PresenceInfo, Replier, ReplyBody, RoomOp, RoomWrite, SentAck,
};
pub use registry::{Registry, UserEntry};
pub use room::{RoomActor, RoomRequest};
pub use user::{Attach, Detach, Kick, StreamAck, SyncFrom, UserActor};

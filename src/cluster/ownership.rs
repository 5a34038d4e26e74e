//! Which node owns an actor key (a room, ...): rendezvous (highest random weight) hashing over the
//! live nodes. Every node computes the same owner from the same membership view, and when a node
//! joins or leaves only the keys it wins or held move.

use sha2::{Digest, Sha256};

use crate::domain::ActorKey;

/// The owner of `key` among `nodes` (their ids), if there is any node.
pub fn owner<'a>(key: impl Into<ActorKey>, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let key = key.into();
    nodes.into_iter().max_by_key(|node| (weight(key, node), *node))
}

fn weight(key: ActorKey, node: &str) -> u64 {
    // A room hashes by its id alone, as before keys had kinds, so no room moves on an upgrade;
    // other kinds will hash with a prefix of their own.
    let digest = match key {
        ActorKey::Room(room) => Sha256::new().chain_update(room.0.to_be_bytes()),
        ActorKey::Feed(author) => Sha256::new().chain_update(b"feed").chain_update(author.0.to_be_bytes()),
    }
    .chain_update(node.as_bytes())
    .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RoomId;

    #[test]
    fn owners_spread_and_only_the_leavers_rooms_move() {
        let three = ["a", "b", "c"];
        let rooms: Vec<RoomId> = (1..=3000).map(RoomId).collect();
        let before: Vec<&str> = rooms.iter().map(|r| owner(*r, three).unwrap()).collect();
        for node in three {
            let share = before.iter().filter(|o| **o == node).count();
            assert!((800..=1200).contains(&share), "{node} owns {share} of 3000");
        }
        let after: Vec<&str> = rooms.iter().map(|r| owner(*r, ["a", "c"]).unwrap()).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != "b" {
                assert_eq!(b, a, "a room of a surviving node stays where it was");
            }
        }
        assert_eq!(owner(RoomId(1), []), None);
        assert_eq!(owner(RoomId(7), ["a", "b"]), owner(RoomId(7), ["b", "a"]), "order does not matter");
    }
}

//! The standard scenarios' rooms, as roster plans.

use crate::swarm::RosterPlan;

/// `pairs` direct rooms; the first user of each pair sends.
pub fn direct(pairs: usize) -> RosterPlan {
    let rooms = (0..pairs).map(|p| (vec![2 * p, 2 * p + 1], vec![2 * p])).collect();
    RosterPlan { users: 2 * pairs, devices_per_user: 1, rooms }
}

/// `rooms` groups of `members` distinct users each; every member sends.
pub fn fanout(rooms: usize, members: usize, devices_per_user: usize) -> RosterPlan {
    let plan = (0..rooms)
        .map(|r| {
            let users: Vec<usize> = (r * members..(r + 1) * members).collect();
            (users.clone(), users)
        })
        .collect();
    RosterPlan { users: rooms * members, devices_per_user, rooms: plan }
}

/// "City bots": users live in cities and chat in small local groups; a few celebrities each have
/// a large fan room (members from every city) where the celebrity and a few fans talk.
pub fn city(users: usize, cities: usize, celebrities: usize, fans_per_celebrity: usize) -> RosterPlan {
    let cities = cities.max(1);
    let mut rooms = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Local groups of 3 to 8 neighbours.
    for city in 0..cities {
        let residents: Vec<usize> = (0..users).filter(|u| u % cities == city).collect();
        let mut i = 0;
        while i + 3 <= residents.len() {
            let size = (3 + (next() % 6) as usize).min(residents.len() - i);
            let members = residents[i..i + size].to_vec();
            rooms.push((members.clone(), members));
            i += size;
        }
    }
    // Celebrity rooms: the celebrity first (owner), fans from everywhere; the celebrity and the
    // first three fans speak.
    for c in 0..celebrities.min(users) {
        let mut members = vec![c];
        while members.len() < (fans_per_celebrity + 1).min(users) {
            let fan = (next() % users as u64) as usize;
            if !members.contains(&fan) {
                members.push(fan);
            }
        }
        let speakers = members[..members.len().min(4)].to_vec();
        rooms.push((members, speakers));
    }
    RosterPlan { users, devices_per_user: 1, rooms }
}

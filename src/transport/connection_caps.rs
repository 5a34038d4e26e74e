//! Open WebSockets counted per user and per client address, so that one account or one host
//! cannot take every slot under the node's cap (`limits.max_connections`).
//!
//! A connection holds a [`CapsGuard`] for its lifetime; dropping it gives both places back. The
//! counts live in sharded maps whose entries are removed when they reach zero, so the maps hold
//! only users and addresses that have a connection open.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

use crate::domain::UserId;

/// Which cap a refused connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    User,
    Address,
}

pub struct ConnectionCaps {
    per_user: usize,
    per_address: usize,
    users: DashMap<UserId, usize>,
    addresses: DashMap<IpAddr, usize>,
}

impl ConnectionCaps {
    /// 0 turns a cap off.
    pub fn new(per_user: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self { per_user, per_address, users: DashMap::new(), addresses: DashMap::new() })
    }

    /// Takes a place for `user` from `address`, or says which cap is full.
    pub fn admit(self: &Arc<Self>, user: UserId, address: Option<IpAddr>) -> Result<CapsGuard, CapReached> {
        let user = (self.per_user != 0).then_some(user);
        if let Some(user) = user
            && !take(&self.users, user, self.per_user)
        {
            return Err(CapReached::User);
        }
        let address = address.filter(|_| self.per_address != 0);
        if let Some(ip) = address
            && !take(&self.addresses, ip, self.per_address)
        {
            if let Some(user) = user {
                give_back(&self.users, user);
            }
            return Err(CapReached::Address);
        }
        Ok(CapsGuard { caps: self.clone(), user, address })
    }
}

/// One connection's places under the per-user and per-address caps (none for a cap that is off).
pub struct CapsGuard {
    caps: Arc<ConnectionCaps>,
    user: Option<UserId>,
    address: Option<IpAddr>,
}

impl Drop for CapsGuard {
    fn drop(&mut self) {
        if let Some(user) = self.user {
            give_back(&self.caps.users, user);
        }
        if let Some(ip) = self.address {
            give_back(&self.caps.addresses, ip);
        }
    }
}

/// One more for `key` unless it already has `cap`.
fn take<K: std::hash::Hash + Eq>(counts: &DashMap<K, usize>, key: K, cap: usize) -> bool {
    let mut count = counts.entry(key).or_insert(0);
    if *count >= cap {
        return false;
    }
    *count += 1;
    true
}

/// One fewer for `key`; the entry goes when it reaches zero.
fn give_back<K: std::hash::Hash + Eq>(counts: &DashMap<K, usize>, key: K) {
    if let dashmap::mapref::entry::Entry::Occupied(mut e) = counts.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_user_and_per_address_and_places_come_back_on_drop() {
        let caps = ConnectionCaps::new(2, 3);
        let here: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let there: Option<IpAddr> = Some("127.0.0.2".parse().unwrap());
        let a1 = caps.admit(UserId(1), here).unwrap();
        let _a2 = caps.admit(UserId(1), here).unwrap();
        assert_eq!(caps.admit(UserId(1), there).err(), Some(CapReached::User));
        let _b1 = caps.admit(UserId(2), here).unwrap();
        assert_eq!(caps.admit(UserId(3), here).err(), Some(CapReached::Address));
        // The refusal by address gave the user's place back.
        assert!(caps.users.get(&UserId(3)).is_none());
        let _c1 = caps.admit(UserId(3), there).unwrap();
        drop(a1);
        let _a3 = caps.admit(UserId(1), here).unwrap();
        drop((_a2, _a3, _b1, _c1));
        assert!(caps.users.is_empty() && caps.addresses.is_empty());
    }

    #[test]
    fn a_cap_of_zero_is_off_and_counts_nothing() {
        let caps = ConnectionCaps::new(0, 0);
        let guards: Vec<_> = (0..100).map(|_| caps.admit(UserId(1), None).unwrap()).collect();
        assert!(caps.users.is_empty());
        drop(guards);
    }
}

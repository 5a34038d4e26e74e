//! Presence: a user sees whether someone is online, and when they were last seen, only if the two
//! share a room. The others asked about are left out of the answer, never reported offline.

use std::sync::Arc;

use crate::actors::{Hub, PresenceInfo, ReplyBody};
use crate::domain::{DomainResult, UserId};

pub async fn presence(hub: &Arc<Hub>, me: UserId, users: Vec<UserId>) -> DomainResult<ReplyBody> {
    let contacts = hub.store.contacts_of(me).await?;
    let visible: Vec<UserId> = users.into_iter().filter(|u| contacts.contains(u)).collect();
    let last_seen = hub.store.last_seen(visible.clone()).await?;
    let mut infos: Vec<PresenceInfo> = visible
        .into_iter()
        .map(|user| PresenceInfo {
            user,
            online: hub.registry.is_online(user),
            last_seen_ms: last_seen.iter().find(|(u, _)| *u == user).map_or(0, |(_, at)| *at),
        })
        .collect();
    if let Some(peers) = &hub.peers {
        for info in infos.iter_mut().filter(|i| !i.online) {
            info.online = peers.online_elsewhere(info.user).await;
        }
    }
    Ok(ReplyBody::Presence(infos))
}

//! Finishes fan-outs that a stopped writer left behind.
//!
//! A large room's entries are acknowledged before they reach their recipients' streams
//! (`AppendOutcome::Logged`). If the writer's process dies in between, the entries are safe in the
//! room's log, and the room's next claim puts them into the streams; but a room nobody writes to
//! again would not be claimed. So each node looks, when it starts and then every
//! `SWEEP_EVERY`, at the rooms its store lists as behind (`RoomStore::rooms_behind`), and opens
//! those it owns: a room whose actor runs here is being fanned out already and is left alone, any
//! other is claimed, which finishes its fan-out and delivers it to live sessions.
//!
//! The sweep at start is awaited before the node serves (`server::start`): a client that syncs
//! with a node just restarted after a crash finds every acknowledged message in its stream.

use std::sync::Arc;
use std::time::Duration;

use super::Hub;
use crate::lifecycle::Periodic;

const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Sweeps every `SWEEP_EVERY` until stopped (the start's sweep is `sweep`, awaited before serving).
pub fn fanout_sweep(hub: Arc<Hub>) -> Periodic {
    Periodic::start("fan-out sweep", SWEEP_EVERY, SWEEP_EVERY, move || {
        let hub = hub.clone();
        async move { sweep(&hub).await }
    })
}

/// One look at the rooms behind: opens those this node owns (each claim finishes its fan-out).
pub async fn sweep(hub: &Arc<Hub>) {
    let rooms = match hub.store.rooms_behind().await {
        Ok(rooms) => rooms,
        Err(e) => return tracing::warn!(error = %e, "listing the rooms behind failed; trying again later"),
    };
    for room in rooms {
        if hub.peers.as_ref().is_some_and(|peers| !peers.owns(room.into())) {
            continue;
        }
        match hub.registry.room(room, hub).await {
            Ok(_) => tracing::debug!(%room, "room behind is open"),
            Err(e) => tracing::warn!(%room, error = %e, "opening a room behind failed; trying again later"),
        }
    }
}

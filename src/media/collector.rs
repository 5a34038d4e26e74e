//! Collects images that were uploaded and never sent anywhere: once `media.orphan_ttl_hours` have
//! passed since their last upload and no message shows them, they are deleted (`MediaStore::
//! collect_orphan_media`). A `lifecycle::Periodic` part: runs every `media.collect_every_secs`, on
//! every node (the store's deletes are idempotent).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::now_ms;
use crate::lifecycle::Periodic;
use crate::store::Store;

/// Images deleted by one pass at most; the next pass goes on.
const PER_PASS: usize = 1000;

/// Collects every `every`, until stopped.
pub fn media_collector(store: Arc<dyn Store>, orphan_ttl_hours: f64, every: Duration) -> Periodic {
    let ttl_ms = (orphan_ttl_hours.max(0.0) * 3_600_000.0) as i64;
    Periodic::start("media collector", every, every, move || {
        let store = store.clone();
        async move {
            match store.collect_orphan_media(now_ms() - ttl_ms, PER_PASS).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(images = n, "collected images never sent"),
                Err(e) => tracing::warn!(error = %e, "collecting images never sent failed; trying again later"),
            }
        }
    })
}

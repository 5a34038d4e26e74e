//! Collects images that were uploaded and never sent anywhere: once `media.orphan_ttl_hours` have
//! passed since their last upload and no message shows them, they are deleted (`MediaStore::
//! collect_orphan_media`). Runs every `media.collect_every_secs`, on every node (the store's
//! deletes are idempotent).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::now_ms;
use crate::lifecycle::Stoppable;
use crate::store::Store;

/// Images deleted by one pass at most; the next pass goes on.
const PER_PASS: usize = 1000;

pub struct MediaCollector {
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl MediaCollector {
    pub fn start(store: Arc<dyn Store>, orphan_ttl_hours: f64, every: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let ttl_ms = (orphan_ttl_hours.max(0.0) * 3_600_000.0) as i64;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                match store.collect_orphan_media(now_ms() - ttl_ms, PER_PASS).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(images = n, "collected images never sent"),
                    Err(e) => tracing::warn!(error = %e, "collecting images never sent failed; trying again later"),
                }
            }
        });
        Self { stop, task: std::sync::Mutex::new(Some(task)) }
    }
}

#[async_trait]
impl Stoppable for MediaCollector {
    fn name(&self) -> &'static str {
        "media collector"
    }

    async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

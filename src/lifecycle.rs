//! One lifecycle for the node's background work.
//!
//! `server::start` starts each part in order (the store, the push worker, the cluster's tasks) and
//! records it in `Background`; `Running` stops them in reverse, so no part stops while a part
//! started after it, which may use it, still runs. The store's own helpers (its writer thread and
//! WAL checkpointer) start when it opens and stop when it closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::store::Store;

/// A part of the node that runs in the background until it is stopped.
#[async_trait]
pub trait Stoppable: Send + Sync {
    /// For the shutdown log.
    fn name(&self) -> &'static str;

    /// Stops the part and waits for its work in flight. Called once.
    async fn stop(&self);
}

/// The started parts, in the order they started.
#[derive(Default)]
pub struct Background {
    parts: Vec<Arc<dyn Stoppable>>,
}

impl Background {
    pub fn started(&mut self, part: Arc<dyn Stoppable>) {
        tracing::debug!(part = part.name(), "started");
        self.parts.push(part);
    }

    /// Stops every part, the last started first.
    pub async fn stop_all(&mut self) {
        while let Some(part) = self.parts.pop() {
            let began = Instant::now();
            part.stop().await;
            tracing::info!(part = part.name(), took_ms = began.elapsed().as_millis() as u64, "stopped");
        }
    }
}

/// A part that does one pass of work every so often until stopped (the fan-out sweep, the media
/// collector). A pass in progress finishes before `stop` returns.
pub struct Periodic {
    name: &'static str,
    stop: tokio::sync::watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Periodic {
    /// Runs `pass` after `first_after`, then every `every`. On the actix runtime of the server
    /// (a pass may start actors).
    pub fn start<F, Fut>(name: &'static str, first_after: Duration, every: Duration, mut pass: F) -> Self
    where
        F: FnMut() -> Fut + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = actix_web::rt::spawn(async move {
            let mut wait = first_after;
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                pass().await;
                wait = every;
            }
        });
        Self { name, stop, task: std::sync::Mutex::new(Some(task)) }
    }
}

#[async_trait]
impl Stoppable for Periodic {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The store as a part: closing it flushes what is queued and stops its threads.
pub struct StoreService(pub Arc<dyn Store>);

#[async_trait]
impl Stoppable for StoreService {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn stop(&self) {
        self.0.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Part(&'static str, Arc<Mutex<Vec<&'static str>>>);

    #[async_trait]
    impl Stoppable for Part {
        fn name(&self) -> &'static str {
            self.0
        }

        async fn stop(&self) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    #[tokio::test]
    async fn parts_stop_in_the_reverse_of_their_start() {
        let stopped = Arc::new(Mutex::new(Vec::new()));
        let mut background = Background::default();
        for name in ["store", "push worker", "cluster"] {
            background.started(Arc::new(Part(name, stopped.clone())));
        }
        background.stop_all().await;
        assert_eq!(*stopped.lock().unwrap(), ["cluster", "push worker", "store"]);
        background.stop_all().await;
        assert_eq!(stopped.lock().unwrap().len(), 3, "each part stops once");
    }
}

//! Image work runs off the request threads, on a bounded set of blocking threads: `workers` jobs at
//! a time and at most `queue` waiting; a job beyond that is refused at once (OVERLOADED) rather
//! than queued without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use crate::domain::{DomainError, DomainResult};

pub struct ImageWork {
    running: Arc<Semaphore>,
    /// Jobs running or waiting.
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

/// A job's place, given back when it ends (or is dropped while waiting).
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ImageWork {
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = match workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Self { running: Arc::new(Semaphore::new(workers)), admitted: Arc::default(), capacity: workers + queue }
    }

    /// Runs `job` on a blocking thread once a worker is free; OVERLOADED when too many wait.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> DomainResult<T> + Send + 'static,
    ) -> DomainResult<T> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(DomainError::overloaded(1000));
        }
        let admitted = Admitted(self.admitted.clone());
        let permit = self.running.clone().acquire_owned().await.map_err(|_| DomainError::internal())?;
        let outcome = tokio::task::spawn_blocking(move || {
            let _held = (permit, admitted);
            job()
        })
        .await;
        outcome.unwrap_or_else(|e| {
            tracing::error!(error = %e, "an image job panicked");
            Err(DomainError::internal())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_workers_and_the_queue_jobs_are_refused() {
        let work = Arc::new(ImageWork::new(1, 1));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(held));
        // One running (held until released), one waiting: the third is refused at once.
        let running = {
            let (work, held) = (work.clone(), held.clone());
            tokio::spawn(async move { work.run(move || Ok(held.lock().unwrap().recv().is_ok())).await })
        };
        while work.admitted.load(Ordering::Acquire) < 1 {
            tokio::task::yield_now().await;
        }
        let waiting = {
            let work = work.clone();
            tokio::spawn(async move { work.run(|| Ok(true)).await })
        };
        while work.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = work.run(|| Ok(true)).await.unwrap_err();
        assert_eq!(refused.code, crate::domain::Code::Overloaded);
        release.send(()).unwrap();
        assert!(running.await.unwrap().unwrap());
        assert!(waiting.await.unwrap().unwrap());
        // Room again.
        assert!(work.run(|| Ok(true)).await.unwrap());
    }
}

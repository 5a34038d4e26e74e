//! Password hashing on a few threads of its own.
//!
//! Argon2 holds `argon2_memory_kib` (19 MiB by default) per hash. Before this pool, 128 concurrent
//! logins took the process to 2.7 GB; with a semaphore alone in front of tokio's blocking pool,
//! still 1.4 GB, because each of the many blocking threads that ran a hash kept its freed 19 MiB in
//! its own malloc arena. Here the same `threads` threads run every hash (their memory is reused),
//! and a request that waits `QUEUE_WAIT` for one of them is shed with OVERLOADED.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use super::PasswordHasher;
use crate::domain::error::{DomainError, DomainResult};

/// How long a sign-up or log-in waits for a hashing thread before it is answered OVERLOADED.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce(&PasswordHasher) + Send>;

pub struct HashingPool {
    /// One permit per thread: a job is sent only when a thread is free, so none queues here.
    free_threads: Arc<Semaphore>,
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl HashingPool {
    pub fn new(threads: usize, hasher: PasswordHasher) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            let hasher = hasher.clone();
            std::thread::Builder::new()
                .name(format!("tidings-hash-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking the next job; ends when the pool drops.
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(&hasher),
                            Err(_) => break,
                        }
                    }
                })
                .expect("a hashing thread starts");
        }
        Self { free_threads: Arc::new(Semaphore::new(threads)), jobs: Mutex::new(jobs) }
    }

    /// Runs `work` on a hashing thread once one is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasher) -> T + Send + 'static,
    ) -> DomainResult<T> {
        let permit = tokio::time::timeout(QUEUE_WAIT, self.free_threads.clone().acquire_owned())
            .await
            .map_err(|_| DomainError::overloaded(1000))?
            .map_err(|_| DomainError::internal())?;
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |hasher| {
            let _ = done.send(work(hasher));
            drop(permit);
        });
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|_| DomainError::internal())?;
        result.await.map_err(|_| DomainError::internal())
    }
}

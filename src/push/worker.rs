//! The push worker: claims due jobs from the store's queue, decides whether each is still needed,
//! sends it through its provider and records how it ended.
//!
//! Exactly-once as far as it can be had: a job is claimed under a lease in the same store that
//! queued it; it is deleted only after the provider accepted it; a crash mid-send leaves the lease
//! to run out and the job is sent again with the same push id (APNs `apns-id`, FCM `push_id`), which
//! also collapses on the device. Retries back off exponentially with jitter and honour Retry-After.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::apns::ApnsClient;
use super::fcm::FcmClient;
use super::gate::PushGate;
use super::notification::Notification;
use super::provider::{Delivery, backoff};
use crate::clock::Clock;
use crate::config::PushConfig;
use crate::domain::{Platform, UserId};
use crate::lifecycle::Stoppable;
use crate::metrics::PUSH_METRICS;
use crate::store::{PushContext, PushJob, PushJobEnd, Store, StoreResult};

/// Most jobs claimed by one store write.
const CLAIM_BATCH: usize = 256;
/// Jobs in the pipeline per provider request allowed in flight. A job holds its place from its
/// claim until its end is recorded, but a provider slot only while it is sent: with one place per
/// slot, slots sat idle while claims, context reads and end records went to the store. Two keep
/// the next batch claimed and read while this one is sent. (The providers still see at most
/// `apns.concurrency` and `fcm.concurrency` requests at once.)
const PIPELINE_DEPTH: usize = 2;
/// The worker looks at the queue at least this often, for jobs queued by other nodes.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often failed jobs past their keeping time are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How long shutdown waits for sends in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a user has a live session (on this node, or on any node of its cluster).
pub type Presence = Arc<dyn Fn(UserId) -> futures_util::future::BoxFuture<'static, bool> + Send + Sync>;

pub struct Providers {
    pub apns: Option<ApnsClient>,
    pub fcm: Option<FcmClient>,
    pub apns_concurrency: usize,
    pub fcm_concurrency: usize,
}

struct Worker {
    store: Arc<dyn Store>,
    gate: Arc<PushGate>,
    online: Presence,
    config: PushConfig,
    apns: Option<(ApnsClient, Semaphore)>,
    fcm: Option<(FcmClient, Semaphore)>,
    /// Jobs this worker is sending now: a lease that runs out while one waits is not sent twice.
    in_flight: Mutex<HashSet<u64>>,
    progress: watch::Sender<Progress>,
    /// How sent jobs ended, to be recorded in batches (`record_ends`).
    ended: mpsc::UnboundedSender<Ended>,
    /// Told when the worker stopped and its sends drained: the recorder may end.
    drained: Notify,
}

/// A job that ended, with its place among the sends, held until its end is recorded.
struct Ended {
    job: PushJob,
    end: PushJobEnd,
    send_slot: OwnedSemaphorePermit,
}

/// Where the worker is, for whoever waits for it to settle (tests on a manual clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The clock's time at the latest claim after which the worker found nothing more due.
    pub claimed_at_ms: i64,
    /// Pushes being sent.
    pub in_flight: usize,
}

/// A running push worker.
pub struct PushWorker {
    stop: watch::Sender<bool>,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    progress: watch::Receiver<Progress>,
    gate: Arc<PushGate>,
}

impl PushWorker {
    pub fn start(
        store: Arc<dyn Store>,
        gate: Arc<PushGate>,
        online: Presence,
        providers: Providers,
        config: PushConfig,
    ) -> Self {
        let wake = gate.clone();
        let (progress, progress_rx) = watch::channel(Progress::default());
        let (ended, ends) = mpsc::unbounded_channel();
        let worker = Arc::new(Worker {
            store,
            gate,
            online,
            config,
            apns: providers.apns.map(|c| (c, Semaphore::new(providers.apns_concurrency.max(1)))),
            fcm: providers.fcm.map(|c| (c, Semaphore::new(providers.fcm_concurrency.max(1)))),
            in_flight: Mutex::new(HashSet::new()),
            progress,
            ended,
            drained: Notify::new(),
        });
        tokio::spawn(worker.clone().record_ends(ends));
        let (stop, stopped) = watch::channel(false);
        let done = tokio::spawn(worker.run(stopped));
        Self { stop, done: Mutex::new(Some(done)), progress: progress_rx, gate: wake }
    }

    /// Makes the worker look at the queue now (after a manual clock moved).
    pub fn nudge(&self) {
        self.gate.wake.notify_one();
    }

    /// Follows the worker's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

#[async_trait::async_trait]
impl Stoppable for PushWorker {
    fn name(&self) -> &'static str {
        "push worker"
    }

    /// Stops claiming and waits (bounded) for the sends in flight.
    async fn stop(&self) {
        let _ = self.stop.send(true);
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }
}

impl Worker {
    fn capacity(&self) -> usize {
        fn permits<C>(provider: &Option<(C, Semaphore)>) -> usize {
            provider.as_ref().map_or(0, |(_, s)| s.available_permits())
        }
        permits(&self.apns) + permits(&self.fcm)
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        match self.store.users_with_pending_pushes().await {
            Ok(users) => self.gate.remember_pending(users),
            Err(e) => tracing::warn!(error = %e, "could not read pending pushes"),
        }
        let total = self.capacity() * PIPELINE_DEPTH;
        let sends = Arc::new(Semaphore::new(total));
        let lease_ms = (self.config.lease_secs * 1000) as i64;
        let mut next_purge = tokio::time::Instant::now();
        while !*stop.borrow() {
            if tokio::time::Instant::now() >= next_purge {
                next_purge += PURGE_EVERY;
                self.purge_failed().await;
            }
            let free = sends.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                tokio::select! {
                    _ = stop.changed() => break,
                    permit = sends.acquire() => drop(permit),
                }
                continue;
            }
            let claimed_at = self.clock().now_ms();
            let jobs = match self.store.claim_push_jobs(claimed_at, lease_ms, free).await {
                Ok(jobs) => {
                    if !jobs.is_empty() {
                        tracing::debug!(jobs = ?jobs.iter().map(|j| j.id).collect::<Vec<_>>(), "claimed pushes");
                    }
                    jobs
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim push jobs; retrying");
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = self.clock().sleep(IDLE_POLL) => {}
                    }
                    continue;
                }
            };
            let full = jobs.len() == free;
            let mut starting = Vec::with_capacity(jobs.len());
            for job in jobs {
                if !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(job.id) {
                    continue;
                }
                let Ok(permit) = sends.clone().try_acquire_owned() else { break };
                starting.push((job, permit));
            }
            // The batch's contexts in one read, not one read per push.
            let contexts = self.store.push_contexts(starting.iter().map(|(job, _)| job.clone()).collect()).await;
            for ((job, permit), context) in starting.into_iter().zip(contexts) {
                let worker = self.clone();
                tokio::spawn(async move { worker.process(job, context, permit).await });
            }
            if full {
                continue;
            }
            // Say when we will look next before looking at the queue, so that a push queued
            // meanwhile that is due earlier wakes us (see `PushGate::queued`).
            self.gate.next_look_ms.store(self.clock().now_ms() + IDLE_POLL.as_millis() as i64, Ordering::Release);
            let wait = match self.store.next_push_due().await {
                Ok(Some(due)) => Duration::from_millis((due - self.clock().now_ms()).max(0) as u64).min(IDLE_POLL),
                _ => IDLE_POLL,
            };
            self.gate.next_look_ms.fetch_min(self.clock().now_ms() + wait.as_millis() as i64, Ordering::AcqRel);
            self.report(claimed_at);
            tokio::select! {
                _ = stop.changed() => break,
                _ = self.gate.wake.notified() => {}
                _ = self.clock().sleep(wait) => {}
            }
        }
        // Drain: wait for what is in flight; anything unfinished is resent after its lease.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, sends.acquire_many(total as u32)).await;
        self.drained.notify_one();
    }

    async fn purge_failed(&self) {
        let keep = Duration::from_secs(self.config.keep_failed_days * 24 * 3600);
        match self.store.purge_failed_pushes(self.clock().now_ms() - keep.as_millis() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "deleted failed pushes past push.keep_failed_days"),
            Err(e) => tracing::warn!(error = %e, "could not purge failed pushes"),
        }
    }

    fn clock(&self) -> &Clock {
        &self.gate.clock
    }

    /// Tells `PushWorker::progress` watchers where the worker is.
    fn report(&self, claimed_at_ms: i64) {
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.progress.send_modify(|p| {
            p.claimed_at_ms = p.claimed_at_ms.max(claimed_at_ms);
            p.in_flight = in_flight;
        });
    }

    /// Records how jobs ended, many in one store write: whatever ended while the last write ran.
    /// A job stays in flight, and its place among the sends taken, until its end is recorded, so
    /// shutdown's drain waits for the record too.
    async fn record_ends(self: Arc<Self>, mut ends: mpsc::UnboundedReceiver<Ended>) {
        loop {
            let first = tokio::select! {
                biased;
                ended = ends.recv() => match ended {
                    Some(ended) => ended,
                    None => break,
                },
                _ = self.drained.notified() => break,
            };
            let mut batch = vec![first];
            while batch.len() < CLAIM_BATCH {
                match ends.try_recv() {
                    Ok(ended) => batch.push(ended),
                    Err(_) => break,
                }
            }
            let (jobs, permits): (Vec<_>, Vec<_>) = batch.into_iter().map(|e| ((e.job, e.end), e.send_slot)).unzip();
            let ids: Vec<u64> = jobs.iter().map(|(job, _)| job.id).collect();
            if let Err(e) = self.store.finish_push_jobs(jobs).await {
                // Their leases run out and the jobs are tried again.
                tracing::warn!(jobs = ids.len(), error = %e, "could not record how pushes ended");
            }
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                in_flight.remove(id);
            }
            drop(in_flight);
            drop(permits);
            self.report(i64::MIN);
        }
    }

    async fn process(&self, job: PushJob, context: StoreResult<PushContext>, send: OwnedSemaphorePermit) {
        let platform = job.platform;
        let end = self.attempt(&job, context).await;
        let metrics = PUSH_METRICS.of(platform);
        match &end {
            PushJobEnd::Sent => {
                tracing::debug!(job = job.id, user = %job.user, provider = platform.provider_name(), "push sent");
                metrics.sent.inc();
                PUSH_METRICS
                    .latency
                    .observe(Duration::from_millis((self.clock().now_ms() - job.created_at_ms).max(0) as u64));
            }
            PushJobEnd::Dropped => metrics.dropped.inc(),
            PushJobEnd::Retry { error, .. } => {
                metrics.retried.inc();
                tracing::debug!(job = job.id, attempts = job.attempts + 1, %error, "push will be retried");
            }
            PushJobEnd::Failed { reason } => {
                metrics.failed.inc();
                tracing::warn!(job = job.id, user = %job.user, provider = platform.provider_name(), %reason, "push failed");
            }
            PushJobEnd::TokenDead { reason, .. } => {
                metrics.tokens_removed.inc();
                tracing::info!(user = %job.user, device = %job.device, provider = platform.provider_name(), %reason,
                    "push token is dead; removed");
            }
        }
        if let Err(unsent) = self.ended.send(Ended { job, end, send_slot: send }) {
            // Only if the recorder is gone (the runtime is shutting down): record this one alone.
            let Ended { job, end, .. } = unsent.0;
            let id = job.id;
            let _ = self.store.finish_push_job(job, end).await;
            self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }

    async fn attempt(&self, job: &PushJob, context: StoreResult<PushContext>) -> PushJobEnd {
        let context = match context {
            Ok(context) => context,
            Err(e) => return self.retry(job, None, format!("reading the push's context: {e}")),
        };
        let online = (self.online)(job.user).await;
        if let Some(reason) = self.not_needed(job, &context, online) {
            tracing::debug!(job = job.id, user = %job.user, reason, "push not needed");
            return PushJobEnd::Dropped;
        }
        let notification = Notification::new(job, &context);
        let delivery = match platform_client(job.platform, &self.apns, &self.fcm) {
            Client::Apns(client, permits) => {
                let _permit = permits.acquire().await;
                client.send(job, &notification).await
            }
            Client::Fcm(client, permits) => {
                let _permit = permits.acquire().await;
                client.send(job, &notification).await
            }
            Client::None => {
                Delivery::Rejected { reason: format!("{} is not configured", job.platform.provider_name()) }
            }
        };
        match delivery {
            Delivery::Accepted => PushJobEnd::Sent,
            Delivery::Retry { after, reason } => self.retry(job, after, reason),
            Delivery::TokenDead { reason } => PushJobEnd::TokenDead { token: job.token.clone(), reason },
            Delivery::Rejected { reason } => PushJobEnd::Failed { reason },
        }
    }

    fn retry(&self, job: &PushJob, after: Option<Duration>, reason: String) -> PushJobEnd {
        if job.attempts + 1 >= self.config.max_attempts {
            return PushJobEnd::Failed { reason: format!("gave up after {} attempts: {reason}", job.attempts + 1) };
        }
        let wait = after.unwrap_or_else(|| {
            backoff(
                job.attempts,
                Duration::from_millis(self.config.retry_base_ms),
                Duration::from_millis(self.config.retry_max_ms),
            )
        });
        PushJobEnd::Retry { at_ms: self.clock().now_ms() + wait.as_millis() as i64, error: reason }
    }

    /// Why a due push should not go out, if it should not.
    fn not_needed(&self, job: &PushJob, context: &PushContext, online: bool) -> Option<&'static str> {
        let now = self.clock().now_ms();
        if !context.member {
            Some("no longer a member of the room")
        } else if job.last_seq <= context.delivered_up_to_seq {
            // The read marker implies the delivered one.
            Some("delivered or read on another device")
        } else if job.last_pos <= context.stream_delivered_up_to_pos {
            Some("delivered: a device acknowledged its stream past it")
        } else if online {
            Some("the user is connected")
        } else if context.muted_until_ms > now {
            Some("room muted")
        } else if context.dnd_until_ms > now {
            Some("do not disturb")
        } else {
            None
        }
    }
}

enum Client<'a> {
    Apns(&'a ApnsClient, &'a Semaphore),
    Fcm(&'a FcmClient, &'a Semaphore),
    None,
}

fn platform_client<'a>(
    platform: Platform,
    apns: &'a Option<(ApnsClient, Semaphore)>,
    fcm: &'a Option<(FcmClient, Semaphore)>,
) -> Client<'a> {
    match (platform, apns, fcm) {
        (Platform::Ios, Some((client, permits)), _) => Client::Apns(client, permits),
        (Platform::Android, _, Some((client, permits))) => Client::Fcm(client, permits),
        _ => Client::None,
    }
}

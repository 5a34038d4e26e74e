//! The webhook worker: one task per node that queues what the node emits and sends what is due,
//! a few at a time, until stopped (then it queues what is left, so a graceful restart loses none).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures_util::StreamExt;
use ring::hmac;
use tokio::sync::{mpsc, watch};

use super::queue::{Job, Queue};
use super::{EMIT_QUEUE, WebhookEvent, Webhooks};
use crate::config::WebhooksConfig;
use crate::lifecycle::Stoppable;
use crate::metrics::METRICS;

/// Jobs claimed per pass.
const BATCH: usize = 64;
/// The longest the worker sleeps without looking at the queue.
const LONGEST_WAIT: Duration = Duration::from_secs(1);

pub struct WebhookWorker {
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait]
impl Stoppable for WebhookWorker {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().expect("the worker's lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The node's webhooks: off (and no worker) while `webhooks.url` is empty.
pub fn start(
    config: &WebhooksConfig,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Webhooks, Option<Arc<WebhookWorker>>)> {
    if config.url.is_empty() {
        return Ok((Webhooks::off(), None));
    }
    let secret = crate::secrets::configured("webhooks.secret", &config.secret, &config.secret_file)?.context(
        "webhooks.url is set but webhooks.secret is not: the backend could not tell our calls from anyone's",
    )?;
    let path = data_dir.join("webhooks.db");
    let queue = Arc::new(Queue::open(&path).with_context(|| format!("opening the webhook queue {}", path.display()))?);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs.max(1)))
        .build()
        .context("building the webhook HTTP client")?;
    let (sender, events) = mpsc::channel(EMIT_QUEUE);
    let (stop, stopped) = watch::channel(false);
    let sending = Sending { queue, client, key: hmac::Key::new(hmac::HMAC_SHA256, &secret), config: config.clone() };
    let task = tokio::spawn(sending.run(events, stopped));
    tracing::info!(url = %config.url, "webhooks on");
    let worker = WebhookWorker { stop, task: std::sync::Mutex::new(Some(task)) };
    Ok((Webhooks { sender: Some(sender), config: config.clone() }, Some(Arc::new(worker))))
}

struct Sending {
    queue: Arc<Queue>,
    client: reqwest::Client,
    key: hmac::Key,
    config: WebhooksConfig,
}

impl Sending {
    async fn run(self, mut events: mpsc::Receiver<(WebhookEvent, i64)>, mut stopped: watch::Receiver<bool>) {
        let mut emitted = Vec::new();
        loop {
            while let Ok(event) = events.try_recv() {
                emitted.push(event);
            }
            self.enqueue(&mut emitted).await;
            let now = crate::domain::now_ms();
            let due = self.blocking(move |q| q.due(now, BATCH)).await.unwrap_or_default();
            if !due.is_empty() {
                let sends = futures_util::stream::iter(due)
                    .for_each_concurrent(self.config.concurrency.max(1), |job| self.attempt(job));
                // A stop does not wait for a slow backend: calls cut short stay queued, and are
                // sent again after the restart (the backend de-duplicates on `id`).
                tokio::select! {
                    _ = sends => continue,
                    _ = stopped.changed() => break,
                }
            }
            self.report().await;
            let next = self.blocking(|q| q.next_due()).await.ok().flatten();
            let wait = next.map_or(LONGEST_WAIT, |due| {
                Duration::from_millis((due - crate::domain::now_ms()).clamp(1, LONGEST_WAIT.as_millis() as i64) as u64)
            });
            tokio::select! {
                _ = stopped.changed() => break,
                received = events.recv() => match received {
                    Some(event) => emitted.push(event),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // What was emitted before the stop is queued, for the next start.
        while let Ok(event) = events.try_recv() {
            emitted.push(event);
        }
        self.enqueue(&mut emitted).await;
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Queue) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let queue = self.queue.clone();
        match tokio::task::spawn_blocking(move || work(&queue)).await {
            Ok(result) => result.inspect_err(|e| tracing::warn!(error = %e, "the webhook queue failed")),
            Err(_) => Err(rusqlite::Error::InvalidQuery),
        }
    }

    async fn enqueue(&self, emitted: &mut Vec<(WebhookEvent, i64)>) {
        if emitted.is_empty() {
            return;
        }
        let rows: Vec<(String, String, i64)> = emitted
            .drain(..)
            .map(|(event, at_ms)| {
                (event.kind().to_owned(), serde_json::to_string(&event).expect("events serialise"), at_ms)
            })
            .collect();
        let count = rows.len() as u64;
        if self.blocking(move |q| q.push(&rows)).await.is_err() {
            METRICS.webhooks_dropped_total.add(count);
        }
    }

    async fn attempt(&self, job: Job) {
        let outcome = self.send(&job).await;
        let queue_job = job.clone();
        let result = match outcome {
            Ok(()) => {
                METRICS.webhooks_sent_total.inc();
                self.blocking(move |q| q.delivered(&queue_job)).await
            }
            Err((error, retry_after)) => {
                let attempts = job.attempts + 1;
                let due = (attempts < self.config.max_attempts).then(|| {
                    let wait = retry_after.unwrap_or_else(|| self.backoff(job.attempts));
                    crate::domain::now_ms() + wait.as_millis() as i64
                });
                match due {
                    Some(_) => METRICS.webhooks_retried_total.inc(),
                    None => {
                        METRICS.webhooks_failed_total.inc();
                        tracing::warn!(delivery = %job.delivery_id, kind = %job.kind, %error, "webhook given up");
                    }
                }
                self.blocking(move |q| q.failed_attempt(&queue_job, due, &error)).await
            }
        };
        let _ = result;
    }

    /// Exponential, with jitter, capped.
    fn backoff(&self, attempts: u32) -> Duration {
        let base = self.config.retry_base_ms.max(1);
        let exp = base.saturating_mul(1 << attempts.min(20)).min(self.config.retry_max_ms.max(base));
        Duration::from_millis(exp + rand::random::<u64>() % base)
    }

    /// One POST; the error and the wait the backend asked for, when it failed.
    async fn send(&self, job: &Job) -> Result<(), (String, Option<Duration>)> {
        let body = body_of(job);
        let timestamp = crate::domain::now_ms() / 1000;
        let signature = hmac::sign(&self.key, format!("{timestamp}.{body}").as_bytes());
        let response = self
            .client
            .post(&self.config.url)
            .header("content-type", "application/json")
            .header("x-tidings-event", &job.kind)
            .header("x-tidings-delivery", &job.delivery_id)
            .header("x-tidings-timestamp", timestamp.to_string())
            .header("x-tidings-signature", format!("v1={}", hex(signature.as_ref())))
            .body(body)
            .send()
            .await
            .map_err(|e| (format!("sending: {e}"), None))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err((format!("the backend answered {status}"), retry_after))
    }

    async fn report(&self) {
        if let Ok((pending, failed)) = self.blocking(|q| q.counts()).await {
            METRICS.webhooks_pending.set(pending as i64);
            METRICS.webhooks_given_up.set(failed as i64);
        }
    }
}

/// The body the backend receives: the delivery id and when it happened, then the event.
fn body_of(job: &Job) -> String {
    let mut body = serde_json::json!({ "id": job.delivery_id, "atMs": job.at_ms.to_string() });
    if let (Some(fields), Ok(serde_json::Value::Object(event))) =
        (body.as_object_mut(), serde_json::from_str::<serde_json::Value>(&job.event))
    {
        fields.extend(event);
    }
    body.to_string()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_the_delivery_id_time_type_and_data() {
        let event = WebhookEvent::user_online(crate::domain::UserId(7));
        let job = Job {
            rowid: 1,
            delivery_id: "abc".into(),
            kind: "user.online".into(),
            event: serde_json::to_string(&event).unwrap(),
            at_ms: 5,
            attempts: 0,
        };
        let body: serde_json::Value = serde_json::from_str(&body_of(&job)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "id": "abc", "atMs": "5", "type": "user.online", "data": { "userId": "7" } })
        );
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}

//! Notifications from the app's backend (server API `notify`): one event in each named user's
//! stream, shown at once to their live sessions, pushed (when asked) to those with none unless a
//! device acknowledges the stream first. A call retried with the same idempotency key records
//! nothing new and answers as the first did.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::actors::Hub;
use crate::domain::{
    DomainError, DomainResult, NOTIFICATION_KEY_MAX_BYTES, NewNotification, StreamEvent, UserId, check_notification,
    new_random_id, now_ms,
};

/// Recipients recorded at once (each is a store write; the store batches them).
const CONCURRENT_RECIPIENTS: usize = 64;

pub struct Notify {
    pub users: Vec<UserId>,
    pub title: String,
    pub body: String,
    pub data: BTreeMap<String, String>,
    /// Push it to users with no live session.
    pub push: bool,
    /// The backend's `Idempotency-Key`: a retry with it notifies no one again.
    pub idempotency_key: Option<String>,
}

/// Who got it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notified {
    /// Users whose stream has it (now, or from an earlier call with the same key), in the order asked.
    pub queued: Vec<UserId>,
    /// Users named that do not exist.
    pub unknown: Vec<UserId>,
}

pub async fn notify(hub: &Arc<Hub>, request: Notify) -> DomainResult<Notified> {
    check_notification(&request.title, &request.body, &request.data)?;
    let key = match request.idempotency_key {
        Some(key) if key.is_empty() || key.len() > NOTIFICATION_KEY_MAX_BYTES => {
            let message = format!("Idempotency-Key must be 1 to {NOTIFICATION_KEY_MAX_BYTES} bytes");
            return Err(DomainError::invalid_field("Idempotency-Key", message));
        }
        Some(key) => format!("key:{key}"),
        // Unique: recorded once whatever happens.
        None => format!("call:{:016x}", new_random_id()),
    };
    let existing = hub.store.existing_users(request.users.clone()).await?;
    let at_ms = now_ms();
    let (title, body, data, push) = (&request.title, &request.body, &request.data, request.push);
    let recorded: Vec<DomainResult<UserId>> = futures_util::stream::iter(existing.iter().copied())
        .map(|user| {
            let new = NewNotification {
                recipient: user,
                title: title.clone(),
                body: body.clone(),
                data: data.clone(),
                at_ms,
                dedup_key: key.clone(),
            };
            async move {
                // Whether they are online is asked only when there is push to decide.
                let online = push && hub.push.enabled() && hub.is_online(user).await;
                let fanout = if push { hub.push.notification(user, online) } else { None };
                let due = fanout.as_ref().map(|p| p.due_at_ms);
                let recorded = hub.store.record_notification(new, fanout).await?;
                if recorded.fresh {
                    if let Some(due) = due {
                        hub.push.queued(&[user], due);
                    }
                    hub.deliver(
                        &vec![(user, recorded.pos)],
                        &StreamEvent::Notification(Arc::new(recorded.notification)),
                    );
                }
                Ok(user)
            }
        })
        .buffered(CONCURRENT_RECIPIENTS)
        .collect()
        .await;
    let queued = recorded.into_iter().collect::<DomainResult<Vec<UserId>>>()?;
    let unknown = request.users.into_iter().filter(|u| !existing.contains(u)).collect();
    Ok(Notified { queued, unknown })
}
